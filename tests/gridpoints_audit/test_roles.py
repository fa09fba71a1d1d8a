"""The auditor reports who may mint and burn (issue 16, item 6): every role holder change of the
three contracts, every pending scheduled grant, and as findings a minter other than the
Settlement contract — scheduled (minter_grant_pending) or granted (unexpected_minter).

Real backend (its API is the audit's source), the session Anvil with the dev deployment (admin
delay 60 s); the admin acts the way a holder of the admin key can: schedule, execute, cancel,
revoke, begin an admin transfer. The node's clock is moved past the delay (evm_increaseTime;
the chain fixture's revert rewinds it).
"""

from __future__ import annotations

import json
from typing import Any

from eth_account import Account

from gridpoints_audit.findings import AuditReport, Kind
from gridpoints_chain.contracts import role_id
from gridpoints_chain.deploy import DEV_ADMIN_DELAY_S, DEV_DAILY_MINT_CAP
from gridpoints_dev.chain import advance_time
from tests.support.audit import audit_api, run_audit_cli
from tests.support.backend import BackendHarness

MINTER = role_id("SETTLEMENT_ROLE")


def events(report: AuditReport) -> list[tuple[str, str, str | None]]:
    return [(c["contract"], c["event"], c.get("account")) for c in report.roles.changes]


def test_a_scheduled_then_executed_foreign_minter_is_reported_and_flagged(
    harness: BackendHarness,
) -> None:
    h = harness
    chain, admin = h.env.chain, h.env.accounts.admin
    d = h.env.deployment
    token = chain.token.functions

    before = audit_api(h)
    assert before.clean
    roles = before.roles
    assert roles.holders["PointsToken"]["SETTLEMENT_ROLE"] == [d.settlement_address]
    for contract in ("PointsToken", "StationRegistry", "Settlement"):
        assert roles.holders[contract]["DEFAULT_ADMIN_ROLE"] == [d.admin]
    assert roles.holders["Settlement"]["SETTLER_ROLE"] == [d.settler]
    assert roles.daily_mint_cap == DEV_DAILY_MINT_CAP
    assert roles.pending_grants == []
    assert ("PointsToken", "RoleGranted", d.settlement_address) in events(before)

    intruder = Account.create().address
    receipt = chain.transact(admin, token.scheduleRoleGrant(MINTER, intruder))
    scheduled_at = int(chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
    pending = audit_api(h)
    assert pending.kinds() == {Kind.MINTER_GRANT_PENDING}
    (finding,) = pending.discrepancies
    assert finding.found == intruder
    assert finding.tx_hash == "0x" + bytes(receipt["transactionHash"]).hex()
    (grant,) = pending.roles.pending_grants
    assert (grant["account"], grant["role"]) == (intruder, "SETTLEMENT_ROLE")
    assert grant["eta"] == scheduled_at + DEV_ADMIN_DELAY_S
    assert grant["executable"] is False
    assert events(pending)[-1] == ("PointsToken", "RoleGrantScheduled", intruder)
    assert any("SETTLEMENT_ROLE for " + intruder in note for note in pending.notes)
    assert intruder not in pending.roles.holders["PointsToken"]["SETTLEMENT_ROLE"]

    advance_time(chain.w3, DEV_ADMIN_DELAY_S + 1)
    chain.transact(admin, token.executeRoleGrant(MINTER, intruder))
    granted = audit_api(h)
    assert granted.kinds() == {Kind.UNEXPECTED_MINTER}
    assert granted.roles.pending_grants == []
    assert sorted(granted.roles.holders["PointsToken"]["SETTLEMENT_ROLE"]) == sorted(
        [d.settlement_address, intruder]
    )
    assert events(granted)[-2:] == [
        ("PointsToken", "RoleGrantExecuted", intruder),
        ("PointsToken", "RoleGranted", intruder),
    ]

    # Revoked again: still a finding (it could mint and burn meanwhile), no longer a holder.
    chain.transact(admin, token.revokeRole(MINTER, intruder))
    revoked = audit_api(h)
    assert revoked.kinds() == {Kind.UNEXPECTED_MINTER}
    assert revoked.roles.holders["PointsToken"]["SETTLEMENT_ROLE"] == [d.settlement_address]
    assert events(revoked)[-1] == ("PointsToken", "RoleRevoked", intruder)

    result = run_audit_cli(h, "--api", h.url, "--json")
    assert result.returncode == 1, result.stderr
    printed: dict[str, Any] = json.loads(result.stdout)
    assert [x["kind"] for x in printed["discrepancies"]] == ["unexpected_minter"]
    assert printed["roles"]["holders"]["PointsToken"]["SETTLEMENT_ROLE"] == [d.settlement_address]


def test_a_canceled_grant_and_an_admin_transfer_are_reported_not_judged(
    harness: BackendHarness,
) -> None:
    h = harness
    chain, admin = h.env.chain, h.env.accounts.admin
    candidate = Account.create().address
    next_admin = h.env.accounts.users[0].address
    chain.transact(admin, chain.token.functions.scheduleRoleGrant(MINTER, candidate))
    chain.transact(admin, chain.token.functions.cancelRoleGrant(MINTER, candidate))
    chain.transact(admin, chain.registry.functions.beginDefaultAdminTransfer(next_admin))
    chain.transact(admin, chain.token.functions.setDailyMintCap(5_000))

    report = audit_api(h)
    assert report.clean, report.kinds()
    assert report.roles.pending_grants == []
    assert events(report)[-4:] == [
        ("PointsToken", "RoleGrantScheduled", candidate),
        ("PointsToken", "RoleGrantCanceled", candidate),
        ("StationRegistry", "DefaultAdminTransferScheduled", next_admin),
        ("PointsToken", "DailyMintCapSet", None),
    ]
    (transfer,) = report.roles.pending_admin
    assert (transfer["contract"], transfer["account"]) == ("StationRegistry", next_admin)
    assert any(f"admin transfer to {next_admin}" in note for note in report.notes)
    assert report.roles.daily_mint_cap == 5_000
