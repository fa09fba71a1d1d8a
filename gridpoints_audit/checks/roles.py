"""Who may mint, burn, settle, register and administer: the role events of the three contracts.

The token's SETTLEMENT_ROLE can mint and burn anyone's points, so the promise that nobody is
charged without their signature holds only while the Settlement contract is its one holder.
PointsToken names the Settlement in its constructor; any later grant is scheduled on chain
(RoleGrantScheduled, executable after the admin delay) before it takes effect. The audit folds
every role event since deployment into the holders at the audit block and reports each change
and each schedule still pending, so that a grant is public during its whole delay:

* unexpected_minter — an account other than the Settlement contract was granted
  SETTLEMENT_ROLE (whether or not it still holds it: it could mint and burn meanwhile);
* minter_grant_pending — a grant of SETTLEMENT_ROLE to such an account is scheduled and
  neither canceled nor executed: it takes effect at its eta unless the admin cancels it.

Admin transfers, admin delay changes, the other roles' holders and the daily mint cap are
reported (the report's `roles` and its notes), not judged: each is the admin's legitimate
business, and the point is that none of it happens unseen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_utils.address import to_checksum_address

from gridpoints_audit.chain_facts import RoleEvent
from gridpoints_audit.findings import Discrepancy, Kind, RoleReport, as_hex
from gridpoints_chain.contracts import role_id

ROLE_NAMES = {
    role_id(name): name
    for name in (
        "DEFAULT_ADMIN_ROLE",
        "SETTLEMENT_ROLE",
        "PAUSER_ROLE",
        "SETTLER_ROLE",
        "REGISTRAR_ROLE",
    )
}
MINTER_ROLE = role_id("SETTLEMENT_ROLE")


def _role_name(role: bytes | None) -> str | None:
    if role is None:
        return None
    return ROLE_NAMES.get(role, "0x" + role.hex())


def _address(value: bytes | None) -> str | None:
    return None if value is None else to_checksum_address(value)


def _change(event: RoleEvent) -> dict[str, Any]:
    """One event as the report lists it."""
    out: dict[str, Any] = {
        "block": event.block,
        "txHash": as_hex(event.tx_hash),
        "contract": event.contract,
        "event": event.name,
    }
    if event.role is not None:
        out["role"] = _role_name(event.role)
    if event.account is not None:
        out["account"] = _address(event.account)
    if event.sender is not None:
        out["sender"] = _address(event.sender)
    if event.name in ("RoleGrantScheduled", "DefaultAdminTransferScheduled"):
        out["eta"] = event.values[0]
    elif event.name == "DefaultAdminDelayChangeScheduled":
        out["newDelay"], out["eta"] = event.values
    elif event.name == "DailyMintCapSet":
        out["previousCap"], out["newCap"] = event.values
    return out


def role_findings(
    events: Sequence[RoleEvent], settlement: bytes, *, now: int
) -> tuple[RoleReport, list[Discrepancy], list[str]]:
    """The role report, the findings and the notes, from every role event in chain order.
    `settlement` is the Settlement contract's address (the one legitimate minter), `now` the
    audit block's timestamp (whether a pending schedule could already be executed)."""
    report = RoleReport()
    findings: list[Discrepancy] = []
    holders: dict[tuple[str, bytes], set[bytes]] = {}
    pending: dict[tuple[str, bytes, bytes], RoleEvent] = {}
    pending_admin: dict[tuple[str, str], RoleEvent] = {}
    for event in events:
        report.changes.append(_change(event))
        key = (event.contract, event.role or b"")
        if event.name == "RoleGranted" and event.role is not None and event.account is not None:
            holders.setdefault(key, set()).add(event.account)
            if _foreign_minter(event, settlement):
                findings.append(_unexpected_minter(event))
            if event.role == bytes(32):
                # An accepted admin transfer (or the constructor): nothing is pending any more.
                pending_admin.pop((event.contract, "DefaultAdminTransferScheduled"), None)
        elif event.name == "RoleRevoked" and event.role is not None and event.account is not None:
            holders.get(key, set()).discard(event.account)
        elif event.name == "RoleGrantScheduled" and event.role is not None:
            pending[(event.contract, event.role, event.account or b"")] = event
        elif event.name in ("RoleGrantCanceled", "RoleGrantExecuted") and event.role is not None:
            pending.pop((event.contract, event.role, event.account or b""), None)
        elif event.name in ("DefaultAdminTransferScheduled", "DefaultAdminDelayChangeScheduled"):
            pending_admin[(event.contract, event.name)] = event
        elif event.name == "DefaultAdminTransferCanceled":
            pending_admin.pop((event.contract, "DefaultAdminTransferScheduled"), None)
        elif event.name == "DefaultAdminDelayChangeCanceled":
            pending_admin.pop((event.contract, "DefaultAdminDelayChangeScheduled"), None)
        elif event.name == "DailyMintCapSet":
            report.daily_mint_cap = event.values[1]
    for (contract, role), accounts in sorted(holders.items()):
        if accounts:
            name = _role_name(role) or ""
            by_role = report.holders.setdefault(contract, {})
            by_role[name] = sorted(to_checksum_address(a) for a in accounts)
    notes: list[str] = []
    for event in pending.values():
        entry = {**_change(event), "executable": now >= event.values[0]}
        report.pending_grants.append(entry)
        notes.append(
            f"{event.contract}: {_role_name(event.role)} for {_address(event.account)} is "
            f"scheduled (block {event.block}), executable from {event.values[0]}"
        )
        if _foreign_minter(event, settlement):
            findings.append(_pending_minter(event, now))
    for event in pending_admin.values():
        eta = event.values[-1]
        if event.name == "DefaultAdminDelayChangeScheduled" and now > eta:
            continue  # in force: OpenZeppelin applies a passed delay change without an event
        report.pending_admin.append({**_change(event), "passed": now > eta})
        what = (
            f"an admin transfer to {_address(event.account)}"
            if event.name == "DefaultAdminTransferScheduled"
            else f"an admin delay change to {event.values[0]} s"
        )
        notes.append(f"{event.contract}: {what} is scheduled (block {event.block}), from {eta}")
    return report, findings, notes


def _foreign_minter(event: RoleEvent, settlement: bytes) -> bool:
    """Whether the event is about the token's SETTLEMENT_ROLE for another account than the
    Settlement contract."""
    return (
        event.contract == "PointsToken"
        and event.role == MINTER_ROLE
        and event.account != settlement
    )


def _unexpected_minter(event: RoleEvent) -> Discrepancy:
    return Discrepancy(
        Kind.UNEXPECTED_MINTER,
        f"{_address(event.account)} was granted the token's SETTLEMENT_ROLE in block "
        f"{event.block}: it can mint points and burn anyone's without their signature; only "
        "the Settlement contract should hold it",
        user=_address(event.account),
        tx_hash=as_hex(event.tx_hash),
        expected="SETTLEMENT_ROLE held by the Settlement contract only",
        found=_address(event.account),
        details={"block": event.block, "grantedBy": _address(event.sender)},
    )


def _pending_minter(event: RoleEvent, now: int) -> Discrepancy:
    eta = event.values[0]
    when = "executable now" if now >= eta else f"executable in {eta - now} s"
    return Discrepancy(
        Kind.MINTER_GRANT_PENDING,
        f"the token's admin scheduled SETTLEMENT_ROLE for {_address(event.account)} in block "
        f"{event.block} ({when}, at {eta}): once executed it can mint points and burn anyone's "
        "without their signature, unless the admin cancels it first",
        user=_address(event.account),
        tx_hash=as_hex(event.tx_hash),
        expected="no minter but the Settlement contract",
        found=_address(event.account),
        details={"block": event.block, "eta": eta, "executable": now >= eta},
    )
