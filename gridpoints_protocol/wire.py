"""HTTP shapes shared by the station library and the backend (Pydantic v2 models).

The record itself is validated by exactly one parser, :mod:`gridpoints_protocol.record`; the models
here delegate to it (``SignedRecordIn``) and add the request/response envelopes around it. Field
errors from the record parser surface as Pydantic errors whose ``loc`` is the record field path,
e.g. ``("record", "meterAfterWh")``, so FastAPI's 422 bodies name the field.

Batches are deliberately *not* validated all-or-nothing. ``SignedRecordBatchIn`` accepts any
JSON array and :meth:`SignedRecordBatchIn.parse_items` parses each element on its own, so that a
malformed element becomes a ``rejected`` / ``malformed`` outcome at its position while the rest
of the batch is processed. A 422 for the whole batch would wedge a station: its sync client
(``station_signer/sync.py``) treats a 4xx answer as fatal for the batch and would resend the
same poisoned batch forever.

Wire names are camelCase (``logIndex``, ``receivedAt``); Python attributes are snake_case.
Response models ignore unknown fields so that a station keeps parsing answers from a newer
backend; request models forbid them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    NonNegativeInt,
    PrivateAttr,
    RootModel,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from gridpoints_protocol.commitment import REASON_OPENING_MISMATCH, UserOpening
from gridpoints_protocol.errors import REASON_MALFORMED, RecordValidationError
from gridpoints_protocol.record import (
    REASON_END_BEFORE_START,
    REASON_METER_DELTA_MISMATCH,
    RECORD_FIELDS,
    UINT64_MAX,
    SignedRecord,
)

# ---- reject reasons ----------------------------------------------------------------------------


class RejectReason(StrEnum):
    """Stable machine-readable codes of a rejected record (``RecordOutcome.reason``).

    The values never change meaning; new codes may be added, so clients must treat an unknown
    code as "rejected for a reason this client does not know" rather than fail.
    """

    description: str

    def __new__(cls, value: str, description: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    MALFORMED = (
        REASON_MALFORMED,
        "Not a well-formed signed record: wrong JSON shape, unknown or missing field, wrong "
        "type, value out of range, bad hex length or bad address checksum; message names fields.",
    )
    WRONG_DOMAIN = (
        "wrong_domain",
        "Signed for another EIP-712 domain (another chain id or StationRegistry deployment) than "
        "this backend's, so it can never be valid here.",
    )
    BAD_SIGNATURE = (
        "bad_signature",
        "The signature is not canonical (v not 27/28, high s, r or s out of range) or no public "
        "key can be recovered from it.",
    )
    UNKNOWN_STATION = (
        "unknown_station",
        "No station with this stationId is registered in the StationRegistry.",
    )
    KEY_NOT_VALID = (
        "key_not_valid",
        "The recovered signer was not a valid key of this station at the record's endTime "
        "(another key, rotated out, revoked, or before the station's activeFrom).",
    )
    EQUIVOCATION = (
        "equivocation",
        "The station already has an accepted record with this sequence and different content; "
        "the two signed records are kept as evidence.",
    )
    METER_BACKWARDS = (
        "meter_backwards",
        "The meter register would run backwards: meterBeforeWh is below the meterAfterWh of the "
        "station's previous record, or meterAfterWh above its next record's meterBeforeWh.",
    )
    ENERGY_EXCEEDS_MAX_POWER = (
        "energy_exceeds_max_power",
        "energyWh is more than the station's registered maximum power can deliver between "
        "startTime and endTime.",
    )
    METER_DELTA_MISMATCH = (
        REASON_METER_DELTA_MISMATCH,
        "meterAfterWh - meterBeforeWh differs from energyWh.",
    )
    END_BEFORE_START = (REASON_END_BEFORE_START, "endTime is before startTime.")

    AUTHORIZATION_MISSING = (
        "authorization_missing",
        "The record commits to a payment authorisation (paymentAuthorization is not zero) but "
        "the submission carries none in `payment`.",
    )
    AUTHORIZATION_UNEXPECTED = (
        "authorization_unexpected",
        "The submission carries a `payment` but the record's paymentAuthorization is zero.",
    )
    AUTHORIZATION_MALFORMED = (
        "authorization_malformed",
        "`payment` is not a well-formed signed PaymentAuthorization; the message names fields.",
    )
    AUTHORIZATION_MISMATCH = (
        "authorization_mismatch",
        "The authorisation's EIP-712 digest (for this deployment's Settlement contract) is not "
        "the one the record commits to.",
    )
    AUTHORIZATION_BAD_SIGNATURE = (
        "authorization_bad_signature",
        "The payment authorisation is not signed by the user it names.",
    )
    AUTHORIZATION_WRONG_USER = (
        "authorization_wrong_user",
        "The payment authorisation is for another user than the record's (its opening's).",
    )
    AUTHORIZATION_WRONG_STATION = (
        "authorization_wrong_station",
        "The payment authorisation names another station than the record's.",
    )
    AUTHORIZATION_EXPIRED = (
        "authorization_expired",
        "The payment authorisation's deadline is before the record's endTime.",
    )
    AUTHORIZATION_NOT_CHARGE = (
        "authorization_not_charge",
        "A payment authorisation on a discharge record: only charging is paid with points.",
    )
    AUTHORIZATION_REPLAYED = (
        "authorization_replayed",
        "The payment authorisation (its user and nonce) already pays for another record; each "
        "authorisation pays once.",
    )
    OPENING_MISMATCH = (
        REASON_OPENING_MISMATCH,
        "The submission's `opening` (user, salt) does not hash to the record's userCommitment "
        "(a missing or malformed opening is `malformed`).",
    )

    # Meter evidence (gridpoints_protocol.ocmf.evidence): a record whose meterEvidence is not
    # zero is checked against the OCMF records sent in the submission's `evidence`.
    METER_EVIDENCE_MALFORMED = (
        "meter_evidence_malformed",
        '`evidence` is not {"ocmf": ["OCMF|...", ...]} within the bounds (records, bytes).',
    )
    METER_EVIDENCE_MISSING = (
        "meter_evidence_missing",
        "The record binds meter evidence (meterEvidence is not zero) but the submission carries "
        "no `evidence`.",
    )
    METER_EVIDENCE_UNEXPECTED = (
        "meter_evidence_unexpected",
        "The submission carries `evidence` but the record's meterEvidence is zero.",
    )
    METER_EVIDENCE_DIGEST_MISMATCH = (
        "meter_evidence_digest_mismatch",
        "The OCMF records sent do not hash to the record's meterEvidence.",
    )
    METER_DIRECTION_MISMATCH = (
        "meter_direction_mismatch",
        "The record's direction is not the meter register's (import = charge, export = discharge).",
    )
    METER_ENERGY_MISMATCH = (
        "meter_energy_mismatch",
        "energyWh is not the whole Wh the meter's register crossed between its begin and end "
        "readings.",
    )
    METER_READING_MISMATCH = (
        "meter_reading_mismatch",
        "meterBeforeWh / meterAfterWh are not the meter's begin / end readings in whole Wh.",
    )
    METER_TIME_MISMATCH = (
        "meter_time_mismatch",
        "startTime / endTime are not the meter's begin / end reading times (unix seconds).",
    )
    OCMF_UNPARSEABLE = ("ocmf_unparseable", "An OCMF record of the evidence does not parse.")
    METER_SERIAL_MISSING = ("meter_serial_missing", "An OCMF record names no meter (MS).")
    METER_KEY_UNREGISTERED = (
        "meter_key_unregistered",
        "The meter is not registered for the record's station in the StationRegistry.",
    )
    METER_KEY_REVOKED = (
        "meter_key_revoked",
        "The meter was revoked at or before the time an OCMF record was signed.",
    )
    METER_KEY_NOT_VALID = (
        "meter_key_not_valid",
        "The meter has no registered key valid at the time an OCMF record was signed.",
    )
    METER_KEY_MISMATCH = (
        "meter_key_mismatch",
        "The public key sent with an OCMF record is not the meter's registered key.",
    )
    METER_SIGNATURE_REFUSED = (
        "meter_signature_refused",
        "An OCMF record is signed with an algorithm other than ECDSA-secp256r1-SHA256.",
    )
    METER_SIGNATURE_INVALID = (
        "meter_signature_invalid",
        "An OCMF signature does not verify under the meter's registered key (a tampered "
        "reading, or another key signed).",
    )
    METER_SERIAL_CHANGED = ("meter_serial_changed", "The OCMF records come from two meters.")
    PAGINATION_REPLAY = ("pagination_replay", "An OCMF record's PG is not above the previous.")
    PAGINATION_GAP = ("pagination_gap", "An OCMF record's PG skips a number.")
    METER_STATUS_NOT_OK = ("meter_status_not_ok", "A reading's meter status ST is not G.")
    CLOCK_NOT_SYNCHRONISED = (
        "clock_not_synchronised",
        "A reading's clock status is U or I (S or R is needed to tariff).",
    )
    NO_BEGIN_READING = ("no_begin_reading", "The OCMF records hold no begin reading (TX=B).")
    NO_END_READING = ("no_end_reading", "The OCMF records hold no end reading.")
    READING_ORDER = (
        "reading_order",
        "The readings are out of order (begin not first, readings after the end, time going back).",
    )
    REGISTER_CHANGED = ("register_changed", "Begin and end readings are on different registers.")
    REGISTER_NOT_ENERGY = (
        "register_not_energy",
        "The register is not an import or export active-energy register in Wh or kWh.",
    )
    NO_SIGNED_READINGS = ("no_signed_readings", "The evidence holds no OCMF record.")

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Code -> one-line description, in declaration order (for the OpenAPI docs)."""
        return {member.value: member.description for member in cls}


class DeferReason(StrEnum):
    """Stable machine-readable codes of a deferred record (``RecordOutcome.reason`` when the
    status is ``deferred``): the backend cannot judge the record *yet*. Nothing is stored; the
    station keeps the record and sends it again after ``retryAfter`` seconds.

    Like RejectReason, codes never change meaning and new ones may be added; a client treats an
    unknown code of a deferred outcome as "try again later".
    """

    description: str

    def __new__(cls, value: str, description: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    REGISTRY_BEHIND = (
        "registry_behind",
        "The backend has not yet followed the StationRegistry up to a block later than the "
        "record's endTime, so the station's key state at endTime is not decided yet (a "
        "registration, rotation or revocation may still be on its way).",
    )
    END_IN_FUTURE = (
        "end_in_future",
        "endTime is later than the backend's clock (plus its tolerance): the transfer has not "
        "ended yet by the backend's clock (or the station's clock runs ahead).",
    )
    RATE_LIMITED = (
        "rate_limited",
        "The record would be rejected, but too many records naming this station (or, for an "
        "unregistered station id, any unregistered one) were rejected lately: the rejection is "
        "not stored. Fix the record, or send it again later to have the rejection recorded.",
    )

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Code -> one-line description, in declaration order (for the OpenAPI docs)."""
        return {member.value: member.description for member in cls}


# ---- requests ----------------------------------------------------------------------------------

_UINT64_TEXT = r"^(0|[1-9][0-9]{0,19})$"


def _uint_schema(description: str, minimum: int = 0, maximum: int = UINT64_MAX) -> dict[str, Any]:
    return {
        "description": description,
        "oneOf": [
            {"type": "integer", "minimum": minimum, "maximum": maximum},
            {
                "type": "string",
                "pattern": _UINT64_TEXT,
                "description": "decimal string, for clients without 64-bit integers",
            },
        ],
    }


_FIELD_DOCS: dict[str, dict[str, Any]] = {
    "stationId": {
        "type": "string",
        "pattern": "^0x[0-9a-fA-F]{64}$",
        "description": "bytes32 station id as registered in the StationRegistry; never zero",
    },
    "sequence": _uint_schema("per-station sequence number, starting at 1", minimum=1),
    "userCommitment": {
        "type": "string",
        "pattern": "^0x[0-9a-fA-F]{64}$",
        "description": "keccak256('GridPoints.UserCommitment.v1' || user || salt): the salted "
        "commitment to the user's wallet (the opening travels in `opening`); not zero",
    },
    "direction": {
        "enum": [1, 2, "1", "2"],
        "description": "1 = charge (station -> vehicle), 2 = discharge (vehicle -> station)",
    },
    "energyWh": _uint_schema("energy transferred, Wh; equals meterAfterWh - meterBeforeWh"),
    "meterBeforeWh": _uint_schema("station meter register before the transfer, Wh"),
    "meterAfterWh": _uint_schema("station meter register after the transfer, Wh"),
    "startTime": _uint_schema("start of the transfer, unix seconds"),
    "endTime": _uint_schema("end of the transfer, unix seconds; not before startTime"),
    "paymentAuthorization": {
        "type": "string",
        "pattern": "^0x[0-9a-fA-F]{64}$",
        "description": "bytes32 payment authorization; zero when the user pays otherwise",
    },
    "meterEvidence": {
        "type": "string",
        "pattern": "^0x[0-9a-fA-F]{64}$",
        "description": "bytes32 digest of the meter-signed readings the record was built from; "
        "zero when the record carries no meter evidence",
    },
}


def opening_json_schema() -> dict[str, Any]:
    """JSON Schema of a user opening (documentation; commitment.py does the validating)."""
    return {
        "type": "object",
        "title": "UserOpening",
        "description": "The opening of the record's userCommitment. Private: the backend stores "
        "it apart from the public record and never publishes it.",
        "properties": {
            "user": {
                "type": "string",
                "pattern": "^0x[0-9a-fA-F]{40}$",
                "description": "the user's wallet (EIP-55 checksummed, or all one case); not zero",
            },
            "salt": {
                "type": "string",
                "pattern": "^0x[0-9a-fA-F]{64}$",
                "description": "32 random bytes, fresh per record; not zero",
            },
        },
        "required": ["user", "salt"],
        "additionalProperties": False,
    }


def record_json_schema() -> dict[str, Any]:
    """JSON Schema of the record's wire form (documentation; record.py does the validating)."""
    return {
        "type": "object",
        "title": "EnergyTransfer",
        "description": "The EIP-712 EnergyTransfer message, camelCase keys.",
        "properties": {f.json_name: dict(_FIELD_DOCS[f.json_name]) for f in RECORD_FIELDS},
        "required": [f.json_name for f in RECORD_FIELDS],
        "additionalProperties": False,
    }


def _input_at(data: Any, path: tuple[str, ...]) -> Any:
    """The submitted value at ``path`` (None where the path does not exist)."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _to_pydantic_error(exc: RecordValidationError, data: Any, title: str) -> ValidationError:
    """One Pydantic line error per record field error, located at the field's JSON path.

    The error type is ``gridpoints_record``; ``ctx.reason`` carries the RejectReason code.
    """
    line_errors: list[InitErrorDetails] = []
    for error in exc.errors:
        loc = tuple(error.field.split(".")) if error.field else ()
        line_errors.append(
            InitErrorDetails(
                type=PydanticCustomError(
                    "gridpoints_record",
                    "{message}",
                    {"message": error.message, "reason": exc.reason},
                ),
                loc=loc,
                input=_input_at(data, loc),
            )
        )
    return ValidationError.from_exception_data(title, line_errors)


class SignedRecordIn(BaseModel):
    """One signed record as submitted: ``{"record": {...}, "signature": "0x" + 130 hex}``.

    Validation is delegated wholesale to :meth:`SignedRecord.from_json` (one validator for the
    whole project); the model then holds the *canonical* wire form (checksummed address,
    integers, lowercase hex) and the parsed :class:`SignedRecord` as :attr:`signed`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, title="SignedRecord")

    record: Annotated[dict[str, Any], WithJsonSchema(record_json_schema())]
    signature: Annotated[
        str,
        Field(
            pattern="^0x[0-9a-fA-F]{130}$",
            description="65 bytes r || s || v, v in {27, 28}, low s",
        ),
    ]
    _signed: SignedRecord = PrivateAttr()

    @model_validator(mode="wrap")
    @classmethod
    def _delegate_to_record_parser(
        cls, data: Any, handler: ModelWrapValidatorHandler[SignedRecordIn]
    ) -> SignedRecordIn:
        if isinstance(data, SignedRecordIn):
            return data
        try:
            signed = SignedRecord.from_json(data)
        except RecordValidationError as exc:
            raise _to_pydantic_error(exc, data, cls.__name__) from None
        model = handler(signed.to_json())
        model._signed = signed
        return model

    @property
    def signed(self) -> SignedRecord:
        """The parsed record and signature."""
        return self._signed

    @classmethod
    def from_signed(cls, signed: SignedRecord) -> SignedRecordIn:
        """The request body for a signed record (station side)."""
        return cls.model_validate(signed.to_json())


class SubmissionIn(BaseModel):
    """One record as a station submits it: the signed record and, privately, the opening of its
    user commitment (plus ``payment`` when the record is paid with points). Documentation and
    station-side construction; the backend parses submissions with the record parser and
    `UserOpening.from_json` (gridpoints_protocol.checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Submission")

    record: Annotated[dict[str, Any], WithJsonSchema(record_json_schema())]
    signature: Annotated[
        str,
        Field(
            pattern="^0x[0-9a-fA-F]{130}$",
            description="65 bytes r || s || v, v in {27, 28}, low s",
        ),
    ]
    opening: Annotated[dict[str, str], WithJsonSchema(opening_json_schema())]
    payment: dict[str, Any] | None = Field(
        default=None,
        description="the private payment opening {authorization, signature, salt} when "
        "paymentAuthorization (the salted link to the authorisation's digest) is not 0",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _delegate_to_parsers(
        cls, data: Any, handler: ModelWrapValidatorHandler[SubmissionIn]
    ) -> SubmissionIn:
        if isinstance(data, SubmissionIn):
            return data
        if isinstance(data, dict):
            rest = {k: v for k, v in data.items() if k not in ("opening", "payment")}
            try:
                signed = SignedRecord.from_json(rest)
            except RecordValidationError as exc:
                raise _to_pydantic_error(exc, data, cls.__name__) from None
            try:
                opening = UserOpening.from_json(data.get("opening"))
            except RecordValidationError as exc:
                raise _to_pydantic_error(exc.prefixed("opening"), data, cls.__name__) from None
            return handler({**data, **signed.to_json(), "opening": opening.to_json()})
        return handler(data)

    @classmethod
    def of(
        cls, signed: SignedRecord, opening: UserOpening, payment: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The JSON body of one submission (station side)."""
        body = {**signed.to_json(), "opening": opening.to_json()}
        if payment is not None:
            body["payment"] = payment
        return body


def _batch_schema() -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": SubmissionIn.model_json_schema(),
        "description": "Signed records; each is answered on its own, in request order.",
    }


class SignedRecordBatchIn(RootModel[list[Any]]):
    """A batch of signed records: a non-empty JSON array of ``SignedRecordIn`` objects.

    Elements are not validated here but by :meth:`parse_items`, one by one, so that one bad
    element is one ``malformed`` outcome, not a 422 for the whole batch (see the module
    docstring). The maximum length is a backend setting, enforced by the backend.
    """

    root: Annotated[list[Any], Field(min_length=1), WithJsonSchema(_batch_schema())]

    @classmethod
    def from_signed(cls, records: list[SignedRecord]) -> SignedRecordBatchIn:
        """The request body for a batch of signed records (station side)."""
        return cls([signed.to_json() for signed in records])

    def parse_items(self) -> list[SignedRecord | RecordValidationError]:
        """Each element parsed by the record parser: a SignedRecord or the reason it is not."""
        results: list[SignedRecord | RecordValidationError] = []
        for item in self.root:
            try:
                results.append(SignedRecord.from_json(item))
            except RecordValidationError as exc:
                results.append(exc)
        return results


# ---- responses ---------------------------------------------------------------------------------

_RESPONSE_CONFIG = ConfigDict(
    extra="ignore",
    frozen=True,
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)

DigestHex = Annotated[str, Field(pattern="^0x[0-9a-f]{64}$", description="EIP-712 digest")]
ReasonCode = Annotated[
    str,
    Field(
        pattern="^[a-z][a-z0-9_]*$",
        description="machine-readable code: a RejectReason for a rejected record, a "
        "DeferReason for a deferred one (new codes may appear)",
    ),
]


class Receipt(BaseModel):
    """The backend's acknowledgement of a stored record: its place in the record log."""

    model_config = _RESPONSE_CONFIG

    log_index: NonNegativeInt = Field(description="position in the backend's append-only log")
    received_at: AwareDatetime = Field(description="when the backend stored it, ISO-8601 UTC")
    signed: dict[str, Any] | None = Field(
        default=None,
        description="the operator's signed ingest receipt (gridpoints_protocol.receipts, "
        "`IngestReceipt.to_json`): record digest, station id, sequence, receivedAt and the "
        "promise sealedBy, under the receipt key (GET /v1/info receiptKey); null when the "
        "backend has no receipt key",
    )

    @field_validator("received_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_serializer("received_at")
    def _iso_utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RecordOutcome(BaseModel):
    """What happened to one submitted record.

    * ``accepted``: stored now; ``digest`` and ``receipt`` are set.
    * ``duplicate``: exactly this record was already stored; ``receipt`` is the stored one.
    * ``rejected``: not stored, final; ``reason`` is a RejectReason code, ``message`` says why;
      ``digest`` is set when the record could be parsed, ``receipt`` is null.
    * ``deferred``: not judged yet, not stored anywhere; ``reason`` is a DeferReason code,
      ``message`` says why, ``retryAfter`` is the backend's hint in seconds before sending the
      record again; ``digest`` is set, ``receipt`` is null. Not an error: send it again later.

    ``retryAfter`` is null for every other status.
    """

    model_config = _RESPONSE_CONFIG

    status: Literal["accepted", "duplicate", "rejected", "deferred"]
    digest: DigestHex | None = None
    receipt: Receipt | None = None
    reason: ReasonCode | None = None
    message: str | None = None
    retry_after: NonNegativeInt | None = Field(
        default=None,
        description="deferred only: seconds to wait before sending the record again (a hint)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.status in ("rejected", "deferred"):
            if self.reason is None:
                raise ValueError(f"a {self.status} outcome needs a reason")
            if self.receipt is not None:
                raise ValueError(f"a {self.status} outcome has no receipt")
            if (self.retry_after is None) == (self.status == "deferred"):
                raise ValueError("retryAfter goes with a deferred outcome, and only with one")
        else:
            if self.digest is None or self.receipt is None:
                raise ValueError(f"an {self.status} outcome needs a digest and a receipt")
            if self.reason is not None:
                raise ValueError(f"an {self.status} outcome has no reason")
            if self.retry_after is not None:
                raise ValueError(f"an {self.status} outcome has no retryAfter")
        return self

    @classmethod
    def accepted(
        cls,
        digest: bytes,
        log_index: int,
        received_at: datetime,
        signed: dict[str, Any] | None = None,
    ) -> RecordOutcome:
        return cls(
            status="accepted",
            digest="0x" + digest.hex(),
            receipt=Receipt(log_index=log_index, received_at=received_at, signed=signed),
        )

    @classmethod
    def duplicate(
        cls,
        digest: bytes,
        log_index: int,
        received_at: datetime,
        signed: dict[str, Any] | None = None,
    ) -> RecordOutcome:
        """``log_index`` and ``received_at`` are those of the record already stored."""
        return cls(
            status="duplicate",
            digest="0x" + digest.hex(),
            receipt=Receipt(log_index=log_index, received_at=received_at, signed=signed),
        )

    @classmethod
    def rejected(
        cls, reason: RejectReason | str, message: str, digest: bytes | None = None
    ) -> RecordOutcome:
        return cls(
            status="rejected",
            reason=str(reason),
            message=message,
            digest=None if digest is None else "0x" + digest.hex(),
        )

    @classmethod
    def deferred(
        cls, reason: DeferReason | str, message: str, retry_after: int, digest: bytes | None
    ) -> RecordOutcome:
        return cls(
            status="deferred",
            reason=str(reason),
            message=message,
            retry_after=retry_after,
            digest=None if digest is None else "0x" + digest.hex(),
        )

    @classmethod
    def from_validation_error(cls, error: RecordValidationError) -> RecordOutcome:
        """The outcome of an element the record parser refused (its fields in the message)."""
        return cls.rejected(error.reason, error.summary())


class BatchResponse(BaseModel):
    """Answer to a batch: one outcome per submitted record, in request order, and the tallies."""

    model_config = _RESPONSE_CONFIG

    outcomes: list[RecordOutcome]
    accepted: NonNegativeInt
    duplicate: NonNegativeInt
    rejected: NonNegativeInt
    # Defaults to 0 so that an answer of a backend that never defers still parses.
    deferred: NonNegativeInt = 0

    @model_validator(mode="after")
    def _counts_match(self) -> Self:
        for status in ("accepted", "duplicate", "rejected", "deferred"):
            actual = sum(1 for o in self.outcomes if o.status == status)
            if getattr(self, status) != actual:
                raise ValueError(f"{status} is {getattr(self, status)} but {actual} outcomes are")
        return self

    @classmethod
    def from_outcomes(cls, outcomes: list[RecordOutcome]) -> BatchResponse:
        return cls(
            outcomes=outcomes,
            accepted=sum(1 for o in outcomes if o.status == "accepted"),
            duplicate=sum(1 for o in outcomes if o.status == "duplicate"),
            rejected=sum(1 for o in outcomes if o.status == "rejected"),
            deferred=sum(1 for o in outcomes if o.status == "deferred"),
        )


class ErrorBody(BaseModel):
    """A request-level error: ``code`` is machine-readable, ``message`` for humans."""

    model_config = _RESPONSE_CONFIG

    code: Annotated[str, Field(pattern="^[a-z][a-z0-9_]*$")]
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """``{"error": {"code", "message", "details"}}`` for any non-2xx answer."""

    model_config = _RESPONSE_CONFIG

    error: ErrorBody

    @classmethod
    def of(cls, code: str, message: str, details: Any = None) -> ErrorResponse:
        return cls(error=ErrorBody(code=code, message=message, details=details))

    @classmethod
    def from_record_error(cls, error: RecordValidationError) -> ErrorResponse:
        """A request refused by the record parser: details list every field and problem."""
        return cls.of(
            error.reason,
            error.summary(),
            {"fields": [{"field": e.field, "message": e.message} for e in error.errors]},
        )
