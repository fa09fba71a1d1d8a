"""Deployment of the three GridPoints contracts.

`deploy` sends PointsToken(admin), StationRegistry(admin, registrar) and
Settlement(token, admin, settler), then grants the token's SETTLEMENT_ROLE to the Settlement
contract, waiting for and checking each receipt, and returns the `Deployment` it produced.
When the deployer is the admin it also sets the settlement's bounds: the GUARDIAN_ROLE (which
can void an epoch in its challenge window), the challenge window and the per-epoch mint cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3

from gridpoints_chain.artifacts import ContractArtifact, load_all
from gridpoints_chain.contracts import role_id
from gridpoints_chain.deployment import ZERO_ADDRESS, Deployment
from gridpoints_chain.errors import ChainError, ErrorDecoder
from gridpoints_chain.transactions import TxSender
from gridpoints_chain.well_known_keys import DEV_REGISTRAR, DEV_SETTLER, dev_account, is_dev_key


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    *,
    admin: str | None = None,
    registrar: str | None = None,
    settler: str | None = None,
    guardian: str | None = None,
    challenge_window: int | None = None,
    epoch_mint_cap: int | None = None,
    artifacts: Mapping[str, ContractArtifact] | None = None,
    receipt_timeout: float = 120.0,
) -> Deployment:
    """Deploys and wires the three contracts; returns the Deployment (not yet saved).

    `admin` defaults to the deployer, and `registrar` and `settler` to dev accounts 1 and 2,
    only when the deployer itself is a well-known dev key (a throwaway chain); anywhere else
    they must be named, so that no role lands on a key whose secret is public. The zero
    address is accepted for both: the role is then left for the admin to grant later.

    When `admin` is not the deployer, the token is created with the deployer as its admin just
    long enough to grant SETTLEMENT_ROLE to the Settlement contract; the deployer then grants
    DEFAULT_ADMIN_ROLE and PAUSER_ROLE to `admin` and renounces both. The registry and the
    settlement get `admin` directly from their constructors.

    `guardian` (GUARDIAN_ROLE of the settlement; default: none), `challenge_window` (seconds;
    default: the contract's, one hour) and `epoch_mint_cap` (points; default: none) are set by
    the deployer as the settlement's admin, so only when the deployer is the admin; otherwise
    the admin sets them (ValueError if given).
    """
    arts = dict(artifacts) if artifacts is not None else load_all()
    if registrar is None or settler is None:
        if not is_dev_key(deployer):
            raise ValueError(
                "registrar and settler must be given when deploying with a non-dev key"
            )
        registrar = registrar if registrar is not None else dev_account(DEV_REGISTRAR).address
        settler = settler if settler is not None else dev_account(DEV_SETTLER).address
    if admin is None and not is_dev_key(deployer):
        # The admin grants every role; on a real chain it belongs to a multisig, not to the
        # hot key that happened to pay for the deployment.
        raise ValueError("the admin must be given when deploying with a non-dev key")
    admin_address = to_checksum_address(admin) if admin is not None else deployer.address
    registrar_address = to_checksum_address(registrar)
    settler_address = to_checksum_address(settler)
    if admin_address == ZERO_ADDRESS:
        raise ValueError("the admin cannot be the zero address: nobody could grant roles")
    handover = admin_address != deployer.address
    bounds = (guardian, challenge_window, epoch_mint_cap)
    if handover and any(b is not None for b in bounds):
        raise ValueError(
            "the guardian, challenge window and mint cap are set by the settlement's admin: "
            "with another admin than the deployer, the admin sets them after the deployment"
        )

    sender = TxSender(
        w3, ErrorDecoder(a.abi for a in arts.values()), receipt_timeout=receipt_timeout
    )
    chain_id = sender.chain_id
    tx_hashes: dict[str, str] = {}

    def record(step: str, receipt: Any) -> None:
        tx_hashes[step] = "0x" + bytes(receipt["transactionHash"]).hex()

    token_address, token_receipt = sender.deploy(
        deployer, arts["PointsToken"], deployer.address if handover else admin_address
    )
    record("PointsToken", token_receipt)
    registry_address, receipt = sender.deploy(
        deployer, arts["StationRegistry"], admin_address, registrar_address
    )
    record("StationRegistry", receipt)
    settlement_address, receipt = sender.deploy(
        deployer, arts["Settlement"], token_address, admin_address, settler_address
    )
    record("Settlement", receipt)

    token = w3.eth.contract(address=token_address, abi=arts["PointsToken"].abi)
    settlement_role = role_id("SETTLEMENT_ROLE")
    receipt = sender.transact(
        deployer, token.functions.grantRole(settlement_role, settlement_address)
    )
    record("grantSettlementRole", receipt)
    settlement = w3.eth.contract(address=settlement_address, abi=arts["Settlement"].abi)
    if guardian is not None:
        call = settlement.functions.grantRole(
            role_id("GUARDIAN_ROLE"), to_checksum_address(guardian)
        )
        record("grantGuardianRole", sender.transact(deployer, call))
    if challenge_window is not None:
        call = settlement.functions.setChallengeWindow(challenge_window)
        record("setChallengeWindow", sender.transact(deployer, call))
    if epoch_mint_cap is not None:
        call = settlement.functions.setEpochMintCap(epoch_mint_cap)
        record("setEpochMintCap", sender.transact(deployer, call))
    if handover:
        admin_role, pauser_role = role_id("DEFAULT_ADMIN_ROLE"), role_id("PAUSER_ROLE")
        steps = [
            ("grantTokenAdmin", token.functions.grantRole(admin_role, admin_address)),
            ("grantTokenPauser", token.functions.grantRole(pauser_role, admin_address)),
            ("renounceTokenPauser", token.functions.renounceRole(pauser_role, deployer.address)),
            ("renounceTokenAdmin", token.functions.renounceRole(admin_role, deployer.address)),
        ]
        for step, call in steps:
            record(step, sender.transact(deployer, call))

    deployment = Deployment(
        chain_id=chain_id,
        token_address=token_address,
        registry_address=registry_address,
        settlement_address=settlement_address,
        deployment_block=int(token_receipt["blockNumber"]),
        deployer=deployer.address,
        admin=admin_address,
        registrar=registrar_address,
        settler=settler_address,
        tx_hashes=tx_hashes,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    _check_wiring(w3, deployment, arts)
    return deployment


def _check_wiring(w3: Web3, deployment: Deployment, arts: Mapping[str, ContractArtifact]) -> None:
    """Reads the roles back: a deployment whose roles are wrong must not be written out."""
    token = w3.eth.contract(address=deployment.token_address, abi=arts["PointsToken"].abi)
    registry = w3.eth.contract(address=deployment.registry_address, abi=arts["StationRegistry"].abi)
    settlement = w3.eth.contract(address=deployment.settlement_address, abi=arts["Settlement"].abi)
    expected = [
        (token, "SETTLEMENT_ROLE", deployment.settlement_address),
        (token, "DEFAULT_ADMIN_ROLE", deployment.admin),
        (token, "PAUSER_ROLE", deployment.admin),
        (registry, "DEFAULT_ADMIN_ROLE", deployment.admin),
        (settlement, "DEFAULT_ADMIN_ROLE", deployment.admin),
    ]
    if deployment.registrar != ZERO_ADDRESS:
        expected.append((registry, "REGISTRAR_ROLE", deployment.registrar))
    if deployment.settler != ZERO_ADDRESS:
        expected.append((settlement, "SETTLER_ROLE", deployment.settler))
    for contract, role, holder in expected:
        if not contract.functions.hasRole(role_id(role), holder).call():
            raise ChainError(f"after deployment {holder} lacks {role} on {contract.address}")
    if deployment.admin != deployment.deployer:
        for role in ("DEFAULT_ADMIN_ROLE", "PAUSER_ROLE"):
            if token.functions.hasRole(role_id(role), deployment.deployer).call():
                raise ChainError(f"the deployer still holds the token's {role}")
    if token.functions.SETTLEMENT_ROLE().call() != role_id("SETTLEMENT_ROLE"):
        raise ChainError("the token's SETTLEMENT_ROLE is not keccak256('SETTLEMENT_ROLE')")
