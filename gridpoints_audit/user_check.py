"""A user's own check: the signed-in wallet's export (``GET /v1/me/export``, format
``gridpoints-user-export/1``) against the chain. The public audit checks every record and every
total from public data; what only the user can judge is whether *their* records and points are
attributed to *them*. A misattribution — a record of theirs counted for somebody else, points
moved off their leaf — is caught here by the user it hurts, as a Certificate Transparency
monitor catches a certificate mis-issued for its own domain.

`check_user_export` is pure: the export (a JSON value), the facts read from the chain
(`UserChainFacts`, made by `user_chain_facts` from the auditor's `ChainFacts`) and, optionally,
the signed records the user holds from stations (receipts). Per epoch of the export:

* the epoch is committed on chain, and the export's roots, record count and tariff hash are the
  chain's (``epoch_claim_mismatch``); the tariff document hashes to the anchored tariff hash;
* every record is the user's (``record_not_yours``) and is in the anchored records root at the
  position the export gives (``record_not_in_root``: the record, as exported, was not what was
  sealed);
* the user's records, valued under that tariff with each station's zone read from the chain by
  the protocol core's rule (`gridpoints_protocol.accumulator.record_share`), give a credits leaf
  (user, credit, debit) that is in the anchored credits root at the export's position
  (``credit_leaf_mismatch``), or there is no leaf when they earn and owe nothing;
* once the epoch's credits are all applied, the token minted the user exactly that credit in the
  epoch's chunks (``mint_mismatch``);
* every burn of the user's points in the epoch (PaymentApplied) is for one of the user's signed
  authorisations of a record in the export, asked min(price, maximum) and burned no more
  (``unauthorised_burn``, ``burn_mismatch``);
* a receipt of the user's that is neither sealed nor pending in the export is
  ``record_withheld``.

Nothing here trusts a figure of the export that the chain or the recomputation can check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gridpoints_audit.chain_facts import ChainEpoch, ChainFacts, PaymentEvent
from gridpoints_protocol.accumulator import record_share
from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.bundle_format import USER_EXPORT_FORMAT
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.merkle import credit_leaf_hash, record_leaf_hash, verify_inclusion
from gridpoints_protocol.record import Domain, EnergyTransfer, SignedRecord
from gridpoints_protocol.tariff import Tariff

# kind -> what it means (docs/AUDIT.md, "A user's own check")
USER_KINDS: dict[str, str] = {
    "export_malformed": "the export is not a gridpoints-user-export/1 document",
    "wrong_user": "the export is for another wallet than the one checked",
    "wrong_deployment": "the export names another deployment than the chain's",
    "epoch_not_committed": "the export names an epoch the chain has not committed",
    "epoch_claim_mismatch": "the export's roots, record count or tariff hash are not the chain's",
    "tariff_unverified": "the tariff document is missing or does not hash to the anchored hash",
    "record_malformed": "a record of the export cannot be read",
    "record_not_yours": "the export lists a record of another user",
    "record_not_in_root": "a record is not in the anchored records root where the export says",
    "credit_leaf_mismatch": "the user's records do not sum to a leaf in the anchored credits root",
    "mint_mismatch": "the chain minted the user another amount than the records earn",
    "unauthorised_burn": "the chain burned the user's points for no authorisation in the export",
    "burn_mismatch": "a burn asked or took more than the user's authorisation and price allow",
    "record_withheld": "a record the user holds from a station is not in the export",
}


@dataclass(frozen=True, slots=True)
class UserFinding:
    kind: str
    message: str
    epoch_id: int | None = None
    digest: str | None = None
    expected: Any = None
    found: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epochId": self.epoch_id,
            "digest": self.digest,
            "expected": self.expected,
            "found": self.found,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class UserChainFacts:
    """What the user's check reads from the chain (at one block)."""

    block: int
    chain_id: int
    records_domain: Domain
    settlement_domain: SettlementDomain
    epochs: Mapping[int, ChainEpoch]
    zones: Mapping[bytes, int]
    minted: Mapping[int, int]  # epoch -> points minted to the user in its credit chunks
    payments: Mapping[int, Sequence[PaymentEvent]]  # epoch -> the user's PaymentApplied


def user_chain_facts(
    facts: ChainFacts, user: bytes, records_domain: Domain, settlement_domain: SettlementDomain
) -> UserChainFacts:
    minted: dict[int, int] = {}
    for epoch_id, chunks in facts.credit_chunks.items():
        for chunk in chunks:
            for holder, amount in chunk.mints:
                if holder == user:
                    minted[epoch_id] = minted.get(epoch_id, 0) + amount
    return UserChainFacts(
        block=facts.block,
        chain_id=records_domain.chain_id,
        records_domain=records_domain,
        settlement_domain=settlement_domain,
        epochs=facts.epochs,
        zones={sid: history.zone for sid, history in facts.stations.items()},
        minted=minted,
        payments={
            epoch_id: [p for p in events if p.user == user]
            for epoch_id, events in facts.payments.items()
        },
    )


@dataclass(slots=True)
class UserReport:
    user: str
    block: int
    epochs: list[int] = field(default_factory=list)
    records: int = 0
    pending: int = 0
    credited: int = 0
    debited: int = 0
    findings: list[UserFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "block": self.block,
            "clean": self.clean,
            "epochs": self.epochs,
            "records": self.records,
            "pending": self.pending,
            "credited": self.credited,
            "debited": self.debited,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


class _Malformed(ValueError):
    pass


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _Malformed(f"missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{key!r} has the wrong type")
    return value


def _hex_bytes(text: Any, size: int | None = None) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise _Malformed(f"not 0x-hex: {str(text)[:80]!r}")
    try:
        raw = bytes.fromhex(text[2:])
    except ValueError:
        raise _Malformed(f"not 0x-hex: {text[:80]!r}") from None
    if size is not None and len(raw) != size:
        raise _Malformed(f"expected {size} bytes: {text[:80]!r}")
    return raw


def _path(value: Any) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 64:
        raise _Malformed("an audit path must be a list of at most 64 hashes")
    return [_hex_bytes(h, 32) for h in value]


def _digest(record: EnergyTransfer, domain: Domain) -> str:
    return "0x" + record.digest(domain).hex()


def check_user_export(
    export: Any,
    chain: UserChainFacts,
    *,
    user: bytes | None = None,
    receipts: Sequence[Any] = (),
) -> UserReport:
    """Checks a user's export against the chain (see the module docstring)."""
    claimed = export.get("user") if isinstance(export, dict) else None
    report = UserReport(user=str(claimed), block=chain.block)
    try:
        if _get(export, "format", str) != USER_EXPORT_FORMAT:
            raise _Malformed(f"format is not {USER_EXPORT_FORMAT}")
        wallet = _hex_bytes(_get(export, "user", str), 20)
        report.user = to_checksum_address(wallet)
        epochs = _get(export, "epochs", list)
        pending = _get(export, "pending", list)
        tariffs = _get(export, "tariffs", dict)
        deployment = _get(export, "deployment", dict)
    except _Malformed as exc:
        report.findings.append(UserFinding("export_malformed", str(exc)))
        return report
    if user is not None and user != wallet:
        report.findings.append(
            UserFinding(
                "wrong_user",
                "the export is not for the wallet being checked",
                expected=to_checksum_address(user),
                found=report.user,
            )
        )
        return report
    expected_deployment = {
        "chainId": chain.chain_id,
        "registry": "0x" + chain.records_domain.verifying_contract.hex(),
        "settlement": "0x" + chain.settlement_domain.verifying_contract.hex(),
    }
    named = {
        "chainId": deployment.get("chainId"),
        "registry": str(deployment.get("registry", "")).lower(),
        "settlement": str(deployment.get("settlement", "")).lower(),
    }
    if named != expected_deployment:
        report.findings.append(
            UserFinding(
                "wrong_deployment",
                "the export names another chain or other contracts than the deployment checked",
                expected=expected_deployment,
                found=named,
            )
        )
        return report
    seen: set[str] = set()
    for item in epochs:
        try:
            _check_epoch(item, tariffs, wallet, chain, report, seen)
        except _Malformed as exc:
            epoch_id = item.get("epochId") if isinstance(item, dict) else None
            report.findings.append(
                UserFinding(
                    "export_malformed",
                    f"epoch: {exc}",
                    epoch_id=epoch_id if isinstance(epoch_id, int) else None,
                )
            )
    for body in pending:
        try:
            signed = SignedRecord.from_json(
                {"record": _get(body, "record", dict), "signature": _get(body, "signature", str)}
            )
        except (_Malformed, ProtocolError) as exc:
            report.findings.append(UserFinding("record_malformed", f"pending record: {exc}"))
            continue
        report.pending += 1
        digest = _digest(signed.record, chain.records_domain)
        seen.add(digest)
        problem = _not_yours(body, signed.record, wallet)
        if problem is not None:
            report.findings.append(
                UserFinding("record_not_yours", f"a pending record: {problem}", digest=digest)
            )
    for receipt in receipts:
        try:
            held = SignedRecord.from_json(
                {k: v for k, v in receipt.items() if k not in ("opening", "payment")}
                if isinstance(receipt, dict)
                else receipt
            )
        except ProtocolError as exc:
            report.notes.append(f"a receipt could not be read and was not compared: {exc}")
            continue
        if _not_yours(receipt, held.record, wallet) is not None:
            report.notes.append("a receipt without this wallet's opening was not compared")
            continue
        digest = _digest(held.record, chain.records_domain)
        if digest not in seen:
            report.findings.append(
                UserFinding(
                    "record_withheld",
                    f"record {held.record.sequence} of station 0x{held.record.station_id.hex()} "
                    "is the user's but the export has it neither sealed nor pending",
                    digest=digest,
                )
            )
    return report


def _not_yours(body: Any, record: EnergyTransfer, wallet: bytes) -> str | None:
    """Why `record` is not shown to be the wallet's (None: it is): its opening, published to
    the user alone, must hash to the signed userCommitment and name this wallet."""
    raw = body.get("opening") if isinstance(body, dict) else None
    if raw is None:
        return "it comes without its opening"
    try:
        opening = UserOpening.from_json(raw)
    except ProtocolError as exc:
        return f"its opening cannot be read ({exc})"
    if not opening.opens(record.user_commitment):
        return "its opening does not hash to its userCommitment"
    if opening.user != wallet:
        return f"its opening names another wallet ({opening.user_address})"
    return None


def _check_epoch(
    item: Any,
    tariffs: Mapping[str, Any],
    wallet: bytes,
    chain: UserChainFacts,
    report: UserReport,
    seen: set[str],
) -> None:
    epoch_id = _get(item, "epochId", int)
    records = _get(item, "records", list)
    on_chain = chain.epochs.get(epoch_id)
    if on_chain is None:
        report.notes.append(f"epoch {epoch_id} is sealed but not committed on chain yet")
        for body in records:
            if isinstance(body, dict) and isinstance(body.get("digest"), str):
                seen.add(body["digest"])
        return
    report.epochs.append(epoch_id)

    def finding(kind: str, message: str, **kwargs: Any) -> None:
        report.findings.append(UserFinding(kind, message, epoch_id=epoch_id, **kwargs))

    tariff_hash = "0x" + on_chain.tariff_hash.hex()
    claims: dict[str, object] = {
        "recordsRoot": "0x" + on_chain.records_root.hex(),
        "creditsRoot": "0x" + on_chain.credits_root.hex(),
        "tariffHash": tariff_hash,
        "recordCount": on_chain.record_count,
    }
    for key, expected in claims.items():
        if item.get(key) != expected:
            finding(
                "epoch_claim_mismatch",
                f"{key} differs from the chain's",
                expected=expected,
                found=item.get(key),
            )
    tariff: Tariff | None = None
    document = tariffs.get(tariff_hash)
    if isinstance(document, str):
        try:
            tariff = Tariff.from_canonical_bytes(document.encode())
        except (ProtocolError, ValueError) as exc:
            finding("tariff_unverified", f"the tariff document cannot be read: {exc}")
        else:
            if tariff.hash != on_chain.tariff_hash or keccak256(document.encode()) != tariff.hash:
                finding(
                    "tariff_unverified", "the tariff document does not hash to the anchored hash"
                )
                tariff = None
    else:
        finding("tariff_unverified", "the export has no tariff document for the anchored hash")

    credit, debit = 0, 0
    debit_of: dict[bytes, int] = {}  # authorisation digest -> points asked for it
    for body in records:
        try:
            signed = SignedRecord.from_json(
                {"record": _get(body, "record", dict), "signature": _get(body, "signature", str)}
            )
            leaf_index = _get(body, "leafIndex", int)
            path = _path(body.get("path"))
        except (_Malformed, ProtocolError) as exc:
            finding("record_malformed", f"a record cannot be read: {exc}")
            continue
        record = signed.record
        digest = record.digest(chain.records_domain)
        digest_hex = "0x" + digest.hex()
        seen.add(digest_hex)
        report.records += 1
        problem = _not_yours(body, record, wallet)
        if problem is not None:
            finding("record_not_yours", f"the export lists a record: {problem}", digest=digest_hex)
            continue
        leaf = record_leaf_hash(digest, signed.signature)
        try:
            included = verify_inclusion(
                leaf, leaf_index, on_chain.record_count, path, on_chain.records_root
            )
        except (ValueError, TypeError):
            included = False
        if not included:
            finding(
                "record_not_in_root",
                f"record {record.sequence} of station 0x{record.station_id.hex()} is not in the "
                f"anchored records root at leaf {leaf_index}: it was not sealed as exported",
                digest=digest_hex,
            )
            continue
        zone = chain.zones.get(record.station_id)
        if tariff is None or zone is None:
            finding(
                "credit_leaf_mismatch",
                "a record cannot be valued (tariff unverified or station unknown on chain)",
                digest=digest_hex,
            )
            continue
        caps: dict[bytes, int] = {}
        # The record's field is the salted link; the chain burns under the digest it opens to.
        auth_digest: bytes | None = None
        payment = body.get("payment")
        if payment is not None:
            try:
                opening = PaymentOpening.from_json(payment)
            except ProtocolError as exc:
                finding("record_malformed", f"a payment cannot be read: {exc}", digest=digest_hex)
                continue
            signed_auth = opening.signed
            # Only the user's own signature, linked to this record and committing to its
            # station, lets points be asked.
            if (
                opening.link(chain.settlement_domain) == record.payment_authorization
                and opening.opens_station(record.station_id)
                and signed_auth.is_signed_by_user(chain.settlement_domain)
                and signed_auth.authorization.user == wallet
            ):
                auth_digest = signed_auth.digest(chain.settlement_domain)
                caps[record.payment_authorization] = min(
                    signed_auth.authorization.max_points, 2**128 - 1
                )
        share = record_share(
            tariff,
            zone=zone,
            direction=record.direction,
            energy_wh=record.energy_wh,
            start_time=record.start_time,
            end_time=record.end_time,
            payment_authorization=record.payment_authorization,
            payment_caps=caps,
        )
        credit += share.credit
        if share.debit is not None:
            debit += share.debit
            assert auth_digest is not None  # a debit needs the cap, which needs the opening
            debit_of[auth_digest] = share.debit

    report.credited += credit
    report.debited += debit
    _check_credit_leaf(item.get("credit"), wallet, credit, debit, on_chain, finding)
    applied_all = on_chain.applied_credits == on_chain.total_credits
    minted = chain.minted.get(epoch_id, 0)
    if applied_all and minted != credit:
        finding(
            "mint_mismatch",
            "the token minted the user another amount in this epoch than their records earn",
            expected=credit,
            found=minted,
        )
    elif not applied_all:
        report.notes.append(f"epoch {epoch_id}: credits not all applied yet, mints not compared")
    for event in chain.payments.get(epoch_id, ()):
        asked = debit_of.get(event.authorization)
        auth_hex = "0x" + event.authorization.hex()
        if asked is None:
            finding(
                "unauthorised_burn",
                "the chain applied a payment of the user's for no authorisation of a record in "
                "the export",
                digest=auth_hex,
                found={"requested": event.requested, "burned": event.burned},
            )
        elif event.requested != asked or event.burned > event.requested:
            finding(
                "burn_mismatch",
                "a payment asked another amount than min(price, maximum), or burned more",
                digest=auth_hex,
                expected=asked,
                found={"requested": event.requested, "burned": event.burned},
            )


def _check_credit_leaf(
    leaf: Any, wallet: bytes, credit: int, debit: int, on_chain: ChainEpoch, finding: Any
) -> None:
    expected = {"credit": credit, "debit": debit}
    if leaf is None:
        if credit or debit:
            finding(
                "credit_leaf_mismatch",
                "the user's records earn or owe points but the export has no credits leaf",
                expected=expected,
                found=None,
            )
        return
    try:
        ordinal = _get(leaf, "ordinal", int)
        count = _get(leaf, "leafCount", int)
        path = _path(leaf.get("path"))
    except _Malformed as exc:
        finding(
            "credit_leaf_mismatch", f"the credits leaf cannot be read: {exc}", expected=expected
        )
        return
    found = {"credit": leaf.get("credit"), "debit": leaf.get("debit")}
    try:
        included = verify_inclusion(
            credit_leaf_hash(wallet, credit, debit), ordinal, count, path, on_chain.credits_root
        )
    except (ValueError, TypeError, OverflowError):
        included = False
    if not included:
        finding(
            "credit_leaf_mismatch",
            "the user's records, valued under the anchored tariff, do not give a leaf in the "
            "anchored credits root (points attributed to someone else, or to no one)",
            expected=expected,
            found=found,
        )
