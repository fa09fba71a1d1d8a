"""The chain fixtures (registered by tests/conftest.py): one real Anvil node per session with the
contracts deployed on it.

`chain_session` starts Anvil on a free port, deploys with gridpoints_chain.deploy and yields typed
handles; `chain_env` wraps each test in evm_snapshot / evm_revert so that every test starts
from the freshly deployed state. Nothing here is mocked: every call is a JSON-RPC request to
the Anvil process and every state change a mined transaction.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from gridpoints_chain.artifacts import (
    BUILD_COMMAND,
    contracts_dir,
    load_artifact,
    missing_artifacts,
    repo_root,
)
from gridpoints_chain.contracts import GridPointsChain, Payment
from gridpoints_chain.deployment import Deployment
from gridpoints_chain.errors import ContractRevertError
from gridpoints_chain.transactions import TransactionAccount
from gridpoints_chain.well_known_keys import dev_account
from gridpoints_dev.anvil import AnvilNode
from gridpoints_dev.chain import deploy_dev_contracts
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.plan import SettlementPlan, credit_chunk_leaf, payment_chunk_leaf

ROOT = Path(__file__).resolve().parents[2]

# The helper modules' asserts are rewritten like the tests' own (they are imported by name).
pytest.register_assert_rewrite("backend_fixtures", "settlement_fixtures")

# Dev-account indices of the standard mnemonic beyond the role holders (0, 1, 2: see
# gridpoints_dev.chain.DevRoles); Anvil funds the first ten.
USERS = (3, 4, 5, 6, 7)
OUTSIDER = 8
SPARE = 9


@dataclass(frozen=True, slots=True)
class ChainAccounts:
    """Funded dev accounts by role. `admin` is also the deployer."""

    admin: LocalAccount
    registrar: LocalAccount
    settler: LocalAccount
    users: tuple[LocalAccount, ...]
    outsider: LocalAccount  # holds no role anywhere
    spare: LocalAccount  # holds no role; for tests that need one more key


@dataclass(frozen=True, slots=True)
class ChainEnv:
    """What a chain test gets: the node, web3, the deployment and its handles."""

    anvil: AnvilNode
    w3: Web3
    deployment: Deployment  # as loaded back from the deployment file
    deployment_path: Path
    deployed: Deployment  # as deploy() returned it, before the file round trip
    chain: PlanningChain
    accounts: ChainAccounts

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def latest_timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def next_block_at(self, timestamp: int) -> None:
        """The next mined block (the next transaction, under automine) gets `timestamp`."""
        self.rpc("evm_setNextBlockTimestamp", timestamp)

    def _settle_pool(self, timeout_s: float = 10.0) -> None:
        """Waits (bounded) until Anvil has mined what its pool holds. Under automine a
        transaction is mined shortly *after* eth_sendRawTransaction answers; one a test sent
        without waiting could otherwise be mined after evm_revert, onto the rewound chain, and
        outlive the rewind for every later test on the session node (seen in CI under load)."""
        deadline = time.monotonic() + timeout_s
        while _count(self.rpc("txpool_status")["pending"]) and time.monotonic() < deadline:
            time.sleep(0.02)

    def snapshot(self) -> Any:
        """evm_snapshot, remembering the test chain's epoch plans with it (`revert` restores
        them: a plan amended after the snapshot must not outlive the rewind)."""
        snapshot = self.rpc("evm_snapshot")
        self.chain.save_plans(snapshot)
        return snapshot

    def revert(self, snapshot: Any) -> bool:
        """evm_revert, and the chain's clock back in step with real time.

        Anvil rewinds its clock with the state: after a revert, blocks are stamped as if the
        time since the snapshot had not passed, so over a session the chain would fall minutes
        behind the wall clock, which no real chain does (and the backend judges a record only
        once it has applied a block later than the record's end).
        """
        self._settle_pool()
        reverted = self.rpc("evm_revert", snapshot)
        self.chain.restore_plans(snapshot)
        now = int(time.time())
        if self.latest_timestamp() < now:
            # The clock set to now and a block mined at once: later blocks follow real time,
            # and `latest_timestamp() + n` is a valid next timestamp again. (Only stamping the
            # next block `now` would leave every later block behind real time by however long
            # the chain then stayed idle.)
            self.rpc("evm_setTime", now)
            self.rpc("evm_mine")
        return bool(reverted)


@pytest.fixture(scope="session")
def contracts_built() -> Path:
    """contracts/out with the three artifacts, built by forge if any is missing."""
    missing = missing_artifacts()
    if missing:
        result = subprocess.run(
            [str(repo_root() / "node_modules" / ".bin" / "forge"), "build"],
            cwd=contracts_dir(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0 or missing_artifacts():
            pytest.fail(
                f"{BUILD_COMMAND} failed (artifacts missing: {missing}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    return contracts_dir() / "out"


@pytest.fixture(scope="session")
def anvil_node(
    contracts_built: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AnvilNode]:
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    with AnvilNode(log_path=log) as node:
        yield node


class PlanningChain(GridPointsChain):
    """GridPointsChain for tests that decide an epoch's chunks as they go (as the forge tests'
    Plans.amend): each epoch's plan is kept here (leaf i = chunk i, filler leaves for ids no
    chunk took); `commit_epoch` without a plan commits the plan known then, and
    `apply_credits`/`apply_payments` without a proof add the chunk to the plan and, for an
    epoch already committed, write the new plan root and chunk count into the contract's
    storage (anvil_setStorageAt) before sending it with its proof. Tests of the plan check
    itself pass their own plan and proofs, which go through unchanged."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        super().__init__(w3, deployment)
        self.plans: dict[int, list[bytes]] = {}
        self._records_roots: dict[int, bytes] = {}
        # What `plans` and the committed records roots were at each snapshot (ChainEnv.snapshot).
        self._saved: dict[Any, tuple[dict[int, list[bytes]], dict[int, bytes]]] = {}

    def save_plans(self, snapshot: Any) -> None:
        self._saved[snapshot] = (
            {epoch: list(leaves) for epoch, leaves in self.plans.items()},
            dict(self._records_roots),
        )

    def restore_plans(self, snapshot: Any) -> None:
        """Back to the plans saved with `snapshot` (none saved: a snapshot taken directly
        through RPC, whose plans the test manages itself)."""
        saved = self._saved.pop(snapshot, None)
        if saved is not None:
            plans, roots = saved
            self.plans = {epoch: list(leaves) for epoch, leaves in plans.items()}
            self._records_roots = dict(roots)

    def commit_epoch(  # type: ignore[override]
        self,
        settler: TransactionAccount,
        epoch_id: int,
        *,
        records_root: bytes,
        credits_root: bytes,
        tariff_hash: bytes,
        record_count: int,
        total_credits: int,
        total_debits: int,
        plan_root: bytes | None = None,
        chunk_count: int | None = None,
    ) -> TxReceipt:
        if plan_root is None:
            plan = SettlementPlan(self.plans.setdefault(epoch_id, []))
            plan_root, chunk_count = plan.root, plan.chunk_count
        self._records_roots[epoch_id] = records_root
        return super().commit_epoch(
            settler,
            epoch_id,
            records_root=records_root,
            credits_root=credits_root,
            tariff_hash=tariff_hash,
            record_count=record_count,
            total_credits=total_credits,
            total_debits=total_debits,
            plan_root=plan_root,
            chunk_count=chunk_count if chunk_count is not None else 0,
        )

    def apply_credits(  # type: ignore[override]
        self,
        settler: TransactionAccount,
        epoch_id: int,
        chunk_id: int,
        entries: Sequence[bytes],
        proof: Sequence[bytes] | None = None,
    ) -> TxReceipt:
        if proof is None:
            proof = self.prove(epoch_id, chunk_id, credit_chunk_leaf(list(entries)))
        return super().apply_credits(settler, epoch_id, chunk_id, entries, proof)

    def apply_payments(  # type: ignore[override]
        self,
        settler: TransactionAccount,
        epoch_id: int,
        chunk_id: int,
        payments: Sequence[Payment],
        proof: Sequence[bytes] | None = None,
    ) -> TxReceipt:
        if proof is None:
            proof = self.prove(epoch_id, chunk_id, self.payments_leaf(payments))
        return super().apply_payments(settler, epoch_id, chunk_id, payments, proof)

    def payments_leaf(self, payments: Sequence[Payment]) -> bytes:
        domain = self.settlement_domain
        return payment_chunk_leaf([(p.authorization.digest(domain), p.amount) for p in payments])

    def prove(self, epoch_id: int, chunk_id: int, leaf: bytes) -> list[bytes]:
        """Plans chunk `chunk_id` of `epoch_id` as `leaf` (amending a committed epoch's plan on
        chain); returns its proof."""
        leaves = self.plans.setdefault(epoch_id, [])
        while len(leaves) <= chunk_id:
            leaves.append(keccak256(f"unplanned {epoch_id} {len(leaves)}".encode()))
        leaves[chunk_id] = leaf
        plan = SettlementPlan(leaves)
        self._amend(epoch_id, plan)
        return plan.proof(chunk_id)

    def _amend(self, epoch_id: int, plan: SettlementPlan) -> None:
        records_root = self._records_roots.get(epoch_id)
        if records_root is None:
            return
        address = self.settlement.address
        for m in range(32):
            base = int.from_bytes(keccak256(epoch_id.to_bytes(32, "big") + m.to_bytes(32, "big")))
            if bytes(self.w3.eth.get_storage_at(address, base)) != records_root:
                continue
            if int.from_bytes(self.w3.eth.get_storage_at(address, base + 3)) == 0:
                return  # not committed
            word5 = int.from_bytes(self.w3.eth.get_storage_at(address, base + 5))
            word5 = (word5 & ~(0xFFFFFFFF << 128)) | (plan.chunk_count << 128)
            for slot, value in ((base + 6, plan.root), (base + 5, word5.to_bytes(32, "big"))):
                reply = self.w3.provider.make_request(
                    "anvil_setStorageAt",  # type: ignore[arg-type]
                    [address, hex(slot), "0x" + value.hex()],
                )
                assert "error" not in reply, reply
            return


def deployed_chain_env(node: AnvilNode, directory: Path) -> ChainEnv:
    """The contracts deployed on `node` by the dev accounts (gridpoints_dev.chain), the
    deployment file in `directory` and loaded back from it."""
    dev = deploy_dev_contracts(node.rpc_url, deployment_file=directory / "deployment.json")
    assert dev.deployment_path is not None
    accounts = ChainAccounts(
        admin=dev.roles.admin,
        registrar=dev.roles.registrar,
        settler=dev.roles.settler,
        users=tuple(dev_account(i) for i in USERS),
        outsider=dev_account(OUTSIDER),
        spare=dev_account(SPARE),
    )
    return ChainEnv(
        anvil=node,
        w3=dev.w3,
        deployment=dev.deployment,
        deployment_path=dev.deployment_path,
        deployed=dev.deployed,
        chain=PlanningChain(dev.w3, dev.deployment),
        accounts=accounts,
    )


@pytest.fixture(scope="session")
def chain_session(anvil_node: AnvilNode, tmp_path_factory: pytest.TempPathFactory) -> ChainEnv:
    """Anvil with the contracts deployed by gridpoints_chain.deploy, loaded back from the file."""
    return deployed_chain_env(anvil_node, tmp_path_factory.mktemp("deployment"))


@pytest.fixture
def chain_env(chain_session: ChainEnv) -> Iterator[ChainEnv]:
    """The session chain, rewound to the fresh deployment after the test."""
    snapshot = chain_session.snapshot()
    try:
        yield chain_session
    finally:
        reverted = chain_session.revert(snapshot)
        # The rewind undid transactions whose nonces the sender counted locally.
        chain_session.chain.reset_nonces()
        assert reverted is True, f"evm_revert({snapshot}) failed: the next test is not isolated"


@contextmanager
def reverts_with(name: str, *args: Any) -> Iterator[pytest.ExceptionInfo[ContractRevertError]]:
    """Asserts that the block raises ContractRevertError `name(*args)`, exactly."""
    with pytest.raises(ContractRevertError) as info:
        yield info
    assert info.value.error == (name, tuple(args)), str(info.value)


def delegate_with_eip7702(env: ChainEnv, account: LocalAccount, target: str | None) -> None:
    """A real EIP-7702 (type 4) transaction: `account` signs an authorisation that points its
    code at `target` (None clears it), and the spare account sends it as a sponsor."""
    w3, sponsor = env.w3, env.accounts.spare
    authorization = account.sign_authorization(
        {
            "chainId": w3.eth.chain_id,
            "address": target or "0x" + "00" * 20,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        }
    )
    tx = {
        "type": 4,
        "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(sponsor.address, "pending"),
        "to": sponsor.address,
        "value": 0,
        "data": b"",
        "gas": 100_000,
        "maxFeePerGas": 2 * int(w3.eth.gas_price) + 10**9,
        "maxPriorityFeePerGas": 10**9,
        "authorizationList": [authorization],
    }
    raw = sponsor.sign_transaction(tx).raw_transaction
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
    assert receipt["status"] == 1
    designator = b"" if target is None else bytes.fromhex("ef0100" + target[2:])
    assert bytes(w3.eth.get_code(account.address)) == designator
    # The authorisation bumped the account's nonce behind the sender's back.
    env.chain.reset_nonces()


def deploy_test_contract(env: ChainEnv, name: str, *args: object) -> str:
    """Deploys a contract of contracts/test/utils (built by forge with the tests)."""
    address, _ = env.chain.sender.deploy(env.accounts.admin, load_artifact(name), *args)
    return address


def _count(value: str | int) -> int:
    """A JSON-RPC quantity (Anvil answers txpool_status in hex)."""
    return int(value, 16) if isinstance(value, str) else int(value)
