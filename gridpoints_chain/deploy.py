"""Deployment of the three GridPoints contracts.

`deploy` sends PointsToken(admin, adminDelay, settlement, dailyMintCap),
StationRegistry(admin, adminDelay, registrar) and Settlement(token, admin, adminDelay, settler),
in this order from one account, waiting for and checking each receipt, and returns the
`Deployment` it produced. The token names the Settlement contract as its minter in its
constructor: the Settlement's address is known in advance (the deployer's nonce two
transactions later), so no grant of SETTLEMENT_ROLE ever follows — any later grant is
scheduled on chain and waits the admin delay (PointsToken.scheduleRoleGrant).

The admin delay (AccessControlDefaultAdminRules: how long an admin transfer and a scheduled
minter grant wait) defaults to `PRODUCTION_ADMIN_DELAY_S` (3 days) and, for a throwaway chain
deployed by a well-known dev key, to `DEV_ADMIN_DELAY_S` (60 s). The daily mint cap has no
production default (it depends on the fleet's volume) and must be named; a dev deployment gets
`DEV_DAILY_MINT_CAP`.
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
from web3.types import Nonce
from web3.utils.address import get_create_address

from gridpoints_chain.artifacts import ContractArtifact, load_all
from gridpoints_chain.contracts import role_id
from gridpoints_chain.deployment import ZERO_ADDRESS, Deployment
from gridpoints_chain.errors import ChainError, ErrorDecoder
from gridpoints_chain.transactions import TxSender
from gridpoints_chain.well_known_keys import DEV_REGISTRAR, DEV_SETTLER, dev_account, is_dev_key

# Long enough for the auditor's report (run daily) and the pauser to act on a scheduled
# minter grant or an admin transfer before it can take effect; short enough to replace a lost
# admin key within a working week. README, trust model.
PRODUCTION_ADMIN_DELAY_S = 3 * 24 * 3600
# A throwaway chain: short, so tests and the demo can move time past it (evm_increaseTime).
DEV_ADMIN_DELAY_S = 60
# A throwaway chain's daily mint cap: a real cap (every mint is counted as in production)
# that no test or benchmark reaches.
DEV_DAILY_MINT_CAP = 10**15
# PointsToken.NO_DAILY_MINT_CAP: no cap at all; refused for a non-dev deployment.
NO_DAILY_MINT_CAP = 2**96 - 1
MAX_ADMIN_DELAY_S = 2**48 - 1


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    *,
    admin: str | None = None,
    registrar: str | None = None,
    settler: str | None = None,
    admin_delay_s: int | None = None,
    daily_mint_cap: int | None = None,
    guardian: str | None = None,
    challenge_window: int | None = None,
    epoch_mint_cap: int | None = None,
    artifacts: Mapping[str, ContractArtifact] | None = None,
    receipt_timeout: float = 120.0,
) -> Deployment:
    """Deploys and wires the three contracts; returns the Deployment (not yet saved).

    `admin` defaults to the deployer, `registrar` and `settler` to dev accounts 1 and 2,
    `admin_delay_s` to 60 s and `daily_mint_cap` to 10**15, only when the deployer itself is a
    well-known dev key (a throwaway chain); anywhere else the roles and the cap must be named,
    so that no role lands on a key whose secret is public, and the delay defaults to 3 days.
    The zero address is accepted for the registrar and the settler: the role is then left for
    the admin to grant later.

    `guardian` (GUARDIAN_ROLE of the settlement; default: none), `challenge_window` (seconds;
    default: the contract's, one hour) and `epoch_mint_cap` (points; default: none) are set by
    the deployer as the settlement's admin, so only when the deployer is the admin; otherwise
    the admin sets them (ValueError if given).
    """
    arts = dict(artifacts) if artifacts is not None else load_all()
    dev = is_dev_key(deployer)
    if registrar is None or settler is None:
        if not dev:
            raise ValueError(
                "registrar and settler must be given when deploying with a non-dev key"
            )
        registrar = registrar if registrar is not None else dev_account(DEV_REGISTRAR).address
        settler = settler if settler is not None else dev_account(DEV_SETTLER).address
    if admin is None and not dev:
        # The admin grants every role; on a real chain it belongs to a multisig, not to the
        # hot key that happened to pay for the deployment.
        raise ValueError("the admin must be given when deploying with a non-dev key")
    if daily_mint_cap is None:
        if not dev:
            raise ValueError(
                "the daily mint cap must be given when deploying with a non-dev key: it bounds "
                "what a stolen settler key can mint per day, so size it above the fleet's "
                "busiest day"
            )
        daily_mint_cap = DEV_DAILY_MINT_CAP
    if not 0 <= daily_mint_cap <= NO_DAILY_MINT_CAP:
        raise ValueError(f"the daily mint cap must be in 0..2**96-1, got {daily_mint_cap}")
    if daily_mint_cap == NO_DAILY_MINT_CAP and not dev:
        raise ValueError("an uncapped token is for dev chains only")
    if admin_delay_s is None:
        admin_delay_s = DEV_ADMIN_DELAY_S if dev else PRODUCTION_ADMIN_DELAY_S
    if not 0 <= admin_delay_s <= MAX_ADMIN_DELAY_S:
        raise ValueError(f"the admin delay must be in 0..2**48-1 seconds, got {admin_delay_s}")
    admin_address = to_checksum_address(admin) if admin is not None else deployer.address
    registrar_address = to_checksum_address(registrar)
    settler_address = to_checksum_address(settler)
    if admin_address == ZERO_ADDRESS:
        raise ValueError("the admin cannot be the zero address: nobody could grant roles")
    if admin_address != deployer.address and any(
        bound is not None for bound in (guardian, challenge_window, epoch_mint_cap)
    ):
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

    # The token, the registry and the settlement go out at the deployer's next three nonces;
    # the token names the settlement's address (CREATE: sender and nonce) as its minter.
    nonce = int(w3.eth.get_transaction_count(deployer.address, "pending"))
    predicted = to_checksum_address(get_create_address(deployer.address, Nonce(nonce + 2)))
    token_address, token_receipt = sender.deploy(
        deployer, arts["PointsToken"], admin_address, admin_delay_s, predicted, daily_mint_cap
    )
    record("PointsToken", token_receipt)
    registry_address, receipt = sender.deploy(
        deployer, arts["StationRegistry"], admin_address, admin_delay_s, registrar_address
    )
    record("StationRegistry", receipt)
    settlement_address, receipt = sender.deploy(
        deployer, arts["Settlement"], token_address, admin_address, admin_delay_s, settler_address
    )
    record("Settlement", receipt)
    if settlement_address != predicted:
        # Another transaction of the deployer's took a nonce in between: the token's minter is
        # an address without the Settlement code. Nothing can mint; deploy again.
        raise ChainError(
            f"the Settlement landed at {settlement_address}, not at {predicted} which the "
            "token names as its minter (the deployer sent another transaction meanwhile); "
            "deploy again from an idle account"
        )
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
    _check_wiring(w3, deployment, arts, admin_delay_s=admin_delay_s, cap=daily_mint_cap)
    return deployment


def _check_wiring(
    w3: Web3,
    deployment: Deployment,
    arts: Mapping[str, ContractArtifact],
    *,
    admin_delay_s: int,
    cap: int,
) -> None:
    """Reads the roles back: a deployment whose roles are wrong must not be written out."""
    token = w3.eth.contract(address=deployment.token_address, abi=arts["PointsToken"].abi)
    registry = w3.eth.contract(address=deployment.registry_address, abi=arts["StationRegistry"].abi)
    settlement = w3.eth.contract(address=deployment.settlement_address, abi=arts["Settlement"].abi)
    expected = [
        (token, "SETTLEMENT_ROLE", deployment.settlement_address),
        (token, "PAUSER_ROLE", deployment.admin),
    ]
    if deployment.registrar != ZERO_ADDRESS:
        expected.append((registry, "REGISTRAR_ROLE", deployment.registrar))
    if deployment.settler != ZERO_ADDRESS:
        expected.append((settlement, "SETTLER_ROLE", deployment.settler))
    for contract, role, holder in expected:
        if not contract.functions.hasRole(role_id(role), holder).call():
            raise ChainError(f"after deployment {holder} lacks {role} on {contract.address}")
    for contract in (token, registry, settlement):
        if contract.functions.defaultAdmin().call() != deployment.admin:
            raise ChainError(f"after deployment {contract.address} has another admin")
        if contract.functions.defaultAdminDelay().call() != admin_delay_s:
            raise ChainError(f"after deployment {contract.address} has another admin delay")
    if token.functions.dailyMintCap().call() != cap:
        raise ChainError("after deployment the token has another daily mint cap")
    if token.functions.SETTLEMENT_ROLE().call() != role_id("SETTLEMENT_ROLE"):
        raise ChainError("the token's SETTLEMENT_ROLE is not keccak256('SETTLEMENT_ROLE')")
