"""checks/roles.py over hand-made role events (pure: no chain): the fold into holders, pending
schedules and findings, including what the Anvil tests do not reach (a passed admin delay
change, an accepted admin transfer, a scheduled grant to the Settlement contract itself)."""

from __future__ import annotations

from eth_utils.address import to_checksum_address

from gridpoints_audit.chain_facts import RoleEvent
from gridpoints_audit.checks.roles import role_findings
from gridpoints_audit.findings import Kind
from gridpoints_chain.contracts import role_id

SETTLEMENT = bytes.fromhex("11" * 20)
ADMIN = bytes.fromhex("aa" * 20)
OTHER = bytes.fromhex("bb" * 20)
MINTER = role_id("SETTLEMENT_ROLE")
ADMIN_ROLE = bytes(32)


def event(block: int, contract: str, name: str, **fields: object) -> RoleEvent:
    return RoleEvent(block, 0, bytes([block]) * 32, contract, name, **fields)  # type: ignore[arg-type]


def deployment() -> list[RoleEvent]:
    return [
        event(1, "PointsToken", "RoleGranted", role=ADMIN_ROLE, account=ADMIN, sender=ADMIN),
        event(1, "PointsToken", "RoleGranted", role=MINTER, account=SETTLEMENT, sender=ADMIN),
        event(1, "PointsToken", "DailyMintCapSet", values=(0, 1_000)),
    ]


def test_the_deployment_alone_is_clean() -> None:
    report, findings, notes = role_findings(deployment(), SETTLEMENT, now=100)
    assert findings == [] and notes == []
    assert report.holders["PointsToken"]["SETTLEMENT_ROLE"] == [to_checksum_address(SETTLEMENT)]
    assert report.daily_mint_cap == 1_000
    assert len(report.changes) == 3


def test_a_grant_to_the_settlement_itself_is_reported_not_judged() -> None:
    events = [
        *deployment(),
        event(2, "PointsToken", "RoleRevoked", role=MINTER, account=SETTLEMENT, sender=ADMIN),
        event(
            3, "PointsToken", "RoleGrantScheduled", role=MINTER, account=SETTLEMENT, values=(50,)
        ),
    ]
    report, findings, notes = role_findings(events, SETTLEMENT, now=60)
    assert findings == []
    (pending,) = report.pending_grants
    assert pending["executable"] is True
    assert len(notes) == 1
    assert "SETTLEMENT_ROLE" not in report.holders["PointsToken"]


def test_a_foreign_minter_granted_then_revoked_stays_a_finding() -> None:
    events = [
        *deployment(),
        event(2, "PointsToken", "RoleGrantScheduled", role=MINTER, account=OTHER, values=(10,)),
        event(3, "PointsToken", "RoleGrantExecuted", role=MINTER, account=OTHER),
        event(3, "PointsToken", "RoleGranted", role=MINTER, account=OTHER, sender=ADMIN),
        event(4, "PointsToken", "RoleRevoked", role=MINTER, account=OTHER, sender=ADMIN),
    ]
    report, findings, _ = role_findings(events, SETTLEMENT, now=100)
    assert [f.kind for f in findings] == [Kind.UNEXPECTED_MINTER]
    assert findings[0].tx_hash == "0x" + "03" * 32
    assert report.pending_grants == []


def test_admin_schedules_leave_the_pending_list_once_accepted_or_in_force() -> None:
    events = [
        *deployment(),
        event(2, "Settlement", "DefaultAdminTransferScheduled", account=OTHER, values=(40,)),
        event(2, "Settlement", "DefaultAdminDelayChangeScheduled", values=(0, 30)),
        event(2, "StationRegistry", "DefaultAdminDelayChangeScheduled", values=(0, 500)),
    ]
    report, findings, notes = role_findings(events, SETTLEMENT, now=35)
    assert findings == []
    # The settlement's delay change has passed (in force without an event); the other two wait.
    assert [(p["contract"], p["event"]) for p in report.pending_admin] == [
        ("Settlement", "DefaultAdminTransferScheduled"),
        ("StationRegistry", "DefaultAdminDelayChangeScheduled"),
    ]
    assert len(notes) == 2
    accepted = [
        *events,
        event(5, "Settlement", "RoleRevoked", role=ADMIN_ROLE, account=ADMIN, sender=OTHER),
        event(5, "Settlement", "RoleGranted", role=ADMIN_ROLE, account=OTHER, sender=OTHER),
    ]
    report, _, _ = role_findings(accepted, SETTLEMENT, now=45)
    assert [p["contract"] for p in report.pending_admin] == ["StationRegistry"]
    assert report.holders["Settlement"]["DEFAULT_ADMIN_ROLE"] == [to_checksum_address(OTHER)]
