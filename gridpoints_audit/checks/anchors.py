"""The epoch refolded from its published records must give what the epoch anchored: the
records root always, and with a verified tariff the credits root, totalCredits and
totalDebits, recomputed with `gridpoints_protocol.accumulator.EpochAccumulator` (the sealer's
own fold) with each station's zone from the registry and each verified authorisation's
``maxPoints``."""

from __future__ import annotations

import dataclasses

from gridpoints_audit.chain_facts import ChainEpoch, ChainFacts
from gridpoints_audit.checks.records import CheckedRecord
from gridpoints_audit.findings import Discrepancy, Kind, RecordRef, as_hex
from gridpoints_protocol.accumulator import EpochAccumulator, EpochSummary, SealingError
from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain, SignedAuthorization
from gridpoints_protocol.merkle import RootBuilder, record_leaf_hash
from gridpoints_protocol.record import ZERO_BYTES32, Direction
from gridpoints_protocol.tariff import Tariff, ValuationError


class EpochRefold:
    """Folds an epoch's published records in list order: with a tariff through the sealer's
    accumulator (roots, totals, payments), without one into the records root alone."""

    def __init__(self, tariff: Tariff | None) -> None:
        # record's paymentAuthorization (the salted link) -> authorised maximum, filled as the
        # records come with their payment openings
        self.caps: dict[bytes, int] = {}
        self.accumulator = EpochAccumulator(tariff, self.caps) if tariff is not None else None
        self.tree = RootBuilder() if self.accumulator is None else None
        self.refs: dict[int, RecordRef] = {}  # accumulator position -> record, when valued
        self.payments: dict[bytes, PaymentOpening] = {}  # link -> the openings that count
        # The prices of paid charges whose payment opening the source does not hold (public
        # data): their debits are checked in sum against the chain (public_debit_findings).
        self.unopened_prices: list[int] = []
        self.position = 0  # records folded so far
        # Every record's user is known (its opening verified): only then are the credits root
        # and the per-user movements checkable. Public data holds no openings.
        self.attributed = True

    def pays(self, checked: CheckedRecord) -> None:
        """The record's verified authorisation counts (its user's maximum caps the debit)."""
        authorization = checked.authorization
        assert authorization is not None
        link = checked.signed.record.payment_authorization
        self.caps[link] = authorization.authorization.max_points
        self.payments[link] = authorization

    def signed_by_digest(self, domain: SettlementDomain) -> dict[bytes, SignedAuthorization]:
        """The counting authorisations by their EIP-712 digest (what the chain's events name)."""
        return {o.signed.digest(domain): o.signed for o in self.payments.values()}

    def digest_of_link(self, domain: SettlementDomain) -> dict[bytes, bytes]:
        """record's paymentAuthorization (link) -> the authorisation's digest it opens to."""
        return {link: o.signed.digest(domain) for link, o in self.payments.items()}

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
            points = self.accumulator.add(
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
        if (
            checked.authorization is None
            and checked.user is None
            and record.direction == Direction.CHARGE
            and record.payment_authorization != ZERO_BYTES32
            and points
        ):
            self.unopened_prices.append(points)
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
    """The recomputed credits root and totalDebits (only when every record's user and payment
    is known: `attributed`) and totalCredits against the ones the epoch committed."""
    e, ce = chain_epoch.epoch_id, chain_epoch
    out = []
    for kind, label, mine, anchored in (
        (Kind.CREDITS_ROOT_MISMATCH, "creditsRoot", as_hex(summary.credits_root),
         as_hex(ce.credits_root)),
        (Kind.TOTAL_CREDITS_MISMATCH, "totalCredits", summary.total_credits,
         ce.total_credits),
        (Kind.TOTAL_DEBITS_MISMATCH, "totalDebits", summary.total_debits, ce.total_debits),
    ):  # fmt: skip
        if kind != Kind.TOTAL_CREDITS_MISMATCH and not attributed:
            # Without openings: no credit leaves, and no debits (maxPoints is private); the
            # debits are checked in sum (public_debit_findings).
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


def public_debit_findings(
    chain_epoch: ChainEpoch, facts: ChainFacts, prices: list[int]
) -> list[Discrepancy]:
    """Without payment openings (public data), the epoch's debits checked in sum: `prices` are
    the values of its paid charge records. Each payment asks at most its record's price
    (min(price, maxPoints)), so the committed totalDebits is at most their sum; the chain's
    payments (PaymentApplied and PaymentSkipped, each stating what it asked) are never more
    than the paid records, and once there is one per paid record they ask exactly totalDebits
    and can be matched to the records with each asking at most its record's price. Which
    payment is whose record is the payer's to check (gridpoints-audit user) or a named
    auditor's with the openings."""
    ce, e = chain_epoch, chain_epoch.epoch_id
    asked = [p.requested for p in facts.payments.get(e, [])]
    asked += [s.requested for s in facts.skips.get(e, [])]
    out: list[Discrepancy] = []

    def finding(message: str, expected: object, found: object) -> None:
        out.append(
            Discrepancy(
                Kind.TOTAL_DEBITS_MISMATCH,
                f"epoch {e}: {message}",
                epoch_id=e,
                expected=expected,
                found=found,
            )
        )

    if ce.total_debits > sum(prices):
        finding(
            f"committed totalDebits {ce.total_debits} exceeds the {sum(prices)} points its "
            f"{len(prices)} paid charge records are worth",
            f"<= {sum(prices)}",
            ce.total_debits,
        )
    if len(asked) > len(prices):
        finding(
            f"the chain settled {len(asked)} payments for {len(prices)} paid charge records",
            len(prices),
            len(asked),
        )
    elif len(asked) == len(prices):
        if sum(asked) != ce.total_debits:
            finding(
                f"its payments asked {sum(asked)} points, it committed totalDebits "
                f"{ce.total_debits}",
                ce.total_debits,
                sum(asked),
            )
        # Largest ask against largest price: if that pairing fails, every pairing does.
        pairs = zip(sorted(asked, reverse=True), sorted(prices, reverse=True), strict=True)
        if any(a > p for a, p in pairs):
            finding(
                "a payment asked more than any unmatched paid record's price allows",
                "each payment <= its record's price",
                sorted(asked, reverse=True),
            )
    return out


def with_payment_digests(summary: EpochSummary, digests: dict[bytes, bytes]) -> EpochSummary:
    """`summary` with each payment under its authorisation's EIP-712 digest instead of the
    record's salted link (the chain's plan leaves and events name the digest)."""
    return dataclasses.replace(
        summary,
        payments=tuple(
            dataclasses.replace(p, authorization=digests[p.authorization]) for p in summary.payments
        ),
    )
