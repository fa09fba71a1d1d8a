"""Settlement and PointsToken through real transactions: epochs, credit and debit chunks,
balances, supply and events, and every exactly-once rule and role restriction, each revert
decoded to its exact custom error."""

from __future__ import annotations

import os

import pytest
from conftest import ChainEnv, reverts_with
from eth_account import Account
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st
from web3.contract.contract import ContractFunction
from web3.logs import DISCARD

from backend.chain.contracts import (
    MAX_ENTRY_AMOUNT,
    ChunkKind,
    ContractRevertError,
    pack_entries,
    pack_entry,
    role_id,
    unpack_entry,
)
from station_signer import merkle

RECORDS_ROOT = b"\x11" * 32
CREDITS_ROOT = b"\x22" * 32
TARIFF_HASH = b"\x33" * 32
ZERO = "0x" + "00" * 20


def _commit(
    env: ChainEnv, epoch_id: int, credits: int, debits: int = 0, record_count: int = 3
) -> None:
    env.chain.commit_epoch(
        env.accounts.settler,
        epoch_id,
        records_root=RECORDS_ROOT,
        credits_root=CREDITS_ROOT,
        tariff_hash=TARIFF_HASH,
        record_count=record_count,
        total_credits=credits,
        total_debits=debits,
    )


def _commit_fn(
    env: ChainEnv, epoch_id: int, credits: int = 10, record_count: int = 3
) -> ContractFunction:
    return env.chain.settlement.functions.commitEpoch(
        epoch_id, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, record_count, credits, 0
    )


def _balance(env: ChainEnv, address: str) -> int:
    return int(env.chain.token.functions.balanceOf(address).call())


def _supply(env: ChainEnv) -> int:
    return int(env.chain.token.functions.totalSupply().call())


# ---- packing (no chain) ---------------------------------------------------------------------


def test_pack_entry_puts_the_amount_above_the_160_bit_account() -> None:
    account = "0x00000000000000000000000000000000000000FF"
    entry = pack_entry(account, 5)
    assert entry == (5 << 160 | 0xFF).to_bytes(32, "big")
    assert unpack_entry(entry) == (to_checksum_address(account), 5)
    top = pack_entry(bytes.fromhex("ff" * 20), MAX_ENTRY_AMOUNT)
    assert top == b"\xff" * 32


def test_pack_entry_rejects_what_the_contract_would_misread() -> None:
    user = Account.create().address
    with pytest.raises(ValueError, match=r"\[1, 2\*\*96\)"):
        pack_entry(user, 2**96)
    with pytest.raises(ValueError, match=r"\[1, 2\*\*96\)"):
        pack_entry(user, -1)
    with pytest.raises(ValueError, match=r"\[1, 2\*\*96\)"):
        pack_entry(user, 0)
    with pytest.raises(TypeError):
        pack_entry(user, True)
    with pytest.raises(TypeError):
        pack_entry(user, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero address"):
        pack_entry(ZERO, 1)
    with pytest.raises(ValueError, match="not an address"):
        pack_entry("0x1234", 1)
    # An EIP-55 test vector with one letter's case flipped: a typo, not another account.
    assert pack_entry("0x52908400098527886E0F7030069857D2E4169EE7", 1)
    with pytest.raises(ValueError, match="checksum"):
        pack_entry("0x52908400098527886e0F7030069857D2E4169EE7", 1)
    with pytest.raises(ValueError, match="20 bytes"):
        pack_entry(b"\x01" * 19, 1)


@given(
    account=st.binary(min_size=20, max_size=20).filter(any),
    amount=st.integers(min_value=1, max_value=MAX_ENTRY_AMOUNT),
)
def test_unpack_inverts_pack(account: bytes, amount: int) -> None:
    address, unpacked = unpack_entry(pack_entry(account, amount))
    assert (bytes.fromhex(address[2:]), unpacked) == (account, amount)


# ---- commit ---------------------------------------------------------------------------------


def test_commit_epoch_stores_the_epoch_and_emits_the_event(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    at = chain_env.latest_timestamp() + 5
    chain_env.next_block_at(at)
    receipt = c.transact(settler, _commit_fn(chain_env, 1, credits=100, record_count=9))
    (event,) = c.settlement.events.EpochCommitted().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "epochId": 1, "recordsRoot": RECORDS_ROOT, "creditsRoot": CREDITS_ROOT,
        "tariffHash": TARIFF_HASH, "recordCount": 9, "totalCredits": 100, "totalDebits": 0,
    }  # fmt: skip
    assert c.settlement.functions.lastEpochId().call() == 1
    assert c.settlement.functions.getEpoch(1).call() == (
        RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 9, at, 100, 0, 0, 0,
    )  # fmt: skip


def test_epochs_are_committed_in_order_from_one(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    with reverts_with("EpochOutOfOrder", 1, 2):
        c.transact(settler, _commit_fn(chain_env, 2))
    with reverts_with("EpochOutOfOrder", 1, 0):
        c.transact(settler, _commit_fn(chain_env, 0))
    _commit(chain_env, 1, 10)
    with reverts_with("EpochOutOfOrder", 2, 3):
        c.transact(settler, _commit_fn(chain_env, 3))
    _commit(chain_env, 2, 10)
    assert c.settlement.functions.lastEpochId().call() == 2


def test_an_epoch_is_committed_only_once(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    _commit(chain_env, 1, 10)
    with reverts_with("EpochAlreadyCommitted", 1):
        c.transact(settler, _commit_fn(chain_env, 1))
    _commit(chain_env, 2, 10)
    with reverts_with("EpochAlreadyCommitted", 1):
        c.transact(settler, _commit_fn(chain_env, 1))


def test_an_empty_epoch_is_refused(chain_env: ChainEnv) -> None:
    with reverts_with("EmptyEpoch", 1):
        chain_env.chain.transact(
            chain_env.accounts.settler, _commit_fn(chain_env, 1, record_count=0)
        )


def test_unknown_epochs_cannot_be_read_or_applied(chain_env: ChainEnv) -> None:
    c, settler, user = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    with reverts_with("UnknownEpoch", 1):
        c.call(c.settlement.functions.getEpoch(1))
    with reverts_with("UnknownEpoch", 1):
        c.apply_credits(settler, 1, 0, [pack_entry(user.address, 1)])
    with reverts_with("UnknownEpoch", 1):
        c.apply_debits(settler, 1, 0, [pack_entry(user.address, 1)])
    with reverts_with("UnknownEpoch", 1):
        c.call(c.settlement.functions.verifyLeaf(1, b"\x00" * 32, 0, []))


# ---- credits and debits ---------------------------------------------------------------------


def test_credit_chunk_mints_balances_supply_and_events(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    amounts = [7, 1, MAX_ENTRY_AMOUNT]  # the largest amount exercises all 96 high bits
    total = sum(amounts)
    _commit(chain_env, 1, credits=total)
    entries = pack_entries(zip((u.address for u in users[:3]), amounts, strict=True))
    receipt = c.apply_credits(settler, 1, 0, entries)

    for user, amount in zip(users[:3], amounts, strict=True):
        assert _balance(chain_env, user.address) == amount
    assert _supply(chain_env) == total
    transfers = c.token.events.Transfer().process_receipt(receipt, errors=DISCARD)
    assert [(t["args"]["from"], t["args"]["to"], t["args"]["value"]) for t in transfers] == [
        (ZERO, u.address, a) for u, a in zip(users[:3], amounts, strict=True)
    ]
    (applied,) = c.settlement.events.ChunkApplied().process_receipt(receipt, errors=DISCARD)
    assert dict(applied["args"]) == {
        "epochId": 1, "chunkId": 0, "kind": ChunkKind.CREDIT, "entries": 3, "amount": total,
    }  # fmt: skip
    epoch = c.settlement.functions.getEpoch(1).call()
    assert (epoch[7], epoch[8]) == (total, 0)  # appliedCredits, appliedDebits
    assert c.settlement.functions.isChunkApplied(1, 0).call()
    assert not c.settlement.functions.isChunkApplied(1, 1).call()


def test_debit_chunk_burns_balances_supply_and_events(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    _commit(chain_env, 1, credits=100)
    c.apply_credits(settler, 1, 0, pack_entries([(users[0].address, 60), (users[1].address, 40)]))
    _commit(chain_env, 2, credits=0, debits=25)
    receipt = c.apply_debits(
        settler, 2, 0, pack_entries([(users[0].address, 20), (users[1].address, 5)])
    )

    assert (_balance(chain_env, users[0].address), _balance(chain_env, users[1].address)) == (
        40,
        35,
    )
    assert _supply(chain_env) == 75
    transfers = c.token.events.Transfer().process_receipt(receipt, errors=DISCARD)
    assert [(t["args"]["from"], t["args"]["to"], t["args"]["value"]) for t in transfers] == [
        (users[0].address, ZERO, 20), (users[1].address, ZERO, 5),
    ]  # fmt: skip
    (applied,) = c.settlement.events.ChunkApplied().process_receipt(receipt, errors=DISCARD)
    assert dict(applied["args"]) == {
        "epochId": 2, "chunkId": 0, "kind": ChunkKind.DEBIT, "entries": 2, "amount": 25,
    }  # fmt: skip
    epoch = c.settlement.functions.getEpoch(2).call()
    assert (epoch[7], epoch[8]) == (0, 25)


def test_an_epoch_settles_in_several_chunks_up_to_its_totals(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    _commit(chain_env, 1, credits=30, debits=10)
    c.apply_credits(settler, 1, 0, [pack_entry(users[0].address, 10)])
    c.apply_credits(settler, 1, 7, [pack_entry(users[1].address, 20)])  # ids need not be dense
    c.apply_debits(settler, 1, 1, [pack_entry(users[1].address, 10)])
    epoch = c.settlement.functions.getEpoch(1).call()
    assert (epoch[5], epoch[6], epoch[7], epoch[8]) == (30, 10, 30, 10)
    assert _supply(chain_env) == 20


def test_a_chunk_is_applied_only_once(chain_env: ChainEnv) -> None:
    c, settler, user = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _commit(chain_env, 1, credits=100, debits=10)
    c.apply_credits(settler, 1, 3, [pack_entry(user.address, 10)])
    with reverts_with("ChunkAlreadyApplied", 1, 3):
        c.apply_credits(settler, 1, 3, [pack_entry(user.address, 10)])
    # Credits and debits share one id space per epoch.
    with reverts_with("ChunkAlreadyApplied", 1, 3):
        c.apply_debits(settler, 1, 3, [pack_entry(user.address, 1)])
    assert _balance(chain_env, user.address) == 10
    # The same chunk id is free again in the next epoch.
    _commit(chain_env, 2, credits=5)
    c.apply_credits(settler, 2, 3, [pack_entry(user.address, 5)])
    assert _balance(chain_env, user.address) == 15


def test_credits_and_debits_never_exceed_the_committed_totals(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    _commit(chain_env, 1, credits=100, debits=30)
    c.apply_credits(settler, 1, 0, [pack_entry(users[0].address, 60)])
    with reverts_with("ExceedsCommittedTotal", 1, ChunkKind.CREDIT, 110, 100):
        c.apply_credits(settler, 1, 1, [pack_entry(users[1].address, 50)])
    c.apply_debits(settler, 1, 2, [pack_entry(users[0].address, 30)])
    with reverts_with("ExceedsCommittedTotal", 1, ChunkKind.DEBIT, 31, 30):
        c.apply_debits(settler, 1, 3, [pack_entry(users[0].address, 1)])
    # A refused chunk leaves nothing behind: its id stays free, no point moved.
    assert not c.settlement.functions.isChunkApplied(1, 1).call()
    assert not c.settlement.functions.isChunkApplied(1, 3).call()
    assert (_balance(chain_env, users[0].address), _balance(chain_env, users[1].address)) == (30, 0)
    assert _supply(chain_env) == 30
    c.apply_credits(settler, 1, 1, [pack_entry(users[1].address, 40)])  # exactly up to the total
    assert c.settlement.functions.getEpoch(1).call()[7] == 100


def test_a_debit_above_the_balance_reverts_with_the_token_error(chain_env: ChainEnv) -> None:
    c, settler, user = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _commit(chain_env, 1, credits=5, debits=100)
    c.apply_credits(settler, 1, 0, [pack_entry(user.address, 5)])
    with reverts_with("ERC20InsufficientBalance", user.address, 5, 6):
        c.apply_debits(settler, 1, 1, [pack_entry(user.address, 6)])
    assert _balance(chain_env, user.address) == 5


def test_empty_chunks_and_zero_receivers_are_refused(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    _commit(chain_env, 1, credits=10, debits=10)
    with reverts_with("EmptyChunk"):
        c.apply_credits(settler, 1, 0, [])
    with reverts_with("EmptyChunk"):
        c.apply_debits(settler, 1, 0, [])
    # pack_entry refuses the zero address; raw bytes show the chain refuses it too.
    with reverts_with("ERC20InvalidReceiver", ZERO):
        c.apply_credits(settler, 1, 0, [(1 << 160).to_bytes(32, "big")])
    assert not c.settlement.functions.isChunkApplied(1, 0).call()


# ---- roles and pause ------------------------------------------------------------------------


def test_only_the_settler_may_commit_or_apply(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    settler_role = role_id("SETTLER_ROLE")
    entry = [pack_entry(a.users[0].address, 1)]
    for intruder in (a.admin, a.registrar, a.outsider, a.users[0]):
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, _commit_fn(chain_env, 1))
    _commit(chain_env, 1, credits=10, debits=10)
    for intruder in (a.admin, a.registrar, a.outsider):
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, c.settlement.functions.applyCredits(1, 0, entry))
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, c.settlement.functions.applyDebits(1, 0, entry))
    assert _supply(chain_env) == 0


def test_nobody_but_the_settlement_contract_mints_or_burns(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    settlement_role = role_id("SETTLEMENT_ROLE")
    entry = [pack_entry(a.users[0].address, 1)]
    for who in (a.admin, a.settler, a.outsider):
        for fn in (
            c.token.functions.mint(who.address, 1),
            c.token.functions.burn(who.address, 0),
            c.token.functions.mintPacked(entry),
            c.token.functions.burnPacked(entry),
        ):
            with reverts_with("AccessControlUnauthorizedAccount", who.address, settlement_role):
                c.transact(who, fn)


def test_a_paused_token_blocks_settlement(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    user = a.users[0]
    _commit(chain_env, 1, credits=20, debits=10)
    c.apply_credits(a.settler, 1, 0, [pack_entry(user.address, 10)])
    c.transact(a.admin, c.token.functions.pause())

    with reverts_with("EnforcedPause"):
        c.apply_credits(a.settler, 1, 1, [pack_entry(user.address, 1)])
    with reverts_with("EnforcedPause"):
        c.apply_debits(a.settler, 1, 2, [pack_entry(user.address, 1)])
    with reverts_with("EnforcedPause"):
        c.transact(user, c.token.functions.transfer(a.users[1].address, 1))
    # Anchoring is not a token movement: epochs can still be committed while paused.
    _commit(chain_env, 2, credits=1)
    assert not c.settlement.functions.isChunkApplied(1, 1).call()
    assert _balance(chain_env, user.address) == 10

    c.transact(a.admin, c.token.functions.unpause())
    c.apply_credits(a.settler, 1, 1, [pack_entry(user.address, 1)])
    assert _balance(chain_env, user.address) == 11


def test_only_the_pauser_may_pause(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    for who in (a.settler, a.registrar, a.outsider):
        with reverts_with("AccessControlUnauthorizedAccount", who.address, role_id("PAUSER_ROLE")):
            c.transact(who, c.token.functions.pause())
    c.transact(a.admin, c.token.functions.pause())
    with reverts_with("EnforcedPause"):
        c.transact(a.admin, c.token.functions.pause())
    c.transact(a.admin, c.token.functions.unpause())
    with reverts_with("ExpectedPause"):
        c.transact(a.admin, c.token.functions.unpause())


# ---- the transaction helper -----------------------------------------------------------------


def test_a_mined_revert_is_decoded_by_replay(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    # An explicit gas limit skips the estimate, so the node mines the failing transaction.
    with reverts_with("EpochOutOfOrder", 1, 5) as info:
        c.transact(settler, _commit_fn(chain_env, 5), gas=200_000)
    assert info.value.tx_hash is not None and info.value.receipt is not None
    assert info.value.receipt["status"] == 0
    assert chain_env.w3.eth.get_transaction_receipt(info.value.tx_hash)["status"] == 0
    _commit(chain_env, 1, 1)  # the nonce the failed transaction used is not reused


def test_nonces_recover_after_a_transaction_sent_behind_the_senders_back(
    chain_env: ChainEnv,
) -> None:
    c, w3, settler = chain_env.chain, chain_env.w3, chain_env.accounts.settler
    _commit(chain_env, 1, 1)  # the sender now counts the settler's nonce locally
    outside = settler.sign_transaction(
        {
            "to": chain_env.accounts.outsider.address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "nonce": w3.eth.get_transaction_count(settler.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(outside.raw_transaction))
    _commit(chain_env, 2, 1)  # its cached nonce is now taken: it must resync and succeed
    assert c.settlement.functions.lastEpochId().call() == 2


def test_revert_error_carries_named_arguments(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    with pytest.raises(ContractRevertError) as info:
        c.transact(settler, _commit_fn(chain_env, 9))
    assert info.value.error_name == "EpochOutOfOrder"
    assert info.value.named_args == {"expected": 1, "epochId": 9}
    assert "EpochOutOfOrder(1, 9)" in str(info.value)
    assert info.value.tx_hash is None  # caught at the estimate: nothing was spent


# ---- record inclusion -----------------------------------------------------------------------


def test_record_inclusion_proofs_verify_against_the_committed_root(chain_env: ChainEnv) -> None:
    c = chain_env.chain
    records = [(os.urandom(32), os.urandom(65)) for _ in range(5)]
    leaves = [merkle.record_leaf_hash(d, s) for d, s in records]
    root = merkle.root(leaves)
    c.commit_epoch(
        chain_env.accounts.settler, 1,
        records_root=root, credits_root=CREDITS_ROOT, tariff_hash=TARIFF_HASH,
        record_count=len(records), total_credits=0, total_debits=0,
    )  # fmt: skip
    verify = c.settlement.functions.verifyRecord
    for index, (digest, signature) in enumerate(records):
        proof = merkle.inclusion_proof(leaves, index)
        assert c.settlement.functions.recordLeafHash(digest, signature).call() == leaves[index]
        assert verify(1, digest, signature, index, proof).call()
        assert not verify(1, digest, signature, (index + 1) % 5, proof).call()
    digest, signature = records[0]
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(1, digest, forged, 0, merkle.inclusion_proof(leaves, 0)).call()
