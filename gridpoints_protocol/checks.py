"""The stateless checks of a signed record: one pure class, no I/O, no clock.

`RecordVerifier` decides everything about a signed record that does not depend on the other
records: whether it parses (``malformed``, and the record parser's own ``meter_delta_mismatch``
and ``end_before_start``), whether it was signed for this deployment's EIP-712 domain
(``wrong_domain``), whether the signature is canonical and recoverable (``bad_signature``),
whether its end time is plausible (deferred ``end_in_future``), whether the station is registered
(``unknown_station``), whether the recovering key was the station's valid key at that end time
(``key_not_valid``) and whether the energy fits the station's maximum power over the duration
(``energy_exceeds_max_power``). The stateful checks (duplicate, equivocation, meter running
backwards) are `backend.ingest`'s.

The same class serves the ingest API and the auditor: both hand it the domain, a station
lookup (the backend's `KeyDirectory`; an auditor may build one from chain events with
``KeyDirectory(chain.station_histories())``) and, explicitly, the time to judge
``end_in_future`` against (None skips that check, for re-verifying history). Nothing here
reads a clock, a database or the chain.

Three verdicts: accepted (no problem), rejected (a `Problem`, final) and **deferred** (a
`Deferral`: not judged yet, nothing is stored, the submitter sends the record again later).

The registry horizon. The backend knows the StationRegistry only up to the last block its
follower applied (it stays ``confirmations`` blocks behind the head, plus a poll interval). Call
that block's timestamp T (`RegistrySnapshot.decided_before`). Rotations and revocations take
effect at their block's timestamp, and a later block never has a smaller timestamp than T (equal
is possible: Anvil mines several blocks in one second), so every rotation or revocation the
follower has not applied yet takes effect at T or later. Hence, for a record that ended at E:

* E < T: the key state at E is decided; what the mirror says is final;
* E >= T: not decided, except where no future event can change the answer. Events only append:
  ``activeFrom`` and ``maxPowerW`` never change and a revocation is irreversible, so "E is before
  the station's activeFrom" and "the station was revoked at or before E" are final at any E.
  Everything else is not: the signer may be the key of a rotation still on its way (or a key
  rotated back in), the current key may be rotated out or revoked at some instant in [T, E], and
  an unknown station may have been registered in a block not applied yet.

A station id the mirror does not know is rejected ``unknown_station`` only when E < T (its
registration, if any, is at or after T: the records of a station registered with an
``activeFrom`` in the past are valid then, so this is the one final answer that a later
registration can contradict; it takes a record that ended before the registration's block and
was submitted before the follower applied that block).

The order of the checks is part of the contract, because a record can fail several and gets one
outcome:

1. parse, domain, signature -- final rejections, at any horizon: a forged or foreign record is
   never deferred;
2. end time beyond the backend's clock plus its tolerance (`ends_too_late`, the rule the
   auditor applies against the epoch's commit time) -- deferred ``end_in_future`` (a station
   clock running ahead, or a transfer not over yet: the record may be fine later);
3. station unknown -- rejected ``unknown_station`` if E < T, else deferred ``registry_behind``;
4. key: E before ``activeFrom`` or at/after a revocation -- rejected ``key_not_valid`` at any
   horizon; otherwise, if E >= T, deferred ``registry_behind``; otherwise the registry's
   isKeyValidAt rule, rejected ``key_not_valid`` when it fails;
5. energy against maximum power -- rejected ``energy_exceeds_max_power``;
6. the opening of the user commitment (`verify_json`): a missing or malformed opening is
   ``malformed`` (with the parse failures of step 1); one that does not hash to the record's
   ``userCommitment`` is ``opening_mismatch``, judged only on an authenticated record;
7. the payment authorisation, if any (`verify_json`, after everything above passed), whose user
   must be the opening's.

Authenticity comes before content, so a content complaint is only ever made about a record the
station really signed: `Verdict.authenticated` says the signature was verified against the
station's valid key (checks 5 and 6 and ingest's stateful checks run only on such records).
A lookup without a horizon (``decided_before`` None: the auditor's directory, built from the
complete chain history) decides every end time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.commitment import UserOpening, split_opening
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.errors import FieldError, RecordValidationError
from gridpoints_protocol.fastcheck import FastResult, check_submission, check_submissions
from gridpoints_protocol.keys import StationHistory, key_valid_at
from gridpoints_protocol.payments import PaymentProblem, check_payment, split_payment
from gridpoints_protocol.record import (
    ZERO_BYTES32,
    Domain,
    SignatureError,
    SignedRecord,
    recover_signer_bytes,
)
from gridpoints_protocol.wire import DeferReason, RejectReason

SECONDS_PER_HOUR = 3_600
# The documented tolerance for a station's clock running ahead (docs/AUDIT.md): the backend's
# default ``clock_skew_s`` and the auditor's default ``--clock-skew-s``.
DEFAULT_CLOCK_SKEW_S = 300
# A registry_behind hint never asks for more than this: the horizon estimate assumes the
# follower's horizon moves with the clock, which a stalled follower or a quiet chain breaks.
MAX_REGISTRY_RETRY_S = 300


# A record's digest under a domain and what its signature recovers to: the signer's 20 bytes,
# or why it recovers to nobody (the SignatureError's text). Computed ahead by
# `recover_record`, e.g. in another process of the same program (the auditor's workers).
Recovered = tuple[bytes, bytes | str]


def recover_record(signed: SignedRecord, domain: Domain) -> Recovered:
    """The part of `RecordVerifier.verify` that needs nothing but the record and the domain,
    and most of its time: the digest and the signature's recovery."""
    digest = signed.record.digest(domain)
    return digest, recover_digest_signer(digest, signed.signature)


def recover_digest_signer(digest: bytes, signature: bytes) -> bytes | str:
    """The signer's 20 bytes, or why the signature recovers to nobody."""
    try:
        return recover_signer_bytes(digest, signature)
    except SignatureError as exc:
        return str(exc)


def ends_too_late(end_time: int, reference_time: int, clock_skew_s: int) -> bool:
    """The one end-time rule: a record cannot have ended more than `clock_skew_s` seconds after
    `reference_time`. Ingest judges it against the backend's clock when the record arrives (and
    defers ``end_in_future``); the auditor against the timestamp of the block that committed the
    record's epoch, which is later than its arrival, so a record that passed ingest passes it."""
    return end_time > reference_time + clock_skew_s


class RegistrySnapshot(Protocol):
    """One consistent reading of the registry mirror (`backend.registry.RegistryView`)."""

    @property
    def decided_before(self) -> int | None:
        """Record end times below this (the timestamp of the last applied block) are decided;
        None: the lookup holds the complete history, every end time is decided."""
        ...

    @property
    def as_of_block(self) -> int | None:
        """The last block applied (None when unknown or not applicable)."""
        ...

    def station(self, station_id: bytes) -> StationHistory | None: ...


class StationLookup(Protocol):
    """Where the verifier learns a station's registry state (`backend.registry.KeyDirectory`)."""

    def snapshot(self) -> RegistrySnapshot: ...


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a submission is rejected: a stable reason code, a message for humans, details for
    the rejections table (JSON-serialisable)."""

    reason: RejectReason
    message: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Deferral:
    """Why a submission cannot be judged yet, and the hint of when to send it again."""

    reason: DeferReason
    message: str
    retry_after: int  # seconds, >= 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of the stateless checks.

    ``digest`` is the record's digest under the verifier's domain whenever the record parsed
    (also when a later check failed), ``signer`` the recovered 20-byte address when the
    signature was recoverable; ``problem`` (final) and ``deferral`` (not yet decidable) are both
    None when every check passed, and never both set. ``authenticated``: the signature was
    verified against the station's valid key at the record's end time.
    """

    signed: SignedRecord | None
    digest: bytes | None = None
    signer: bytes | None = None
    problem: Problem | None = None
    # The private payment opening (signed authorisation and salt), when paid with points.
    payment: PaymentOpening | None = None
    # Its authorisation's EIP-712 digest under the verifier's Settlement domain (what the chain
    # burns under; the record carries only the salted link to it).
    payment_digest: bytes | None = None
    deferral: Deferral | None = None
    authenticated: bool = False
    # The verified opening of the record's user commitment (verify_json of an accepted record).
    opening: UserOpening | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.deferral is None


def _malformed(exc: RecordValidationError) -> Problem:
    return Problem(
        # A lookup by value; mypy reads the call as the two-argument __new__.
        RejectReason(exc.reason),  # type: ignore[call-arg]
        exc.summary(),
        {"fields": [{"field": e.field, "message": e.message} for e in exc.errors]},
    )


def domain_json(domain: Domain) -> dict[str, Any]:
    return {
        "chainId": domain.chain_id,
        "verifyingContract": to_checksum_address(domain.verifying_contract),
    }


class RecordVerifier:
    """Stateless checks of signed records for one EIP-712 domain."""

    def __init__(
        self,
        domain: Domain,
        stations: StationLookup,
        *,
        settlement_domain: SettlementDomain | None = None,
        clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
        registry_retry_slack_s: int = 1,
    ) -> None:
        if clock_skew_s < 0:
            raise ValueError("clock_skew_s must be >= 0")
        if registry_retry_slack_s < 0:
            raise ValueError("registry_retry_slack_s must be >= 0")
        self.domain = domain
        # Payment authorisations are signed for the Settlement contract; without its domain a
        # record paid with points cannot be checked and is refused.
        self.settlement_domain = settlement_domain
        self.stations = stations
        self.clock_skew_s = clock_skew_s
        # Added to a registry_behind hint: the follower applies a block up to one poll
        # interval after it reaches the confirmation depth.
        self.registry_retry_slack_s = registry_retry_slack_s

    def verify_json(
        self, item: Any, *, now: int | None, claimed_domain: Domain | None = None
    ) -> Verdict:
        """Parses one submitted JSON value (``{"record", "signature", "opening"}``, with
        ``"payment"`` when the record is paid with points) and verifies it."""
        fast = None if check_submission is None else check_submission(item, self.domain.separator)
        if fast is not None:
            return self._verify_fast(fast, now, claimed_domain)
        return self._verify_json_parsing(item, now, claimed_domain)

    def verify_json_many(
        self, items: Sequence[Any], *, now: int | None, claimed_domain: Domain | None = None
    ) -> list[Verdict]:
        """`verify_json` of each item, in order (a batch: the C fast path recovers every
        signature in one stretch without the interpreter lock)."""
        if check_submissions is None:
            return [
                self.verify_json(item, now=now, claimed_domain=claimed_domain) for item in items
            ]
        return [
            self._verify_json_parsing(item, now, claimed_domain)
            if fast is None
            else self._verify_fast(fast, now, claimed_domain)
            for item, fast in zip(
                items, check_submissions(items, self.domain.separator), strict=True
            )
        ]

    def _verify_fast(
        self, fast: FastResult, now: int | None, claimed_domain: Domain | None
    ) -> Verdict:
        """The verdict of a submission the C fast path read in canonical form (fastcheck.py):
        the same objects the parsers would build, the digest and, unless the signature needs
        the Python path's judgement, its signer."""
        signed, opening, digest, signer, opens = fast
        recovered: Recovered = (
            digest,
            signer if signer is not None else recover_digest_signer(digest, signed.signature),
        )
        # An opening that opens the commitment rides on the record's own verdict: on this hot
        # path the verdict is then built once instead of twice (a frozen dataclass, ~1 µs each).
        verdict = self._verify(signed, now, claimed_domain, recovered, opening if opens else None)
        return self._opened(verdict, opening, opens, None)

    def _verify_json_parsing(
        self, item: Any, now: int | None, claimed_domain: Domain | None
    ) -> Verdict:
        """`verify_json` on the Python path: parse, then verify."""
        item, payment = split_payment(item)
        item, opening_json = split_opening(item)
        try:
            signed = SignedRecord.from_json(item)
        except RecordValidationError as exc:
            return Verdict(None, problem=_malformed(exc))
        try:
            opening = UserOpening.from_json(opening_json)
        except RecordValidationError as exc:
            problem = (
                RecordValidationError(
                    [FieldError("opening", "missing: every submission carries the opening")]
                )
                if opening_json is None
                else exc.prefixed("opening")
            )
            return Verdict(signed, signed.record.digest(self.domain), problem=_malformed(problem))
        verdict = self.verify(signed, now=now, claimed_domain=claimed_domain)
        return self._opened(verdict, opening, opening.opens(signed.record.user_commitment), payment)

    def _opened(self, verdict: Verdict, opening: UserOpening, opens: bool, payment: Any) -> Verdict:
        """The opening and payment checks (6 and 7) of a record whose own checks gave
        `verdict`; `opens`: whether `opening` hashes to the record's userCommitment."""
        if not verdict.ok:
            return verdict
        signed = verdict.signed
        assert signed is not None
        if not opens:
            # The record is authentic (the station signed the commitment) but the opening
            # sent with it is not its opening: refused, or the private user column would
            # credit someone the station never committed to.
            return Verdict(
                signed,
                verdict.digest,
                verdict.signer,
                Problem(
                    RejectReason.OPENING_MISMATCH,
                    "the opening does not hash to the record's userCommitment",
                ),
                authenticated=True,
            )
        if verdict.opening is not opening:
            verdict = Verdict(
                signed, verdict.digest, verdict.signer, authenticated=True, opening=opening
            )
        if payment is None and signed.record.payment_authorization == ZERO_BYTES32:
            return verdict
        return self.verify_payment(verdict, payment)

    def verify_payment(self, verdict: Verdict, payment: Any) -> Verdict:
        """The payment checks (gridpoints_protocol.payments.check_payment) of a record that
        passed the record checks: after them, so that only a record the station really signed
        is judged."""
        assert verdict.signed is not None
        if self.settlement_domain is None:
            problem = Problem(
                RejectReason.AUTHORIZATION_MISMATCH,
                "this verifier has no Settlement domain to check payment authorisations with",
            )
            return Verdict(
                verdict.signed, verdict.digest, verdict.signer, problem, authenticated=True
            )
        try:
            authorization = check_payment(
                verdict.signed.record,
                payment,
                self.settlement_domain,
                None if verdict.opening is None else verdict.opening.user,
            )
        except PaymentProblem as exc:
            return Verdict(
                verdict.signed,
                verdict.digest,
                verdict.signer,
                Problem(exc.reason, exc.message),
                authenticated=True,
            )
        return Verdict(
            verdict.signed,
            verdict.digest,
            verdict.signer,
            payment=authorization,
            payment_digest=None
            if authorization is None
            else authorization.signed.digest(self.settlement_domain),
            authenticated=True,
            opening=verdict.opening,
        )

    def verify(
        self,
        signed: SignedRecord,
        *,
        now: int | None,
        claimed_domain: Domain | None = None,
        recovered: Recovered | None = None,
    ) -> Verdict:
        """Checks a parsed signed record. `now` (unix seconds) judges ``end_in_future``;
        `claimed_domain` is the domain the submitter says it signed for, if it said;
        `recovered`: `recover_record(signed, self.domain)` if already computed (by the
        caller's own code: it is not checked again)."""
        return self._verify(signed, now, claimed_domain, recovered, None)

    def _verify(
        self,
        signed: SignedRecord,
        now: int | None,
        claimed_domain: Domain | None,
        recovered: Recovered | None,
        opening: UserOpening | None,
    ) -> Verdict:
        """`verify`; `opening`, known to open the record's commitment, is carried by the
        verdict when every check passed."""
        record = signed.record
        if claimed_domain is not None and (
            claimed_domain.chain_id != self.domain.chain_id
            or claimed_domain.verifying_contract != self.domain.verifying_contract
        ):
            claimed, expected = domain_json(claimed_domain), domain_json(self.domain)
            return Verdict(
                signed,
                None,
                problem=Problem(
                    RejectReason.WRONG_DOMAIN,
                    f"signed for chain {claimed['chainId']} / StationRegistry "
                    f"{claimed['verifyingContract']}, but this backend verifies for chain "
                    f"{expected['chainId']} / StationRegistry {expected['verifyingContract']}",
                    {"claimed": claimed, "expected": expected},
                ),
            )
        if recovered is None:
            recovered = recover_record(signed, self.domain)
        digest, signer_or_error = recovered
        if isinstance(signer_or_error, str):
            return Verdict(
                signed,
                digest,
                problem=Problem(RejectReason.BAD_SIGNATURE, f"signature: {signer_or_error}"),
            )
        signer = signer_or_error

        end = record.end_time
        if now is not None and ends_too_late(end, now, self.clock_skew_s):
            ahead = end - now
            return Verdict(
                signed,
                digest,
                signer,
                deferral=Deferral(
                    DeferReason.END_IN_FUTURE,
                    f"endTime {end} is {ahead} s ahead of the backend's clock ({now}); at most "
                    f"{self.clock_skew_s} s are tolerated: send it again in "
                    f"{ahead - self.clock_skew_s} s",
                    max(1, ahead - self.clock_skew_s),
                ),
            )

        # One reading of the mirror: the station and the horizon it is decided up to.
        view = self.stations.snapshot()
        horizon = view.decided_before
        decided = horizon is None or end < horizon
        station = view.station(record.station_id)
        if station is None:
            if not decided:
                return Verdict(
                    signed,
                    digest,
                    signer,
                    deferral=self._registry_behind(
                        view,
                        end,
                        f"station 0x{record.station_id.hex()} is not in the StationRegistry "
                        "events followed so far, but its registration may be in a block not "
                        "applied yet",
                    ),
                )
            return Verdict(
                signed,
                digest,
                signer,
                Problem(
                    RejectReason.UNKNOWN_STATION,
                    f"station 0x{record.station_id.hex()} is not registered in the "
                    "StationRegistry"
                    + (
                        ""
                        if view.as_of_block is None
                        else f" (followed up to block {view.as_of_block})"
                    ),
                ),
            )

        final_invalid = end < station.active_from or (
            station.revoked_at is not None and end >= station.revoked_at
        )
        if not final_invalid and not decided:
            return Verdict(
                signed,
                digest,
                signer,
                deferral=self._registry_behind(
                    view,
                    end,
                    f"whether {to_checksum_address(signer)} was a valid key of station "
                    f"0x{record.station_id.hex()} at endTime {end} is decided once a block "
                    f"after it is applied (a rotation or revocation may still be on its way)",
                ),
            )
        if final_invalid or not key_valid_at(station, signer, end):
            return Verdict(
                signed, digest, signer, key_problem(station, to_checksum_address(signer), end)
            )

        duration = record.end_time - record.start_time
        # Wh * 3600 = W * s: exact integer arithmetic, no floating point anywhere.
        if record.energy_wh * SECONDS_PER_HOUR > station.max_power_w * duration:
            limit_wh = station.max_power_w * duration // SECONDS_PER_HOUR
            return Verdict(
                signed,
                digest,
                signer,
                authenticated=True,
                problem=Problem(
                    RejectReason.ENERGY_EXCEEDS_MAX_POWER,
                    f"energyWh {record.energy_wh} exceeds what the station's maximum power of "
                    f"{station.max_power_w} W delivers in {duration} s ({limit_wh} Wh)",
                    {
                        "energyWh": record.energy_wh,
                        "maxPowerW": station.max_power_w,
                        "durationS": duration,
                        "maxEnergyWh": limit_wh,
                    },
                ),
            )
        return Verdict(signed, digest, signer, authenticated=True, opening=opening)

    def _registry_behind(self, view: RegistrySnapshot, end: int, what: str) -> Deferral:
        horizon = view.decided_before
        assert horizon is not None
        where = (
            f"block {view.as_of_block} (timestamp {horizon})"
            if view.as_of_block is not None
            else "no block yet"
        )
        # The horizon moves with the chain's clock: end - horizon seconds from now (if the chain
        # keeps producing blocks), plus a poll of the follower.
        wait = max(1, end - horizon + 1) + self.registry_retry_slack_s
        return Deferral(
            DeferReason.REGISTRY_BEHIND,
            f"the backend has applied StationRegistry events up to {where}; the record ended at "
            f"{end}: {what}; send it again later",
            min(wait, MAX_REGISTRY_RETRY_S),
        )


def key_problem(station: StationHistory, signer: str, end_time: int) -> Problem:
    """A key_not_valid problem that says which rule the signer failed."""
    sid = "0x" + station.station_id.hex()
    details: dict[str, Any] = {"signer": signer, "endTime": end_time}
    periods = [p for p in station.keys if p.signer == signer]
    if end_time < station.active_from:
        why = f"station {sid} is active only from {station.active_from}"
    elif station.revoked_at is not None and end_time >= station.revoked_at:
        why = f"station {sid} was revoked at {station.revoked_at}"
        details["revokedAt"] = station.revoked_at
    elif not periods:
        why = (
            f"{signer} is not a key of station {sid} (the content was altered after signing, "
            "it was signed for another domain, or by another key)"
        )
    else:
        first = min(p.valid_from for p in periods)
        if end_time < first:
            why = f"key {signer} of station {sid} is valid only for records ending from {first}"
            details["validFrom"] = first
        else:
            ends = [p.valid_until for p in periods if p.valid_until and p.valid_until <= end_time]
            until = max(ends) if ends else None
            why = f"key {signer} of station {sid} was rotated out at {until}"
            details["validUntil"] = until
    return Problem(
        RejectReason.KEY_NOT_VALID,
        f"the signing key was not valid for a record ending at {end_time}: {why}",
        details,
    )


def lenient_identity(item: Any) -> tuple[bytes | None, int | None]:
    """(station id, sequence) read as leniently as possible from a body that failed to parse,
    so that its rejection is still counted against the station it claims to come from."""
    record = item.get("record") if isinstance(item, Mapping) else None
    if not isinstance(record, Mapping):
        return None, None
    station_id: bytes | None = None
    raw_id = record.get("stationId")
    if isinstance(raw_id, str) and raw_id.startswith("0x") and len(raw_id) == 66:
        try:
            station_id = bytes.fromhex(raw_id[2:])
        except ValueError:
            station_id = None
    sequence: int | None = None
    raw_seq = record.get("sequence")
    if isinstance(raw_seq, bool):
        raw_seq = None
    if isinstance(raw_seq, str) and raw_seq.isascii() and raw_seq.isdigit() and len(raw_seq) < 21:
        raw_seq = int(raw_seq)
    if isinstance(raw_seq, int) and 0 <= raw_seq < 2**64:
        sequence = raw_seq
    return station_id, sequence
