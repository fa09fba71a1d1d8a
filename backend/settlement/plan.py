"""The settlement plan of a sealed epoch: its steps, written down once, and the plan root its
commit names (see the package docstring)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Epoch, EpochEntry, EpochPayment, SettlementStep
from gridpoints_chain.contracts import pack_entries
from gridpoints_protocol.plan import (
    SettlementPlan,
    chunk_bounds,
    credit_chunk_leaf,
    payment_chunk_leaf,
)


@dataclass(frozen=True, slots=True)
class SettlementConfig:
    confirmations: int = 0
    credit_chunk_size: int = 200
    payment_chunk_size: int = 50
    receipt_timeout_s: float = 60.0
    poll_interval_s: float = 0.25
    # Blocks below the head from which a step is final; None: the node's `finalized` block.
    finality_blocks: int | None = None


@dataclass(frozen=True, slots=True)
class StepView:
    """A step as the worker handles it, detached from the session."""

    epoch_id: int
    step: int
    kind: str
    chunk_id: int | None
    first_entry: int
    entry_count: int
    amount: int
    state: str


def plan_steps(session: Session, epoch: Epoch, config: SettlementConfig) -> list[SettlementStep]:
    """Writes the settlement plan of `epoch` (idempotent: an existing plan is returned)."""
    existing = list(
        session.scalars(
            select(SettlementStep)
            .where(SettlementStep.epoch_id == epoch.epoch_id)
            .order_by(SettlementStep.step)
        )
    )
    if existing:
        return existing
    now = datetime.now(UTC)
    steps = [
        SettlementStep(
            epoch_id=epoch.epoch_id,
            step=0,
            kind="commit",
            chunk_id=None,
            first_entry=0,
            entry_count=0,
            amount=0,
            state="planned",
            updated_at=now,
        )
    ]
    credits = session.execute(
        select(EpochEntry.ordinal, EpochEntry.credit)
        .where(EpochEntry.epoch_id == epoch.epoch_id, EpochEntry.credit > 0)
        .order_by(EpochEntry.ordinal)
    ).all()
    chunk_id = 0
    for start, length in chunk_bounds(len(credits), config.credit_chunk_size):
        chunk = credits[start : start + length]
        steps.append(
            SettlementStep(
                epoch_id=epoch.epoch_id,
                step=len(steps),
                kind="credits",
                chunk_id=chunk_id,
                first_entry=chunk[0][0],
                entry_count=len(chunk),
                amount=sum(c for _, c in chunk),
                state="planned",
                updated_at=now,
            )
        )
        chunk_id += 1
    payments = session.execute(
        select(EpochPayment.ordinal, EpochPayment.requested)
        .where(EpochPayment.epoch_id == epoch.epoch_id)
        .order_by(EpochPayment.ordinal)
    ).all()
    for start, length in chunk_bounds(len(payments), config.payment_chunk_size):
        chunk = payments[start : start + length]
        steps.append(
            SettlementStep(
                epoch_id=epoch.epoch_id,
                step=len(steps),
                kind="payments",
                chunk_id=chunk_id,
                first_entry=chunk[0][0],
                entry_count=len(chunk),
                amount=sum(r for _, r in chunk),
                state="planned",
                updated_at=now,
            )
        )
        chunk_id += 1
    session.add_all(steps)
    session.flush()
    return steps


def epoch_plan(session: Session, epoch_id: int) -> SettlementPlan:
    """The plan the commit of `epoch_id` names (gridpoints_protocol.plan): one leaf per chunk
    step of its stored plan (`plan_steps`), from the epoch's credits and payments in order."""
    steps = steps_of(session, epoch_id)
    credits = pack_entries(
        (u, c)
        for u, c in session.execute(
            select(EpochEntry.user_address, EpochEntry.credit)
            .where(EpochEntry.epoch_id == epoch_id, EpochEntry.credit > 0)
            .order_by(EpochEntry.ordinal)
        ).all()
    )
    payments = [
        (bytes(a), int(r))
        for a, r in session.execute(
            select(EpochPayment.authorization, EpochPayment.requested)
            .where(EpochPayment.epoch_id == epoch_id)
            .order_by(EpochPayment.ordinal)
        ).all()
    ]
    leaves: list[bytes] = []
    credits_used = payments_used = 0
    for step in steps:
        if step.kind == "credits":
            leaves.append(
                credit_chunk_leaf(credits[credits_used : credits_used + step.entry_count])
            )
            credits_used += step.entry_count
        elif step.kind == "payments":
            part = payments[payments_used : payments_used + step.entry_count]
            leaves.append(payment_chunk_leaf(part))
            payments_used += step.entry_count
    return SettlementPlan(leaves)


def step_view(step: SettlementStep) -> StepView:
    return StepView(
        step.epoch_id,
        step.step,
        step.kind,
        step.chunk_id,
        step.first_entry,
        step.entry_count,
        step.amount,
        step.state,
    )


def settlement_status(session: Session) -> dict[str, int]:
    """Counts of epochs by state (for /healthz and the CLI)."""
    return {
        state: int(count)
        for state, count in session.execute(select(Epoch.state, func.count()).group_by(Epoch.state))
    }


def steps_of(session: Session, epoch_id: int) -> Sequence[SettlementStep]:
    return session.scalars(
        select(SettlementStep)
        .where(SettlementStep.epoch_id == epoch_id)
        .order_by(SettlementStep.step)
    ).all()
