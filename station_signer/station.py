"""A station end to end: its configuration, its key, its store, and recording a transfer.

:class:`Station` is the one object a station's software drives. ``Station.record(transfer)``
turns a measured :class:`Transfer` into a signed, queued ``EnergyTransfer``:

1. *reserve* in the store (write-ahead): the next sequence and the meter register come from the
   store inside the reserving transaction, the record is built from them
   (:class:`~gridpoints_protocol.record.EnergyTransfer` validates it) and stored with its digest;
2. *sign* the stored digest with the station's :class:`~gridpoints_signers.Signer`, and check
   that the signature recovers to the station's address before it is kept;
3. *attach* the signature, which queues the record for :mod:`station_signer.sync`.

A charge the user pays with points carries the user's signed payment authorisation, checked
by :mod:`station_signer.payments` before the record commits to its digest; what was measured is
a :class:`~station_signer.transfer.Transfer`; ``station.json`` is
:class:`~station_signer.config.StationConfig`; the station checks the backend's inclusion proofs
with :mod:`station_signer.proofs`.

Opening a station first re-signs every ``reserved`` row left by a crash between 1 and 3
(:meth:`Station.recover`), after checking that the stored content still hashes to the stored
digest. The record format lives in :mod:`gridpoints_protocol.record` only; this module never
spells out its fields beyond passing them to the constructor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gridpoints_protocol.authorization import SettlementDomain
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import (
    ZERO_BYTES32,
    Domain,
    EnergyTransfer,
    SignatureError,
    recover_signer,
)
from gridpoints_signers.base import Signer
from station_signer.config import (
    CONFIG_FILE,
    SOFTHSM_SO_PIN_ENV,
    STORE_FILE,
    KeyConfig,
    Pkcs11KeyConfig,
    StationConfig,
)
from station_signer.errors import SigningFailedError, StationError
from station_signer.payments import transfer_payment
from station_signer.store import (
    Evidence,
    StationState,
    StationStore,
    StoredRecord,
    StoreError,
    fresh_salt,
)
from station_signer.transfer import Transfer

if TYPE_CHECKING:
    pass

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

    def record(self, transfer: Transfer, evidence: Evidence | None = None) -> StoredRecord:
        """Builds, reserves, signs and queues one record; returns the queued row.

        If signing fails, the record stays ``reserved`` (its sequence is spent and its content
        fixed) and is signed by the next :meth:`recover`. A transfer with a payment
        authorisation is checked first (:func:`check_authorization`, AuthorizationError);
        nothing is stored when it is refused. ``evidence`` (what the transfer was measured
        from) is stored with the record in the reserving transaction; a source that already
        has a record is refused there (StoreError ``source_recorded``).
        """
        payment_authorization, payment = transfer_payment(
            transfer, self.settlement, station_id=self.station_id
        )
        # A fresh salt per record: the record commits to the user without naming them, and two
        # records of one user are unlinkable (gridpoints_protocol.commitment).
        opening = UserOpening(transfer.user, fresh_salt())

        def build(sequence: int, state: StationState) -> EnergyTransfer:
            before = (
                state.meter_wh(transfer.direction)
                if transfer.meter_before_wh is None
                else transfer.meter_before_wh
            )
            return EnergyTransfer(
                station_id=state.station_id,
                sequence=sequence,
                user_commitment=opening.commitment,
                direction=transfer.direction,
                energy_wh=transfer.energy_wh,
                meter_before_wh=before,
                meter_after_wh=before + transfer.energy_wh,
                start_time=transfer.start_time,
                end_time=transfer.end_time,
                payment_authorization=payment_authorization,
                meter_evidence=transfer.meter_evidence,
            )

        reserved = self.store.reserve(build, payment, evidence, opening)
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
