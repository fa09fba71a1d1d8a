"""The transaction pipeline of gridpoints_chain.transactions, step by step, on the session Anvil:
prepare (one gas margin, the nonce from the one nonce manager), sign (a LocalAccount or a
SignerAccount), broadcast, wait; reverts decoded at the estimate and after mining; nonces given
back and reused after a failed signature or a refused broadcast; fee-bumped replacements."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_utils.crypto import keccak
from web3.contract.contract import ContractFunction

from gridpoints_chain.errors import (
    BroadcastRefusedError,
    ContractRevertError,
    TransactionFailedError,
)
from gridpoints_chain.signer_account import SignerAccount
from gridpoints_chain.transactions import (
    GAS_MARGIN_PERCENT,
    NonceManager,
    bumped_fee,
    gas_limit,
)
from gridpoints_dev.anvil import AnvilNode
from gridpoints_signers import DevKeySigner
from tests.support.chain import ChainEnv, deployed_chain_env, reverts_with

ROOT = b"\x11" * 32


def commit_call(env: ChainEnv, epoch_id: int) -> ContractFunction:
    call: ContractFunction = env.chain.settlement.functions.commitEpoch(
        epoch_id, ROOT, ROOT, ROOT, 1, 0, 0, ROOT, 0
    )
    return call


def last_epoch(env: ChainEnv) -> int:
    return int(env.chain.settlement.functions.lastEpochId().call())


# ---- the gas margin -------------------------------------------------------------------------


def test_one_gas_margin_with_explicit_headroom() -> None:
    assert GAS_MARGIN_PERCENT == 25
    assert gas_limit(100_000) == 125_000
    assert gas_limit(100_003) == 125_003  # rounded down, like int(estimate * 1.25)
    assert gas_limit(100_000, headroom=7_000) == 132_000  # headroom on top, not scaled


def test_a_prepared_transaction_gets_the_estimate_plus_the_margin(chain_env: ChainEnv) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    call = commit_call(chain_env, 1)
    estimate = sender.estimate(settler.address, call)
    prepared = sender.prepare(settler.address, call, headroom=1_000)
    assert prepared.gas == gas_limit(estimate, headroom=1_000)
    assert prepared.sender == settler.address
    assert prepared.params["chainId"] == chain_env.w3.eth.chain_id
    assert int(prepared.params["maxFeePerGas"]) > 0  # the node's fee suggestion was filled in
    explicit = sender.prepare(settler.address, call, gas=90_000)
    assert explicit.gas == 90_000  # an explicit limit skips the estimate and the margin
    assert explicit.nonce == prepared.nonce + 1


# ---- the steps one by one -------------------------------------------------------------------


def test_prepare_sign_store_broadcast_wait(chain_env: ChainEnv) -> None:
    w3, sender, settler = chain_env.w3, chain_env.chain.sender, chain_env.accounts.settler
    pending_before = w3.eth.get_transaction_count(settler.address, "pending")
    prepared = sender.prepare(settler.address, commit_call(chain_env, 1))
    assert prepared.nonce == pending_before  # the manager's first nonce is the node's
    signed = sender.sign(settler, prepared)
    assert (signed.sender, signed.nonce) == (settler.address, prepared.nonce)
    assert signed.tx_hash == keccak(signed.raw)
    assert Account.recover_transaction(signed.raw) == settler.address
    # Signed but not broadcast: nothing has left the process, the caller may store its intent.
    assert sender.transaction(signed.tx_hash) is None
    assert w3.eth.get_transaction_count(settler.address, "pending") == pending_before
    assert last_epoch(chain_env) == 0
    assert sender.broadcast(signed.raw, sender=settler.address) == signed.tx_hash
    receipt = sender.wait(signed.tx_hash, replay=signed.params)
    assert receipt["status"] == 1 and bytes(receipt["transactionHash"]) == signed.tx_hash
    assert last_epoch(chain_env) == 1
    # The manager counted locally: the next nonce follows without asking the node.
    assert sender.nonces.reserve(settler.address) == pending_before + 1


def test_broadcasting_bytes_the_node_already_holds_is_a_success(chain_env: ChainEnv) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    signed = sender.sign(settler, sender.prepare(settler.address, commit_call(chain_env, 1)))
    chain_env.rpc("evm_setAutomine", False)
    try:
        sender.broadcast(signed.raw, sender=settler.address)
        # A stored intent sent again after a crash: the node answers "already imported".
        assert sender.broadcast(signed.raw, sender=settler.address) == signed.tx_hash
        pending = sender.transaction(signed.tx_hash)
        assert pending is not None and pending.get("blockNumber") is None
    finally:
        chain_env.rpc("evm_setAutomine", True)
    chain_env.rpc("evm_mine")
    assert sender.wait(signed.tx_hash)["status"] == 1


@pytest.mark.filterwarnings("ignore::gridpoints_signers.DevelopmentKeyWarning")
def test_a_signer_account_goes_through_the_same_pipeline(chain_env: ChainEnv) -> None:
    settler = chain_env.accounts.settler
    account = SignerAccount(DevKeySigner(bytes(settler.key)))
    receipt = chain_env.chain.sender.transact(account, commit_call(chain_env, 1))
    assert receipt["status"] == 1 and receipt["from"] == settler.address
    assert last_epoch(chain_env) == 1


# ---- reverts --------------------------------------------------------------------------------


def test_a_revert_at_the_estimate_is_decoded_and_takes_no_nonce(chain_env: ChainEnv) -> None:
    w3, sender, settler = chain_env.w3, chain_env.chain.sender, chain_env.accounts.settler
    with reverts_with("EpochOutOfOrder", 1, 7) as info:
        sender.prepare(settler.address, commit_call(chain_env, 7), context="commit 7")
    assert info.value.named_args == {"expected": 1, "epochId": 7}
    assert info.value.context == "commit 7" and info.value.tx_hash is None
    assert sender.nonces.reserve(settler.address) == w3.eth.get_transaction_count(
        settler.address, "pending"
    )


def test_a_mined_revert_is_decoded_at_the_wait(chain_env: ChainEnv) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    prepared = sender.prepare(settler.address, commit_call(chain_env, 3), gas=200_000)
    signed = sender.sign(settler, prepared)
    sender.broadcast(signed.raw, sender=settler.address)
    with reverts_with("EpochOutOfOrder", 1, 3) as info:
        sender.wait(signed.tx_hash, replay=signed.params)
    assert info.value.tx_hash == signed.tx_hash
    receipt = info.value.receipt
    assert receipt is not None and receipt["status"] == 0
    # Without the transaction's fields there is nothing to replay: the failure is still raised.
    with pytest.raises(TransactionFailedError):
        sender.check(receipt)
    # The mined failure used its nonce: the next transaction takes the one after it.
    assert sender.transact(settler, commit_call(chain_env, 1))["status"] == 1


# ---- nonces ---------------------------------------------------------------------------------


class RefusingAccount:
    """An account whose key fails to sign (a token that went away)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def sign_transaction(self, transaction_dict: dict[str, Any]) -> SignedTransaction:
        raise RuntimeError("the token is away")


def test_a_nonce_is_given_back_when_signing_fails(chain_env: ChainEnv) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    prepared = sender.prepare(settler.address, commit_call(chain_env, 1))
    with pytest.raises(RuntimeError, match="token is away"):
        sender.sign(RefusingAccount(settler.address), prepared)
    again = sender.prepare(settler.address, commit_call(chain_env, 1))
    assert again.nonce == prepared.nonce
    signed = sender.sign(settler, again)
    sender.broadcast(signed.raw, sender=settler.address)
    # Wait for it: a transaction Anvil mines after the fixture's evm_revert would outlive the
    # rewind and leave epoch 1 committed for every later test on the session node.
    assert sender.wait(signed.tx_hash)["status"] == 1


def test_a_nonce_is_reused_after_a_refused_broadcast(chain_env: ChainEnv) -> None:
    sender, user = chain_env.chain.sender, Account.create()
    cancel = chain_env.chain.settlement.functions.cancelAuthorization(42)
    signed = sender.sign(user, sender.prepare(user.address, cancel))
    assert signed.nonce == 0
    # The account cannot pay for gas: the node refuses, nothing reaches the pool.
    with pytest.raises(BroadcastRefusedError, match=r"(?i)insufficient funds") as info:
        sender.broadcast(signed.raw, sender=user.address)
    assert not info.value.nonce_conflict and info.value.tx_hash == signed.tx_hash
    chain_env.rpc("anvil_setBalance", user.address, hex(10**18))
    retry = sender.sign(user, sender.prepare(user.address, cancel))
    assert retry.nonce == 0  # the refused transaction's nonce is free again
    sender.broadcast(retry.raw, sender=user.address)
    assert sender.wait(retry.tx_hash)["status"] == 1
    assert chain_env.chain.is_authorization_used(user.address, 42)


def test_a_nonce_taken_behind_the_managers_back_is_refused_and_resynced(
    chain_env: ChainEnv,
) -> None:
    w3, sender, settler = chain_env.w3, chain_env.chain.sender, chain_env.accounts.settler
    first = sender.prepare(settler.address, commit_call(chain_env, 1))
    sender.nonces.release(settler.address, first.nonce)  # counted locally from here on
    outside = settler.sign_transaction(
        {
            "to": chain_env.accounts.outsider.address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "nonce": first.nonce,
            "chainId": w3.eth.chain_id,
        }
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(outside.raw_transaction))
    stale = sender.sign(settler, sender.prepare(settler.address, commit_call(chain_env, 1)))
    assert stale.nonce == first.nonce  # the manager does not know yet
    with pytest.raises(BroadcastRefusedError) as info:
        sender.broadcast(stale.raw, sender=settler.address)
    assert info.value.nonce_conflict and "nonce" in str(info.value).lower()
    fresh = sender.prepare(settler.address, commit_call(chain_env, 1))
    assert fresh.nonce == first.nonce + 1  # asked the node again
    sender.broadcast(sender.sign(settler, fresh).raw, sender=settler.address)
    assert last_epoch(chain_env) == 1


def test_transact_retries_once_after_a_nonce_conflict(chain_env: ChainEnv) -> None:
    w3, sender, settler = chain_env.w3, chain_env.chain.sender, chain_env.accounts.settler
    nonce = sender.nonces.reserve(settler.address)
    sender.nonces.release(settler.address, nonce)
    outside = settler.sign_transaction(
        {
            "to": settler.address,
            "value": 0,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "nonce": nonce,
            "chainId": w3.eth.chain_id,
        }
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(outside.raw_transaction))
    receipt = sender.transact(settler, commit_call(chain_env, 1))
    assert receipt["status"] == 1
    assert w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == nonce + 1


def test_the_nonce_manager_follows_stored_intents_and_the_node(chain_env: ChainEnv) -> None:
    settler = chain_env.accounts.settler.address
    nonces = NonceManager(chain_env.w3)
    counts = nonces.on_chain(settler)
    assert counts.mined == counts.pending
    nonces.taken(settler, counts.pending + 4)  # a stored intent with that nonce went out again
    assert nonces.reserve(settler) == counts.pending + 5
    nonces.reset(settler)
    assert nonces.reserve(settler) == counts.pending
    assert nonces.reserve(settler) == counts.pending + 1
    nonces.release(settler, counts.pending)  # not the last one handed out: forget, ask the node
    assert nonces.reserve(settler) == counts.pending


# ---- replacements and receipts --------------------------------------------------------------


def test_a_stuck_transaction_is_replaced_with_bumped_fees(tmp_path: Path) -> None:
    # A node of its own: on the shared session node a block mined by anything else between the
    # two broadcasts mines the original (seen twice in CI under load), and this test turns
    # automining off, which nothing else may see.
    with AnvilNode(log_path=tmp_path / "anvil.log") as node:
        _replace_a_stuck_transaction(deployed_chain_env(node, tmp_path))


def _replace_a_stuck_transaction(chain_env: ChainEnv) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    call = commit_call(chain_env, 1)
    chain_env.rpc("evm_setAutomine", False)
    try:
        original = sender.sign(settler, sender.prepare(settler.address, call))
        sender.broadcast(original.raw, sender=settler.address)
        pending = sender.transaction(original.tx_hash)
        assert pending is not None
        replacement = sender.prepare_replacement(pending, call)
        assert (replacement.sender, replacement.nonce) == (settler.address, original.nonce)
        assert replacement.gas == int(pending["gas"])
        assert int(replacement.params["maxFeePerGas"]) >= bumped_fee(int(pending["maxFeePerGas"]))
        assert int(replacement.params["maxPriorityFeePerGas"]) >= bumped_fee(
            int(pending["maxPriorityFeePerGas"])
        )
        assert "gasPrice" not in replacement.params
        signed = sender.sign(settler, replacement)
        sender.broadcast(signed.raw, sender=settler.address)
        chain_env.rpc("evm_mine")
    finally:
        chain_env.rpc("evm_setAutomine", True)
    receipt = sender.first_receipt([original.tx_hash, signed.tx_hash], timeout=10)
    assert receipt is not None and bytes(receipt["transactionHash"]) == signed.tx_hash
    assert sender.receipt(original.tx_hash) is None  # replaced: it can never be mined
    assert last_epoch(chain_env) == 1


def test_a_replacement_of_a_call_that_now_reverts_is_refused_before_signing(
    chain_env: ChainEnv,
) -> None:
    sender, settler = chain_env.chain.sender, chain_env.accounts.settler
    receipt = sender.transact(settler, commit_call(chain_env, 1))
    mined = sender.transaction(bytes(receipt["transactionHash"]))
    assert mined is not None
    with pytest.raises(ContractRevertError) as info:
        sender.prepare_replacement(mined, commit_call(chain_env, 1))
    assert info.value.error_name == "EpochAlreadyCommitted"


def test_waiting_for_receipts_ends_at_the_timeout_or_the_stop(chain_env: ChainEnv) -> None:
    sender, unknown = chain_env.chain.sender, b"\x42" * 32
    started = time.monotonic()
    assert sender.first_receipt([unknown], timeout=0.3, poll_interval=0.05) is None
    assert 0.3 <= time.monotonic() - started < 5
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert sender.first_receipt([unknown], timeout=60, poll_interval=0.05, stop=stop) is None
    assert time.monotonic() - started < 5
