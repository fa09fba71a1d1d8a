"""The settlement worker: drives each sealed epoch's planned steps onto the chain, confirms
them, and reconciles with the chain from the fork point (see the package docstring)."""

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, Select, func, select, update
from web3.contract.contract import ContractFunction
from web3.exceptions import Web3Exception
from web3.logs import DISCARD
from web3.types import TxReceipt

from backend.db.models import Epoch, EpochEntry, EpochPayment, SettlementAttempt, SettlementStep
from backend.db.session import Database
from backend.faults import crash_point
from backend.payments import payment_rows
from backend.settlement.chain_view import Block, ChainView, SettlementError
from backend.settlement.plan import SettlementConfig, StepView, plan_steps, step_view
from gridpoints_chain.contracts import GridPointsChain, Payment, pack_entries, payment_tuple
from gridpoints_chain.errors import ChainError, ContractRevertError
from gridpoints_chain.transactions import SignedTx, TransactionAccount

log = logging.getLogger(__package__)

# Finality depth when neither the node (no ``finalized`` block tag) nor the settings say: two
# epochs of 32 slots, which is when Ethereum finalizes (and what Anvil reports as finalized).
FALLBACK_FINALITY_BLOCKS = 64

# Reverts that mean "the chain already has this step" (a race with our own earlier attempt).
_ALREADY_DONE = {"EpochAlreadyCommitted", "ChunkAlreadyApplied"}


class _ChallengeWindowOpen(Exception):
    """The contract refuses the epoch's chunks until `appliable_at` (its challenge window)."""

    def __init__(self, epoch_id: int, appliable_at: int) -> None:
        super().__init__(f"epoch {epoch_id} applies from {appliable_at}")
        self.epoch_id = epoch_id
        self.appliable_at = appliable_at


@dataclass(frozen=True, slots=True)
class ChallengeWait:
    """The worker waits for an epoch's challenge window to close (for /healthz)."""

    epoch_id: int
    appliable_at: datetime  # the block time from which the contract applies its chunks


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A reconciliation that found confirmed steps the chain no longer holds."""

    at: datetime
    reopened: tuple[tuple[int, int], ...]  # (epoch id, step) of each re-opened step
    lost_from_block: int  # the lowest block of a re-opened step: the chain forked below it


def _confirmed_blocks(*, final: bool) -> Select[int | None, bytes | None]:
    """(block number, block hash) of the confirmed steps that are (not) final."""
    return select(SettlementStep.block_number, SettlementStep.block_hash).where(
        SettlementStep.state == "confirmed",
        SettlementStep.final.is_(final),
        SettlementStep.block_number.is_not(None),
    )


def _block_of(row: Row[int | None, bytes | None] | None) -> Block | None:
    if row is None or row[0] is None or row[1] is None:
        return None
    return Block(int(row[0]), bytes(row[1]))


class Settler:
    """Settles sealed epochs in order. One instance per process, one process per database
    (hold `backend.leader.LeaderLock` around it)."""

    def __init__(
        self,
        db: Database,
        chain: GridPointsChain,
        account: TransactionAccount,
        config: SettlementConfig | None = None,
        *,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.w3 = chain.w3
        # The chain layer's pipeline and its nonce manager: the one counter of this process.
        self.sender = chain.sender
        self.nonces = chain.sender.nonces
        self.account = account
        self.config = config or SettlementConfig()
        self.stop_event = stop_event or threading.Event()
        self._reconciled = False
        # The highest block of a confirmed step, verified with all the others (None: no
        # confirmed step); only meaningful while `_reconciled`.
        self._tip: Block | None = None
        self._wallet_check_gas: int | None = None
        # What reconciliations re-opened since this process started (for /healthz).
        self.reopened_steps = 0
        self.last_reconciliation: Reconciliation | None = None
        # The epoch whose challenge window the worker waits for (None: not waiting).
        self.challenge_wait: ChallengeWait | None = None
        # What the chain has (and each epoch's plan, computed once).
        self.view = ChainView(db, chain)

    # -- public -----------------------------------------------------------------------------

    def settle_all(self) -> int:
        """Settles every sealed epoch; returns how many epochs became settled."""
        if not self._reconciled:
            self.reconcile()
        elif not self._tip_canonical():
            assert self._tip is not None
            log.warning(
                "the chain no longer holds block %d of a confirmed settlement step; reconciling "
                "from the fork point",
                self._tip.number,
            )
            self.reconcile()
        else:
            self._mark_final()
        settled = 0
        while not self.stop_event.is_set():
            with self.db.read() as session:
                epoch_id = session.scalar(
                    select(func.min(Epoch.epoch_id)).where(Epoch.state == "sealed")
                )
            if epoch_id is None:
                break
            if not self.settle_epoch(int(epoch_id)):
                break  # stopped, or the chain moved under a step: the next round goes on
            settled += 1
        return settled

    def settle_epoch(self, epoch_id: int) -> bool:
        """Settles one epoch step by step, in order; True once all its steps are confirmed."""
        with self.db.write() as session:
            epoch = session.get(Epoch, epoch_id)
            if epoch is None:
                raise SettlementError(f"epoch {epoch_id} is not sealed")
            steps = [step_view(s) for s in plan_steps(session, epoch, self.config)]
        if steps[0].state == "confirmed" and self._voided(epoch_id):
            return False  # re-opened: the next round commits it again
        for step in steps:
            if self.stop_event.is_set():
                return False
            if step.state != "confirmed":
                try:
                    self._execute(step)
                except _ChallengeWindowOpen as wait:
                    self._note_wait(wait)
                    return False
                # A later step needs this one on chain (chunks need the commit).
                if self._step_state(step) != "confirmed":
                    return False
        if self.challenge_wait is not None and self.challenge_wait.epoch_id == epoch_id:
            self.challenge_wait = None
        with self.db.write() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(SettlementStep)
                .where(SettlementStep.epoch_id == epoch_id, SettlementStep.state != "confirmed")
            )
            if pending:
                return False
            epoch = session.get(Epoch, epoch_id)
            assert epoch is not None
            if epoch.state != "settled":
                epoch.state = "settled"
                epoch.settled_at = datetime.now(UTC)
                log.info("epoch %d settled", epoch_id)
        self.view.forget_plan(epoch_id)
        return True

    def _note_wait(self, wait: _ChallengeWindowOpen) -> None:
        at = datetime.fromtimestamp(wait.appliable_at, UTC)
        if self.challenge_wait is None or self.challenge_wait.epoch_id != wait.epoch_id:
            log.info(
                "epoch %d is in its challenge window: its chunks apply from %s; waiting",
                wait.epoch_id,
                at.isoformat(timespec="seconds"),
            )
        self.challenge_wait = ChallengeWait(wait.epoch_id, at)

    def _voided(self, epoch_id: int) -> bool:
        """If the chain no longer holds epoch `epoch_id` although its commit step is confirmed
        (the guardian voided it, which is possible only before any chunk applied), re-opens the
        epoch's confirmed steps and returns True. A rewind below the commit is reconcile's."""
        if self.view.last_epoch_id() >= epoch_id:
            return False
        with self.db.write() as session:
            steps = session.scalars(
                select(SettlementStep).where(
                    SettlementStep.epoch_id == epoch_id, SettlementStep.state == "confirmed"
                )
            ).all()
            for step in steps:
                step.state = "planned"
                step.final = False
                step.tx_hash = step.block_hash = step.block_number = step.gas_used = None
                step.updated_at = datetime.now(UTC)
            session.execute(
                update(Epoch)
                .where(Epoch.epoch_id == epoch_id)
                .values(state="sealed", settled_at=None)
            )
        self.reopened_steps += len(steps)
        self.challenge_wait = None
        log.warning(
            "epoch %d is no longer committed on chain (voided by the guardian, or the chain "
            "rewound below its commit); committing it again",
            epoch_id,
        )
        return True

    def request_reconcile(self) -> None:
        """The next round starts with a full reconciliation (after any error)."""
        self._reconciled = False
        self.nonces.reset(self.account.address)

    def reconcile(self) -> None:
        """Aligns the database with the chain from the fork point: the newest final step's block
        is checked (and the final ones below it while the chain lacks them), then every
        confirmed step that is not final, oldest block first; each step whose block the chain
        no longer has is re-opened."""
        self.nonces.reset(self.account.address)
        with self.db.read() as session:
            pending = session.execute(_confirmed_blocks(final=False).distinct()).all()
            newest_final = _block_of(
                session.execute(
                    _confirmed_blocks(final=True)
                    .order_by(SettlementStep.block_number.desc())
                    .limit(1)
                ).first()
            )
        blocks = {b for b in map(_block_of, pending) if b is not None}
        if newest_final is not None:
            blocks.add(newest_final)
        # Oldest first, so that the tip is checked last: a rewind that happens during the
        # checks and reaches below an earlier block also takes the tip, and the next round
        # sees that.
        lost: set[Block] = set()
        tip: Block | None = None
        for block in sorted(blocks, key=lambda b: b.number):
            if self.view.canonical(block):
                tip = block
            else:
                lost.add(block)
        if newest_final is not None and newest_final in lost:
            lost_final, kept = self._lost_final_blocks(below=newest_final.number)
            lost |= lost_final
            if kept is not None and (tip is None or kept.number > tip.number):
                tip = kept
        reopened = self._reopen(lost)
        if reopened:
            self.reopened_steps += len(reopened)
            self.last_reconciliation = Reconciliation(
                at=datetime.now(UTC),
                reopened=tuple(reopened),
                lost_from_block=min(b.number for b in lost),
            )
            log.warning(
                "reconciliation re-opened %d settlement steps (epochs %s): the chain forked "
                "below block %d",
                len(reopened),
                ", ".join(str(e) for e in sorted({e for e, _ in reopened})),
                self.last_reconciliation.lost_from_block,
            )
        self._tip = tip
        self._reconciled = True
        self._mark_final()

    def _lost_final_blocks(self, below: int) -> tuple[set[Block], Block | None]:
        """The blocks of final steps under `below` the chain no longer has, newest first until
        one it has (returned second, None if none): the final steps below it are its
        ancestors."""
        lost: set[Block] = set()
        upper = below
        while True:
            with self.db.read() as session:
                block = _block_of(
                    session.execute(
                        _confirmed_blocks(final=True)
                        .where(SettlementStep.block_number < upper)
                        .order_by(SettlementStep.block_number.desc())
                        .limit(1)
                    ).first()
                )
            if block is None:
                return lost, None
            if self.view.canonical(block):
                return lost, block
            lost.add(block)
            upper = block.number

    def _reopen(self, lost: set[Block]) -> list[tuple[int, int]]:
        """Puts every confirmed step in a `lost` block back to planned (its epoch to sealed);
        returns their (epoch id, step)."""
        if not lost:
            return []
        reopened: list[tuple[int, int]] = []
        last_on_chain = self.view.last_epoch_id()
        with self.db.write() as session:
            steps = session.scalars(
                select(SettlementStep)
                .where(
                    SettlementStep.state == "confirmed",
                    SettlementStep.block_hash.in_([b.hash for b in lost]),
                )
                .order_by(SettlementStep.epoch_id, SettlementStep.step)
            ).all()
            for step in steps:
                if self.view.is_on_chain(step_view(step), last_on_chain):
                    # Re-included in another block: confirmed again from its new receipt.
                    log.warning("settlement step %d/%d moved blocks", step.epoch_id, step.step)
                else:
                    log.warning(
                        "the chain lost settlement step %d/%d (%s) of block %d; it will be sent "
                        "again",
                        step.epoch_id,
                        step.step,
                        step.kind,
                        step.block_number,
                    )
                step.state = "planned"
                step.final = False
                step.tx_hash = step.block_hash = step.block_number = step.gas_used = None
                step.updated_at = datetime.now(UTC)
                session.execute(
                    update(Epoch)
                    .where(Epoch.epoch_id == step.epoch_id)
                    .values(state="sealed", settled_at=None)
                )
                reopened.append((step.epoch_id, step.step))
        return reopened

    def _mark_final(self) -> None:
        """Marks the confirmed steps at or below the finalized block final. Called only right
        after the tip was found canonical, i.e. while every confirmed step's block is."""
        with self.db.read() as session:
            oldest_pending = session.scalar(
                select(func.min(SettlementStep.block_number)).where(
                    SettlementStep.state == "confirmed", SettlementStep.final.is_(False)
                )
            )
        if oldest_pending is None:
            return
        finalized = self._finalized_block()
        if oldest_pending > finalized:
            return
        with self.db.write() as session:
            session.execute(
                update(SettlementStep)
                .where(
                    SettlementStep.state == "confirmed",
                    SettlementStep.final.is_(False),
                    SettlementStep.block_number <= finalized,
                )
                .values(final=True)
            )

    def _finalized_block(self) -> int:
        if self.config.finality_blocks is not None:
            return int(self.w3.eth.block_number) - self.config.finality_blocks
        try:
            return int(self.w3.eth.get_block("finalized")["number"])
        except (Web3Exception, ValueError):  # a node without the tag (pre-merge clients)
            return int(self.w3.eth.block_number) - FALLBACK_FINALITY_BLOCKS

    # -- one step ---------------------------------------------------------------------------

    def _execute(self, step: StepView) -> None:
        """Drives one step until it is confirmed, the chain moves under it, or stop."""
        label = f"epoch {step.epoch_id} step {step.step} ({step.kind})"
        while not self.stop_event.is_set():
            if self.view.is_on_chain(step, self.view.last_epoch_id()):
                receipt = self.view.receipt_of_effect(step)
                if receipt is None:
                    # On chain, but its receipt cannot be read now (a lagging RPC node): never
                    # confirm blind; the next round looks again.
                    return
                self._confirm(step, receipt)
                return
            attempt = self._latest_attempt(step)
            if attempt is None or not self._still_pending(attempt):
                if self._send_new(step) is None:  # the chain has it, or nothing to send
                    if self._step_state(step) == "confirmed":
                        return
                    continue
                attempt = self._latest_attempt(step)
                assert attempt is not None
            receipt = self._wait_receipt(step, label)
            if receipt is None:
                # Still pending after the timeout: outbid it with the same nonce.
                self._replace(step, attempt)
                continue
            crash_point("settle.after_receipt")
            if receipt["status"] != 1:
                self._mark_attempt(bytes(receipt["transactionHash"]), "mined")
                raise self._failed(step, receipt)
            self._confirm(step, receipt)
            return

    def _send_new(self, step: StepView) -> bytes | None:
        try:
            prepared = self.sender.prepare(
                self.account.address,
                self._call(step),
                headroom=self._gas_headroom(step),
                context=str(step),
            )
        except ContractRevertError as error:
            if error.error_name in _ALREADY_DONE:
                return None
            if error.error_name == "ChallengeWindowOpen":
                raise _ChallengeWindowOpen(
                    step.epoch_id, self.view.appliable_at(step.epoch_id)
                ) from None
            raise
        return self._store_and_send(step, self.sender.sign(self.account, prepared))

    def _gas_headroom(self, step: StepView) -> int:
        """Gas a step needs beyond the pipeline's common margin on its estimate.

        A user may switch their address to a contract wallet between the estimate and the
        block; the contract then calls it with exactly WALLET_CHECK_GAS and reverts the chunk
        unless WALLET_CHECK_MIN_GASLEFT (64/63 of it, as a call passes on at most 63/64 of the
        gas left (EIP-150), plus 10,000 for the call's own cost) is left before it asks, so a
        payment chunk leaves WALLET_CHECK_MIN_GASLEFT of room per payment (111,587 gas; hence
        the payment chunk size cap in settings).
        """
        if step.kind != "payments":
            return 0
        return step.entry_count * (self._wallet_gas() * 64 // 63 + 10_000)

    def _replace(self, step: StepView, attempt: SettlementAttempt) -> None:
        """Signs the step again with the same nonce and higher fees (a stuck transaction); the
        pipeline's `prepare_replacement` raises the fees enough for a node to accept it."""
        pending = self.sender.transaction(attempt.tx_hash)
        if pending is None:
            return  # gone from the pool: the next pass re-broadcasts or re-signs it
        if pending.get("blockNumber") is not None:
            return  # mined meanwhile: the next pass reads its receipt
        try:
            prepared = self.sender.prepare_replacement(pending, self._call(step), context=str(step))
        except ContractRevertError as error:
            if error.error_name in _ALREADY_DONE:
                return  # mined meanwhile: the next pass finds the step on chain
            raise
        log.warning(
            "epoch %d step %d: transaction 0x%s is stuck; replacing it with max fee %d wei",
            step.epoch_id,
            step.step,
            attempt.tx_hash.hex(),
            prepared.params["maxFeePerGas"],
        )
        try:
            self._store_and_send(step, self.sender.sign(self.account, prepared))
        except ChainError:
            if self.nonces.on_chain(self.account.address).mined > attempt.nonce:
                # The stuck transaction got mined while its replacement was being signed: the
                # node refused the replacement, which can never be mined now; the next pass
                # finds the step on chain and reads the original's receipt.
                refused = self._latest_attempt(step)
                if refused is not None and refused.tx_hash != attempt.tx_hash:
                    self._mark_attempt(refused.tx_hash, "replaced")
                log.info("epoch %d step %d: mined before its replacement", step.epoch_id, step.step)
                return
            raise

    def _store_and_send(self, step: StepView, signed: SignedTx) -> bytes:
        """Stores `signed` as an attempt of `step` (the intent), then broadcasts it."""
        with self.db.write() as session:
            known = session.scalars(
                select(SettlementAttempt).where(SettlementAttempt.tx_hash == signed.tx_hash)
            ).first()
            if known is not None:
                # The same bytes as an attempt the chain lost (same nonce after a rewind).
                known.outcome = "signed"
            else:
                session.add(
                    SettlementAttempt(
                        epoch_id=step.epoch_id,
                        step=step.step,
                        sender=bytes.fromhex(signed.sender[2:]),
                        nonce=signed.nonce,
                        tx_hash=signed.tx_hash,
                        raw_tx=signed.raw,
                        created_at=datetime.now(UTC),
                        outcome="signed",
                    )
                )
            session.execute(
                update(SettlementStep)
                .where(SettlementStep.epoch_id == step.epoch_id, SettlementStep.step == step.step)
                .values(state="sent", updated_at=datetime.now(UTC))
            )
        crash_point("settle.after_intent")
        self._broadcast(signed.raw, signed.tx_hash)
        crash_point("settle.after_send")
        log.info("sent %s: tx 0x%s nonce %d", step.kind, signed.tx_hash.hex(), signed.nonce)
        return signed.tx_hash

    def _broadcast(self, raw: bytes, tx_hash: bytes) -> None:
        """Broadcasts a stored intent. A refusal ("nonce too low" and friends: the nonce is
        gone) raises ChainError, and the nonce manager asks the node for the next one."""
        sent = self.sender.broadcast(raw, sender=self.account.address)
        assert sent == tx_hash, "a stored intent's hash is the hash of its bytes"

    def _wallet_gas(self) -> int:
        if self._wallet_check_gas is None:
            self._wallet_check_gas = self.chain.wallet_check_gas
        return self._wallet_check_gas

    def _step_state(self, step: StepView) -> str | None:
        with self.db.read() as session:
            return session.scalar(
                select(SettlementStep.state).where(
                    SettlementStep.epoch_id == step.epoch_id, SettlementStep.step == step.step
                )
            )

    def _latest_attempt(self, step: StepView) -> SettlementAttempt | None:
        with self.db.read() as session:
            return session.scalars(
                select(SettlementAttempt)
                .where(
                    SettlementAttempt.epoch_id == step.epoch_id,
                    SettlementAttempt.step == step.step,
                    SettlementAttempt.outcome == "signed",
                )
                .order_by(SettlementAttempt.id.desc())
                .limit(1)
            ).first()

    def _still_pending(self, attempt: SettlementAttempt) -> bool:
        """Whether `attempt` can still be mined; re-broadcasts it when the node forgot it."""
        if self.sender.transaction(attempt.tx_hash) is not None:
            return True  # the node has it (pending or mined): wait for its receipt
        counts = self.nonces.on_chain(self.account.address)
        if attempt.nonce == counts.mined and counts.pending == counts.mined:
            # Never reached the node (crash before send, or a node restart lost its pool):
            # the very same bytes are still valid — send them.
            log.info("re-broadcasting stored transaction 0x%s", attempt.tx_hash.hex())
            self._broadcast(attempt.raw_tx, attempt.tx_hash)
            self.nonces.taken(self.account.address, attempt.nonce)
            return True
        # Its nonce was used by another transaction, or the chain was rewound below it.
        self._mark_attempt(attempt.tx_hash, "replaced")
        self.nonces.reset(self.account.address)
        return False

    def _mark_attempt(self, tx_hash: bytes, outcome: str) -> None:
        with self.db.write() as session:
            session.execute(
                update(SettlementAttempt)
                .where(SettlementAttempt.tx_hash == tx_hash)
                .values(outcome=outcome)
            )

    def _signed_hashes(self, step: StepView) -> list[bytes]:
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(SettlementAttempt.tx_hash)
                    .where(
                        SettlementAttempt.epoch_id == step.epoch_id,
                        SettlementAttempt.step == step.step,
                        SettlementAttempt.outcome == "signed",
                    )
                    .order_by(SettlementAttempt.id.desc())
                )
            )

    def _wait_receipt(self, step: StepView, label: str) -> TxReceipt | None:
        """The receipt of whichever signed attempt of `step` gets mined (a replacement or the
        one it replaced); None after the receipt timeout."""
        receipt = self.sender.first_receipt(
            self._signed_hashes(step),
            timeout=self.config.receipt_timeout_s,
            poll_interval=self.config.poll_interval_s,
            stop=self.stop_event,
        )
        if receipt is None and not self.stop_event.is_set():
            log.warning("no receipt for %s after %.0fs", label, self.config.receipt_timeout_s)
        return receipt

    def _confirm(self, step: StepView, receipt: TxReceipt) -> None:
        """Waits for the confirmations of `receipt`, then records the step as confirmed."""
        block = int(receipt["blockNumber"])
        while self.w3.eth.block_number < block + self.config.confirmations:
            if self.stop_event.wait(self.config.poll_interval_s):
                return
        # The tip first, the new block last (see `reconcile`): the new step joins the steps
        # the tip vouches for only if the chain still holds them all.
        if not self._tip_canonical():
            self._reconciled = False  # the next round reconciles from the fork point
            return
        mined_in = Block(block, bytes(receipt["blockHash"]))
        if not self.view.canonical(mined_in):
            return  # reorged away while waiting: the next round re-checks the chain
        burned = self._burned(step, receipt) if step.kind == "payments" else None
        with self.db.write() as session:
            row = session.get(SettlementStep, (step.epoch_id, step.step))
            assert row is not None
            row.state = "confirmed"
            row.updated_at = datetime.now(UTC)
            row.tx_hash = bytes(receipt["transactionHash"])
            row.block_number = int(receipt["blockNumber"])
            row.block_hash = bytes(receipt["blockHash"])
            row.gas_used = int(receipt["gasUsed"])
            session.execute(
                update(SettlementAttempt)
                .where(SettlementAttempt.tx_hash == row.tx_hash)
                .values(outcome="mined")
            )
            # Attempts it replaced (or that replaced it) can never be mined now.
            session.execute(
                update(SettlementAttempt)
                .where(
                    SettlementAttempt.epoch_id == step.epoch_id,
                    SettlementAttempt.step == step.step,
                    SettlementAttempt.outcome == "signed",
                )
                .values(outcome="replaced")
            )
            if step.kind == "payments":
                # What the chain burned per authorisation; 0 for the ones it skipped
                # (PaymentSkipped: cancelled or used, or not signed by the user any more).
                # A skip leaves the nonce used (an InvalidSignature skip voids it), so what
                # was not burned is paid otherwise, for good: it can never be collected later.
                chunk = session.scalars(
                    select(EpochPayment)
                    .where(
                        EpochPayment.epoch_id == step.epoch_id,
                        EpochPayment.ordinal >= step.first_entry,
                    )
                    .order_by(EpochPayment.ordinal)
                    .limit(step.entry_count)
                ).all()
                for payment in chunk:
                    payment.burned = (burned or {}).get(payment.authorization, 0)
        if self._tip is None or mined_in.number >= self._tip.number:
            self._tip = mined_in
        log.info(
            "confirmed epoch %d step %d (%s)%s",
            step.epoch_id,
            step.step,
            step.kind,
            f" in block {receipt['blockNumber']}",
        )

    def _burned(self, step: StepView, receipt: TxReceipt) -> dict[bytes, int]:
        # DISCARD: the receipt also holds the token's Transfer logs, which are not ours.
        events = self.chain.settlement.events.PaymentApplied().process_receipt(
            receipt, errors=DISCARD
        )
        return {bytes(e["args"]["authorization"]): int(e["args"]["burned"]) for e in events}

    def _failed(self, step: StepView, receipt: TxReceipt) -> Exception:
        return SettlementError(
            f"settlement transaction 0x{bytes(receipt['transactionHash']).hex()} for epoch "
            f"{step.epoch_id} step {step.step} ({step.kind}) reverted"
        )

    def _tip_canonical(self) -> bool:
        """The per-round check: one block, whose hash vouches for every confirmed step's."""
        return self._tip is None or self.view.canonical(self._tip)

    # -- transactions -----------------------------------------------------------------------

    def _call(self, step: StepView) -> ContractFunction:
        settlement = self.chain.settlement.functions
        with self.db.read() as session:
            epoch = session.get(Epoch, step.epoch_id)
            assert epoch is not None
            if step.kind == "commit":
                plan = self.view.plan(step.epoch_id)
                return settlement.commitEpoch(
                    epoch.epoch_id,
                    epoch.records_root,
                    epoch.credits_root,
                    epoch.tariff_hash,
                    epoch.record_count,
                    epoch.total_credits,
                    epoch.total_debits,
                    plan.root,
                    plan.chunk_count,
                )
            assert step.chunk_id is not None
            if step.kind == "credits":
                rows = session.execute(
                    select(EpochEntry.user_address, EpochEntry.credit)
                    .where(
                        EpochEntry.epoch_id == step.epoch_id,
                        EpochEntry.ordinal >= step.first_entry,
                        EpochEntry.credit > 0,
                    )
                    .order_by(EpochEntry.ordinal)
                    .limit(step.entry_count)
                ).all()
                if len(rows) != step.entry_count or sum(c for _, c in rows) != step.amount:
                    raise SettlementError(f"epoch {step.epoch_id}: credits chunk does not match")
                return settlement.applyCredits(
                    step.epoch_id,
                    step.chunk_id,
                    pack_entries((u, c) for u, c in rows),
                    self.view.plan(step.epoch_id).proof(step.chunk_id),
                )
            chunk = payment_rows(session, step.epoch_id, step.first_entry, step.entry_count)
            if len(chunk) != step.entry_count:
                raise SettlementError(f"epoch {step.epoch_id}: payments chunk does not match")
            # Every planned payment is sent, also one the user cancelled meanwhile: the contract
            # skips what it cannot charge (PaymentSkipped), so each gets its outcome on chain.
            payments = [payment_tuple(Payment(signed, p.requested)) for p, signed in chunk]
            proof = self.view.plan(step.epoch_id).proof(step.chunk_id)
            return settlement.applyPayments(step.epoch_id, step.chunk_id, payments, proof)
