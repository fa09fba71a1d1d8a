"""A station end to end: its configuration, its key, its store, and recording a transfer.

:class:`Station` is the one object a station's software drives. ``Station.record(transfer)``
turns a measured :class:`Transfer` into a signed, queued ``EnergyTransfer``:

1. *reserve* in the store (write-ahead): the next sequence and the meter register come from the
   store inside the reserving transaction, the record is built from them
   (:class:`~gridpoints_protocol.record.EnergyTransfer` validates it) and stored with its digest;
2. *sign* the stored digest with the station's :class:`~gridpoints_signers.Signer`, and check
   that the signature recovers to the station's address before it is kept;
3. *attach* the signature, which queues the record for :mod:`station_signer.sync`.

A charge the user pays with points carries the user's signed payment authorisation
(:class:`~gridpoints_protocol.authorization.SignedAuthorization`, signed in the user's wallet
for the Settlement contract's EIP-712 domain). :func:`check_authorization` refuses one that is
not the user's own signature, is for another user or station, or expires before the charge ends; the
record's ``paymentAuthorization`` becomes the authorisation's digest (so the signed record
commits to it and neither can be swapped) and the authorisation is stored with the record and
sent with it.

:func:`check_proof` checks the backend's inclusion proof of one of the station's records
against the station's own copy of the record and against the Settlement contract (through
:class:`ChainAnchors`), never against the backend's word alone.

Opening a station first re-signs every ``reserved`` row left by a crash between 1 and 3
(:meth:`Station.recover`), after checking that the stored content still hashes to the stored
digest. The record format lives in :mod:`gridpoints_protocol.record` only; this module never
spells out its fields beyond passing them to the constructor.

:class:`StationConfig` is the station directory's ``station.json``: station id, deployment
(chain id and StationRegistry), and where the key is (PKCS#11 module, token and key labels, or a
development key file). It holds no secret: PINs and passwords come from the environment or a
file when the key is opened (see :func:`open_signer`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from gridpoints_files import write_atomically
from gridpoints_protocol import merkle
from gridpoints_protocol.authorization import SettlementDomain, SignedAuthorization
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import FieldError, RecordValidationError
from gridpoints_protocol.record import (
    UINT64_MAX,
    ZERO_BYTES32,
    Direction,
    Domain,
    EnergyTransfer,
    SignatureError,
    recover_signer,
)
from gridpoints_signers.base import Signer
from station_signer.errors import StationSignerError
from station_signer.store import StationState, StationStore, StoredRecord, StoreError

if TYPE_CHECKING:
    from gridpoints_chain.contracts import GridPointsChain
    from station_signer.sync import ProofAnswer

CONFIG_FILE: Final = "station.json"
STORE_FILE: Final = "station.sqlite"
DEV_KEY_FILE: Final = "dev-key.json"
CONFIG_SCHEMA_VERSION: Final = 1
DEFAULT_TOKEN_LABEL: Final = "gridpoints-station"
DEFAULT_KEY_LABEL: Final = "gridpoints-station"
SOFTHSM_SO_PIN_ENV: Final = "GRIDPOINTS_SOFTHSM_SO_PIN"


class StationError(StationSignerError):
    """A station-level problem; ``code`` is machine-readable (``key_mismatch``, ``config``...)."""

    def __init__(self, message: str, code: str = "station_error") -> None:
        super().__init__(message)
        self.code = code


class SigningFailedError(StationError):
    """The record was reserved (its sequence and content are on disk) but not signed; the next
    :meth:`Station.recover` signs it. ``__cause__`` is the signer's error."""

    def __init__(self, sequence: int, cause: Exception) -> None:
        super().__init__(
            f"record #{sequence} is stored but could not be signed ({cause}); it will be signed "
            "when the station next opens its key",
            "signing_failed",
        )
        self.sequence = sequence


# ---- the measured transfer ---------------------------------------------------------------------

_TRANSFER_FIELDS: Final = (
    "direction",
    "user",
    "energyWh",
    "startTime",
    "endTime",
    "paymentAuthorization",
    "meterBeforeWh",
    "authorization",
)
_REQUIRED_TRANSFER_FIELDS: Final = ("direction", "user", "energyWh", "startTime", "endTime")
_HEX32: Final = re.compile(r"0x[0-9a-fA-F]{64}")


def parse_direction(value: Any) -> Direction:
    """``charge``/``discharge`` (any case) or 1/2 as a number or string."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("charge", "1"):
            return Direction.CHARGE
        if text in ("discharge", "2"):
            return Direction.DISCHARGE
    elif type(value) is int and value in (1, 2):
        return Direction(value)
    raise ValueError(
        f"direction must be 'charge' (1, station -> vehicle) or 'discharge' (2, vehicle -> "
        f"station), got {value!r}"
    )


def parse_time(value: Any) -> int:
    """Unix seconds from an integer, a string of digits, or ISO 8601 with a UTC offset.

    A time without an offset is refused: a station's local clock zone must not silently shift
    a signed record by hours.
    """
    if type(value) is int:
        if value < 0:
            raise ValueError(f"a time must not be negative, got {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"a time is unix seconds or ISO 8601 with an offset "
                f"(2025-01-31T14:00:00Z), got {value!r}"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(
                f"ISO 8601 time {value!r} has no UTC offset; add Z or +hh:mm so that it is "
                "unambiguous"
            )
        seconds = moment.timestamp()
        if seconds < 0 or seconds != int(seconds):
            raise ValueError(f"a time must be a whole, non-negative unix second, got {value!r}")
        return int(seconds)
    raise ValueError(f"a time is unix seconds or an ISO 8601 string, got {type(value).__name__}")


def _parse_uint(value: Any, name: str) -> int:
    if type(value) is int:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0 <= number <= UINT64_MAX:
        raise ValueError(f"{name} must be in 0..{UINT64_MAX}, got {number}")
    return number


def parse_bytes32(value: Any, name: str = "value") -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise ValueError(f"{name} must be 0x followed by 64 hex digits, got {value!r}")
    return bytes.fromhex(value[2:])


@dataclass(frozen=True, slots=True)
class Transfer:
    """What the station measured; the store adds station id, sequence and meter registers.

    ``meter_before_wh`` is normally left out: the register then continues from the station's
    last record of the same direction. A station whose meter also counted energy outside any
    record passes the real reading; it must not be below the stored register.

    ``authorization`` is the user's signed payment authorisation of a charge paid with points;
    the record's ``paymentAuthorization`` is then its digest (``payment_authorization`` may be
    left zero, or must equal that digest). A non-zero ``payment_authorization`` without the
    signed authorisation is refused when recording: the backend needs the authorisation itself.
    """

    direction: Direction
    user: bytes
    energy_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes = ZERO_BYTES32
    meter_before_wh: int | None = None
    authorization: SignedAuthorization | None = None

    @classmethod
    def from_json(cls, data: Any) -> Transfer:
        """Parses ``{"direction", "user", "energyWh", "startTime", "endTime"}`` plus optional
        ``paymentAuthorization``, ``meterBeforeWh`` and ``authorization`` (a signed payment
        authorisation, ``{"authorization": {...}, "signature": "0x..."}``); unknown fields are
        refused and every problem is reported (RecordValidationError naming the fields)."""
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"a transfer is a JSON object, got {type(data).__name__}")]
            )
        errors = [FieldError(str(k), "unknown field") for k in data if k not in _TRANSFER_FIELDS]
        errors += [FieldError(k, "missing") for k in _REQUIRED_TRANSFER_FIELDS if k not in data]
        values: dict[str, Any] = {}
        parsers: dict[str, tuple[str, Any]] = {
            "direction": ("direction", parse_direction),
            "user": ("user", parse_address),
            "energyWh": ("energy_wh", lambda v: _parse_uint(v, "energyWh")),
            "startTime": ("start_time", parse_time),
            "endTime": ("end_time", parse_time),
            "paymentAuthorization": (
                "payment_authorization",
                lambda v: parse_bytes32(v, "paymentAuthorization"),
            ),
            "meterBeforeWh": ("meter_before_wh", lambda v: _parse_uint(v, "meterBeforeWh")),
        }
        for name, (attribute, parse) in parsers.items():
            if name not in data:
                continue
            try:
                values[attribute] = parse(data[name])
            except ValueError as exc:
                errors.append(FieldError(name, str(exc)))
        if "authorization" in data:
            try:
                values["authorization"] = SignedAuthorization.from_json(data["authorization"])
            except RecordValidationError as exc:
                errors += exc.prefixed("authorization").errors
        if errors:
            raise RecordValidationError(errors)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "direction": self.direction.name.lower(),
            "user": to_checksum_address(self.user),
            "energyWh": self.energy_wh,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "paymentAuthorization": "0x" + self.payment_authorization.hex(),
        }
        if self.meter_before_wh is not None:
            data["meterBeforeWh"] = self.meter_before_wh
        if self.authorization is not None:
            data["authorization"] = self.authorization.to_json()
        return data


# ---- payment authorisations --------------------------------------------------------------------


class AuthorizationError(StationError):
    """A payment authorisation the station must not attach to a record; nothing was stored.

    ``code``: ``authorization_not_charge``, ``authorization_bad_signature``,
    ``authorization_wrong_user``, ``authorization_wrong_station``, ``authorization_expired``,
    ``authorization_mismatch``, ``authorization_missing`` (the backend's reject reasons of the
    same names, ``gridpoints_protocol.wire.RejectReason``) or ``authorization_domain`` (the station
    does not know the Settlement contract). A replayed authorisation is the store's
    ``authorization_replayed``.
    """


def check_authorization(
    signed: SignedAuthorization,
    settlement: SettlementDomain,
    *,
    station_id: bytes,
    user: bytes,
    direction: Direction,
    end_time: int,
) -> bytes:
    """The authorisation's EIP-712 digest, once it may pay for this charge; else
    AuthorizationError.

    The checks are the ones the backend and the Settlement contract make later, made before a
    sequence is spent: a record committing to an authorisation they refuse could never be paid
    with points. The signature must be the user's own ECDSA signature (a contract wallet's
    ERC-1271 approval can only be checked on chain, and is not accepted here). Whether the
    nonce is still unused is the chain's to say (the backend checks it).
    """
    authorization = signed.authorization
    if direction != Direction.CHARGE:
        raise AuthorizationError(
            f"a payment authorisation pays for a charge; this record is a {direction.name.lower()}",
            "authorization_not_charge",
        )
    digest = authorization.digest(settlement)
    try:
        signer = signed.signer_bytes(settlement)
    except SignatureError as exc:
        raise AuthorizationError(
            f"the authorisation's signature is unusable: {exc}", "authorization_bad_signature"
        ) from None
    if signer != authorization.user:
        raise AuthorizationError(
            f"the authorisation is signed by {to_checksum_address(signer)}, not by its user "
            f"{authorization.user_address} (or it was signed for another Settlement contract "
            f"or chain than {to_checksum_address(settlement.verifying_contract)} on chain "
            f"{settlement.chain_id}, or changed after signing)",
            "authorization_bad_signature",
        )
    if authorization.user != user:
        raise AuthorizationError(
            f"the authorisation is {authorization.user_address}'s, but the record's user is "
            f"{to_checksum_address(user)}",
            "authorization_wrong_user",
        )
    if authorization.station_id != station_id:
        raise AuthorizationError(
            f"the authorisation is for station 0x{authorization.station_id.hex()}, not for "
            f"this station 0x{station_id.hex()}",
            "authorization_wrong_station",
        )
    if authorization.is_expired(end_time):
        raise AuthorizationError(
            f"the authorisation's deadline {authorization.deadline} is before the charge's end "
            f"time {end_time}",
            "authorization_expired",
        )
    return digest


def transfer_payment(
    transfer: Transfer, settlement: SettlementDomain | None, *, station_id: bytes
) -> tuple[bytes, dict[str, Any] | None]:
    """The ``paymentAuthorization`` of the record of ``transfer`` and the signed authorisation
    (JSON) that goes with it (None for a charge paid otherwise), or AuthorizationError.

    A transfer with an authorisation is checked with :func:`check_authorization`; a non-zero
    ``payment_authorization`` must be that authorisation's digest, and is refused without one
    (``authorization_missing``).
    """
    if transfer.authorization is None:
        if transfer.payment_authorization != ZERO_BYTES32:
            raise AuthorizationError(
                "a non-zero paymentAuthorization needs the user's signed authorisation with it "
                "(the backend checks the authorisation itself, not only its digest)",
                "authorization_missing",
            )
        return ZERO_BYTES32, None
    if settlement is None:
        raise AuthorizationError(
            "recording a charge paid with points needs the Settlement contract's domain "
            "(the deployment file)",
            "authorization_domain",
        )
    digest = check_authorization(
        transfer.authorization,
        settlement,
        station_id=station_id,
        user=transfer.user,
        direction=transfer.direction,
        end_time=transfer.end_time,
    )
    if transfer.payment_authorization not in (ZERO_BYTES32, digest):
        raise AuthorizationError(
            f"paymentAuthorization 0x{transfer.payment_authorization.hex()} is not the digest "
            f"0x{digest.hex()} of the authorisation given",
            "authorization_mismatch",
        )
    return digest, transfer.authorization.to_json()


# ---- the station -------------------------------------------------------------------------------


class Station:
    """A station's store and key together; records transfers write-ahead.

    Construction re-signs any ``reserved`` rows (:meth:`recover`) unless ``recover=False``.
    ``expected_address`` (the address registered for the station) makes a key mix-up fail at
    once instead of producing records the backend rejects. ``settlement`` (the Settlement
    contract's EIP-712 domain) is needed only to record charges paid with points.
    """

    def __init__(
        self,
        store: StationStore,
        signer: Signer,
        *,
        expected_address: str | None = None,
        recover: bool = True,
        settlement: SettlementDomain | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        state = store.state()
        self.station_id = state.station_id
        self.domain: Domain = state.domain
        if settlement is not None and settlement.chain_id != self.domain.chain_id:
            raise StationError(
                f"the Settlement domain is on chain {settlement.chain_id}, this station signs "
                f"for chain {self.domain.chain_id}",
                "deployment_mismatch",
            )
        self.settlement = settlement
        self.address = signer.address
        if expected_address is not None and expected_address.lower() != self.address.lower():
            raise StationError(
                f"the key in use has address {self.address}, but this station's key is "
                f"{expected_address}",
                "key_mismatch",
            )
        self.recovered: list[StoredRecord] = self.recover() if recover else []

    def recover(self) -> list[StoredRecord]:
        """Signs every ``reserved`` row (left by a crash) with the content stored under it."""
        recovered = []
        for row in self.store.reserved():
            try:
                record = EnergyTransfer.from_json(row.record)
            except RecordValidationError as exc:
                raise StoreError(
                    f"reserved sequence {row.sequence} holds an invalid record: {exc}", "corrupt"
                ) from exc
            if record.sequence != row.sequence or record.digest(self.domain) != row.digest:
                raise StoreError(
                    f"reserved sequence {row.sequence}: stored content does not match its "
                    "stored digest; refusing to sign it",
                    "corrupt",
                )
            recovered.append(self.store.attach_signature(row.sequence, self._sign(row.digest)))
        return recovered

    def record(self, transfer: Transfer) -> StoredRecord:
        """Builds, reserves, signs and queues one record; returns the queued row.

        If signing fails, the record stays ``reserved`` (its sequence is spent and its content
        fixed) and is signed by the next :meth:`recover`. A transfer with a payment
        authorisation is checked first (:func:`check_authorization`, AuthorizationError);
        nothing is stored when it is refused.
        """
        payment_authorization, payment = transfer_payment(
            transfer, self.settlement, station_id=self.station_id
        )

        def build(sequence: int, state: StationState) -> EnergyTransfer:
            before = (
                state.meter_wh(transfer.direction)
                if transfer.meter_before_wh is None
                else transfer.meter_before_wh
            )
            return EnergyTransfer(
                station_id=state.station_id,
                sequence=sequence,
                user=transfer.user,
                direction=transfer.direction,
                energy_wh=transfer.energy_wh,
                meter_before_wh=before,
                meter_after_wh=before + transfer.energy_wh,
                start_time=transfer.start_time,
                end_time=transfer.end_time,
                payment_authorization=payment_authorization,
            )

        reserved = self.store.reserve(build, payment)
        try:
            signature = self._sign(reserved.digest)
        except Exception as exc:
            raise SigningFailedError(reserved.sequence, exc) from exc
        return self.store.attach_signature(reserved.sequence, signature)

    def _sign(self, digest: bytes) -> bytes:
        signature = self.signer.sign_digest(digest)
        # A signature that does not recover to the station's key would be rejected by the
        # backend forever; keep the row reserved instead of queueing it.
        try:
            signer = recover_signer(digest, signature)
        except SignatureError as exc:
            raise StationError(
                f"the key produced an unusable signature: {exc}", "bad_signature"
            ) from exc
        if signer != self.address:
            raise StationError(
                f"the signature recovers to {signer}, not to the key's address {self.address}",
                "bad_signature",
            )
        return signature


# ---- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pkcs11KeyConfig:
    """A key in a PKCS#11 token. ``softhsm_conf`` is set when the token is a SoftHSM2 directory
    that ``init`` created; it is exported as ``SOFTHSM2_CONF`` before the module is loaded."""

    module: str
    token_label: str
    key_label: str
    softhsm_conf: str | None = None
    kind: Literal["pkcs11"] = "pkcs11"


@dataclass(frozen=True, slots=True)
class DevKeyConfig:
    """A development key file (relative paths are relative to the station directory)."""

    path: str
    kind: Literal["devkey"] = "devkey"


KeyConfig = Pkcs11KeyConfig | DevKeyConfig


def _key_from_json(data: Any) -> KeyConfig:
    if not isinstance(data, Mapping):
        raise StationError("station.json: signer must be an object", "config")
    kind = data.get("kind")
    try:
        if kind == "pkcs11":
            conf = data.get("softhsm_conf")
            return Pkcs11KeyConfig(
                module=str(data["module"]),
                token_label=str(data["token_label"]),
                key_label=str(data["key_label"]),
                softhsm_conf=None if conf is None else str(conf),
            )
        if kind == "devkey":
            return DevKeyConfig(path=str(data["path"]))
    except KeyError as exc:
        raise StationError(f"station.json: signer lacks {exc}", "config") from None
    raise StationError(f"station.json: unknown signer kind {kind!r}", "config")


@dataclass(frozen=True, slots=True)
class StationConfig:
    """``station.json`` of a station directory."""

    station_id: bytes
    address: str
    chain_id: int
    registry: str  # EIP-55
    key: KeyConfig
    created_at: str

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, parse_address(self.registry))

    def to_json(self) -> dict[str, Any]:
        key: dict[str, Any]
        if isinstance(self.key, Pkcs11KeyConfig):
            key = {
                "kind": "pkcs11",
                "module": self.key.module,
                "token_label": self.key.token_label,
                "key_label": self.key.key_label,
                "softhsm_conf": self.key.softhsm_conf,
            }
        else:
            key = {"kind": "devkey", "path": self.key.path}
        return {
            "schema_version": CONFIG_SCHEMA_VERSION,
            "station_id": "0x" + self.station_id.hex(),
            "address": self.address,
            "chain_id": self.chain_id,
            "registry": self.registry,
            "signer": key,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> StationConfig:
        if not isinstance(data, Mapping):
            raise StationError("station.json does not hold an object", "config")
        if data.get("schema_version") != CONFIG_SCHEMA_VERSION:
            raise StationError(
                f"station.json has schema version {data.get('schema_version')!r}; this version "
                f"reads {CONFIG_SCHEMA_VERSION}",
                "config",
            )
        try:
            config = cls(
                station_id=parse_bytes32(data["station_id"], "station_id"),
                address=to_checksum_address(parse_address(data["address"])),
                chain_id=int(data["chain_id"]),
                registry=to_checksum_address(parse_address(data["registry"])),
                key=_key_from_json(data["signer"]),
                created_at=str(data["created_at"]),
            )
            config.domain  # noqa: B018 - validates chain id and registry together
        except KeyError as exc:
            raise StationError(f"station.json lacks {exc}", "config") from None
        except (TypeError, ValueError) as exc:
            raise StationError(f"station.json is malformed: {exc}", "config") from None
        return config

    def save(self, directory: Path) -> Path:
        """Writes ``station.json`` atomically and durably (it holds no secret)."""
        return write_atomically(
            directory / CONFIG_FILE, json.dumps(self.to_json(), indent=2) + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> StationConfig:
        path = directory / CONFIG_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StationError(
                f"{directory} is not a station directory (no {CONFIG_FILE}); run "
                "`gridpoints-station init` first",
                "not_initialised",
            ) from None
        except OSError as exc:
            raise StationError(f"cannot read {path}: {exc.strerror}", "config") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StationError(f"{path} is not JSON: {exc}", "config") from None
        return cls.from_json(data)


# ---- opening keys ------------------------------------------------------------------------------


def _activate_softhsm(module: str, conf: str) -> None:
    """Points SoftHSM2 at ``conf`` before the module is loaded (it reads it only then)."""
    from gridpoints_signers.pkcs11 import Pkcs11Module

    loaded = Pkcs11Module.loaded(module)
    if loaded is None:
        os.environ["SOFTHSM2_CONF"] = conf
    elif loaded.softhsm_conf != conf:
        raise StationError(
            f"SoftHSM2 is already loaded in this process with SOFTHSM2_CONF="
            f"{loaded.softhsm_conf}, not {conf}",
            "signer_error",
        )


def open_signer(config: StationConfig, directory: Path, *, pin: str | None = None) -> Signer:
    """The station's key. ``pin=None`` reads it from the environment (``resolve_pin``); a dev
    key's password comes from ``GRIDPOINTS_DEVKEY_PASSWORD``."""
    key = config.key
    signer: Signer
    if isinstance(key, Pkcs11KeyConfig):
        from gridpoints_signers.pkcs11 import Pkcs11Signer

        if key.softhsm_conf is not None:
            _activate_softhsm(key.module, key.softhsm_conf)
        signer = Pkcs11Signer.open(
            key.key_label, token_label=key.token_label, pin=pin, module=key.module
        )
    else:
        from gridpoints_signers.devkey import DevKeySigner

        signer = DevKeySigner.open(directory / key.path)
    if signer.address != config.address:
        raise StationError(
            f"the key found has address {signer.address}, but {CONFIG_FILE} records "
            f"{config.address}; the token or key file was replaced",
            "key_mismatch",
        )
    return signer


def open_station(
    directory: Path,
    *,
    signer: Signer | None = None,
    pin: str | None = None,
    settlement: SettlementDomain | None = None,
) -> Station:
    """The station of ``directory`` with its key opened, after crash recovery. ``settlement``
    is the Settlement contract's domain, needed to record charges paid with points."""
    config = StationConfig.load(directory)
    store = StationStore(directory / STORE_FILE)
    try:
        store_state = store.state()
        if store_state.station_id != config.station_id or store_state.domain != config.domain:
            raise StationError(
                f"{STORE_FILE} and {CONFIG_FILE} in {directory} describe different stations",
                "config",
            )
        key = signer if signer is not None else open_signer(config, directory, pin=pin)
        return Station(store, key, expected_address=config.address, settlement=settlement)
    except BaseException:
        store.close()
        raise


def _initialised_store_id(path: Path, domain: Domain) -> bytes | None:
    if not path.exists():
        return None
    with StationStore(path) as store:
        if not store.is_initialised():
            return None
        state = store.state()
    if state.domain != domain:
        raise StationError(
            f"{path} belongs to chain {state.chain_id} registry {state.registry}",
            "already_initialised",
        )
    return state.station_id


@dataclass(frozen=True, slots=True)
class InitResult:
    config: StationConfig
    signer: Signer
    created_station: bool  # station.json and the store were written now
    created_key: bool  # the key was generated now (False: an existing key was opened)
    created_token: bool  # a SoftHSM2 token was initialised now


def init_station(
    directory: Path,
    *,
    chain_id: int,
    registry: str,
    key: KeyConfig,
    station_id: bytes | None = None,
    softhsm_dir: Path | None = None,
    pin: str | None = None,
    meter_charge_wh: int = 0,
    meter_discharge_wh: int = 0,
) -> InitResult:
    """Creates (or re-opens) a station directory: key, ``station.json`` and store.

    Idempotent: on an initialised directory it opens the key and checks that the arguments
    describe the same station (a different station id or deployment is an error). A PKCS#11 key
    is opened if the token holds one under the label, else generated inside the token. With
    ``softhsm_dir`` a SoftHSM2 token is created there first (SO PIN from
    ``GRIDPOINTS_SOFTHSM_SO_PIN``).
    """
    import secrets

    domain = Domain(chain_id, parse_address(registry))
    directory.mkdir(parents=True, exist_ok=True)
    existing: StationConfig | None = None
    if (directory / CONFIG_FILE).exists():
        existing = StationConfig.load(directory)
        if existing.domain != domain:
            raise StationError(
                f"{directory} is initialised for chain {existing.chain_id} registry "
                f"{existing.registry}, not chain {chain_id} registry {registry}",
                "already_initialised",
            )
        if station_id is not None and station_id != existing.station_id:
            raise StationError(
                f"{directory} is initialised as station 0x{existing.station_id.hex()}",
                "already_initialised",
            )
        if existing.key.kind != key.kind:
            raise StationError(
                f"{directory} uses a {existing.key.kind} key, not a {key.kind} key",
                "already_initialised",
            )
        key = existing.key
    if existing is not None:
        chosen_id = existing.station_id
    else:
        # An init interrupted after creating the store but before writing station.json left a
        # store behind: adopt its station id rather than fail on it.
        adopted = _initialised_store_id(directory / STORE_FILE, domain)
        if adopted is not None and station_id is not None and adopted != station_id:
            raise StationError(
                f"{directory / STORE_FILE} belongs to station 0x{adopted.hex()}",
                "already_initialised",
            )
        chosen_id = adopted or station_id or secrets.token_bytes(32)
    if chosen_id == ZERO_BYTES32:
        raise StationError("the station id must not be zero", "invalid_argument")

    created_token = False
    created_key = False
    signer: Signer
    if isinstance(key, Pkcs11KeyConfig):
        from gridpoints_signers.base import KeyNotFoundError
        from gridpoints_signers.pkcs11 import Pkcs11Signer, resolve_pin
        from gridpoints_signers.softhsm import SoftHsmToken

        user_pin = pin if pin is not None else resolve_pin()
        if softhsm_dir is not None and existing is None:
            so_pin = os.environ.get(SOFTHSM_SO_PIN_ENV)
            if not so_pin:
                raise StationError(
                    f"creating a SoftHSM2 token needs its security-officer PIN in "
                    f"{SOFTHSM_SO_PIN_ENV}",
                    "pin_unavailable",
                )
            token = SoftHsmToken(
                softhsm_dir.resolve(), key.token_label, so_pin, user_pin, key.module
            )
            created_token = token.ensure()
            key = Pkcs11KeyConfig(
                module=key.module,
                token_label=key.token_label,
                key_label=key.key_label,
                softhsm_conf=str(token.conf_path),
            )
        if key.softhsm_conf is not None:
            _activate_softhsm(key.module, key.softhsm_conf)
        try:
            signer = Pkcs11Signer.open(
                key.key_label, token_label=key.token_label, pin=user_pin, module=key.module
            )
        except KeyNotFoundError:
            if existing is not None:
                raise StationError(
                    f"key {key.key_label!r} of this station is gone from token {key.token_label!r}",
                    "key_mismatch",
                ) from None
            signer = Pkcs11Signer.generate(
                key.key_label, token_label=key.token_label, pin=user_pin, module=key.module
            )
            created_key = True
    else:
        from gridpoints_signers.devkey import DevKeySigner

        path = directory / key.path
        if path.exists():
            signer = DevKeySigner.open(path)
        else:
            if existing is not None:
                raise StationError(f"development key {path} is gone", "key_mismatch")
            signer = DevKeySigner.create(path)
            created_key = True

    if existing is not None:
        if signer.address != existing.address:
            raise StationError(
                f"the key found has address {signer.address}, but {CONFIG_FILE} records "
                f"{existing.address}",
                "key_mismatch",
            )
        config = existing
    else:
        config = StationConfig(
            station_id=chosen_id,
            address=signer.address,
            chain_id=chain_id,
            registry=to_checksum_address(domain.verifying_contract),
            key=key,
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
    with StationStore(directory / STORE_FILE) as store:
        created_store = store.initialise(
            config.station_id,
            config.chain_id,
            config.registry,
            meter_charge_wh=meter_charge_wh,
            meter_discharge_wh=meter_discharge_wh,
        )
    if existing is None:
        # Written last: a directory with station.json is a complete station.
        config.save(directory)
    return InitResult(
        config=config,
        signer=signer,
        created_station=existing is None or created_store,
        created_key=created_key,
        created_token=created_token,
    )


# ---- inclusion proofs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnchoredEpoch:
    """An epoch as the Settlement contract holds it: read from the chain, not from the backend."""

    epoch_id: int
    records_root: bytes
    record_count: int
    commit_tx_hash: str | None  # the transaction of its EpochCommitted event (None: no such log)
    commit_block: int | None


class ChainAnchors:
    """The Settlement contract's view of epochs, through a ``gridpoints_chain`` handle.

    A committed epoch never changes (the contract refuses a second commit), so each one is read
    once per instance; an epoch not committed yet is asked again every time.
    """

    def __init__(self, chain: GridPointsChain) -> None:
        self.chain = chain
        self._epochs: dict[int, AnchoredEpoch] = {}

    def epoch(self, epoch_id: int) -> AnchoredEpoch | None:
        """The committed epoch ``epoch_id``, or None while the contract does not have it."""
        if epoch_id in self._epochs:
            return self._epochs[epoch_id]
        from gridpoints_chain.errors import ContractRevertError

        settlement = self.chain.settlement
        try:
            raw = self.chain.call(settlement.functions.getEpoch(epoch_id))
        except ContractRevertError as exc:
            if exc.error_name == "UnknownEpoch":
                return None
            raise
        tx_hash, block = self._commit_transaction(epoch_id)
        epoch = AnchoredEpoch(
            epoch_id=epoch_id,
            records_root=bytes(raw[0]),
            record_count=int(raw[3]),
            commit_tx_hash=tx_hash,
            commit_block=block,
        )
        self._epochs[epoch_id] = epoch
        return epoch

    def _commit_transaction(self, epoch_id: int) -> tuple[str | None, int | None]:
        from hexbytes import HexBytes

        settlement = self.chain.settlement
        topic = bytes(HexBytes(settlement.events.EpochCommitted().topic))
        logs = self.chain.w3.eth.get_logs(
            {
                "address": settlement.address,
                "fromBlock": self.chain.deployment.deployment_block,
                "toBlock": "latest",
                "topics": ["0x" + topic.hex(), "0x" + epoch_id.to_bytes(32, "big").hex()],
            }
        )
        if not logs:
            return None, None
        log = logs[-1]
        return "0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"])

    def verify_record(
        self, epoch_id: int, digest: bytes, signature: bytes, index: int, path: list[bytes]
    ) -> bool:
        """``Settlement.verifyRecord``: the contract's own inclusion check."""
        call = self.chain.settlement.functions.verifyRecord(
            epoch_id, digest, signature, index, path
        )
        return bool(self.chain.call(call))


class NotAnchoredError(StationError):
    """The record has no proof on chain yet: ``not_sealed`` (the backend has not sealed its
    epoch) or ``not_committed`` (sealed, but the Settlement contract does not have the epoch
    yet). Asking again later is the remedy."""


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """The verdict on one record's inclusion proof, and what it rests on.

    ``verified`` means: the record and signature this station holds hash (under this station's
    EIP-712 domain) to a leaf that the audit path places at ``leaf_index`` in the records root
    the Settlement contract holds for ``epoch_id`` — checked in Python with the chain's root and
    record count, and by the contract's ``verifyRecord`` — and the backend's copy of the record
    is the station's. The backend's root, tree size, leaf hash and commit transaction are
    compared too; a disagreement there is reported in ``problems``.
    """

    sequence: int
    epoch_id: int
    leaf_index: int
    digest: bytes  # recomputed from the station's stored record
    leaf_hash: bytes  # recomputed from that digest and the station's stored signature
    chain: AnchoredEpoch
    backend_root: bytes
    backend_tree_size: int
    backend_commit_tx: str | None
    epoch_state: str
    differences: tuple[str, ...]  # where the backend's copy of the record differs
    merkle_verified: bool
    contract_verified: bool
    problems: tuple[str, ...]

    @property
    def verified(self) -> bool:
        return self.merkle_verified and self.contract_verified and not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "verified": self.verified,
            "epochId": self.epoch_id,
            "leafIndex": self.leaf_index,
            "digest": "0x" + self.digest.hex(),
            "leafHash": "0x" + self.leaf_hash.hex(),
            "onChain": {
                "recordsRoot": "0x" + self.chain.records_root.hex(),
                "recordCount": self.chain.record_count,
                "commitTxHash": self.chain.commit_tx_hash,
                "commitBlock": self.chain.commit_block,
            },
            "backend": {
                "recordsRoot": "0x" + self.backend_root.hex(),
                "treeSize": self.backend_tree_size,
                "commitTxHash": self.backend_commit_tx,
                "epochState": self.epoch_state,
            },
            "recordMatches": not self.differences,
            "differences": list(self.differences),
            "merkleVerified": self.merkle_verified,
            "contractVerified": self.contract_verified,
            "problems": list(self.problems),
        }


def check_proof(
    row: StoredRecord, domain: Domain, answer: ProofAnswer, anchors: ChainAnchors
) -> ProofCheck:
    """Checks the backend's proof of ``row`` (one of this station's records) against the chain.

    The leaf is recomputed from the station's own copy of the record and signature; the root and
    tree size are the Settlement contract's; the backend contributes only the epoch id, the leaf
    index and the audit path, which either lead to the chain's root or do not. Raises
    NotAnchoredError ``not_committed`` while the contract does not have the epoch, StationError
    ``not_signed`` for a row without a signature, StoreError ``corrupt`` for a stored record
    that no longer parses.
    """
    if row.signature is None:
        raise StationError(
            f"record #{row.sequence} is not signed yet, so it has no leaf", "not_signed"
        )
    try:
        record = EnergyTransfer.from_json(row.record)
    except RecordValidationError as exc:
        raise StoreError(f"stored record #{row.sequence} is invalid: {exc}", "corrupt") from exc
    digest = record.digest(domain)
    signature = row.signature
    problems: list[str] = []
    if digest != row.digest:
        problems.append(
            f"the stored digest 0x{row.digest.hex()} is not the stored record's digest "
            f"0x{digest.hex()} (the station's file was changed)"
        )
    differences = _record_differences(record, signature, digest, row.payment, answer)
    epoch = anchors.epoch(answer.epoch_id)
    if epoch is None:
        raise NotAnchoredError(
            f"the backend places record #{row.sequence} in epoch {answer.epoch_id}, which the "
            "Settlement contract does not have yet (sealed, not committed on chain)",
            "not_committed",
        )
    leaf = merkle.record_leaf_hash(digest, signature)
    path = list(answer.path)
    merkle_ok = merkle.verify_inclusion(
        leaf, answer.leaf_index, epoch.record_count, path, epoch.records_root
    )
    contract_ok = answer.leaf_index <= 2**256 - 1 and anchors.verify_record(
        answer.epoch_id, digest, signature, answer.leaf_index, path
    )
    if answer.records_root != epoch.records_root:
        problems.append(
            f"the backend's root 0x{answer.records_root.hex()} is not the chain's "
            f"0x{epoch.records_root.hex()}"
        )
    if answer.tree_size != epoch.record_count:
        problems.append(
            f"the backend's tree size {answer.tree_size} is not the chain's record count "
            f"{epoch.record_count}"
        )
    if answer.leaf_hash != leaf:
        problems.append(
            f"the backend's leaf 0x{answer.leaf_hash.hex()} is not the station's 0x{leaf.hex()}"
        )
    if epoch.commit_tx_hash is None:
        problems.append(f"the node has no EpochCommitted log of epoch {answer.epoch_id}")
    elif answer.commit_tx_hash is not None and answer.commit_tx_hash != epoch.commit_tx_hash:
        problems.append(
            f"the backend's commit transaction {answer.commit_tx_hash} is not the chain's "
            f"{epoch.commit_tx_hash}"
        )
    return ProofCheck(
        sequence=row.sequence,
        epoch_id=answer.epoch_id,
        leaf_index=answer.leaf_index,
        digest=digest,
        leaf_hash=leaf,
        chain=epoch,
        backend_root=answer.records_root,
        backend_tree_size=answer.tree_size,
        backend_commit_tx=answer.commit_tx_hash,
        epoch_state=answer.epoch_state,
        differences=tuple(differences),
        merkle_verified=merkle_ok,
        contract_verified=contract_ok,
        problems=tuple(problems),
    )


def _record_differences(
    record: EnergyTransfer,
    signature: bytes,
    digest: bytes,
    payment: dict[str, Any] | None,
    answer: ProofAnswer,
) -> list[str]:
    """How the backend's copy of the record differs from the station's (empty: it does not)."""
    differences: list[str] = []
    if (answer.station_id, answer.sequence) != (record.station_id, record.sequence):
        differences.append(
            f"the proof is for station 0x{answer.station_id.hex()} record {answer.sequence}"
        )
    try:
        theirs = EnergyTransfer.from_json(answer.record).to_json()
    except RecordValidationError as exc:
        differences.append(f"the backend's record is not a valid record: {exc}")
    else:
        ours = record.to_json()
        for name, value in ours.items():
            if theirs.get(name) != value:
                differences.append(f"{name}: station {value!r}, backend {theirs.get(name)!r}")
    if answer.signature != signature:
        differences.append(
            f"signature: station 0x{signature.hex()[:16]}..., "
            f"backend 0x{answer.signature.hex()[:16]}..."
        )
    if answer.digest != digest:
        differences.append(f"digest: station 0x{digest.hex()}, backend 0x{answer.digest.hex()}")
    # The authorisation is not in the leaf (the record commits to its digest), but it is what
    # an auditor reproduces a burn from: the backend must publish the one the user signed.
    if _authorization_of(payment) != _authorization_of(answer.payment):
        differences.append(
            "payment: the backend publishes "
            + ("no payment authorisation" if answer.payment is None else "another authorisation")
            + (" than the station's" if payment is not None else " for a record paid otherwise")
        )
    return differences


def _authorization_of(payment: dict[str, Any] | None) -> SignedAuthorization | str | None:
    if payment is None:
        return None
    try:
        return SignedAuthorization.from_json(payment)
    except RecordValidationError:
        return "malformed"


__all__ = [
    "CONFIG_FILE",
    "STORE_FILE",
    "AnchoredEpoch",
    "AuthorizationError",
    "ChainAnchors",
    "DevKeyConfig",
    "InitResult",
    "KeyConfig",
    "NotAnchoredError",
    "Pkcs11KeyConfig",
    "ProofCheck",
    "SigningFailedError",
    "Station",
    "StationConfig",
    "StationError",
    "Transfer",
    "check_authorization",
    "check_proof",
    "init_station",
    "open_signer",
    "open_station",
    "parse_bytes32",
    "parse_direction",
    "parse_time",
    "transfer_payment",
]
