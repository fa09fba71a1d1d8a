"""The commands' one door to ``gridpoints_chain``: deployment files, a checked connection to
the node, the registry lookup and the chain's errors.

``gridpoints_chain`` loads web3, which takes longer than most commands: it is imported on first
use, here only, so that ``--help`` and the commands that need no chain stay quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridpoints_protocol.authorization import SettlementDomain

if TYPE_CHECKING:
    from gridpoints_chain.contracts import GridPointsChain
    from gridpoints_chain.deployment import Deployment


def load_deployment(path: Path) -> Deployment:
    from gridpoints_chain.deployment import Deployment

    return Deployment.load(path)


def settlement_domain(deployment: Deployment) -> SettlementDomain:
    """The EIP-712 domain of payment authorisations: the deployment's Settlement contract."""
    return SettlementDomain(deployment.chain_id, bytes.fromhex(deployment.settlement_address[2:]))


def open_chain(
    rpc_url: str, deployment: Deployment, *, timeout: float | None = None
) -> GridPointsChain:
    """The deployment's contracts through the node at `rpc_url`, checked to be there."""
    from gridpoints_chain.contracts import GridPointsChain, connect

    w3 = connect(rpc_url) if timeout is None else connect(rpc_url, timeout=timeout)
    chain = GridPointsChain(w3, deployment)
    chain.check()
    return chain


def registered_station(chain: GridPointsChain, station_id: bytes) -> Any | None:
    """The StationRegistry's entry for `station_id` (signer, zone, max power, active from, …),
    None if the registry does not know the station."""
    from gridpoints_chain.errors import ContractRevertError

    try:
        return chain.call(chain.registry.functions.getStation(station_id))
    except ContractRevertError as exc:
        if exc.error_name != "UnknownStation":
            raise
        return None


def chain_error_code(exc: BaseException) -> str | None:
    """The error code of a failure of the chain or of a deployment file, None for any other."""
    from gridpoints_chain.deployment import DeploymentFileError
    from gridpoints_chain.errors import ChainError, ContractRevertError

    if isinstance(exc, ContractRevertError):
        return "reverted"
    if isinstance(exc, ChainError):
        return "chain_error"
    if isinstance(exc, DeploymentFileError):
        return "deployment_file"
    return None
