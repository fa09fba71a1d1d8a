"""The sealing and settlement loop (``gridpoints settle``, and inside ``gridpoints serve`` when
``GRIDPOINTS_SETTLEMENT_ENABLED`` is true).

Each round: seal an epoch when one is due — its oldest record has waited ``epoch_seconds`` or
``epoch_max_records`` records are waiting — then settle every sealed epoch in order. Only the
holder of the leader lock (backend.leader) does either; other replicas keep trying the lock
and take over when the holder dies. Any error is logged, waited out with exponential backoff
and followed by a full reconciliation with the chain.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from backend.db.session import Database
from backend.epochs import EpochSealer
from backend.leader import LeaderLock
from backend.metrics import Metrics
from backend.settings import DEV_CHAIN_IDS, Settings, without_url_secrets
from backend.settlement import SettlementConfig, Settler
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.signer_account import SignerAccount
from gridpoints_chain.transactions import TransactionAccount
from gridpoints_protocol.tariff import TariffBook

if TYPE_CHECKING:
    from gridpoints_signers import Pkcs11Signer

log = logging.getLogger(__name__)

PASSWORD_ENV = "GRIDPOINTS_SETTLER_KEY_PASSWORD"
TOKEN_PIN_ENV = "GRIDPOINTS_SETTLER_PKCS11_PIN"
MAX_BACKOFF_S = 60.0


class SettlerKeyError(RuntimeError):
    """The settler key is missing, unreadable, too readable or undecryptable."""


def load_settler_account(settings: Settings, chain_id: int) -> TransactionAccount:
    """The settler's key: in a PKCS#11 token (`settings.settler_pkcs11_*`, the production
    choice: the key never leaves the token), or from `settings.settler_key_file`, an encrypted
    keystore anywhere and a plain hex key file only on a development chain (its key would sit
    in clear on disk)."""
    uses_token = (
        settings.settler_pkcs11_token is not None or settings.settler_pkcs11_key_label is not None
    )
    if uses_token and settings.settler_key_file is not None:
        raise SettlerKeyError(
            "both GRIDPOINTS_SETTLER_KEY_FILE and GRIDPOINTS_SETTLER_PKCS11_* are set: choose one "
            "settler key"
        )
    if uses_token:
        return SignerAccount(
            open_settler_token_key(settings), reopen=lambda: open_settler_token_key(settings)
        )
    path = settings.settler_key_file
    if path is None:
        raise SettlerKeyError(
            "no settler key: set GRIDPOINTS_SETTLER_PKCS11_TOKEN and "
            "GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL to a key in a PKCS#11 token, or "
            "GRIDPOINTS_SETTLER_KEY_FILE to an encrypted keystore (or, for development, a file "
            "holding a 0x-hex private key)"
        )
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise SettlerKeyError(f"settler key file {path}: {exc.strerror or exc}") from None
    if text.startswith("{"):
        password = _keystore_password(settings)
        try:
            key = Account.decrypt(json.loads(text), password)
        except (ValueError, KeyError) as exc:
            raise SettlerKeyError(
                f"settler keystore {path} could not be decrypted: {exc}"
            ) from None
        keystore_account: LocalAccount = Account.from_key(key)
        return keystore_account
    if chain_id not in DEV_CHAIN_IDS:
        raise SettlerKeyError(
            f"settler key file {path} holds a plain private key, which is accepted only on a "
            f"development chain (ids {sorted(DEV_CHAIN_IDS)}), not on chain {chain_id}: use an "
            "encrypted keystore"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettlerKeyError(
            f"settler key file {path} holds a plain private key and is readable by others "
            f"(mode {stat.filemode(mode)}): chmod 600 it, or use an encrypted keystore"
        )
    try:
        file_account: LocalAccount = Account.from_key(text)
    except ValueError:
        raise SettlerKeyError(f"settler key file {path} holds no private key") from None
    return file_account


def settler_token_labels(settings: Settings) -> tuple[str, str]:
    """(token label, key label) of the settler's PKCS#11 key; both must be set."""
    token, label = settings.settler_pkcs11_token, settings.settler_pkcs11_key_label
    if not token or not label:
        raise SettlerKeyError(
            "a settler key in a PKCS#11 token needs both GRIDPOINTS_SETTLER_PKCS11_TOKEN and "
            "GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL"
        )
    return token, label


def settler_token_pin(settings: Settings) -> str:
    """The token's user PIN. An empty one is refused before any login: every wrong login uses
    up one of the token's retries, and an HSM locks the user PIN after a few."""
    from gridpoints_signers import SignerError, pin_from_file

    if settings.settler_pkcs11_pin is not None and settings.settler_pkcs11_pin_file is not None:
        raise SettlerKeyError(
            f"both {TOKEN_PIN_ENV} and {TOKEN_PIN_ENV}_FILE are set; set only one (the file)"
        )
    if settings.settler_pkcs11_pin is not None:
        pin = settings.settler_pkcs11_pin.get_secret_value()
        if not pin:
            raise SettlerKeyError(f"{TOKEN_PIN_ENV} is empty")
        return pin
    if settings.settler_pkcs11_pin_file is not None:
        try:
            return pin_from_file(settings.settler_pkcs11_pin_file)
        except SignerError as exc:
            raise SettlerKeyError(f"settler token PIN: {exc}") from None
    raise SettlerKeyError(
        f"no PIN for the settler's PKCS#11 token: set {TOKEN_PIN_ENV}_FILE (preferred) or "
        f"{TOKEN_PIN_ENV}"
    )


def open_settler_token_key(settings: Settings, *, create: bool = False) -> Pkcs11Signer:
    """Opens (or, with `create`, generates inside the token) the settler's PKCS#11 key."""
    from gridpoints_signers import Pkcs11Signer, SignerError, TokenNotFoundError

    token, label = settler_token_labels(settings)
    pin = settler_token_pin(settings)
    module = settings.settler_pkcs11_module
    try:
        if create:
            return Pkcs11Signer.generate(label, token_label=token, pin=pin, module=module)
        return Pkcs11Signer.open(label, token_label=token, pin=pin, module=module)
    except TokenNotFoundError as exc:
        conf = os.environ.get("SOFTHSM2_CONF")
        raise SettlerKeyError(
            f"settler key {label!r}: {exc}. The token must be initialised first (for SoftHSM2: "
            "softhsm2-util --init-token; it finds its tokens through SOFTHSM2_CONF, "
            + (f"now {conf})" if conf else "which is not set)")
        ) from None
    except SignerError as exc:
        raise SettlerKeyError(f"settler key {label!r} on PKCS#11 token {token!r}: {exc}") from None


def close_account(account: object) -> None:
    """Ends a token key's session (a SignerAccount); nothing to do for an in-memory key."""
    close = getattr(account, "close", None)
    if close is not None:
        close()


def _keystore_password(settings: Settings) -> str:
    if settings.settler_key_password is not None:
        return settings.settler_key_password.get_secret_value()
    if settings.settler_key_password_file is not None:
        try:
            return settings.settler_key_password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise SettlerKeyError(f"settler key password file: {exc.strerror or exc}") from None
    raise SettlerKeyError(
        f"the settler key file is an encrypted keystore: set {PASSWORD_ENV} or {PASSWORD_ENV}_FILE"
    )


def scrub(text: str, settings: Settings) -> str:
    """`text` without the RPC URL's secrets: provider URLs carry API keys in their path."""
    return without_url_secrets(text, settings.rpc_url)


def write_dev_key_file(path: Path, private_key: bytes) -> Path:
    """Writes a development settler key file with mode 600 (demo and tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("0x" + private_key.hex() + "\n")
    return path


@dataclass(slots=True)
class RoundReport:
    leader: bool = False
    sealed: list[int] = field(default_factory=list)
    settled: int = 0
    error: str | None = None


class SealAndSettle:
    """One sealer-and-settler; `run_round` for one pass, `start`/`stop` for the background."""

    def __init__(
        self,
        db: Database,
        chain: GridPointsChain,
        settings: Settings,
        *,
        account: TransactionAccount | None,
        tariffs: TariffBook | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.sealer = EpochSealer(
            db,
            tariffs if tariffs is not None else TariffBook.load(settings.tariffs_dir),
            max_records=settings.epoch_max_records,
            clock=clock,
        )
        self.settler = (
            Settler(
                db,
                chain,
                account,
                SettlementConfig(
                    confirmations=settings.confirmations_for(chain.deployment.chain_id),
                    credit_chunk_size=settings.credit_chunk_size,
                    payment_chunk_size=settings.payment_chunk_size,
                    receipt_timeout_s=settings.receipt_timeout_s,
                    poll_interval_s=min(0.25, settings.settlement_poll_interval_s),
                    finality_blocks=settings.finality_blocks,
                ),
                stop_event=self.stop_event,
            )
            if account is not None
            else None
        )
        self.lock = LeaderLock(db)
        self.last_report = RoundReport()
        self.last_error: str | None = None
        # The settler's gas money, read at start and after every round (None before a read
        # succeeded).
        self.settler_balance_wei: int | None = None
        self._thread: threading.Thread | None = None

    def seal_due(self) -> bool:
        count, oldest = self.sealer.pending()
        if count == 0:
            return False
        if count >= self.settings.epoch_max_records:
            return True
        assert oldest is not None
        return (self.clock() - oldest).total_seconds() >= self.settings.epoch_seconds

    def run_round(self, *, force_seal: bool = False) -> RoundReport:
        """Seals what is due (everything waiting, with `force_seal`) and settles it.

        Every process with a settler key reads its balance each round, leader or not, and also
        when the round fails (a settler out of gas money fails exactly then)."""
        try:
            return self._round(force_seal)
        finally:
            if self.settler is not None:
                self._read_settler_balance()

    def _round(self, force_seal: bool) -> RoundReport:
        report = RoundReport()
        if self.lock.held and not self.lock.still_held():
            # Another process may have taken over meanwhile: start afresh as any follower.
            log.error("the sealing/settlement lock was lost; stepping down")
            if self.settler is not None:
                self.settler.request_reconcile()
        was_leader = self.lock.held
        if not self.lock.try_acquire():
            self._set_leader_gauge(False)
            self.last_report = report
            return report
        if not was_leader:
            log.info("took the sealing/settlement lock: this process seals and settles now")
        self._set_leader_gauge(True)
        report.leader = True
        while not self.stop_event.is_set() and (force_seal or self.seal_due()):
            epoch = self.sealer.seal()
            if epoch is None:
                break
            report.sealed.append(epoch.epoch_id)
        if self.settler is not None:
            report.settled = self.settler.settle_all()
        self.last_report = report
        return report

    def _set_leader_gauge(self, leader: bool) -> None:
        if self.metrics is not None:
            self.metrics.settlement_leader.set(1 if leader else 0)

    @property
    def settler_balance_low(self) -> bool:
        balance = self.settler_balance_wei
        return balance is not None and balance < self.settings.settler_min_balance_wei

    def _read_settler_balance(self) -> None:
        """Reads the settler's balance; a failed read keeps the last value and fails nothing
        (the round's own outcome stands)."""
        assert self.settler is not None
        address = self.settler.account.address
        try:
            balance = int(self.settler.w3.eth.get_balance(to_checksum_address(address)))
        except Exception as exc:
            log.warning("could not read the settler's balance: %s", scrub(str(exc), self.settings))
            return
        minimum = self.settings.settler_min_balance_wei
        # Warn when the balance first drops below the minimum, not on every round after.
        if balance < minimum and not self.settler_balance_low:
            log.warning(
                "the settler %s has %d wei left for gas (below %d): fund it before settlement "
                "stops",
                self.settler.account.address,
                balance,
                minimum,
            )
        self.settler_balance_wei = balance
        if self.metrics is not None:
            self.metrics.settler_balance.labels(settler=address).set(balance)

    def run_forever(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self.run_round()
                failures = 0
                self.last_error = None
                delay = self.settings.settlement_poll_interval_s
            except Exception as exc:  # logged, backed off and reconciled: the loop must live
                failures += 1
                self.last_error = scrub(f"{type(exc).__name__}: {exc}", self.settings)
                if self.metrics is not None:
                    self.metrics.settlement_errors.inc()
                delay = min(MAX_BACKOFF_S, self.settings.settlement_poll_interval_s * 2**failures)
                log.error(
                    "sealing/settlement round failed (%s); retrying in %.1fs",
                    self.last_error,
                    delay,
                )
                if self.settler is not None:
                    self.settler.request_reconcile()
            self.stop_event.wait(delay)
        self.lock.release()
        self._set_leader_gauge(False)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.settler is not None:
            # Before the first round, which may take minutes on a backlog: /healthz and the
            # low-gas warning need the balance from the start.
            self._read_settler_balance()
        self._thread = threading.Thread(
            target=self.run_forever, name="seal-and-settle", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self.lock.release()
