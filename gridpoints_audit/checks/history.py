"""Records against each other, across every audited epoch: no (station, sequence) twice (the
same record twice, or two different records for one sequence: an equivocation the backend
hid), no authorisation paying for two records, and no meter register running backwards."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from gridpoints_audit.checks.records import CheckedRecord
from gridpoints_audit.findings import Discrepancy, Kind, as_hex


@dataclass(frozen=True, slots=True)
class _MeterReading:
    sequence: int
    before_wh: int
    after_wh: int
    epoch_id: int
    leaf_index: int
    digest: bytes


@dataclass(slots=True)
class AuditedHistory:
    """What the records of the epochs audited so far already used."""

    # (station, sequence) -> (digest, epoch, leaf)
    sequences: dict[tuple[bytes, int], tuple[bytes, int, int]] = field(default_factory=dict)
    # authorisation digest -> (epoch, station, sequence) of the record it pays for
    authorizations: dict[bytes, tuple[int, bytes, int]] = field(default_factory=dict)
    # (user, nonce) -> authorisation digest
    nonces: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    # (station, direction) -> its records' meter readings
    meters: dict[tuple[bytes, int], list[_MeterReading]] = field(default_factory=dict)

    def admit_payment(self, epoch_id: int, checked: CheckedRecord) -> Discrepancy | None:
        """The record's verified authorisation, unless it (or its user and nonce) already
        pays for another record: then the finding, and the authorisation does not count."""
        authorization = checked.authorization
        if authorization is None:
            return None
        record = checked.signed.record
        auth_digest = record.payment_authorization
        a = authorization.authorization
        earlier = self.authorizations.get(auth_digest)
        other = self.nonces.get((a.user, a.nonce))
        if earlier is not None or (other is not None and other != auth_digest):
            return Discrepancy(
                Kind.AUTHORIZATION_REUSED,
                f"{checked.where}: its payment authorisation (user "
                f"{a.user_address}, nonce {a.nonce}) already pays for another record",
                epoch_id=epoch_id,
                **checked.ref.fields(),
                user=a.user_address,
                expected="an authorisation used once",
                found=(
                    {
                        "epochId": earlier[0],
                        "stationId": as_hex(earlier[1]),
                        "sequence": earlier[2],
                    }
                    if earlier is not None
                    else {"authorization": as_hex(other)}
                ),
            )
        self.authorizations[auth_digest] = (epoch_id, record.station_id, record.sequence)
        self.nonces[(a.user, a.nonce)] = auth_digest
        return None

    def admit_record(self, epoch_id: int, checked: CheckedRecord) -> Discrepancy | None:
        """The record's (station, sequence), unless an earlier record holds it: then the
        duplicate or the equivocation."""
        record = checked.signed.record
        digest = checked.digest
        leaf = checked.ref.leaf_index
        key = (record.station_id, record.sequence)
        first = self.sequences.get(key)
        if first is not None:
            same = first[0] == digest
            return Discrepancy(
                Kind.DUPLICATE_RECORD if same else Kind.EQUIVOCATION,
                f"{checked.where}: "
                + (
                    "the same record is already in epoch "
                    if same
                    else "another record with this station and sequence is in epoch "
                )
                + f"{first[1]} at leaf {first[2]}",
                epoch_id=epoch_id,
                **checked.ref.fields(),
                expected="one record per station and sequence",
                found={"epochId": first[1], "leafIndex": first[2], "digest": as_hex(first[0])},
            )
        self.sequences[key] = (digest, epoch_id, leaf if leaf is not None else -1)
        self.meters.setdefault((record.station_id, int(record.direction)), []).append(
            _MeterReading(
                record.sequence,
                record.meter_before_wh,
                record.meter_after_wh,
                epoch_id,
                leaf if leaf is not None else -1,
                digest,
            )
        )
        return None

    def meter_findings(self) -> list[Discrepancy]:
        """Per station and direction, in sequence order, each record's meter must start at or
        after where the previous one ended (the ingest rule, over the audited history)."""
        out = []
        for (station_id, direction), readings in self.meters.items():
            # A sequence is admitted once per station, so this order is total.
            readings.sort(key=lambda reading: reading.sequence)
            for prev, cur in itertools.pairwise(readings):
                if cur.before_wh < prev.after_wh:
                    out.append(
                        Discrepancy(
                            Kind.METER_BACKWARDS,
                            f"record {cur.sequence} of station 0x{station_id.hex()} (direction "
                            f"{direction}) starts its meter at {cur.before_wh} Wh, below where "
                            f"record {prev.sequence} ended ({prev.after_wh} Wh)",
                            epoch_id=cur.epoch_id,
                            station_id=as_hex(station_id),
                            sequence=cur.sequence,
                            digest=as_hex(cur.digest),
                            leaf_index=cur.leaf_index,
                            expected=f">= {prev.after_wh}",
                            found=cur.before_wh,
                            details={
                                "previousSequence": prev.sequence,
                                "previousEpochId": prev.epoch_id,
                            },
                        )
                    )
        return out
