"""Deployment of the three GridPoints contracts and the deployment file every component reads.

`deploy` sends PointsToken(admin), StationRegistry(admin, registrar) and
Settlement(token, admin, settler), then grants the token's SETTLEMENT_ROLE to the Settlement
contract, waiting for and checking each receipt. `Deployment` is what it produced (chain id,
addresses, block, roles, transaction hashes); `Deployment.save` writes it atomically so a reader
never sees half a file, and `Deployment.load` validates it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from web3 import Web3

from backend.chain.anvil import DEFAULT_MNEMONIC
from backend.chain.artifacts import CONTRACT_NAMES, ContractArtifact, load_all
from backend.chain.contracts import ChainError, ErrorDecoder, TxSender, is_valid_address, role_id

SCHEMA_VERSION = 1
ZERO_ADDRESS = to_checksum_address("0x" + "00" * 20)

# Dev-account indices under the standard mnemonic when no role holder is named.
DEV_DEPLOYER, DEV_REGISTRAR, DEV_SETTLER = 0, 1, 2


class DeploymentFileError(ValueError):
    """A deployment file is missing, malformed or of another schema version."""


def dev_account(index: int, mnemonic: str = DEFAULT_MNEMONIC) -> LocalAccount:
    """Anvil's dev account `index` (BIP-44 path m/44'/60'/0'/0/index) of `mnemonic`.

    Derived rather than written down so that no private key sits in the source.
    """
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def is_dev_key(account: LocalAccount) -> bool:
    """Whether `account` is one of the publicly known dev keys (first 20 of the mnemonic)."""
    return any(dev_account(i).address == account.address for i in range(20))


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment of the GridPoints contracts."""

    chain_id: int
    token_address: ChecksumAddress
    registry_address: ChecksumAddress
    settlement_address: ChecksumAddress
    deployment_block: int  # block of the first contract: no event of these contracts is older
    deployer: ChecksumAddress
    admin: ChecksumAddress
    registrar: ChecksumAddress
    settler: ChecksumAddress
    tx_hashes: Mapping[str, str]  # step name -> 0x-hash, in the order they were sent
    created_at: str  # ISO 8601, UTC
    schema_version: int = SCHEMA_VERSION

    @property
    def addresses(self) -> dict[str, ChecksumAddress]:
        """Contract name -> address."""
        return {
            "PointsToken": self.token_address,
            "StationRegistry": self.registry_address,
            "Settlement": self.settlement_address,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "chain_id": self.chain_id,
            "contracts": self.addresses,
            "deployment_block": self.deployment_block,
            "deployer": self.deployer,
            "admin": self.admin,
            "registrar": self.registrar,
            "settler": self.settler,
            "transactions": dict(self.tx_hashes),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        """Validates and parses what `to_json` wrote."""
        try:
            version = data["schema_version"]
            if version != SCHEMA_VERSION:
                raise DeploymentFileError(
                    f"deployment schema version {version!r}; this code reads {SCHEMA_VERSION}"
                )
            contracts = data["contracts"]
            missing = [name for name in CONTRACT_NAMES if name not in contracts]
            if missing:
                raise DeploymentFileError(f"deployment lacks contracts {missing}")
            transactions = data["transactions"]
            if not isinstance(transactions, Mapping) or not all(
                isinstance(v, str) and v.startswith("0x") for v in transactions.values()
            ):
                raise DeploymentFileError("transactions must map step names to 0x-hashes")
            return cls(
                chain_id=_positive_int(data["chain_id"], "chain_id"),
                token_address=_address(contracts["PointsToken"], "PointsToken"),
                registry_address=_address(contracts["StationRegistry"], "StationRegistry"),
                settlement_address=_address(contracts["Settlement"], "Settlement"),
                deployment_block=_positive_int(data["deployment_block"], "deployment_block", 0),
                deployer=_address(data["deployer"], "deployer"),
                admin=_address(data["admin"], "admin"),
                registrar=_address(data["registrar"], "registrar"),
                settler=_address(data["settler"], "settler"),
                tx_hashes=dict(transactions),
                created_at=str(data["created_at"]),
            )
        except KeyError as exc:
            raise DeploymentFileError(f"deployment lacks field {exc}") from exc
        except TypeError as exc:
            raise DeploymentFileError(f"malformed deployment: {exc}") from exc

    def save(self, path: Path | str) -> Path:
        """Writes the file atomically: a temporary file in the same directory, then rename."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            # mkstemp creates 0600; the file holds nothing secret and other services read it.
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        # The rename is durable only once the directory entry is on disk.
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return target

    @classmethod
    def load(cls, path: Path | str) -> Deployment:
        source = Path(path)
        try:
            data = json.loads(source.read_text())
        except FileNotFoundError as exc:
            raise DeploymentFileError(
                f"deployment file {source} not found; deploy first (scripts/deploy.py)"
            ) from exc
        except ValueError as exc:
            raise DeploymentFileError(f"deployment file {source} is not JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise DeploymentFileError(f"deployment file {source} does not hold an object")
        return cls.from_json(data)


def _address(value: Any, what: str) -> ChecksumAddress:
    if not is_valid_address(value):
        raise DeploymentFileError(f"{what} is not an address: {value!r}")
    return to_checksum_address(value)


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DeploymentFileError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    *,
    admin: str | None = None,
    registrar: str | None = None,
    settler: str | None = None,
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
