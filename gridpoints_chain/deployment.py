"""The deployment file every component reads: which chain, which three contract addresses,
from which block, which role holders. `Deployment.save` writes it atomically so a reader never
sees half a file, and `Deployment.load` validates it. `deployment_domain` is the EIP-712 domain
that station records of the deployment are signed under.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address, to_checksum_address

from gridpoints_chain.artifacts import CONTRACT_NAMES
from gridpoints_files import write_atomically
from gridpoints_protocol.keys import is_valid_address
from gridpoints_protocol.record import Domain

SCHEMA_VERSION = 1
ZERO_ADDRESS = to_checksum_address("0x" + "00" * 20)


class DeploymentFileError(ValueError):
    """A deployment file is missing, malformed or of another schema version."""


def deployment_domain(deployment: Deployment) -> Domain:
    """The EIP-712 domain of a deployment: its chain id and StationRegistry address."""
    return Domain(deployment.chain_id, to_canonical_address(deployment.registry_address))


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
        """Writes the file atomically (a reader never sees half of it); the file holds nothing
        secret and other services read it, so it is world-readable."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(target, json.dumps(self.to_json(), indent=2) + "\n")

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
