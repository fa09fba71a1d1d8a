"""Deployment, the deployment file, role wiring, artifacts and the Anvil launcher, on real Anvil."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from eth_account import Account

from gridpoints_chain.artifacts import ArtifactError, load_all, load_artifact
from gridpoints_chain.contracts import GridPointsChain, connect, role_id
from gridpoints_chain.deploy import (
    DEV_ADMIN_DELAY_S,
    DEV_DAILY_MINT_CAP,
    NO_DAILY_MINT_CAP,
    deploy,
)
from gridpoints_chain.deployment import SCHEMA_VERSION, Deployment, DeploymentFileError
from gridpoints_chain.well_known_keys import dev_account
from gridpoints_dev.anvil import AnvilError, AnvilNode, rpc_request
from tests.support.chain import ROOT, ChainEnv, reverts_with

PYTHON = sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ---- deployment file ------------------------------------------------------------------------


def test_deployment_file_is_written_and_loads_back_equal(chain_env: ChainEnv) -> None:
    raw = json.loads(chain_env.deployment_path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["chain_id"] == chain_env.w3.eth.chain_id == chain_env.anvil.chain_id
    assert set(raw["contracts"]) == {"PointsToken", "StationRegistry", "Settlement"}
    assert set(raw) >= {
        "deployment_block", "deployer", "admin", "registrar", "settler", "transactions",
        "created_at",
    }  # fmt: skip
    datetime.fromisoformat(raw["created_at"])
    loaded = Deployment.load(chain_env.deployment_path)
    assert loaded == chain_env.deployed
    assert raw["contracts"] == chain_env.deployed.addresses
    assert raw["transactions"] == dict(chain_env.deployed.tx_hashes)


def test_deployment_records_real_receipts_and_code(chain_env: ChainEnv) -> None:
    d, w3 = chain_env.deployment, chain_env.w3
    receipts = {step: w3.eth.get_transaction_receipt(h) for step, h in d.tx_hashes.items()}
    # No grant of the token's role follows the three deployments: the token names the Settlement
    # in its constructor; then the dev bounds (the admin guards, no window).
    assert list(receipts) == [
        "PointsToken", "StationRegistry", "Settlement", "grantGuardianRole", "setChallengeWindow",
    ]  # fmt: skip
    settlement = chain_env.chain.settlement.functions
    assert settlement.hasRole(settlement.GUARDIAN_ROLE().call(), d.admin).call()
    assert settlement.challengeWindow().call() == 0
    assert settlement.epochMintCap().call() == 2**128 - 1  # none unless the deployer names one
    assert all(r["status"] == 1 for r in receipts.values())
    for name, address in d.addresses.items():
        assert receipts[name]["contractAddress"] == address
        assert len(w3.eth.get_code(address)) > 0
    assert d.deployment_block == receipts["PointsToken"]["blockNumber"]
    assert min(r["blockNumber"] for r in receipts.values()) == d.deployment_block
    assert all(w3.eth.get_transaction(h)["from"] == d.deployer for h in d.tx_hashes.values())
    chain_env.chain.check()


def test_settlement_contract_holds_the_token_settlement_role(chain_env: ChainEnv) -> None:
    c, d = chain_env.chain, chain_env.deployment
    assert c.has_role(c.token, "SETTLEMENT_ROLE", d.settlement_address)
    assert c.token.functions.SETTLEMENT_ROLE().call() == role_id("SETTLEMENT_ROLE")
    assert c.settlement.functions.token().call() == d.token_address


def test_roles_are_wired_to_the_configured_accounts(chain_env: ChainEnv) -> None:
    c, a, d = chain_env.chain, chain_env.accounts, chain_env.deployment
    assert (d.deployer, d.admin, d.registrar, d.settler) == (
        a.admin.address, a.admin.address, a.registrar.address, a.settler.address,
    )  # fmt: skip
    for contract in (c.token, c.registry, c.settlement):
        assert c.has_role(contract, "DEFAULT_ADMIN_ROLE", a.admin.address)
    assert c.has_role(c.token, "PAUSER_ROLE", a.admin.address)
    assert c.has_role(c.registry, "REGISTRAR_ROLE", a.registrar.address)
    assert c.has_role(c.settlement, "SETTLER_ROLE", a.settler.address)
    # Separation of duties: nobody holds a role that is not theirs.
    assert not c.has_role(c.registry, "REGISTRAR_ROLE", a.admin.address)
    assert not c.has_role(c.registry, "REGISTRAR_ROLE", a.settler.address)
    assert not c.has_role(c.settlement, "SETTLER_ROLE", a.admin.address)
    assert not c.has_role(c.settlement, "SETTLER_ROLE", a.registrar.address)
    for who in (a.admin, a.registrar, a.settler, a.outsider):
        assert not c.has_role(c.token, "SETTLEMENT_ROLE", who.address)
    for contract in (c.token, c.registry, c.settlement):
        assert not c.has_role(contract, "DEFAULT_ADMIN_ROLE", a.outsider.address)


def test_token_starts_empty_with_zero_decimals(chain_env: ChainEnv) -> None:
    token = chain_env.chain.token
    assert token.functions.decimals().call() == 0
    assert token.functions.totalSupply().call() == 0
    assert (token.functions.name().call(), token.functions.symbol().call()) == ("GridPoints", "GPT")
    assert chain_env.chain.settlement.functions.lastEpochId().call() == 0


def test_admin_cannot_mint(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    with reverts_with(
        "AccessControlUnauthorizedAccount", a.admin.address, role_id("SETTLEMENT_ROLE")
    ):
        c.transact(a.admin, c.token.functions.mint(a.admin.address, 1))
    with reverts_with(
        "AccessControlUnauthorizedAccount", a.settler.address, role_id("SETTLEMENT_ROLE")
    ):
        c.transact(a.settler, c.token.functions.mint(a.settler.address, 1))
    assert c.token.functions.totalSupply().call() == 0


def test_deploy_with_a_separate_admin_gives_it_every_admin_role_at_once(
    chain_env: ChainEnv,
) -> None:
    a, w3 = chain_env.accounts, chain_env.w3
    new_admin = a.users[0]
    d = deploy(
        w3,
        a.spare,
        admin=new_admin.address,
        registrar=a.registrar.address,
        settler=a.settler.address,
        admin_delay_s=7200,
        daily_mint_cap=5_000,
    )
    c = GridPointsChain(w3, d)
    assert d.deployer == a.spare.address and d.admin == new_admin.address
    assert c.has_role(c.token, "SETTLEMENT_ROLE", d.settlement_address)
    assert c.has_role(c.token, "PAUSER_ROLE", new_admin.address)
    assert not c.has_role(c.token, "PAUSER_ROLE", a.spare.address)
    for contract in (c.token, c.registry, c.settlement):
        assert contract.functions.defaultAdmin().call() == new_admin.address
        assert contract.functions.defaultAdminDelay().call() == 7200
        assert not c.has_role(contract, "DEFAULT_ADMIN_ROLE", a.spare.address)
    assert c.token.functions.dailyMintCap().call() == 5_000
    # The deployer never held the token's admin role: nothing to hand over, nothing to renounce.
    assert list(d.tx_hashes) == ["PointsToken", "StationRegistry", "Settlement"]
    c.transact(new_admin, c.token.functions.pause())
    assert c.token.functions.paused().call()


def test_dev_deployment_has_the_short_delay_and_a_real_cap(chain_env: ChainEnv) -> None:
    c = chain_env.chain
    for contract in (c.token, c.registry, c.settlement):
        assert contract.functions.defaultAdminDelay().call() == DEV_ADMIN_DELAY_S
    assert c.token.functions.dailyMintCap().call() == DEV_DAILY_MINT_CAP


def test_admin_cannot_grant_the_minter_role_at_once(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    with reverts_with("RoleGrantMustBeScheduled", role_id("SETTLEMENT_ROLE")):
        c.transact(
            a.admin, c.token.functions.grantRole(role_id("SETTLEMENT_ROLE"), a.admin.address)
        )
    assert not c.has_role(c.token, "SETTLEMENT_ROLE", a.admin.address)


def test_deploy_with_a_non_dev_key_requires_named_role_holders(chain_env: ChainEnv) -> None:
    stranger = Account.create()
    before = chain_env.w3.eth.block_number
    with pytest.raises(ValueError, match="registrar and settler must be given"):
        deploy(chain_env.w3, stranger)
    named = chain_env.accounts.spare.address
    with pytest.raises(ValueError, match="the admin must be given"):
        deploy(chain_env.w3, stranger, registrar=named, settler=named)
    with pytest.raises(ValueError, match="the daily mint cap must be given"):
        deploy(chain_env.w3, stranger, admin=named, registrar=named, settler=named)
    with pytest.raises(ValueError, match="uncapped token is for dev chains only"):
        deploy(
            chain_env.w3, stranger, admin=named, registrar=named, settler=named,
            daily_mint_cap=NO_DAILY_MINT_CAP,
        )  # fmt: skip
    assert chain_env.w3.eth.block_number == before


# ---- Deployment.save / load -----------------------------------------------------------------


def test_save_is_atomic_and_replaces_the_file(chain_env: ChainEnv, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "deployment.json"
    target.parent.mkdir()
    target.write_text("old, not JSON")
    chain_env.deployment.save(target)
    assert Deployment.load(target) == chain_env.deployment
    assert os.listdir(target.parent) == ["deployment.json"]  # no temporary file left behind
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_load_rejects_missing_malformed_and_foreign_files(
    chain_env: ChainEnv, tmp_path: Path
) -> None:
    with pytest.raises(DeploymentFileError, match="not found; deploy first"):
        Deployment.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DeploymentFileError, match="not JSON"):
        Deployment.load(bad)
    good = chain_env.deployment.to_json()
    for mutate, message in (
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema version"),
        (lambda d: d["contracts"].pop("Settlement"), "lacks contracts"),
        (lambda d: d["contracts"].update(PointsToken="0x1234"), "not an address"),
        (lambda d: d.pop("settler"), "lacks field"),
        (lambda d: d.update(chain_id="31337"), "chain_id must be an integer"),
    ):
        data = json.loads(json.dumps(good))
        mutate(data)
        bad.write_text(json.dumps(data))
        with pytest.raises(DeploymentFileError, match=message):
            Deployment.load(bad)


# ---- artifacts ------------------------------------------------------------------------------


def test_artifacts_load_with_abi_and_creation_code(contracts_built: Path) -> None:
    artifacts = load_all()
    assert list(artifacts) == ["PointsToken", "StationRegistry", "Settlement"]
    for artifact in artifacts.values():
        assert artifact.bytecode and any(e.get("type") == "constructor" for e in artifact.abi)


def test_missing_artifact_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"forge build") as info:
        load_artifact("Settlement", tmp_path / "out")
    assert "cd contracts" in str(info.value)


# ---- the Anvil launcher ---------------------------------------------------------------------


def test_anvil_state_file_survives_a_restart(contracts_built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with AnvilNode(state_path=state, chain_id=4242) as node:
        w3 = connect(node.rpc_url)
        deployment = deploy(w3, dev_account(0))
        deployment.save(tmp_path / "deployment.json")
        block = w3.eth.block_number
    assert state.is_file() and state.stat().st_size > 0
    with AnvilNode(state_path=state, chain_id=4242) as node:
        w3 = connect(node.rpc_url)
        assert w3.eth.block_number == block
        chain = GridPointsChain(w3, Deployment.load(tmp_path / "deployment.json"))
        chain.check()
        assert chain.has_role(chain.token, "SETTLEMENT_ROLE", deployment.settlement_address)


def test_anvil_stops_when_the_with_block_raises(contracts_built: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), AnvilNode() as node:
        pid = node.pid
        assert pid is not None and _alive(pid)
        raise RuntimeError("boom")
    assert not _alive(pid)
    assert not node.running


def test_anvil_on_a_taken_port_fails_clearly(anvil_node: AnvilNode) -> None:
    clash = AnvilNode(port=anvil_node.port)
    with pytest.raises(AnvilError, match="already in use"):
        clash.start()
    assert not clash.running
    assert anvil_node.running


def test_anvil_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("not a state dump")
    # Anvil's own --load-state (a state_path that does not load is set aside instead).
    node = AnvilNode(load_state=state, log_path=tmp_path / "anvil.log")
    with pytest.raises(AnvilError, match="exited with code") as info:
        node.start()
    assert "failed to parse json file" in str(info.value)
    assert not node.running


def test_anvil_startup_timeout_reports_the_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "not-anvil"
    fake.write_text("#!/bin/sh\necho 'fake node warming up'\nexec sleep 30\n")
    fake.chmod(0o755)
    node = AnvilNode(anvil_path=fake, startup_timeout=2.0, log_path=tmp_path / "a.log")
    with pytest.raises(AnvilError, match="did not answer eth_chainId") as info:
        node.start()
    assert "fake node warming up" in str(info.value)
    assert not node.running


def test_anvil_cli_prints_the_url_and_stops_on_sigterm(contracts_built: Path) -> None:
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "scripts" / "anvil.py"), "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert rpc_request(info["rpc_url"], "eth_chainId") == hex(31337)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not _alive(info["pid"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_deploy_cli_reads_the_key_from_the_named_env_var(
    chain_env: ChainEnv, tmp_path: Path
) -> None:
    a = chain_env.accounts
    out = tmp_path / "cli-deployment.json"
    env = {**os.environ, "GP_TEST_DEPLOYER_KEY": a.spare.key.hex()}
    result = subprocess.run(
        [
            PYTHON, str(ROOT / "scripts" / "deploy.py"),
            "--rpc-url", chain_env.anvil.rpc_url,
            "--out", str(out),
            "--key-env", "GP_TEST_DEPLOYER_KEY",
            "--registrar", a.users[1].address,
            "--settler", a.users[2].address,
            "--admin-delay", "600",
            "--daily-mint-cap", "123456",
            "--json",
        ],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    written = Deployment.load(out)
    assert printed["contracts"] == written.addresses
    assert (written.deployer, written.registrar, written.settler) == (
        a.spare.address, a.users[1].address, a.users[2].address,
    )  # fmt: skip
    assert a.spare.key.hex() not in result.stdout + result.stderr
    chain = GridPointsChain(chain_env.w3, written)
    assert chain.has_role(chain.settlement, "SETTLER_ROLE", a.users[2].address)
    assert chain.token.functions.defaultAdminDelay().call() == 600
    assert chain.token.functions.dailyMintCap().call() == 123456

    missing = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "deploy.py"), "--rpc-url", chain_env.anvil.rpc_url,
         "--out", str(tmp_path / "x.json"), "--key-env", "GP_TEST_UNSET_VARIABLE"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "GP_TEST_UNSET_VARIABLE is not set" in missing.stderr


def test_gas_report_runs_on_its_own_anvil_and_reports_every_figure(contracts_built: Path) -> None:
    result = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / "gas_report.py"), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    gas = {row["key"]: row["gas"] for row in report["rows"]}
    assert set(gas) == {
        "commit_first", "commit_later", "credits_first_chunk", "credits_1_fresh",
        "credits_100_fresh", "credits_1_existing", "credits_100_existing", "mint_fresh",
        "mint_existing", "payments_first_chunk", "payments_1_first", "payments_100_first",
        "payments_1_later", "payments_100_later", "payments_100_skipped_used",
        "payments_100_skipped_invalid", "payments_1_wallet_refuses", "payments_1_wallet_burns_gas",
    }  # fmt: skip
    # A skipped payment costs less than one that burns; a gas-burning wallet costs at most the
    # contract's cap (100,000) more than one that refuses at once.
    assert gas["payments_100_skipped_used"] < gas["payments_100_later"]
    assert gas["payments_100_skipped_invalid"] < gas["payments_100_later"]
    assert 0 < gas["payments_1_wallet_burns_gas"] - gas["payments_1_wallet_refuses"] <= 100_000
    # A nonce in a bitmap word the user already touched is cheaper than opening a fresh word.
    assert gas["payments_100_later"] < gas["payments_100_first"]
    assert (
        0
        < report["derived"]["payment_marginal_later"]
        < report["derived"]["payment_marginal_first"]
    )
    # Writing a zero balance costs more than updating a non-zero one, chunk or single mint.
    assert gas["credits_100_existing"] < gas["credits_100_fresh"]
    assert gas["mint_existing"] < gas["mint_fresh"]
    assert (
        0
        < report["derived"]["credit_marginal_existing"]
        < report["derived"]["credit_marginal_fresh"]
    )
    assert report["derived"]["batch_vs_single_mints_fresh"] < 1
