"""One published record: does it parse, is its published digest its EIP-712 digest, did the
station's valid key sign it (`gridpoints_protocol.checks.RecordVerifier`, ``now=None``), did
it end no later than its epoch's commit allows (`gridpoints_protocol.checks.ends_too_late`,
the ingest's own end-time rule, against the commit block's timestamp), and is its payment the
user's authorisation it commits to (`gridpoints_protocol.payments.check_payment`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridpoints_audit.findings import Discrepancy, Kind, RecordRef, as_hex
from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.checks import Problem, RecordVerifier, Recovered, ends_too_late
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.keys import KeyDirectory, StationHistory
from gridpoints_protocol.payments import PaymentProblem, check_payment
from gridpoints_protocol.record import Domain, SignedRecord
from gridpoints_protocol.wire import RejectReason


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """A published record that parsed, with what the later checks need."""

    signed: SignedRecord
    digest: bytes  # recomputed under the deployment's domain
    ref: RecordRef
    where: str  # how messages name it
    station: StationHistory | None  # None: not in the registry
    authorization: PaymentOpening | None  # verified; None: unpaid, refused or not published
    signer: bytes | None  # recovered from the signature; None: not recoverable
    # The wallet of the record's verified opening; None on public data (no opening published).
    user: bytes | None = None


def parse(item: Any) -> SignedRecord | RecordValidationError:
    """The signed record of a published entry (its record and signature; the entry carries
    more, checked elsewhere), or why it does not parse."""
    if type(item) is dict or isinstance(item, Mapping):
        item = {"record": item.get("record"), "signature": item.get("signature")}
    try:
        return SignedRecord.from_json(item)
    except RecordValidationError as exc:
        return exc


class RecordChecks:
    """The checks of one record on its own, for one deployment and its registry history."""

    def __init__(
        self,
        domain: Domain,
        settlement_domain: SettlementDomain,
        stations: Mapping[bytes, StationHistory],
        *,
        clock_skew_s: int,
    ) -> None:
        self.domain = domain
        self.clock_skew_s = clock_skew_s
        self.settlement_domain = settlement_domain
        self.stations = stations
        self.verifier = RecordVerifier(
            domain, KeyDirectory(stations), settlement_domain=settlement_domain
        )

    def check(
        self,
        epoch_id: int,
        item: Any,
        leaf: int | None,
        committed_at: int,
        parsed: SignedRecord | RecordValidationError | None = None,
        recovered: Recovered | None = None,
    ) -> tuple[CheckedRecord | None, list[Discrepancy]]:
        """The record published as `item` at `leaf` of the epoch committed at `committed_at`
        (block timestamp); None when it does not even parse (then it has no leaf).
        `parsed`: `parse(item)` and `recovered` its digest and signer (`recover_record`), if
        already computed."""
        e = epoch_id
        is_mapping = type(item) is dict or isinstance(item, Mapping)
        signed = parse(item) if parsed is None else parsed
        if isinstance(signed, RecordValidationError):
            exc = signed  # it does not parse
            return None, [
                Discrepancy(
                    Kind.RECORD_MALFORMED,
                    f"a published record of epoch {e} does not parse: {exc.summary()}",
                    epoch_id=e,
                    leaf_index=leaf,
                    found=exc.reason,
                    details={"fields": [{"field": f.field, "message": f.message} for f in exc]},
                )
            ]
        out: list[Discrepancy] = []
        record = signed.record
        verdict = self.verifier.verify(signed, now=None, recovered=recovered)
        digest = verdict.digest if verdict.digest is not None else record.digest(self.domain)
        ref = RecordRef(record.station_id, record.sequence, digest, leaf)
        where = f"record {record.sequence} of station 0x{record.station_id.hex()} (epoch {e})"
        claimed = item.get("digest") if is_mapping else None
        if claimed is not None and (
            not isinstance(claimed, str) or claimed.lower() != as_hex(digest)
        ):
            out.append(
                Discrepancy(
                    Kind.DIGEST_MISMATCH,
                    f"{where}: the published digest is not the record's EIP-712 digest",
                    epoch_id=e,
                    **ref.fields(),
                    expected=as_hex(digest),
                    found=claimed,
                )
            )
        station = self.stations.get(record.station_id)
        if verdict.problem is not None:
            out.append(_record_problem(e, where, ref, verdict.problem, verdict.signer, station))
        if ends_too_late(record.end_time, committed_at, self.clock_skew_s):
            out.append(
                Discrepancy(
                    Kind.END_AFTER_COMMIT,
                    f"{where}: it ends at {record.end_time}, "
                    f"{record.end_time - committed_at} s after its epoch was committed on chain "
                    f"(block time {committed_at}); ingest tolerates {self.clock_skew_s} s",
                    epoch_id=e,
                    **ref.fields(),
                    expected=f"endTime <= {committed_at} + {self.clock_skew_s}",
                    found=record.end_time,
                )
            )

        # The opening, where the source has it (a full bundle for a named auditor): it must
        # hash to the signed commitment, and then names the user the record credits.
        user: bytes | None = None
        opening_json = item.get("opening") if is_mapping else None
        if opening_json is not None:
            try:
                opening: UserOpening | None = UserOpening.from_json(opening_json)
            except RecordValidationError as exc:
                opening = None
                out.append(
                    Discrepancy(
                        Kind.OPENING_MISMATCH,
                        f"{where}: its opening does not parse: {exc.summary()}",
                        epoch_id=e,
                        **ref.fields(),
                    )
                )
            if opening is not None and not opening.opens(record.user_commitment):
                out.append(
                    Discrepancy(
                        Kind.OPENING_MISMATCH,
                        f"{where}: its opening does not hash to the record's userCommitment",
                        epoch_id=e,
                        **ref.fields(),
                        expected=as_hex(record.user_commitment),
                        found=as_hex(opening.commitment),
                    )
                )
            elif opening is not None:
                user = opening.user

        # Payment: the opening of the salted link the record commits to. Public data holds no
        # payment openings (they would join the wallet's burn to this station): without the
        # record's user opening there is none to check, and the debits are checked in sum
        # (anchors.public_debit_findings).
        payment_json = item.get("payment") if is_mapping else None
        try:
            authorization = (
                None
                if payment_json is None and user is None
                else check_payment(record, payment_json, self.settlement_domain, user)
            )
        except PaymentProblem as exc:
            authorization = None
            out.append(
                Discrepancy(
                    Kind.PAYMENT_INVALID,
                    f"{where}: payment authorisation refused ({exc.reason}): {exc.message}",
                    epoch_id=e,
                    **ref.fields(),
                    expected="a valid authorisation by the record's user",
                    found=str(exc.reason),
                    details={"reason": str(exc.reason)},
                )
            )
        checked = CheckedRecord(
            signed, digest, ref, where, station, authorization, verdict.signer, user
        )
        return checked, out


def _record_problem(
    e: int,
    where: str,
    ref: RecordRef,
    problem: Problem,
    signer: bytes | None,
    station: StationHistory | None,
) -> Discrepancy:
    """The verifier's reason, told apart the way an auditor needs: a signature by nobody the
    registry knows, a revoked key, or a known key outside its period."""
    reason = problem.reason
    found: Any = problem.details
    if reason == RejectReason.BAD_SIGNATURE:
        kind = Kind.SIGNATURE_INVALID
    elif reason == RejectReason.UNKNOWN_STATION:
        kind = Kind.UNKNOWN_STATION
    elif reason == RejectReason.ENERGY_EXCEEDS_MAX_POWER:
        kind = Kind.ENERGY_EXCEEDS_MAX_POWER
    elif reason == RejectReason.KEY_NOT_VALID and station is not None and signer is not None:
        signer_text = to_checksum_address(signer)
        found = {"signer": signer_text, **(problem.details or {})}
        if signer_text not in {p.signer for p in station.keys}:
            # Recovers to nobody the registry knows: the content changed after signing,
            # or the signature was made by someone else.
            kind = Kind.SIGNATURE_INVALID
        elif station.revoked_at is not None and "revokedAt" in (problem.details or {}):
            kind = Kind.KEY_REVOKED
        else:
            kind = Kind.KEY_NOT_VALID
    else:
        try:
            kind = Kind(str(reason))
        except ValueError:
            kind = Kind.SIGNATURE_INVALID
    return Discrepancy(
        kind,
        f"{where}: {problem.message}",
        epoch_id=e,
        **ref.fields(),
        expected="a record the station's valid key signed",
        found=found,
        details={"reason": str(reason)},
    )
