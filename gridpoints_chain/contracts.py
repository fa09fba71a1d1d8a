"""Typed handles on a GridPoints deployment: contract calls, packed entries and decoded events.

`GridPointsChain` wraps web3 contract objects for the token, the registry and the settlement of
one `Deployment`. Its transactions go through the pipeline of `gridpoints_chain.transactions`
(`TxSender`: one nonce manager, one gas margin, signed locally so that a worker can send without
an unlocked node account) and its reverts come back decoded (`gridpoints_chain.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import LogReceipt, TxReceipt

from gridpoints_chain.artifacts import CONTRACT_NAMES, ContractArtifact, load_all
from gridpoints_chain.deployment import Deployment
from gridpoints_chain.errors import ChainError, ErrorDecoder
from gridpoints_chain.meter_abi import Meter, MeterKeyPeriod, p256_key, p256_signature
from gridpoints_chain.transactions import TransactionAccount, TxSender
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
)
from gridpoints_protocol.keys import (
    KeyPeriod,
    LogPosition,
    StationEvent,
    StationHistory,
    StationKeyRotated,
    StationRegistered,
    StationRevoked,
    is_valid_address,
    station_id_bytes,
)

MAX_ENTRY_AMOUNT = 2**96 - 1
_ADDRESS_BITS = 160


def role_id(name: str) -> bytes:
    """The bytes32 id of AccessControl role `name`: keccak256 of the name, as every GridPoints
    contract declares them, except DEFAULT_ADMIN_ROLE, which is zero."""
    if name == "DEFAULT_ADMIN_ROLE":
        return b"\x00" * 32
    return keccak(text=name)


# ---- packed settlement entries --------------------------------------------------------------


class ChunkKind(IntEnum):
    """Settlement.ChunkKind: what a chunk does with its entries (DEBIT: a payment chunk)."""

    CREDIT = 0
    DEBIT = 1


def _address_int(account: str | bytes) -> int:
    if isinstance(account, bytes):
        if len(account) != 20:
            raise ValueError(f"an account is 20 bytes, got {len(account)}")
        raw = account
    else:
        if not is_valid_address(account):
            raise ValueError(f"not an address (or a wrong EIP-55 checksum): {account!r}")
        raw = bytes.fromhex(account[2:])
    value = int.from_bytes(raw, "big")
    if value == 0:
        raise ValueError("the zero address cannot hold points")
    return value


def pack_entry(account: str | bytes, amount: int) -> bytes:
    """One settlement entry as the contracts read it: ``amount << 160 | account``, 32 bytes.

    `amount` must be an int in ``[1, 2**96)``: the 96 high bits are all the room there is, and a
    zero entry would only cost gas (and likely hide a bug upstream).
    """
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"amount must be an int, not {type(amount).__name__}")
    if not 0 < amount <= MAX_ENTRY_AMOUNT:
        raise ValueError(f"amount must be in [1, 2**96), got {amount}")
    return ((amount << _ADDRESS_BITS) | _address_int(account)).to_bytes(32, "big")


def unpack_entry(entry: bytes) -> tuple[ChecksumAddress, int]:
    """Inverse of `pack_entry`: ``(account, amount)``."""
    if len(entry) != 32:
        raise ValueError(f"an entry is 32 bytes, got {len(entry)}")
    value = int.from_bytes(entry, "big")
    account = (value & ((1 << _ADDRESS_BITS) - 1)).to_bytes(20, "big")
    return to_checksum_address(account), value >> _ADDRESS_BITS


def pack_entries(entries: Iterable[tuple[str | bytes, int]]) -> list[bytes]:
    return [pack_entry(account, amount) for account, amount in entries]


# ---- payments ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payment:
    """One entry of a payment chunk: the user's signed authorisation and the points requested.

    `amount` is the operator's valuation of the charge, an int in ``[0, maxPoints]``; the
    contract burns ``min(amount, balance)`` if the authorisation has not expired by the block
    that settles it, and nothing otherwise; it skips the payment (PaymentSkipped, nothing
    burned, the rest of the chunk unaffected) when the signature is not, or no longer, the
    user's (voiding its nonce: never collectable later) or the nonce is already used. Checked
    here so that a bad amount fails before any transaction; the contract checks it again
    (ExceedsAuthorizedMaximum, which reverts the chunk).
    """

    authorization: SignedAuthorization
    amount: int

    def __post_init__(self) -> None:
        if not isinstance(self.authorization, SignedAuthorization):
            raise TypeError("authorization must be a SignedAuthorization")
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise TypeError(f"amount must be an int, not {type(self.amount).__name__}")
        max_points = self.authorization.authorization.max_points
        if not 0 <= self.amount <= max_points:
            raise ValueError(f"amount must be in [0, maxPoints={max_points}], got {self.amount}")

    @property
    def user(self) -> ChecksumAddress:
        return to_checksum_address(self.authorization.authorization.user)

    @property
    def nonce(self) -> int:
        return self.authorization.authorization.nonce


def payment_tuple(payment: Payment) -> tuple[Any, ...]:
    """`payment` as the ABI tuple of Settlement.Payment:
    ``(user, chargeCommitment, maxPoints, nonce, deadline, amount, signature)``."""
    a = payment.authorization.authorization
    return (
        to_checksum_address(a.user),
        a.charge_commitment,
        a.max_points,
        a.nonce,
        a.deadline,
        payment.amount,
        payment.authorization.signature,
    )


@dataclass(frozen=True, slots=True)
class PaymentApplied:
    """A Settlement.PaymentApplied event: `user`'s authorisation whose EIP-712 digest is
    `authorization` was applied, its nonce `nonce` is now used up, and `burned` of `requested`
    points were burned from `user` (0 when it had expired or the user held nothing). The event
    carries the signed terms (`charge_commitment`, `max_points`, `deadline`), so the digest can be
    recomputed from the log alone (`terms`)."""

    epoch_id: int
    user: ChecksumAddress
    authorization: bytes
    nonce: int
    requested: int
    burned: int
    position: LogPosition
    charge_commitment: bytes
    max_points: int
    deadline: int

    @property
    def terms(self) -> PaymentAuthorization:
        """The authorisation the user signed, as the event states it; its digest under the
        deployment's Settlement domain is `authorization`."""
        return PaymentAuthorization(
            user=bytes.fromhex(self.user[2:]),
            charge_commitment=self.charge_commitment,
            max_points=self.max_points,
            nonce=self.nonce,
            deadline=self.deadline,
        )


class SkipReason(IntEnum):
    """Settlement.SkipReason: why a payment of a chunk was skipped (nothing burned)."""

    # The signature check failed: not the user's (ECDSA without code, ERC-1271 with code). Not
    # the user's act (the settler submits the bytes); the skip voids the nonce.
    INVALID_SIGNATURE = 0
    # The signature is the user's (checked first) and its nonce was used earlier: paid,
    # canceled by the user, or voided by an earlier INVALID_SIGNATURE skip.
    AUTHORIZATION_USED = 1


@dataclass(frozen=True, slots=True)
class PaymentSkipped:
    """A Settlement.PaymentSkipped event: the payment under `user`'s authorisation whose
    EIP-712 digest is `authorization` could not be charged, for `reason`; nothing was burned.

    The contract checks the signature first. INVALID_SIGNATURE: the signature submitted is not
    the user's for these terms (nothing the user did is implied), and the skip voids the nonce,
    so the authorisation can never be collected later. AUTHORIZATION_USED: the signature is the
    user's and an earlier PaymentApplied, AuthorizationCanceled or INVALID_SIGNATURE skip used
    the nonce.
    """

    epoch_id: int
    user: ChecksumAddress
    authorization: bytes
    nonce: int
    requested: int
    reason: SkipReason
    position: LogPosition

    @property
    def burned(self) -> int:
        """Always 0: lets a payment's outcome be read the same way whichever event it is."""
        return 0


# Exactly one per payment of a chunk.
PaymentOutcome: TypeAlias = PaymentApplied | PaymentSkipped


def connect(rpc_url: str, *, timeout: float = 30.0) -> Web3:
    """A Web3 on `rpc_url` that has answered once (ChainError otherwise)."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - the probe is the point
    except Exception as exc:
        raise ChainError(f"no Ethereum JSON-RPC node answers at {rpc_url}: {exc}") from exc
    return w3


# ---- the deployment handle ------------------------------------------------------------------


class GridPointsChain:
    """Web3 contract objects and helpers for one deployment."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        *,
        artifacts: Mapping[str, ContractArtifact] | None = None,
        receipt_timeout: float = 120.0,
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        arts = dict(artifacts) if artifacts is not None else load_all()
        self.artifacts = arts
        self.token: Contract = w3.eth.contract(
            address=deployment.token_address, abi=arts["PointsToken"].abi
        )
        self.registry: Contract = w3.eth.contract(
            address=deployment.registry_address, abi=arts["StationRegistry"].abi
        )
        self.settlement: Contract = w3.eth.contract(
            address=deployment.settlement_address, abi=arts["Settlement"].abi
        )
        self.decoder = ErrorDecoder(arts[name].abi for name in CONTRACT_NAMES)
        self.sender = TxSender(w3, self.decoder, receipt_timeout=receipt_timeout)

    # -- checks -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raises ChainError unless the node is on the deployment's chain and has its code."""
        chain_id = self.w3.eth.chain_id
        if chain_id != self.deployment.chain_id:
            raise ChainError(
                f"node is on chain {chain_id}, the deployment on chain {self.deployment.chain_id}"
            )
        for name, address in self.deployment.addresses.items():
            if not self.w3.eth.get_code(address):
                raise ChainError(f"no code for {name} at {address} on chain {chain_id}")

    # -- roles ------------------------------------------------------------------------------

    def has_role(self, contract: Contract, name: str, account: str) -> bool:
        role = role_id(name)
        return bool(contract.functions.hasRole(role, to_checksum_address(account)).call())

    # -- transactions -----------------------------------------------------------------------

    def transact(
        self,
        account: TransactionAccount,
        call: ContractFunction,
        *,
        gas: int | None = None,
        value: int = 0,
    ) -> TxReceipt:
        """Sends `call` from `account`; see TxSender.transact."""
        return self.sender.transact(account, call, gas=gas, value=value)

    def call(self, call: ContractFunction, *, sender: str | None = None) -> Any:
        """A view call whose revert is decoded (e.g. getEpoch of an unknown epoch)."""
        return self.sender.call(call, sender=sender)

    def reset_nonces(self) -> None:
        """Forget locally counted nonces (needed after evm_revert rewinds the chain)."""
        self.sender.nonces.reset()

    # -- settlement -------------------------------------------------------------------------

    def commit_epoch(
        self,
        settler: TransactionAccount,
        epoch_id: int,
        *,
        records_root: bytes,
        credits_root: bytes,
        tariff_hash: bytes,
        record_count: int,
        total_credits: int,
        total_debits: int,
        plan_root: bytes,
        chunk_count: int,
    ) -> TxReceipt:
        """Commits an epoch with the root of its planned chunks (gridpoints_protocol.plan)."""
        fn = self.settlement.functions.commitEpoch(
            epoch_id, records_root, credits_root, tariff_hash, record_count,
            total_credits, total_debits, plan_root, chunk_count,
        )  # fmt: skip
        return self.transact(settler, fn)

    def apply_credits(
        self,
        settler: TransactionAccount,
        epoch_id: int,
        chunk_id: int,
        entries: Sequence[bytes],
        proof: Sequence[bytes],
    ) -> TxReceipt:
        """Mints one planned credit chunk; `proof` is its inclusion proof in the plan."""
        fn = self.settlement.functions.applyCredits(epoch_id, chunk_id, list(entries), list(proof))
        return self.transact(settler, fn)

    def apply_payments(
        self,
        settler: TransactionAccount,
        epoch_id: int,
        chunk_id: int,
        payments: Sequence[Payment],
        proof: Sequence[bytes],
    ) -> TxReceipt:
        """Settles one planned payment chunk: burns what each user authorised (see Payment)."""
        fn = self.settlement.functions.applyPayments(
            epoch_id, chunk_id, [payment_tuple(p) for p in payments], list(proof)
        )
        return self.transact(settler, fn)

    def void_epoch(self, guardian: TransactionAccount, epoch_id: int) -> TxReceipt:
        """The guardian voids the newest epoch during its challenge window."""
        return self.transact(guardian, self.settlement.functions.voidEpoch(epoch_id))

    def set_challenge_window(self, admin: TransactionAccount, seconds: int) -> TxReceipt:
        """The admin sets the challenge window of epochs committed from now on."""
        return self.transact(admin, self.settlement.functions.setChallengeWindow(seconds))

    def set_epoch_mint_cap(self, admin: TransactionAccount, cap: int) -> TxReceipt:
        """The admin sets the most one epoch may commit to mint."""
        return self.transact(admin, self.settlement.functions.setEpochMintCap(cap))

    def cancel_authorization(self, user: TransactionAccount, nonce: int) -> TxReceipt:
        """The user voids one of its own authorisation nonces (sent from the user's wallet)."""
        return self.transact(user, self.settlement.functions.cancelAuthorization(nonce))

    def is_authorization_used(self, user: str | bytes, nonce: int) -> bool:
        """Whether `user`'s nonce is used up on chain (paid or canceled)."""
        account = to_checksum_address(user if isinstance(user, str) else "0x" + user.hex())
        return bool(self.call(self.settlement.functions.isAuthorizationUsed(account, nonce)))

    @property
    def settlement_domain(self) -> SettlementDomain:
        """The EIP-712 domain users sign payment authorisations under for this deployment."""
        return SettlementDomain(
            self.deployment.chain_id, bytes.fromhex(self.deployment.settlement_address[2:])
        )

    def hash_payment_authorization(self, authorization: PaymentAuthorization) -> bytes:
        """The contract's own digest of `authorization` (Settlement.hashPaymentAuthorization)."""
        a = authorization
        fn = self.settlement.functions.hashPaymentAuthorization(
            to_checksum_address(a.user), a.charge_commitment, a.max_points, a.nonce, a.deadline
        )
        return bytes(self.call(fn))

    @property
    def wallet_check_gas(self) -> int:
        """Settlement.WALLET_CHECK_GAS: the most an ERC-1271 wallet (or EIP-7702 delegate) may
        spend judging one payment; what one such payment can add to a chunk's gas."""
        return int(self.call(self.settlement.functions.WALLET_CHECK_GAS()))

    def _payment_topics(self) -> dict[bytes, str]:
        return {
            bytes(HexBytes(self.settlement.events.PaymentApplied().topic)): "PaymentApplied",
            bytes(HexBytes(self.settlement.events.PaymentSkipped().topic)): "PaymentSkipped",
        }

    def payment_outcomes_in(self, receipt: TxReceipt) -> list[PaymentOutcome]:
        """The outcome of every payment of one transaction's chunk (one PaymentApplied or one
        PaymentSkipped each), in log order, which is the order of the chunk's payments."""
        kinds = self._payment_topics()
        return [
            self._payment_outcome(log, kinds[bytes(log["topics"][0])])
            for log in receipt["logs"]
            if log["address"] == self.settlement.address
            and log["topics"]
            and bytes(log["topics"][0]) in kinds
        ]

    def payments_in(self, receipt: TxReceipt) -> list[PaymentApplied]:
        """The PaymentApplied events of one transaction, in log order (skips left out)."""
        return [e for e in self.payment_outcomes_in(receipt) if isinstance(e, PaymentApplied)]

    def skips_in(self, receipt: TxReceipt) -> list[PaymentSkipped]:
        """The PaymentSkipped events of one transaction, in log order."""
        return [e for e in self.payment_outcomes_in(receipt) if isinstance(e, PaymentSkipped)]

    def payment_events(
        self,
        *,
        epoch_id: int | None = None,
        user: str | None = None,
        authorization: bytes | None = None,
        from_block: int | None = None,
        to_block: int | str = "latest",
        block_range: int | None = None,
        with_timestamps: bool = False,
    ) -> list[PaymentApplied]:
        """PaymentApplied events, in chain order, optionally only those of one epoch, one user
        or one authorisation digest (all three are indexed topics).

        Reads from the deployment block by default; `block_range` splits the query for RPC
        nodes that cap eth_getLogs ranges.
        """
        events = self.payment_outcomes(
            epoch_id=epoch_id, user=user, authorization=authorization, from_block=from_block,
            to_block=to_block, block_range=block_range, with_timestamps=with_timestamps,
            skipped=False,
        )  # fmt: skip
        return [e for e in events if isinstance(e, PaymentApplied)]

    def payment_outcomes(
        self,
        *,
        epoch_id: int | None = None,
        user: str | None = None,
        authorization: bytes | None = None,
        from_block: int | None = None,
        to_block: int | str = "latest",
        block_range: int | None = None,
        with_timestamps: bool = False,
        skipped: bool = True,
    ) -> list[PaymentOutcome]:
        """PaymentApplied and (unless `skipped` is False) PaymentSkipped events, merged in chain
        order, with the same filters as `payment_events`."""
        kinds = self._payment_topics()
        wanted = [t for t, name in kinds.items() if skipped or name == "PaymentApplied"]
        topics: list[Any] = [["0x" + t.hex() for t in wanted]]
        topics.append(None if epoch_id is None else "0x" + epoch_id.to_bytes(32, "big").hex())
        topics.append(
            None
            if user is None
            else "0x" + bytes.fromhex(to_checksum_address(user)[2:]).rjust(32, b"\0").hex()
        )
        topics.append(None if authorization is None else "0x" + bytes(authorization).hex())
        while topics[-1] is None:
            topics.pop()
        start = self.deployment.deployment_block if from_block is None else from_block
        end = self.w3.eth.block_number if to_block == "latest" else int(to_block)
        logs: list[LogReceipt] = []
        step = block_range or (end - start + 1)
        for lo in range(start, end + 1, max(1, step)):
            hi = min(end, lo + step - 1)
            logs.extend(
                self.w3.eth.get_logs(
                    {
                        "address": self.settlement.address,
                        "fromBlock": lo,
                        "toBlock": hi,
                        "topics": topics,
                    }
                )
            )
        logs.sort(key=lambda log: (log["blockNumber"], log["logIndex"]))
        timestamps: dict[int, int] = {}
        events: list[PaymentOutcome] = []
        for log in logs:
            block = log["blockNumber"]
            if with_timestamps and block not in timestamps:
                timestamps[block] = self.w3.eth.get_block(block)["timestamp"]
            name = kinds[bytes(log["topics"][0])]
            events.append(self._payment_outcome(log, name, timestamps.get(block)))
        return events

    def _payment_outcome(
        self, log: LogReceipt, name: str, timestamp: int | None = None
    ) -> PaymentOutcome:
        args = getattr(self.settlement.events, name)().process_log(log)["args"]
        position = LogPosition(
            block_number=log["blockNumber"],
            log_index=log["logIndex"],
            tx_hash=bytes(log["transactionHash"]),
            block_timestamp=timestamp,
        )
        if name == "PaymentSkipped":
            return PaymentSkipped(
                epoch_id=int(args["epochId"]),
                user=to_checksum_address(args["user"]),
                authorization=bytes(args["authorization"]),
                nonce=int(args["nonce"]),
                requested=int(args["requested"]),
                reason=SkipReason(int(args["reason"])),
                position=position,
            )
        return PaymentApplied(
            epoch_id=int(args["epochId"]),
            user=to_checksum_address(args["user"]),
            authorization=bytes(args["authorization"]),
            nonce=int(args["nonce"]),
            requested=int(args["requested"]),
            burned=int(args["burned"]),
            position=position,
            charge_commitment=bytes(args["chargeCommitment"]),
            max_points=int(args["maxPoints"]),
            deadline=int(args["deadline"]),
        )

    # -- station history --------------------------------------------------------------------

    def station_events(
        self,
        station_id: bytes | str | None = None,
        *,
        from_block: int | None = None,
        to_block: int | str = "latest",
        block_range: int | None = None,
        with_timestamps: bool = False,
    ) -> list[StationEvent]:
        """Registry events (of one station, or all), in chain order.

        Reads from the deployment block by default: nothing of this registry predates it.
        `block_range` splits the query for public RPC nodes that cap eth_getLogs ranges.
        """
        registry = self.registry
        kinds = {
            bytes(
                HexBytes(registry.events.StationRegistered().topic)
            ): registry.events.StationRegistered,
            bytes(
                HexBytes(registry.events.StationKeyRotated().topic)
            ): registry.events.StationKeyRotated,
            bytes(HexBytes(registry.events.StationRevoked().topic)): registry.events.StationRevoked,
        }
        topics: list[Any] = [["0x" + t.hex() for t in kinds]]
        if station_id is not None:
            topics.append("0x" + station_id_bytes(station_id).hex())
        start = self.deployment.deployment_block if from_block is None else from_block
        end = self.w3.eth.block_number if to_block == "latest" else int(to_block)
        logs: list[LogReceipt] = []
        step = block_range or (end - start + 1)
        for lo in range(start, end + 1, max(1, step)):
            hi = min(end, lo + step - 1)
            logs.extend(
                self.w3.eth.get_logs(
                    {"address": registry.address, "fromBlock": lo, "toBlock": hi, "topics": topics}
                )
            )
        logs.sort(key=lambda log: (log["blockNumber"], log["logIndex"]))
        timestamps: dict[int, int] = {}
        events: list[StationEvent] = []
        for log in logs:
            decoded = kinds[bytes(log["topics"][0])]().process_log(log)
            block = log["blockNumber"]
            if with_timestamps and block not in timestamps:
                timestamps[block] = self.w3.eth.get_block(block)["timestamp"]
            position = LogPosition(
                block_number=block,
                log_index=log["logIndex"],
                tx_hash=bytes(log["transactionHash"]),
                block_timestamp=timestamps.get(block),
            )
            events.append(_station_event(decoded["event"], decoded["args"], position))
        return events

    def station_history(self, station_id: bytes | str, **kwargs: Any) -> StationHistory:
        """One station's state and key history, rebuilt from its events."""
        events = self.station_events(station_id, **kwargs)
        if not events:
            raise ChainError(f"no events for station 0x{station_id_bytes(station_id).hex()}")
        return StationHistory.from_events(events)

    def station_histories(self, **kwargs: Any) -> dict[bytes, StationHistory]:
        """Every station's history, keyed by station id, in registration order."""
        grouped: dict[bytes, list[StationEvent]] = {}
        for event in self.station_events(**kwargs):
            grouped.setdefault(event.station_id, []).append(event)
        return {sid: StationHistory.from_events(evs) for sid, evs in grouped.items()}

    def key_history_view(self, station_id: bytes | str) -> list[KeyPeriod]:
        """StationRegistry.keyHistory, as KeyPeriod dataclasses (for cross-checks)."""
        raw = self.call(self.registry.functions.keyHistory(station_id_bytes(station_id)))
        return [KeyPeriod(to_checksum_address(s), int(f), int(u)) for s, f, u in raw]

    # -- meter keys -------------------------------------------------------------------------

    def register_meter(
        self,
        registrar: TransactionAccount,
        station_id: bytes | str,
        serial: str,
        public_key: bytes | tuple[bytes, bytes],
        valid_from: int,
    ) -> TxReceipt:
        """Registers meter `serial` of a live station with its P-256 key (DER SPKI or
        ``(qx, qy)``), valid from `valid_from`; its id is `meter_id(serial)`."""
        qx, qy = p256_key(public_key)
        fn = self.registry.functions.registerMeter(
            station_id_bytes(station_id), serial, qx, qy, valid_from
        )
        return self.transact(registrar, fn)

    def rotate_meter_key(
        self,
        registrar: TransactionAccount,
        station_id: bytes | str,
        meter: bytes,
        public_key: bytes | tuple[bytes, bytes],
    ) -> TxReceipt:
        """Replaces the meter's key from the block's timestamp on (`meter`: `meter_id(serial)`)."""
        qx, qy = p256_key(public_key)
        fn = self.registry.functions.rotateMeterKey(station_id_bytes(station_id), meter, qx, qy)
        return self.transact(registrar, fn)

    def revoke_meter(
        self, registrar: TransactionAccount, station_id: bytes | str, meter: bytes
    ) -> TxReceipt:
        """Revokes the meter from the block's timestamp on (irreversible)."""
        fn = self.registry.functions.revokeMeter(station_id_bytes(station_id), meter)
        return self.transact(registrar, fn)

    def get_meter(self, station_id: bytes | str, meter: bytes) -> Meter:
        """StationRegistry.getMeter (ContractRevertError UnknownMeter for an unknown meter)."""
        qx, qy, valid_from, revoked_at = self.call(
            self.registry.functions.getMeter(station_id_bytes(station_id), meter)
        )
        return Meter(bytes(qx), bytes(qy), int(valid_from), int(revoked_at))

    def meter_key_history(self, station_id: bytes | str, meter: bytes) -> list[MeterKeyPeriod]:
        """StationRegistry.meterKeyHistory, oldest first."""
        raw = self.call(
            self.registry.functions.meterKeyHistory(station_id_bytes(station_id), meter)
        )
        return [MeterKeyPeriod(bytes(x), bytes(y), int(f), int(u)) for x, y, f, u in raw]

    def meter_key_at(
        self, station_id: bytes | str, meter: bytes, at: int
    ) -> tuple[bytes, bytes] | None:
        """The meter's ``(qx, qy)`` valid at unix time `at`, or None."""
        found, qx, qy = self.call(
            self.registry.functions.meterKeyAt(station_id_bytes(station_id), meter, at)
        )
        return (bytes(qx), bytes(qy)) if found else None

    def is_meter_key_valid_at(
        self,
        station_id: bytes | str,
        meter: bytes,
        public_key: bytes | tuple[bytes, bytes],
        at: int,
    ) -> bool:
        """Whether `public_key` (DER SPKI or ``(qx, qy)``) was the meter's registered key at
        `at`: a key a charger sends (OCPP ``publicKey``) is only a hint until this holds."""
        qx, qy = p256_key(public_key)
        fn = self.registry.functions.isMeterKeyValidAt(
            station_id_bytes(station_id), meter, qx, qy, at
        )
        return bool(self.call(fn))

    def verify_meter_signature(
        self,
        station_id: bytes | str,
        meter: bytes,
        payload: bytes,
        signature: bytes | tuple[bytes, bytes],
        at: int,
    ) -> bool:
        """StationRegistry.verifyMeterSignature: whether `signature` (DER, or ``(r, s)``) is the
        meter's P-256 signature over SHA-256 of `payload` (an OCMF record's signed bytes) by the
        key valid at `at`; high and low s alike. A view: costs nothing but an eth_call."""
        r, s = p256_signature(signature) if isinstance(signature, bytes) else signature
        fn = self.registry.functions.verifyMeterSignature(
            station_id_bytes(station_id), meter, payload, r, s, at
        )
        return bool(self.call(fn))


def _station_event(name: str, args: Mapping[str, Any], position: LogPosition) -> StationEvent:
    station_id = bytes(args["stationId"])
    if name == "StationRegistered":
        return StationRegistered(
            station_id=station_id,
            signer=to_checksum_address(args["signer"]),
            zone=int(args["zone"]),
            max_power_w=int(args["maxPowerW"]),
            active_from=int(args["activeFrom"]),
            position=position,
        )
    if name == "StationKeyRotated":
        return StationKeyRotated(
            station_id=station_id,
            old_signer=to_checksum_address(args["oldSigner"]),
            new_signer=to_checksum_address(args["newSigner"]),
            rotated_at=int(args["rotatedAt"]),
            position=position,
        )
    if name == "StationRevoked":
        return StationRevoked(
            station_id=station_id,
            signer=to_checksum_address(args["signer"]),
            revoked_at=int(args["revokedAt"]),
            position=position,
        )
    raise ValueError(f"not a registry event: {name}")
