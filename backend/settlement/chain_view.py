"""What the chain has of a settlement: the last committed epoch, whether a step's effect is on
chain and from which transaction, whether a block is still canonical. Read-only; the `Settler`
decides what to do with the answers."""

import logging
from dataclasses import dataclass

from sqlalchemy import select
from web3.exceptions import BlockNotFound
from web3.types import TxReceipt

from backend.db.models import Epoch, SettlementAttempt
from backend.db.session import Database
from backend.settlement.plan import StepView, epoch_plan
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_protocol.plan import (
    SettlementPlan,
)

log = logging.getLogger(__package__)

# Blocks per eth_getLogs query when searching for a step's event (below common RPC caps).
EVENT_SEARCH_WINDOW = 2_000


def _topic_uint(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


class SettlementError(RuntimeError):
    """Settlement cannot proceed without an operator (e.g. the chain holds another epoch n)."""


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: bytes


class ChainView:
    """The settlement contract and the chain, as the worker asks them; caches each epoch's plan
    (its stored steps never change)."""

    def __init__(self, db: Database, chain: GridPointsChain) -> None:
        self.db = db
        self.chain = chain
        self.w3 = chain.w3
        self.sender = chain.sender
        self._plans: dict[int, SettlementPlan] = {}

    def forget_plan(self, epoch_id: int) -> None:
        """Drops the cached plan of a settled epoch."""
        self._plans.pop(epoch_id, None)

    def last_epoch_id(self) -> int:
        return int(self.chain.settlement.functions.lastEpochId().call())

    def is_on_chain(self, step: StepView, last_epoch_id: int) -> bool:
        if step.kind == "commit":
            if step.epoch_id > last_epoch_id:
                return False
            self.check_same_epoch(step.epoch_id)
            return True
        if step.epoch_id > last_epoch_id:
            return False
        assert step.chunk_id is not None
        return bool(
            self.chain.settlement.functions.isChunkApplied(step.epoch_id, step.chunk_id).call()
        )

    def appliable_at(self, epoch_id: int) -> int:
        return int(self.chain.settlement.functions.getEpoch(epoch_id).call()[11])

    def check_same_epoch(self, epoch_id: int) -> None:
        on_chain = self.chain.settlement.functions.getEpoch(epoch_id).call()
        plan = self.plan(epoch_id)
        with self.db.read() as session:
            epoch = session.get(Epoch, epoch_id)
            assert epoch is not None
            ours = (
                epoch.records_root,
                epoch.credits_root,
                epoch.tariff_hash,
                epoch.record_count,
                plan.root,
                plan.chunk_count,
            )
        theirs = (
            bytes(on_chain[0]),
            bytes(on_chain[1]),
            bytes(on_chain[2]),
            int(on_chain[3]),
            bytes(on_chain[9]),
            int(on_chain[10]),
        )
        if ours != theirs:
            raise SettlementError(
                f"the chain holds a different epoch {epoch_id} (records root "
                f"0x{theirs[0].hex()}, plan root 0x{theirs[4].hex()}; ours 0x{ours[0].hex()}, "
                f"0x{ours[4].hex()}): the database and the chain disagree; settlement stops "
                "until an operator investigates (a guardian can void it in its challenge window)"
            )

    def plan(self, epoch_id: int) -> SettlementPlan:
        """The epoch's plan (cached: its stored steps never change)."""
        plan = self._plans.get(epoch_id)
        if plan is None:
            with self.db.read() as session:
                plan = epoch_plan(session, epoch_id)
            self._plans[epoch_id] = plan
        return plan

    def receipt_of_effect(self, step: StepView) -> TxReceipt | None:
        """The receipt of our attempt that put `step` on chain (None if none of ours did)."""
        with self.db.read() as session:
            hashes = list(
                session.scalars(
                    select(SettlementAttempt.tx_hash)
                    .where(
                        SettlementAttempt.epoch_id == step.epoch_id,
                        SettlementAttempt.step == step.step,
                    )
                    .order_by(SettlementAttempt.id.desc())
                )
            )
        for tx_hash in hashes:
            receipt = self.sender.receipt(tx_hash)
            if receipt is not None and receipt["status"] == 1:
                return receipt
        # None of the stored attempts has a readable receipt (a lagging node, or a database
        # restored without the attempt): find the transaction by the contract's own event.
        effect_hash = self.effect_transaction(step)
        if effect_hash is not None:
            receipt = self.sender.receipt(effect_hash)
            if receipt is not None and receipt["status"] == 1:
                return receipt
        log.warning(
            "epoch %d step %d is on chain but its transaction's receipt cannot be read yet",
            step.epoch_id,
            step.step,
        )
        return None

    def effect_transaction(self, step: StepView) -> bytes | None:
        """The transaction whose EpochCommitted / ChunkApplied event is this step's effect,
        searched backwards from the head in windows public RPC nodes accept."""
        events = self.chain.settlement.events
        if step.kind == "commit":
            topics = [events.EpochCommitted().topic, _topic_uint(step.epoch_id)]
        else:
            assert step.chunk_id is not None
            topics = [
                events.ChunkApplied().topic,
                _topic_uint(step.epoch_id),
                _topic_uint(step.chunk_id),
            ]
        address = self.chain.settlement.address
        low = self.chain.deployment.deployment_block
        high = int(self.w3.eth.block_number)
        while high >= low:
            start = max(low, high - EVENT_SEARCH_WINDOW + 1)
            logs = self.w3.eth.get_logs(
                {"address": address, "fromBlock": start, "toBlock": high, "topics": topics}
            )
            if logs:
                return bytes(logs[-1]["transactionHash"])
            high = start - 1
        return None

    def canonical(self, block: Block) -> bool:
        """Whether the chain's block `block.number` is `block` (False when the chain is
        shorter)."""
        try:
            found = self.w3.eth.get_block(block.number)
        except BlockNotFound:
            return False
        return bytes(found["hash"]) == block.hash
