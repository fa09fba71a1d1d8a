"""A station end to end: its configuration, its key, its store, and recording a transfer.

:class:`Station` is the one object a station's software drives. ``Station.record(transfer)``
turns a measured :class:`Transfer` into a signed, queued ``EnergyTransfer``:

1. *reserve* in the store (write-ahead): the next sequence and the meter register come from the
   store inside the reserving transaction, the record is built from them
   (:class:`~station_signer.record.EnergyTransfer` validates it) and stored with its digest;
2. *sign* the stored digest with the station's :class:`~station_signer.signers.Signer`, and check
   that the signature recovers to the station's address before it is kept;
3. *attach* the signature, which queues the record for :mod:`station_signer.sync`.

Opening a station first re-signs every ``reserved`` row left by a crash between 1 and 3
(:meth:`Station.recover`), after checking that the stored content still hashes to the stored
digest. The record format lives in :mod:`station_signer.record` only; this module never
spells out its fields beyond passing them to the constructor.

:class:`StationConfig` is the station directory's ``station.json``: station id, deployment
(chain id and StationRegistry), and where the key is (PKCS#11 module, token and key labels, or a
development key file). It holds no secret: PINs and passwords come from the environment or a
file when the key is opened (see :func:`open_signer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from station_signer.record import (
    UINT64_MAX,
    ZERO_BYTES32,
    Direction,
    Domain,
    EnergyTransfer,
    FieldError,
    RecordValidationError,
    SignatureError,
    parse_address,
    recover_signer,
    to_checksum_address,
)
from station_signer.signers.base import Signer
from station_signer.store import StationState, StationStore, StoredRecord, StoreError

CONFIG_FILE: Final = "station.json"
STORE_FILE: Final = "station.sqlite"
DEV_KEY_FILE: Final = "dev-key.json"
CONFIG_SCHEMA_VERSION: Final = 1
DEFAULT_TOKEN_LABEL: Final = "gridpoints-station"
DEFAULT_KEY_LABEL: Final = "gridpoints-station"
SOFTHSM_SO_PIN_ENV: Final = "GRIDPOINTS_SOFTHSM_SO_PIN"


class StationError(Exception):
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
    """

    direction: Direction
    user: bytes
    energy_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes = ZERO_BYTES32
    meter_before_wh: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Transfer:
        """Parses ``{"direction", "user", "energyWh", "startTime", "endTime"}`` plus optional
        ``paymentAuthorization`` and ``meterBeforeWh``; unknown fields are refused and every
        problem is reported (RecordValidationError naming the fields)."""
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
        return data


# ---- the station -------------------------------------------------------------------------------


class Station:
    """A station's store and key together; records transfers write-ahead.

    Construction re-signs any ``reserved`` rows (:meth:`recover`) unless ``recover=False``.
    ``expected_address`` (the address registered for the station) makes a key mix-up fail at
    once instead of producing records the backend rejects.
    """

    def __init__(
        self,
        store: StationStore,
        signer: Signer,
        *,
        expected_address: str | None = None,
        recover: bool = True,
    ) -> None:
        self.store = store
        self.signer = signer
        state = store.state()
        self.station_id = state.station_id
        self.domain: Domain = state.domain
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
        fixed) and is signed by the next :meth:`recover`.
        """

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
                payment_authorization=transfer.payment_authorization,
            )

        reserved = self.store.reserve(build)
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
        """Writes ``station.json`` atomically (temporary file, fsync, rename)."""
        target = directory / CONFIG_FILE
        fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.to_json(), indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return target

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
    from station_signer.signers.pkcs11 import Pkcs11Module

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
        from station_signer.signers.pkcs11 import Pkcs11Signer

        if key.softhsm_conf is not None:
            _activate_softhsm(key.module, key.softhsm_conf)
        signer = Pkcs11Signer.open(
            key.key_label, token_label=key.token_label, pin=pin, module=key.module
        )
    else:
        from station_signer.signers.devkey import DevKeySigner

        signer = DevKeySigner.open(directory / key.path)
    if signer.address != config.address:
        raise StationError(
            f"the key found has address {signer.address}, but {CONFIG_FILE} records "
            f"{config.address}; the token or key file was replaced",
            "key_mismatch",
        )
    return signer


def open_station(
    directory: Path, *, signer: Signer | None = None, pin: str | None = None
) -> Station:
    """The station of ``directory`` with its key opened, after crash recovery."""
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
        return Station(store, key, expected_address=config.address)
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
        from station_signer.signers.base import KeyNotFoundError
        from station_signer.signers.pkcs11 import Pkcs11Signer, resolve_pin
        from station_signer.signers.softhsm import SoftHsmToken

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
        from station_signer.signers.devkey import DevKeySigner

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


__all__ = [
    "CONFIG_FILE",
    "STORE_FILE",
    "DevKeyConfig",
    "InitResult",
    "KeyConfig",
    "Pkcs11KeyConfig",
    "SigningFailedError",
    "Station",
    "StationConfig",
    "StationError",
    "Transfer",
    "init_station",
    "open_signer",
    "open_station",
    "parse_bytes32",
    "parse_direction",
    "parse_time",
]
