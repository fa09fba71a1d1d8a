"""A development chain with a deployment: the contracts deployed on a running Anvil by the
well-known dev accounts, and stations registered by the dev registrar.

One version of what the demo, the benchmarks, the gas report and the test fixtures all need
before they can do anything else. The node itself is an `AnvilNode` (gridpoints_dev.anvil),
started by the caller: each of them starts it its own way (a log file, a state file, a gas
limit) and some deploy several times on one node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from gridpoints_chain.contracts import GridPointsChain, connect, role_id
from gridpoints_chain.deploy import deploy
from gridpoints_chain.deployment import Deployment
from gridpoints_chain.well_known_keys import DEV_DEPLOYER, DEV_REGISTRAR, DEV_SETTLER, dev_account


@dataclass(frozen=True, slots=True)
class DevRoles:
    """The dev accounts holding the deployment's roles; `admin` is also the deployer."""

    admin: LocalAccount
    registrar: LocalAccount
    settler: LocalAccount

    @classmethod
    def standard(cls) -> DevRoles:
        return cls(
            admin=dev_account(DEV_DEPLOYER),
            registrar=dev_account(DEV_REGISTRAR),
            settler=dev_account(DEV_SETTLER),
        )


@dataclass(frozen=True, slots=True)
class DevDeployment:
    """The contracts on a dev chain and the handles to use them."""

    w3: Web3
    deployed: Deployment  # as deploy() returned it
    deployment: Deployment  # as loaded back from `deployment_path` (`deployed` if not saved)
    deployment_path: Path | None
    chain: GridPointsChain
    roles: DevRoles


def deploy_dev_contracts(
    rpc_url: str,
    *,
    deployment_file: Path | None = None,
    roles: DevRoles | None = None,
    challenge_window: int = 0,
) -> DevDeployment:
    """Deploys the three contracts on the node at `rpc_url` with the dev accounts' roles.

    The admin is also the guardian, and the challenge window is `challenge_window` seconds
    (none by default: a dev chain settles at once; tests of the window set one).

    With `deployment_file`, the deployment is saved there and the handles use the file as
    loaded back, the way every service reads it.
    """
    roles = roles if roles is not None else DevRoles.standard()
    w3 = connect(rpc_url)
    deployed = deploy(
        w3,
        roles.admin,
        registrar=roles.registrar.address,
        settler=roles.settler.address,
        guardian=roles.admin.address,
        challenge_window=challenge_window,
    )
    deployment = deployed
    if deployment_file is not None:
        deployment_file = deployed.save(deployment_file)
        deployment = Deployment.load(deployment_file)
    return DevDeployment(
        w3=w3,
        deployed=deployed,
        deployment=deployment,
        deployment_path=deployment_file,
        chain=GridPointsChain(w3, deployment),
        roles=roles,
    )


def register_station(
    chain: GridPointsChain,
    registrar: LocalAccount,
    station_id: bytes,
    signer: str,
    *,
    zone: int,
    max_power_w: int,
    active_from: int = 0,
    gas: int | None = None,
) -> TxReceipt:
    """Registers a station with its signing key's address, by a mined registrar transaction."""
    call = chain.registry.functions.registerStation(
        station_id, signer, zone, max_power_w, active_from
    )
    return chain.transact(registrar, call, gas=gas)


def advance_time(w3: Web3, seconds: int) -> None:
    """Moves an Anvil node's clock `seconds` ahead and mines a block at the new time."""
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def grant_token_role_after_delay(
    chain: GridPointsChain, admin: LocalAccount, role: str, account: str
) -> tuple[TxReceipt, TxReceipt]:
    """Grants a token role that only a schedule grants (SETTLEMENT_ROLE) on a dev chain: the
    admin schedules it, the node's clock is moved past the admin delay, the admin executes it.
    Returns the schedule and execute receipts. For dev tooling (the gas report's lone minter,
    tests); on a real chain the delay is days and the auditor reports the pending grant."""
    token = chain.token.functions
    scheduled = chain.transact(admin, token.scheduleRoleGrant(role_id(role), account))
    advance_time(chain.w3, int(token.defaultAdminDelay().call()) + 1)
    executed = chain.transact(admin, token.executeRoleGrant(role_id(role), account))
    return scheduled, executed
