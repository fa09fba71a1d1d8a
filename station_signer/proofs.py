"""Inclusion proofs checked by the station: the backend's proof of one of the station's records,
against the station's own copy of the record and against the Settlement contract (through
`ChainAnchors`), never against the backend's word alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gridpoints_protocol import merkle
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import (
    Domain,
    EnergyTransfer,
)
from station_signer.errors import StationError
from station_signer.store import StoredRecord, StoreError

if TYPE_CHECKING:
    from gridpoints_chain.contracts import GridPointsChain
    from station_signer.sync import ProofAnswer

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
    # The record commits to its user: the opening the station keeps must still open it, or
    # the proven record is not provably the user's.
    if row.opening is None:
        problems.append("the station holds no opening of the record's userCommitment")
    else:
        try:
            opens = UserOpening.from_json(row.opening).opens(record.user_commitment)
        except RecordValidationError:
            opens = False
        if not opens:
            problems.append("the stored opening does not hash to the record's userCommitment")
    differences = _record_differences(record, signature, digest, answer)
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
    # The payment opening is private (it joins the wallet's burn to this station): a proof
    # publishes none. The signed record's paymentAuthorization, compared above, is the salted
    # link to the authorisation the station checked, so a swapped authorisation shows there.
    if answer.payment is not None:
        differences.append("payment: the backend publishes a payment opening in a public proof")
    return differences
