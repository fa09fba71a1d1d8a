"""The auditor's read of public chain data, through gridpoints_chain, at one block.

`read_chain` reads the station registry, Settlement.getEpoch of every committed epoch and every
settlement event and token mint and burn since the deployment block, pinned to the head when
it starts (so a backend settling meanwhile cannot make the audit inconsistent). It attributes
each transaction's mints and burns to the settlement events after them and records what it
saw; it judges nothing: gridpoints_audit.checks does.

`ChainLookups` answers the few questions the source's claims raise after that block was read
(`LiveLookups`): the receipt of a settlement transaction the source names, a block's
timestamp. A claim about the chain is made later than the audit block (the source is read
after it), so what it names may be newer; a receipt says whether it is on chain at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hexbytes import HexBytes
from web3.exceptions import Web3Exception

from gridpoints_audit.findings import AuditError
from gridpoints_chain.contracts import ChunkKind, GridPointsChain, SkipReason, connect
from gridpoints_chain.deployment import Deployment, DeploymentFileError
from gridpoints_chain.errors import ChainError
from gridpoints_protocol.authorization import PaymentAuthorization
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.keys import StationHistory

ZERO_ADDRESS_TOPIC = "0x" + "00" * 32
TRANSFER_TOPIC = "0x" + keccak256(b"Transfer(address,address,uint256)").hex()
DEFAULT_BLOCK_RANGE = 10_000


def open_chain(
    rpc_url: str, deployment_file: str | Path, *, timeout: float = 30.0
) -> GridPointsChain:
    """A GridPointsChain on `rpc_url` for the deployment in `deployment_file` (AuditError)."""
    try:
        deployment = Deployment.load(deployment_file)
    except (DeploymentFileError, OSError) as exc:
        raise AuditError(f"deployment file {deployment_file}: {exc}") from None
    try:
        w3 = connect(rpc_url, timeout=timeout)
    except ChainError as exc:
        raise AuditError(str(exc)) from None
    return GridPointsChain(w3, deployment)


# ---- what the chain says ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainEpoch:
    """Settlement.getEpoch at the audit block, and the transaction that committed it."""

    epoch_id: int
    records_root: bytes
    credits_root: bytes
    tariff_hash: bytes
    record_count: int
    committed_at: int
    total_credits: int
    total_debits: int
    applied_credits: int
    applied_debits: int
    commit_tx: bytes | None = None
    plan_root: bytes = b""  # the root of the planned chunks the commit named
    chunk_count: int = 0
    appliable_at: int = 0  # the end of its challenge window (block time)


@dataclass(slots=True)
class CreditChunk:
    epoch_id: int
    chunk_id: int
    entries: int
    amount: int
    tx_hash: bytes
    mints: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(slots=True)
class PaymentEvent:
    epoch_id: int
    user: bytes
    authorization: bytes
    nonce: int
    requested: int
    burned: int
    tx_hash: bytes
    # For a payment that burned: the first burn Transfer of its transaction not yet tied to an
    # earlier payment, as (holder, amount) — its own burn when it is (user, burned).
    burn_transfer: tuple[bytes, int] | None = None
    # The signed terms the event states (PaymentApplied words 3-5).
    charge_commitment: bytes = bytes(32)
    max_points: int = 0
    deadline: int = 0
    # Whether (user, nonce) was used before it on chain (paid, canceled, or voided by a skip):
    # then the user would pay twice, which the contract forbids.
    nonce_used_before: bool = False


@dataclass(slots=True)
class SkipEvent:
    """A PaymentSkipped: the contract charged nothing for this authorisation, for `reason`."""

    epoch_id: int
    user: bytes
    authorization: bytes
    nonce: int
    requested: int
    reason: SkipReason
    tx_hash: bytes
    # Whether a PaymentApplied, AuthorizationCanceled or PaymentSkipped (an InvalidSignature
    # skip voids the nonce) used (user, nonce) before it on chain.
    nonce_used_before: bool = False


@dataclass(frozen=True, slots=True)
class ChunkTally:
    """A ChunkApplied's own (entries, amount) and what its transaction shows: the mint
    Transfers before it for a credit chunk, its PaymentApplied and PaymentSkipped events (and
    the points they burned) for a payment chunk."""

    epoch_id: int
    chunk_id: int
    reported: tuple[int, int]
    seen: tuple[int, int]


@dataclass(slots=True)
class TransactionTally:
    """One transaction's settlement events, in log order, and the token transfers no event of
    it accounts for."""

    tx_hash: bytes
    events: list[PaymentEvent | SkipEvent | ChunkTally] = field(default_factory=list)
    unattributed_mints: list[tuple[bytes, int]] = field(default_factory=list)
    unattributed_burns: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoleEvent:
    """One access-control event of the three contracts, as logged: a role granted or revoked,
    a minter grant scheduled, canceled or executed, an admin transfer or admin delay change
    scheduled or canceled, the daily mint cap set. Fields the event does not carry are None."""

    block: int
    index: int
    tx_hash: bytes
    contract: str  # PointsToken, StationRegistry or Settlement
    name: str  # the event's name
    role: bytes | None = None
    account: bytes | None = None  # the role's holder, the grant's or the transfer's account
    sender: bytes | None = None  # who granted or revoked (RoleGranted/RoleRevoked)
    values: tuple[int, ...] = ()  # the event's data words (eta, schedule, delay, caps)


@dataclass(slots=True)
class ChainFacts:
    """Everything the audit reads from the chain, at one block."""

    block: int
    last_epoch_id: int
    epochs: dict[int, ChainEpoch]
    stations: dict[bytes, StationHistory]
    credit_chunks: dict[int, list[CreditChunk]] = field(default_factory=dict)
    payments: dict[int, list[PaymentEvent]] = field(default_factory=dict)
    skips: dict[int, list[SkipEvent]] = field(default_factory=dict)
    canceled: set[tuple[bytes, int]] = field(default_factory=set)
    # (user, nonce) used so far in chain order, by a PaymentApplied, an AuthorizationCanceled or
    # a PaymentSkipped (InvalidSignature voids the nonce; AuthorizationUsed finds it used)
    nonces_used: set[tuple[bytes, int]] = field(default_factory=set)
    # (transaction, authorisation digest) -> the signature that transaction submitted for it,
    # for the transactions with an InvalidSignature skip; None when it cannot be read back
    submitted: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)
    # authorisation digest -> its first PaymentApplied, in chain order
    first_application: dict[bytes, PaymentEvent] = field(default_factory=dict)
    commit_txs: dict[int, bytes] = field(default_factory=dict)
    # (epoch id, guardian, transaction) of every EpochVoided, in chain order
    voided: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    # every transaction with a settlement event or a mint or burn, in chain order
    transactions: list[TransactionTally] = field(default_factory=list)
    minted: int = 0
    burned: int = 0
    total_supply: int = 0
    # every access-control event of the three contracts since deployment, in chain order
    role_events: list[RoleEvent] = field(default_factory=list)
    # The audit block's timestamp: the "now" of the deadlines the sequence view checks and of
    # the pending role grants.
    block_time: int = 0


# ---- reading the logs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawLog:
    """One log as eth_getLogs returns it, in bytes and ints."""

    block: int
    index: int
    tx_hash: bytes
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes

    def word(self, i: int) -> int:
        return int.from_bytes(self.data[32 * i : 32 * i + 32], "big")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def _get_logs(
    chain: GridPointsChain,
    address: str,
    topics: list[Any],
    start: int,
    end: int,
    step: int,
) -> list[RawLog]:
    """eth_getLogs in block ranges, straight from the JSON-RPC answer: web3's result
    formatting and event decoding cost about half a millisecond per log, which made reading
    the chain most of an audit's time (measured); these few fixed layouts decode by hand."""
    logs: list[RawLog] = []
    for lo in range(start, end + 1, max(1, step)):
        hi = min(end, lo + step - 1)
        query = {"address": address, "fromBlock": hex(lo), "toBlock": hex(hi), "topics": topics}
        reply = chain.w3.provider.make_request("eth_getLogs", [query])  # type: ignore[arg-type]
        if "error" in reply:
            raise ChainError(f"eth_getLogs {lo}..{hi} of {address}: {reply['error']}")
        for raw in reply["result"]:
            if raw.get("removed"):
                continue
            logs.append(
                RawLog(
                    int(raw["blockNumber"], 16),
                    int(raw["logIndex"], 16),
                    _unhex(raw["transactionHash"]),
                    _unhex(raw["address"]),
                    tuple(_unhex(t) for t in raw["topics"]),
                    _unhex(raw["data"]),
                )
            )
    return logs


def _topic(event: Any) -> bytes:
    return bytes(HexBytes(event().topic))


def settlement_event_names(chain: GridPointsChain) -> dict[bytes, str]:
    """The Settlement events the audit reads, by topic."""
    events = chain.settlement.events
    return {
        _topic(events.EpochCommitted): "EpochCommitted",
        _topic(events.ChunkApplied): "ChunkApplied",
        _topic(events.PaymentApplied): "PaymentApplied",
        _topic(events.PaymentSkipped): "PaymentSkipped",
        _topic(events.AuthorizationCanceled): "AuthorizationCanceled",
        _topic(events.EpochVoided): "EpochVoided",
    }


def read_chain(chain: GridPointsChain, *, block_range: int = DEFAULT_BLOCK_RANGE) -> ChainFacts:
    """Reads the registry, every committed epoch, the settlement and the token's mints and
    burns at the head."""
    w3 = chain.w3
    head = int(w3.eth.block_number)
    settlement = chain.settlement
    last = int(settlement.functions.lastEpochId().call(block_identifier=head))
    start = chain.deployment.deployment_block
    stations = chain.station_histories(to_block=head, block_range=block_range)
    epochs: dict[int, ChainEpoch] = {}
    for epoch_id in range(1, last + 1):
        raw = settlement.functions.getEpoch(epoch_id).call(block_identifier=head)
        epochs[epoch_id] = ChainEpoch(
            epoch_id,
            bytes(raw[0]),
            bytes(raw[1]),
            bytes(raw[2]),
            int(raw[3]),
            int(raw[4]),
            int(raw[5]),
            int(raw[6]),
            int(raw[7]),
            int(raw[8]),
            plan_root=bytes(raw[9]),
            chunk_count=int(raw[10]),
            appliable_at=int(raw[11]),
        )
    facts = ChainFacts(head, last, epochs, stations)
    facts.block_time = int(w3.eth.get_block(head)["timestamp"])
    facts.total_supply = int(chain.token.functions.totalSupply().call(block_identifier=head))

    # Settlement events and the token's mints and burns, merged in chain order.
    kinds = settlement_event_names(chain)
    topics = ["0x" + t.hex() for t in kinds]
    logs = _get_logs(chain, settlement.address, [topics], start, head, block_range)
    token = chain.token.address
    logs += _get_logs(chain, token, [TRANSFER_TOPIC, ZERO_ADDRESS_TOPIC], start, head, block_range)
    logs += _get_logs(
        chain, token, [TRANSFER_TOPIC, None, ZERO_ADDRESS_TOPIC], start, head, block_range
    )
    logs.sort(key=lambda log: (log.block, log.index))
    token_bytes = _unhex(token)
    for tx_hash, group in itertools.groupby(logs, key=lambda log: log.tx_hash):
        attribute_transaction(facts, token_bytes, kinds, tx_hash, list(group))
    _read_submitted_signatures(chain, facts)
    facts.role_events = read_role_events(chain, start, head, block_range)
    return facts


# The access-control events the audit reads: name -> (indexed topics it carries after the
# event's own, data words). The layouts are fixed by OpenZeppelin's IAccessControl and
# IAccessControlDefaultAdminRules and by IPointsToken.
ROLE_EVENT_LAYOUTS: dict[str, tuple[tuple[str, ...], int]] = {
    "RoleGranted": (("role", "account", "sender"), 0),
    "RoleRevoked": (("role", "account", "sender"), 0),
    "RoleGrantScheduled": (("role", "account"), 1),
    "RoleGrantCanceled": (("role", "account"), 0),
    "RoleGrantExecuted": (("role", "account"), 0),
    "DefaultAdminTransferScheduled": (("account",), 1),
    "DefaultAdminTransferCanceled": ((), 0),
    "DefaultAdminDelayChangeScheduled": ((), 2),
    "DefaultAdminDelayChangeCanceled": ((), 0),
    "DailyMintCapSet": ((), 2),
}


def read_role_events(
    chain: GridPointsChain, start: int, end: int, block_range: int
) -> list[RoleEvent]:
    """Every access-control event of the token, the registry and the settlement contract in
    blocks start..end, decoded by hand like the settlement events, in chain order."""
    contracts = {
        "PointsToken": chain.token,
        "StationRegistry": chain.registry,
        "Settlement": chain.settlement,
    }
    events: list[RoleEvent] = []
    for contract_name, contract in contracts.items():
        names = {
            _topic(getattr(contract.events, name)): name
            for name in ROLE_EVENT_LAYOUTS
            if any(e.get("name") == name for e in contract.abi if e.get("type") == "event")
        }
        topics = ["0x" + t.hex() for t in names]
        for log in _get_logs(chain, contract.address, [topics], start, end, block_range):
            name = names[log.topics[0]]
            indexed, words = ROLE_EVENT_LAYOUTS[name]
            fields: dict[str, bytes] = {}
            for position, what in enumerate(indexed, start=1):
                topic = log.topics[position]
                fields[what] = topic if what == "role" else topic[12:]
            events.append(
                RoleEvent(
                    log.block,
                    log.index,
                    log.tx_hash,
                    contract_name,
                    name,
                    role=fields.get("role"),
                    account=fields.get("account"),
                    sender=fields.get("sender"),
                    values=tuple(log.word(i) for i in range(words)),
                )
            )
    events.sort(key=lambda e: (e.block, e.index))
    return events


def _read_submitted_signatures(chain: GridPointsChain, facts: ChainFacts) -> None:
    """For every transaction with an InvalidSignature skip: which signature it submitted for
    each authorisation, decoded from its applyPayments input. Only these transactions are
    fetched (a skip is rare); one sent through another contract (a multisig settler) has no
    applyPayments input to decode, and its skips are left unverified (None)."""
    settlement = chain.settlement
    domain = chain.settlement_domain
    txs = {
        skip.tx_hash
        for skips in facts.skips.values()
        for skip in skips
        if skip.reason == SkipReason.INVALID_SIGNATURE
    }
    for tx_hash in sorted(txs):
        tx = chain.w3.eth.get_transaction(HexBytes(tx_hash))
        signatures: dict[bytes, bytes] = {}
        try:
            if tx["to"] != settlement.address:
                raise ValueError("not sent to the settlement contract")
            fn, args = settlement.decode_function_input(tx["input"])
            if fn.fn_name != "applyPayments":
                raise ValueError(f"not applyPayments but {fn.fn_name}")
            for p in args["payments"]:  # web3 decodes each Payment struct to a mapping
                digest = PaymentAuthorization(
                    user=bytes.fromhex(p["user"][2:]),
                    charge_commitment=bytes(p["chargeCommitment"]),
                    max_points=p["maxPoints"],
                    nonce=p["nonce"],
                    deadline=p["deadline"],
                ).digest(domain)
                signatures.setdefault(digest, bytes(p["signature"]))
        except (ValueError, KeyError, TypeError, Web3Exception):
            signatures = {}
        for skips in facts.skips.values():
            for skip in skips:
                if skip.tx_hash == tx_hash and skip.reason == SkipReason.INVALID_SIGNATURE:
                    facts.submitted[(tx_hash, skip.authorization)] = signatures.get(
                        skip.authorization
                    )


def attribute_transaction(
    facts: ChainFacts,
    token: bytes,
    kinds: Mapping[bytes, str],
    tx_hash: bytes,
    logs: list[RawLog],
) -> None:
    """Ties the mints and burns of one transaction to the settlement events after them (the
    token emits each Transfer before the Settlement event of its chunk or payment) and adds
    the transaction's events to `facts`. `kinds` names the settlement event topics."""
    tally = TransactionTally(tx_hash)
    facts.transactions.append(tally)
    mints: list[tuple[bytes, int]] = []
    burns: list[tuple[bytes, int]] = []
    chunk_burned, chunk_payments = 0, 0
    for log in logs:
        if log.address == token:
            source, target = log.topics[1][12:], log.topics[2][12:]
            value = log.word(0)
            if source == bytes(20):
                mints.append((target, value))
                facts.minted += value
            else:
                burns.append((source, value))
                facts.burned += value
            continue
        name = kinds[log.topics[0]]
        if name == "EpochCommitted":
            facts.commit_txs[int.from_bytes(log.topics[1], "big")] = tx_hash
        elif name == "EpochVoided":
            epoch_id = int.from_bytes(log.topics[1], "big")
            facts.voided.append((epoch_id, log.topics[2][12:], tx_hash))
            facts.commit_txs.pop(epoch_id, None)
        elif name == "AuthorizationCanceled":
            canceled = (log.topics[1][12:], int.from_bytes(log.topics[2], "big"))
            facts.canceled.add(canceled)
            facts.nonces_used.add(canceled)
        elif name == "PaymentSkipped":
            user, nonce = log.topics[2][12:], log.word(0)
            skip = SkipEvent(
                int.from_bytes(log.topics[1], "big"),
                user,
                log.topics[3],
                nonce,
                log.word(1),
                SkipReason(log.word(2)),
                tx_hash,
                nonce_used_before=(user, nonce) in facts.nonces_used,
            )
            facts.skips.setdefault(skip.epoch_id, []).append(skip)
            facts.nonces_used.add((user, nonce))
            tally.events.append(skip)
            chunk_payments += 1
        elif name == "PaymentApplied":
            payment = PaymentEvent(
                int.from_bytes(log.topics[1], "big"),
                log.topics[2][12:],
                log.topics[3],
                log.word(0),
                log.word(1),
                log.word(2),
                tx_hash,
                charge_commitment=log.data[96:128],
                max_points=log.word(4),
                deadline=log.word(5),
            )
            payment.nonce_used_before = (payment.user, payment.nonce) in facts.nonces_used
            facts.payments.setdefault(payment.epoch_id, []).append(payment)
            facts.nonces_used.add((payment.user, payment.nonce))
            facts.first_application.setdefault(payment.authorization, payment)
            tally.events.append(payment)
            chunk_burned += payment.burned
            chunk_payments += 1
            if payment.burned:
                payment.burn_transfer = burns[0] if burns else None
                if payment.burn_transfer == (payment.user, payment.burned):
                    burns.pop(0)
        elif name == "ChunkApplied":
            epoch_id = int.from_bytes(log.topics[1], "big")
            chunk_id = int.from_bytes(log.topics[2], "big")
            entries, amount = log.word(1), log.word(2)
            if log.word(0) == ChunkKind.CREDIT:
                chunk = CreditChunk(epoch_id, chunk_id, entries, amount, tx_hash, mints)
                facts.credit_chunks.setdefault(epoch_id, []).append(chunk)
                seen = (len(mints), sum(v for _, v in mints))
                mints = []
            else:
                seen = (chunk_payments, chunk_burned)
            chunk_burned, chunk_payments = 0, 0
            tally.events.append(ChunkTally(epoch_id, chunk_id, (entries, amount), seen))
    tally.unattributed_mints = mints
    tally.unattributed_burns = burns


# ---- what the source's claims make the audit look up -----------------------------------------


@dataclass(frozen=True, slots=True)
class MinedTransaction:
    """A transaction's receipt: its block, status, gas and the Settlement contract's logs."""

    tx_hash: bytes
    block: int
    succeeded: bool
    gas_used: int
    # the Settlement contract's logs of the events the audit reads, named, in log order
    events: tuple[tuple[str, RawLog], ...]


class ChainLookups(Protocol):
    """Reads the claims of a source make necessary, at the chain's current head."""

    def transaction(self, tx_hash: bytes) -> MinedTransaction | None:
        """The mined transaction (None: the chain has no such transaction)."""
        ...

    def block_timestamp(self, block: int) -> int | None:
        """The timestamp of a block (None: no such block)."""
        ...


class LiveLookups:
    """`ChainLookups` over the JSON-RPC node, each answer read once."""

    def __init__(self, chain: GridPointsChain) -> None:
        self.chain = chain
        self._settlement = _unhex(chain.settlement.address.lower())
        self._names = settlement_event_names(chain)
        self._transactions: dict[bytes, MinedTransaction | None] = {}
        self._timestamps: dict[int, int | None] = {}

    def _request(self, method: str, params: list[Any]) -> Any:
        try:
            reply = self.chain.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        except Exception as exc:  # connection refused, timeouts: the node is not usable
            raise AuditError(f"the RPC node does not answer {method}: {exc}") from exc
        if "error" in reply:
            raise AuditError(f"the RPC node refused {method}: {reply['error']}")
        return reply["result"]

    def transaction(self, tx_hash: bytes) -> MinedTransaction | None:
        if tx_hash not in self._transactions:
            raw = self._request("eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
            self._transactions[tx_hash] = None if raw is None else self._mined(tx_hash, raw)
        return self._transactions[tx_hash]

    def _mined(self, tx_hash: bytes, raw: Mapping[str, Any]) -> MinedTransaction:
        block = int(raw["blockNumber"], 16)
        events = []
        for log in raw["logs"]:
            topics = tuple(_unhex(t) for t in log["topics"])
            name = self._names.get(topics[0]) if topics else None
            if name is None or _unhex(log["address"].lower()) != self._settlement:
                continue
            events.append(
                (
                    name,
                    RawLog(
                        block,
                        int(log["logIndex"], 16),
                        tx_hash,
                        self._settlement,
                        topics,
                        _unhex(log["data"]),
                    ),
                )
            )
        return MinedTransaction(
            tx_hash, block, int(raw["status"], 16) == 1, int(raw["gasUsed"], 16), tuple(events)
        )

    def block_timestamp(self, block: int) -> int | None:
        if block not in self._timestamps:
            raw = self._request("eth_getBlockByNumber", [hex(block), False])
            self._timestamps[block] = None if raw is None else int(raw["timestamp"], 16)
        return self._timestamps[block]
