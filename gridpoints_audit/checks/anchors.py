"""The epoch refolded from its published records must give what the epoch anchored: the
records root always, and with a verified tariff the credits root, totalCredits and
totalDebits, recomputed with `gridpoints_protocol.accumulator.EpochAccumulator` (the sealer's
own fold) with each station's zone from the registry and each verified authorisation's
``maxPoints``."""

from __future__ import annotations

from gridpoints_audit.chain_facts import ChainEpoch
from gridpoints_audit.checks.records import CheckedRecord
from gridpoints_audit.findings import Discrepancy, Kind, RecordRef, as_hex
from gridpoints_protocol.accumulator import EpochAccumulator, EpochSummary, SealingError
from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.merkle import RootBuilder, record_leaf_hash
from gridpoints_protocol.tariff import Tariff, ValuationError


class EpochRefold:
    """Folds an epoch's published records in list order: with a tariff through the sealer's
    accumulator (roots, totals, payments), without one into the records root alone."""

    def __init__(self, tariff: Tariff | None) -> None:
        # authorisation digest -> authorised maximum, filled as the records come
        self.caps: dict[bytes, int] = {}
        self.accumulator = EpochAccumulator(tariff, self.caps) if tariff is not None else None
        self.tree = RootBuilder() if self.accumulator is None else None
        self.refs: dict[int, RecordRef] = {}  # accumulator position -> record, when valued
        self.payments: dict[bytes, SignedAuthorization] = {}  # the authorisations that count
        self.position = 0  # records folded so far
        # Every record's user is known (its opening verified): only then are the credits root
        # and the per-user movements checkable. Public data holds no openings.
        self.attributed = True

    def pays(self, checked: CheckedRecord) -> None:
        """The record's verified authorisation counts (its user's maximum caps the debit)."""
        authorization = checked.authorization
        assert authorization is not None
        digest = checked.signed.record.payment_authorization
        self.caps[digest] = authorization.authorization.max_points
        self.payments[digest] = authorization

    def add(self, epoch_id: int, checked: CheckedRecord) -> list[Discrepancy]:
        """Folds in the next record (a finding when the tariff cannot value it)."""
        position = self.position
        self.position += 1
        signed, record = checked.signed, checked.signed.record
        if self.accumulator is None:
            assert self.tree is not None
            self.tree.append(record_leaf_hash(checked.digest, signed.signature))
            return []
        self.refs[position] = checked.ref
        station = checked.station
        user = checked.user
        if user is None:
            # Without the opening: a paid charge debits its authorisation's user (public in
            # the payment anyway); any other record gets a stand-in user (the commitment's
            # bytes, never a real wallet), which keeps every total exact. Who is credited is
            # then not checked.
            self.attributed = False
            authorization = checked.authorization
            user = (
                authorization.authorization.user
                if authorization is not None
                else record.user_commitment[:20]
            )
        try:
            self.accumulator.add(
                log_index=position,
                digest=checked.digest,
                signature=signed.signature,
                user=user,
                direction=int(record.direction),
                energy_wh=record.energy_wh,
                start_time=record.start_time,
                end_time=record.end_time,
                # An unregistered station has no zone: value it at the tariff's default rates
                # (the record is a finding anyway).
                zone=station.zone if station is not None else 0,
                payment_authorization=record.payment_authorization,
            )
        except ValuationError as exc:
            return [
                Discrepancy(
                    Kind.RECORD_UNVALUABLE,
                    f"{checked.where}: the tariff cannot value it ({exc})",
                    epoch_id=epoch_id,
                    **checked.ref.fields(),
                    found=getattr(exc, "reason", str(exc)),
                )
            ]
        return []

    def finish(self, epoch_id: int) -> tuple[EpochSummary | None, bytes | None, list[Discrepancy]]:
        """The valued summary (None without a tariff, or when a total is out of range), the
        records root (None when it cannot be computed) and the finding why not."""
        summary: EpochSummary | None = None
        found: list[Discrepancy] = []
        if self.accumulator is not None:
            try:
                summary = self.accumulator.finish()
            except SealingError as exc:
                found.append(
                    Discrepancy(
                        Kind.TOTALS_OUT_OF_RANGE,
                        f"epoch {epoch_id}: {exc}",
                        epoch_id=epoch_id,
                        found=str(exc),
                    )
                )
        root = summary.records_root if summary is not None else None
        if root is None and self.tree is not None:
            root = self.tree.root()
        return summary, root, found


def records_root_findings(chain_epoch: ChainEpoch, root: bytes | None) -> list[Discrepancy]:
    """The recomputed records root (None: not computed) against the anchored one."""
    e = chain_epoch.epoch_id
    if root is None or root == chain_epoch.records_root:
        return []
    return [
        Discrepancy(
            Kind.RECORDS_ROOT_MISMATCH,
            f"the published records of epoch {e} hash to another root than the anchored one",
            epoch_id=e,
            expected=as_hex(root),
            found=as_hex(chain_epoch.records_root),
            details={"expectedIs": "recomputed", "foundIs": "anchored"},
        )
    ]


def anchored_totals_findings(
    chain_epoch: ChainEpoch, summary: EpochSummary, *, attributed: bool = True
) -> list[Discrepancy]:
    """The recomputed credits root (only when every record's user is known: `attributed`) and
    totals against the ones the epoch committed."""
    e, ce = chain_epoch.epoch_id, chain_epoch
    out = []
    for kind, label, mine, anchored in (
        (Kind.CREDITS_ROOT_MISMATCH, "creditsRoot", as_hex(summary.credits_root),
         as_hex(ce.credits_root)),
        (Kind.TOTAL_CREDITS_MISMATCH, "totalCredits", summary.total_credits,
         ce.total_credits),
        (Kind.TOTAL_DEBITS_MISMATCH, "totalDebits", summary.total_debits, ce.total_debits),
    ):  # fmt: skip
        if kind == Kind.CREDITS_ROOT_MISMATCH and not attributed:
            continue
        if mine != anchored:
            out.append(
                Discrepancy(
                    kind,
                    f"epoch {e} committed {label} {anchored}; its records give {mine}",
                    epoch_id=e,
                    expected=mine,
                    found=anchored,
                    details={"expectedIs": "recomputed", "foundIs": "anchored"},
                )
            )
    return out
