"""The backend's configuration: one pydantic-settings class read from the environment.

Every variable carries the ``GRIDPOINTS_`` prefix (``GRIDPOINTS_RPC_URL``,
``GRIDPOINTS_MAX_BATCH``...). The database URL is also accepted as the conventional unprefixed
``DATABASE_URL``, which is what container platforms and PostgreSQL operators set; the prefixed
name wins when both are present. Unset, the backend uses an embedded SQLite file under
``./var/`` so that a developer needs nothing but the checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridpoints_protocol.checks import DEFAULT_CLOCK_SKEW_S
from gridpoints_protocol.receipts import DEFAULT_MAX_MERGE_DELAY_S
from gridpoints_protocol.siwe import STATEMENT

# The operator's published tariff documents (one TOML file per version, see its README).
TARIFFS_DIR: Final = Path(__file__).resolve().parent / "tariffs"


# Chain ids of local development nodes (Anvil / Hardhat, Ganache): blocks there are final at
# once, so waiting for confirmations would only slow tests and the demo down.
DEV_CHAIN_IDS = frozenset({31337, 1337})
DEFAULT_CONFIRMATIONS_PUBLIC = 12
DEFAULT_DATA_DIR = Path("var")
SQLITE_FILE_NAME = "gridpoints.sqlite"
MiB = 1024 * 1024


def redact_url(url: str) -> str:
    """`url` as logs may show it: scheme, host and port only (RPC providers put API keys in the
    path or the user part)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "***"
    port = f":{parts.port}" if parts.port else ""
    hidden = "/***" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname}{port}{hidden}"


def without_url_secrets(text: str, url: str) -> str:
    """`text` (an error message) without the secrets of `url`: the URL itself, and its path and
    query and password, which transport errors quote on their own ("... with url: /v2/KEY")."""
    parts = urlsplit(url)
    text = text.replace(url, redact_url(url))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if target not in ("", "/"):
        text = text.replace(target, "/***")
    if parts.password:
        text = text.replace(parts.password, "***")
    return text


class Settings(BaseSettings):
    """Everything the backend can be told from outside. Defaults suit a local Anvil."""

    model_config = SettingsConfigDict(
        env_prefix="GRIDPOINTS_",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # -- chain ------------------------------------------------------------------------------
    rpc_url: str = "http://127.0.0.1:8545"
    deployment_file: Path = Path("deployment.json")
    # None: 0 on a development chain (see DEV_CHAIN_IDS), DEFAULT_CONFIRMATIONS_PUBLIC elsewhere.
    confirmations: int | None = Field(default=None, ge=0)
    registry_poll_interval_s: float = Field(default=2.0, gt=0)
    # Public RPC providers cap eth_getLogs ranges; 2,000 blocks is below every common cap.
    registry_block_range: int = Field(default=2_000, ge=1)
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    # The RPC URL the web app's browsers use (/web/config.json, and the page's CSP connect-src);
    # unset: rpc_url. Set it when the backend's own node is not reachable from users' browsers.
    public_rpc_url: str | None = None
    # The web app's charge offers (backend.offers): a station registers an offer (signed by its
    # key) and the user's signed payment authorisation relayed for it is kept until the offer's
    # deadline, which may lie at most this far ahead; a station may hold at most
    # `offer_max_open_per_station` offers whose deadline has not passed. Together they bound
    # the relay's rows by the registered stations times that number.
    offer_max_validity_s: int = Field(default=2 * 86_400, ge=60)
    offer_max_open_per_station: int = Field(default=1_000, ge=1)
    # The last audit verdict the web app shows: the JSON report the operator's run of
    # `gridpoints-audit --json` wrote to this file (unset: none is shown).
    audit_report_file: Path | None = None

    # -- storage ----------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GRIDPOINTS_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    data_dir: Path = DEFAULT_DATA_DIR
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    db_pool_size: int = Field(default=10, ge=1)
    # SQLite's page cache per pooled connection, allocated as used (backend/db/session.py);
    # at most (pool size + SQLAlchemy's 10 overflow connections) x this per serving process.
    sqlite_cache_mib: int = Field(default=16, ge=1, le=1_024)

    # -- ingest limits ----------------------------------------------------------------------
    max_batch: int = Field(default=1_000, ge=1)
    max_body_bytes: int = Field(default=4 * MiB, ge=1_024)
    clock_skew_s: int = Field(default=DEFAULT_CLOCK_SKEW_S, ge=0)

    # -- rate limits on refused input (backend.ratelimit) ------------------------------------
    # Valid traffic is never charged. A remote address pays a token per rejected record and per
    # 4xx request (plus one per 4 KiB of its body) and gets 429 while its bucket is empty; a
    # claimed station pays one per stored rejection and, while empty, its further rejections
    # are answered `deferred` / `rate_limited` instead of stored.
    rate_limit_enabled: bool = True
    rate_limit_address_burst: int = Field(default=300, ge=1)
    rate_limit_address_per_s: float = Field(default=5.0, gt=0)
    rate_limit_station_burst: int = Field(default=300, ge=1)
    rate_limit_station_per_s: float = Field(default=1.0, gt=0)
    # Buckets kept per kind (least recently charged dropped first): bounds the memory.
    rate_limit_max_sources: int = Field(default=100_000, ge=1)

    # -- epochs and settlement ---------------------------------------------------------------
    # Tariff documents (one *.toml per version); the packaged folder by default.
    tariffs_dir: Path = TARIFFS_DIR
    # An epoch is sealed when its oldest record has waited this long, or when this many records
    # are waiting, whichever comes first.
    epoch_seconds: float = Field(default=60.0, gt=0)
    epoch_max_records: int = Field(default=10_000, ge=1)
    # `gridpoints serve` also runs the sealing and settlement worker when this is true (only
    # one process per database does the work at a time: see backend.leader).
    settlement_enabled: bool = False
    # The settler's key: an encrypted JSON keystore (password in GRIDPOINTS_SETTLER_KEY_PASSWORD
    # or the file GRIDPOINTS_SETTLER_KEY_PASSWORD_FILE), or a file holding a 0x-hex private key
    # (development only; must not be readable by group or others).
    settler_key_file: Path | None = None
    settler_key_password: SecretStr | None = None
    settler_key_password_file: Path | None = None
    # Or (production) a secp256k1 key generated inside a PKCS#11 token, which never leaves it
    # (`gridpoints settler create-key`): token and key labels, the user PIN from a file (or
    # GRIDPOINTS_SETTLER_PKCS11_PIN), the module from GRIDPOINTS_PKCS11_MODULE when unset here
    # (SoftHSM2 when neither is set). Set either the key file or these, not both.
    settler_pkcs11_token: str | None = None
    settler_pkcs11_key_label: str | None = None
    settler_pkcs11_module: Path | None = None
    settler_pkcs11_pin: SecretStr | None = None
    settler_pkcs11_pin_file: Path | None = None
    # Entries per settlement transaction: each credit costs ~30k gas, each payment ~40k; the
    # defaults stay far below a 30M block gas limit.
    credit_chunk_size: int = Field(default=200, ge=1, le=5_000)
    payment_chunk_size: int = Field(default=50, ge=1, le=63)  # worst case: gas_report.py (f)
    receipt_timeout_s: float = Field(default=120.0, gt=0)
    # /healthz reports `degraded` when the settler's balance for gas falls below this (wei):
    # settlement stops when it runs dry, so operators want to hear before.
    settler_min_balance_wei: int = Field(default=5 * 10**16, ge=0)
    settlement_poll_interval_s: float = Field(default=1.0, gt=0)
    # Depth below the head at which a settlement step is final: reconciliation then stops
    # re-verifying it one by one (every round still checks the newest confirmed block, which
    # vouches for all older ones). Unset: the node's `finalized` block, or 64 blocks below the
    # head for a node without that tag.
    finality_blocks: int | None = Field(default=None, ge=0)

    # -- sign-in with Ethereum (backend.auth) -------------------------------------------------
    # The service's public origin, scheme://host[:port], as users' browsers see it: the
    # EIP-4361 message names its authority as `domain` and the origin as `URI`, and a wallet
    # refuses to sign for a domain other than the page's. Unset: http://HOST:PORT.
    public_url: str | None = None
    siwe_statement: str = (
        "Sign in to GridPoints to read your own records. This signature costs nothing and "
        "authorises no payment."
    )
    # How long an issued challenge may be signed, and how long a session lasts.
    siwe_challenge_ttl_s: int = Field(default=300, ge=10, le=3_600)
    siwe_session_ttl_s: int = Field(default=3_600, ge=60, le=7 * 86_400)
    # Pending (unexpired, unused) challenges kept at most, in all and per address: the table
    # stays bounded whoever asks (expired ones are deleted whenever a challenge is issued).
    siwe_max_pending: int = Field(default=10_000, ge=1)
    siwe_max_pending_per_address: int = Field(default=5, ge=1)
    # Challenges a remote address may ask for (token bucket: burst, refill per second).
    siwe_challenge_burst: int = Field(default=20, ge=1)
    siwe_challenge_per_s: float = Field(default=0.5, gt=0)

    # -- signed ingest receipts (backend.receipts) -------------------------------------------
    # The operator's receipt key, which signs a receipt for every accepted record: a secp256k1
    # key inside a PKCS#11 token (token and key labels, the PIN in a file; the module from
    # GRIDPOINTS_PKCS11_MODULE when unset here), or a development keystore file with its
    # password. Neither: no receipts are signed. Stations pin its address (GET /v1/info).
    receipt_pkcs11_token: str | None = None
    receipt_pkcs11_key_label: str | None = None
    receipt_pkcs11_module: Path | None = None
    receipt_pkcs11_pin_file: Path | None = None
    receipt_key_file: Path | None = None
    receipt_key_password: SecretStr | None = None
    # The promise every receipt makes: the record is in an epoch committed on chain at most this
    # long after it was received (sealing every `epoch_seconds` plus settling must fit in it).
    max_merge_delay_s: int = Field(default=DEFAULT_MAX_MERGE_DELAY_S, ge=1, le=366 * 86_400)

    # -- HTTP -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65_535)
    log_level: str = "info"

    @field_validator("public_url")
    @classmethod
    def _public_origin(cls, value: str | None) -> str | None:
        # Sign-in messages name this origin; a path or a query would not be an origin.
        if not value:
            return None
        parts = urlsplit(value.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValueError(f"must be an origin, http(s)://host[:port], got {value!r}")
        return value.rstrip("/")

    @field_validator("siwe_statement")
    @classmethod
    def _statement_grammar(cls, value: str) -> str:
        # The EIP-4361 statement: printable ASCII of RFC 3986's reserved and unreserved sets.
        if not STATEMENT.fullmatch(value):
            raise ValueError("must be printable ASCII without newlines or quotes (EIP-4361)")
        return value

    @field_validator("database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        # `DATABASE_URL=` in a shell or a compose file means "not set", not "empty URL".
        return value or None

    @property
    def effective_database_url(self) -> str:
        """The URL the engine connects to: the configured one or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / SQLITE_FILE_NAME).as_posix()}"

    @property
    def effective_public_url(self) -> str:
        """The public origin sign-in messages name (no trailing slash)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def confirmations_for(self, chain_id: int) -> int:
        """Blocks the registry follower stays behind the head on chain `chain_id`."""
        if self.confirmations is not None:
            return self.confirmations
        return 0 if chain_id in DEV_CHAIN_IDS else DEFAULT_CONFIRMATIONS_PUBLIC
