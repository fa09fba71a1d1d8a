"""Settlement and PointsToken through real transactions: epochs, credit chunks, payment chunks
authorised by the users' own wallet signatures, balances, supply and events, and every
exactly-once rule, authorisation rule and role restriction, each revert decoded to its exact
custom error. A payment the user made uncollectable (a signature that is not, or no longer,
the user's: another key, an EOA delegated with a real EIP-7702 transaction to a contract
without ERC-1271, an ERC-1271 wallet that burns its gas; a nonce used or canceled) is skipped
with its PaymentSkipped event, and the rest of its chunk burns."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st
from web3.contract.contract import ContractFunction
from web3.logs import DISCARD
from web3.types import TxReceipt

from gridpoints_chain.artifacts import load_artifact
from gridpoints_chain.contracts import (
    MAX_ENTRY_AMOUNT,
    ChunkKind,
    Payment,
    PaymentApplied,
    PaymentSkipped,
    SkipReason,
    pack_entries,
    pack_entry,
    payment_tuple,
    role_id,
    unpack_entry,
)
from gridpoints_chain.deploy import NO_DAILY_MINT_CAP
from gridpoints_chain.errors import ContractRevertError
from gridpoints_protocol import merkle
from gridpoints_protocol import record as rec
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.commitment import user_commitment
from gridpoints_protocol.eip712 import keccak256
from tests.support.chain import ChainEnv, delegate_with_eip7702, deploy_test_contract, reverts_with

RECORDS_ROOT = b"\x11" * 32
CREDITS_ROOT = b"\x22" * 32
TARIFF_HASH = b"\x33" * 32
ZERO = "0x" + "00" * 20
STATION_B = b"\x5b" * 32
DAY = 86_400
EMPTY_PLAN = keccak256(b"")


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
        epoch_id, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, record_count, credits, 0, EMPTY_PLAN, 0
    )


def _balance(env: ChainEnv, address: str) -> int:
    return int(env.chain.token.functions.balanceOf(address).call())


def _supply(env: ChainEnv) -> int:
    return int(env.chain.token.functions.totalSupply().call())


def _block_time(env: ChainEnv, receipt: TxReceipt) -> int:
    return int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def _authorize(
    env: ChainEnv,
    user: LocalAccount,
    max_points: int,
    nonce: int,
    *,
    deadline: int | None = None,
    domain: SettlementDomain | None = None,
) -> SignedAuthorization:
    """`user`'s wallet signs: up to `max_points` points for a charge at station B, once."""
    authorization = PaymentAuthorization(
        user=bytes.fromhex(user.address[2:]),
        station_id=STATION_B,
        max_points=max_points,
        nonce=nonce,
        deadline=env.latest_timestamp() + DAY if deadline is None else deadline,
    )
    return sign_authorization(user, authorization, domain or env.chain.settlement_domain)


def _pay(
    env: ChainEnv, user: LocalAccount, amount: int, nonce: int, max_points: int | None = None
) -> Payment:
    return Payment(_authorize(env, user, max_points or amount, nonce), amount)


def _fund(env: ChainEnv, credits: list[tuple[LocalAccount, int]], debits: int = 10**6) -> None:
    """Epoch 1 mints `credits` (chunk 0) and may burn up to `debits` in payment chunks."""
    _commit(env, 1, credits=sum(a for _, a in credits), debits=debits)
    env.chain.apply_credits(
        env.accounts.settler, 1, 0, pack_entries((u.address, a) for u, a in credits)
    )


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
        "planRoot": EMPTY_PLAN, "chunkCount": 0, "appliableAt": at,  # the dev chain: no window
    }  # fmt: skip
    assert c.settlement.functions.lastEpochId().call() == 1
    assert c.settlement.functions.getEpoch(1).call() == (
        RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 9, at, 100, 0, 0, 0, EMPTY_PLAN, 0, at,
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
        c.apply_payments(settler, 1, 0, [_pay(chain_env, user, 1, nonce=1)])
    with reverts_with("UnknownEpoch", 1):
        c.call(c.settlement.functions.verifyLeaf(1, b"\x00" * 32, 0, []))


# ---- credits ---------------------------------------------------------------------------------


def test_credit_chunk_mints_balances_supply_and_events(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    amounts = [7, 1, MAX_ENTRY_AMOUNT]  # the largest amount exercises all 96 high bits
    total = sum(amounts)
    # Above any real daily mint cap: lifted for this test of the entry format.
    c.transact(chain_env.accounts.admin, c.token.functions.setDailyMintCap(NO_DAILY_MINT_CAP))
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


def test_an_epoch_settles_in_several_chunks_up_to_its_totals(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    _commit(chain_env, 1, credits=30, debits=10)
    c.apply_credits(settler, 1, 0, [pack_entry(users[0].address, 10)])
    c.apply_credits(settler, 1, 7, [pack_entry(users[1].address, 20)])  # ids need not be dense
    c.apply_payments(settler, 1, 1, [_pay(chain_env, users[1], 10, nonce=1)])
    epoch = c.settlement.functions.getEpoch(1).call()
    assert (epoch[5], epoch[6], epoch[7], epoch[8]) == (30, 10, 30, 10)
    assert _supply(chain_env) == 20


def test_a_chunk_is_applied_only_once(chain_env: ChainEnv) -> None:
    c, settler, user = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _commit(chain_env, 1, credits=100, debits=10)
    c.apply_credits(settler, 1, 3, [pack_entry(user.address, 10)])
    with reverts_with("ChunkAlreadyApplied", 1, 3):
        c.apply_credits(settler, 1, 3, [pack_entry(user.address, 10)])
    # Credit and payment chunks share one id space per epoch.
    payment = _pay(chain_env, user, 1, nonce=1)
    with reverts_with("ChunkAlreadyApplied", 1, 3):
        c.apply_payments(settler, 1, 3, [payment])
    assert not c.is_authorization_used(user.address, 1)
    c.apply_payments(settler, 1, 4, [payment])
    with reverts_with("ChunkAlreadyApplied", 1, 4):
        c.apply_payments(settler, 1, 4, [_pay(chain_env, user, 1, nonce=2)])
    assert _balance(chain_env, user.address) == 9
    # The same chunk id is free again in the next epoch.
    _commit(chain_env, 2, credits=5)
    c.apply_credits(settler, 2, 3, [pack_entry(user.address, 5)])
    assert _balance(chain_env, user.address) == 14


def test_credits_and_payments_never_exceed_the_committed_totals(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    _commit(chain_env, 1, credits=100, debits=30)
    c.apply_credits(settler, 1, 0, [pack_entry(users[0].address, 60)])
    with reverts_with("ExceedsCommittedTotal", 1, ChunkKind.CREDIT, 110, 100):
        c.apply_credits(settler, 1, 1, [pack_entry(users[1].address, 50)])
    c.apply_payments(settler, 1, 2, [_pay(chain_env, users[0], 30, nonce=1)])
    late = _pay(chain_env, users[0], 1, nonce=2)
    with reverts_with("ExceedsCommittedTotal", 1, ChunkKind.DEBIT, 31, 30):
        c.apply_payments(settler, 1, 3, [late])
    # A refused chunk leaves nothing behind: its id stays free, no point moved, no nonce used.
    assert not c.settlement.functions.isChunkApplied(1, 1).call()
    assert not c.settlement.functions.isChunkApplied(1, 3).call()
    assert not c.is_authorization_used(users[0].address, 2)
    assert (_balance(chain_env, users[0].address), _balance(chain_env, users[1].address)) == (30, 0)
    assert _supply(chain_env) == 30
    c.apply_credits(settler, 1, 1, [pack_entry(users[1].address, 40)])  # exactly up to the total
    assert c.settlement.functions.getEpoch(1).call()[7] == 100


def test_empty_chunks_and_zero_receivers_are_refused(chain_env: ChainEnv) -> None:
    c, settler = chain_env.chain, chain_env.accounts.settler
    _commit(chain_env, 1, credits=10, debits=10)
    with reverts_with("EmptyChunk"):
        c.apply_credits(settler, 1, 0, [])
    with reverts_with("EmptyChunk"):
        c.apply_payments(settler, 1, 0, [])
    # pack_entry refuses the zero address; raw bytes show the chain refuses it too.
    with reverts_with("ERC20InvalidReceiver", ZERO):
        c.apply_credits(settler, 1, 0, [(1 << 160).to_bytes(32, "big")])
    assert not c.settlement.functions.isChunkApplied(1, 0).call()


# ---- payments: the user's signature authorises the burn ------------------------------------


def test_a_signed_payment_burns_the_amount_and_reports_it(chain_env: ChainEnv) -> None:
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    alice, bob = users[0], users[1]
    _fund(chain_env, [(alice, 60), (bob, 40)])
    a = Payment(_authorize(chain_env, alice, max_points=30, nonce=1), 25)
    b = Payment(_authorize(chain_env, bob, max_points=40, nonce=1), 40)
    receipt = c.apply_payments(settler, 1, 1, [a, b])

    assert (_balance(chain_env, alice.address), _balance(chain_env, bob.address)) == (35, 0)
    assert _supply(chain_env) == 35
    domain = c.settlement_domain
    events = c.payments_in(receipt)
    assert [
        (e.epoch_id, e.user, e.authorization, e.nonce, e.requested, e.burned) for e in events
    ] == [
        (1, alice.address, a.authorization.digest(domain), 1, 25, 25),
        (1, bob.address, b.authorization.digest(domain), 1, 40, 40),
    ]
    assert c.payment_outcomes_in(receipt) == events and c.skips_in(receipt) == []
    # The event states the signed terms (issue 16 item 9): the digest is recomputed from the log.
    for event, payment in zip(events, (a, b), strict=True):
        assert event.terms == payment.authorization.authorization
        assert event.terms.digest(domain) == event.authorization
    transfers = c.token.events.Transfer().process_receipt(receipt, errors=DISCARD)
    assert [(t["args"]["from"], t["args"]["to"], t["args"]["value"]) for t in transfers] == [
        (alice.address, ZERO, 25), (bob.address, ZERO, 40),
    ]  # fmt: skip
    (applied,) = c.settlement.events.ChunkApplied().process_receipt(receipt, errors=DISCARD)
    assert dict(applied["args"]) == {
        "epochId": 1, "chunkId": 1, "kind": ChunkKind.DEBIT, "entries": 2, "amount": 65,
    }  # fmt: skip
    assert c.settlement.functions.getEpoch(1).call()[8] == 65  # appliedDebits
    assert c.is_authorization_used(alice.address, 1)
    assert c.is_authorization_used(bytes.fromhex(bob.address[2:]), 1)
    assert not c.is_authorization_used(alice.address, 2)


def test_a_payment_burns_at_most_what_the_user_holds(chain_env: ChainEnv) -> None:
    """min(amount, balance): a user who moved points away before settlement is debited only
    what it still holds, and nobody else's payment in the chunk is affected."""
    c, a = chain_env.chain, chain_env.accounts
    alice, bob, carol = a.users[0], a.users[1], a.users[2]
    _fund(chain_env, [(alice, 50), (bob, 50)])
    c.transact(alice, c.token.functions.transfer(carol.address, 45))
    receipt = c.apply_payments(
        a.settler, 1, 1,
        [_pay(chain_env, alice, 30, nonce=1), _pay(chain_env, bob, 30, nonce=1),
         _pay(chain_env, carol, 100, nonce=1), _pay(chain_env, a.users[3], 7, nonce=1)],
    )  # fmt: skip
    assert [(e.requested, e.burned) for e in c.payments_in(receipt)] == [
        (30, 5), (30, 30), (100, 45), (7, 0),
    ]  # fmt: skip
    assert [_balance(chain_env, u.address) for u in (alice, bob, carol, a.users[3])] == [
        0, 20, 0, 0,
    ]  # fmt: skip
    assert _supply(chain_env) == 20
    assert c.is_authorization_used(a.users[3].address, 1)  # used up although nothing was burned


def _skipped_alone(
    env: ChainEnv, epoch_id: int, chunk_id: int, payment: Payment, reason: SkipReason
) -> PaymentSkipped:
    """Applies a chunk holding only `payment`, which must be skipped for `reason`: the chunk is
    applied, burns nothing, and the payment's nonce is used afterwards (voided by an
    INVALID_SIGNATURE skip, already used for an AUTHORIZATION_USED one)."""
    c = env.chain
    a = payment.authorization.authorization
    if reason == SkipReason.AUTHORIZATION_USED:
        assert c.is_authorization_used(a.user, a.nonce)
    receipt = c.apply_payments(env.accounts.settler, epoch_id, chunk_id, [payment])
    (skip,) = c.payment_outcomes_in(receipt)
    assert isinstance(skip, PaymentSkipped)
    assert (skip.epoch_id, skip.user, skip.authorization, skip.nonce, skip.requested) == (
        epoch_id, payment.user, payment.authorization.digest(c.settlement_domain), a.nonce,
        payment.amount,
    )  # fmt: skip
    assert skip.reason == reason and skip.burned == 0
    assert c.token.events.Transfer().process_receipt(receipt, errors=DISCARD) == ()
    (applied,) = c.settlement.events.ChunkApplied().process_receipt(receipt, errors=DISCARD)
    assert (applied["args"]["entries"], applied["args"]["amount"]) == (1, 0)
    assert c.is_authorization_used(a.user, a.nonce)
    return skip


def test_a_replayed_authorisation_is_skipped(chain_env: ChainEnv) -> None:
    c, settler, alice = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _fund(chain_env, [(alice, 100)])
    payment = _pay(chain_env, alice, 10, nonce=77)
    c.apply_payments(settler, 1, 1, [payment])
    _skipped_alone(chain_env, 1, 2, payment, SkipReason.AUTHORIZATION_USED)
    # A fresh signature that reuses the nonce is skipped too, in this epoch or a later one.
    _skipped_alone(
        chain_env, 1, 3, _pay(chain_env, alice, 3, nonce=77), SkipReason.AUTHORIZATION_USED
    )
    _commit(chain_env, 2, credits=0, debits=100)
    _skipped_alone(chain_env, 2, 0, payment, SkipReason.AUTHORIZATION_USED)
    # Twice in one chunk: the first one burns, the repeat is skipped.
    twice = _pay(chain_env, alice, 10, nonce=78)
    receipt = c.apply_payments(settler, 2, 1, [twice, twice])
    outcomes = c.payment_outcomes_in(receipt)
    assert [type(o) for o in outcomes] == [PaymentApplied, PaymentSkipped]
    assert outcomes[0].burned == 10 and outcomes[1].reason == SkipReason.AUTHORIZATION_USED
    assert _balance(chain_env, alice.address) == 80
    assert c.is_authorization_used(alice.address, 77) and c.is_authorization_used(alice.address, 78)


def test_a_signature_that_is_not_the_users_is_skipped(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    alice, bob = a.users[0], a.users[1]
    _fund(chain_env, [(alice, 100), (bob, 100)])
    authorization = _authorize(chain_env, alice, 50, nonce=1).authorization

    def signed_by(account: LocalAccount, domain: SettlementDomain) -> Payment:
        digest = authorization.digest(domain)
        signature = bytes(Account.unsafe_sign_hash(digest, account.key).signature)
        return Payment(SignedAuthorization(authorization, signature), 50)

    here = c.settlement_domain
    cases = {
        "bob's key": signed_by(bob, here),
        "the settler's key": signed_by(a.settler, here),
        "alice's key, other chain": signed_by(alice, SettlementDomain(1, here.verifying_contract)),
        "alice's key, other Settlement": signed_by(
            alice, SettlementDomain(here.chain_id, b"\x01" * 20)
        ),
        "alice's key, the record domain": Payment(
            SignedAuthorization(
                authorization,
                bytes(
                    Account.unsafe_sign_hash(
                        keccak256(
                            b"\x19\x01"
                            + rec.Domain(here.chain_id, here.verifying_contract).separator
                            + authorization.struct_hash()
                        ),
                        alice.key,
                    ).signature
                ),
            ),
            50,
        ),
    }
    for chunk_id, (name, payment) in enumerate(cases.items(), start=1):
        assert not payment.authorization.is_signed_by_user(here), name
        _skipped_alone(chain_env, 1, chunk_id, payment, SkipReason.INVALID_SIGNATURE)
    # The first skip voided nonce 1: alice's own signature under it is now AUTHORIZATION_USED
    # (the signature is checked first, so this reason says her signature was valid).
    _skipped_alone(
        chain_env, 1, 9, Payment(_authorize(chain_env, alice, 50, nonce=1), 50),
        SkipReason.AUTHORIZATION_USED,
    )  # fmt: skip
    # A field changed after signing breaks the signature as well; in a chunk with an honest
    # payment, only the honest one burns.
    good = _authorize(chain_env, alice, 50, nonce=2)
    tampered = PaymentAuthorization(
        user=authorization.user, station_id=b"\x5a" * 32, max_points=50, nonce=2,
        deadline=authorization.deadline,
    )  # fmt: skip
    forged = Payment(SignedAuthorization(tampered, good.signature), 5)
    receipt = c.apply_payments(a.settler, 1, 10, [forged, _pay(chain_env, bob, 7, nonce=1)])
    skip, paid = c.payment_outcomes_in(receipt)
    assert isinstance(skip, PaymentSkipped) and skip.reason == SkipReason.INVALID_SIGNATURE
    assert isinstance(paid, PaymentApplied) and (paid.user, paid.burned) == (bob.address, 7)
    assert _balance(chain_env, alice.address) == 100
    assert c.is_authorization_used(alice.address, 2)  # voided: never collectable later
    (again,) = c.payment_outcomes_in(c.apply_payments(a.settler, 1, 11, [Payment(good, 50)]))
    assert isinstance(again, PaymentSkipped) and again.reason == SkipReason.AUTHORIZATION_USED
    (paid_later,) = c.payments_in(
        c.apply_payments(a.settler, 1, 12, [_pay(chain_env, alice, 50, nonce=3)])
    )
    assert paid_later.burned == 50 and _balance(chain_env, alice.address) == 50


def test_an_eoa_delegated_with_eip7702_is_skipped_without_blocking_the_chunk(
    chain_env: ChainEnv,
) -> None:
    """The review's attack, on a real chain: alice's ECDSA authorisation was valid when the
    backend accepted it; then her EOA delegates (a type-4 transaction) to a contract without
    ERC-1271. Her address has code now, so the contract asks ERC-1271 and her payment is skipped;
    bob's payment in the same chunk burns. The skip voids her nonce (issue 16 item 7: the
    operator bills the charge otherwise): once she clears the delegation the same authorisation
    is skipped as used, never collected twice; under a delegate that implements ERC-1271 for
    her own key her new signatures keep working."""
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    alice, bob = users[0], users[1]
    _fund(chain_env, [(alice, 100), (bob, 100)])
    a = _pay(chain_env, alice, 30, nonce=1)
    b = _pay(chain_env, bob, 30, nonce=1)
    assert a.authorization.is_signed_by_user(c.settlement_domain)
    delegate_with_eip7702(chain_env, alice, deploy_test_contract(chain_env, "BatchDelegate"))

    receipt = c.apply_payments(settler, 1, 1, [a, b])
    skip, paid = c.payment_outcomes_in(receipt)
    assert isinstance(skip, PaymentSkipped)
    assert (skip.user, skip.reason, skip.nonce) == (alice.address, SkipReason.INVALID_SIGNATURE, 1)
    assert isinstance(paid, PaymentApplied) and (paid.user, paid.burned) == (bob.address, 30)
    (applied,) = c.settlement.events.ChunkApplied().process_receipt(receipt, errors=DISCARD)
    assert (applied["args"]["entries"], applied["args"]["amount"]) == (2, 30)
    assert (_balance(chain_env, alice.address), _balance(chain_env, bob.address)) == (100, 70)
    assert c.is_authorization_used(alice.address, 1)

    delegate_with_eip7702(chain_env, alice, None)
    (again,) = c.payment_outcomes_in(c.apply_payments(settler, 1, 2, [a]))
    assert isinstance(again, PaymentSkipped) and again.reason == SkipReason.AUTHORIZATION_USED
    assert _balance(chain_env, alice.address) == 100
    (event,) = c.payments_in(c.apply_payments(settler, 1, 4, [_pay(chain_env, alice, 30, nonce=3)]))
    assert event.burned == 30

    delegate_with_eip7702(chain_env, alice, deploy_test_contract(chain_env, "EcdsaAccountDelegate"))
    (event,) = c.payments_in(c.apply_payments(settler, 1, 3, [_pay(chain_env, alice, 20, nonce=2)]))
    assert event.burned == 20
    assert _balance(chain_env, alice.address) == 50


def test_a_wallet_that_burns_its_gas_is_skipped_at_a_bounded_cost(chain_env: ChainEnv) -> None:
    """An ERC-1271 wallet that spins until it runs out of gas gets WALLET_CHECK_GAS, no more:
    the chunk, sent with the usual estimate, goes through, the wallet's payment is skipped and
    bob's burns."""
    c, a = chain_env.chain, chain_env.accounts
    bob, owner = a.users[1], a.users[2]
    wallet_address = deploy_test_contract(chain_env, "ERC1271Wallet", owner.address)
    wallet = chain_env.w3.eth.contract(wallet_address, abi=load_artifact("ERC1271Wallet").abi)
    _commit(chain_env, 1, credits=200, debits=1000)
    c.apply_credits(a.settler, 1, 0, pack_entries([(wallet_address, 100), (bob.address, 100)]))
    authorization = PaymentAuthorization(
        user=bytes.fromhex(wallet_address[2:]), station_id=STATION_B, max_points=30, nonce=1,
        deadline=chain_env.latest_timestamp() + DAY,
    )  # fmt: skip
    # The wallet's owner signs the digest; the wallet, not ecrecover, judges it.
    digest = authorization.digest(c.settlement_domain)
    signature = bytes(Account.unsafe_sign_hash(digest, owner.key).signature)
    by_wallet = Payment(SignedAuthorization(authorization, signature), 30)
    chunk = [by_wallet, _pay(chain_env, bob, 30, nonce=1)]
    assert c.wallet_check_gas == 100_000

    c.transact(a.admin, wallet.functions.setMode(4))  # Mode.BurnGas
    receipt = c.apply_payments(a.settler, 1, 1, chunk)
    skip, paid = c.payment_outcomes_in(receipt)
    assert isinstance(skip, PaymentSkipped) and skip.reason == SkipReason.INVALID_SIGNATURE
    assert isinstance(paid, PaymentApplied) and paid.burned == 30
    # Two payments, the wallet's bounded share, and the void of its nonce (a fresh storage slot,
    # ~22,000 gas: 251,696 measured).
    assert int(receipt["gasUsed"]) < 270_000
    assert (_balance(chain_env, wallet_address), _balance(chain_env, bob.address)) == (100, 70)
    # Its nonce was voided by the skip: once the wallet answers honestly again, the same payment
    # is skipped as used (the charge was billed otherwise; it must not be collected twice).
    c.transact(a.admin, wallet.functions.setMode(0))  # Mode.Normal
    (event,) = c.payment_outcomes_in(c.apply_payments(a.settler, 1, 2, [by_wallet]))
    assert isinstance(event, PaymentSkipped) and event.reason == SkipReason.AUTHORIZATION_USED
    assert _balance(chain_env, wallet_address) == 100


def test_an_expired_authorisation_burns_nothing_and_is_used_up(chain_env: ChainEnv) -> None:
    c, settler, alice = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _fund(chain_env, [(alice, 100)])
    deadline = chain_env.latest_timestamp() + 100
    at_deadline = Payment(_authorize(chain_env, alice, 20, nonce=1, deadline=deadline), 20)
    chain_env.next_block_at(deadline)  # valid up to and including its deadline
    c.apply_payments(settler, 1, 1, [at_deadline])
    assert _balance(chain_env, alice.address) == 80

    late = Payment(_authorize(chain_env, alice, 20, nonce=2, deadline=deadline), 20)
    chain_env.next_block_at(deadline + 1)
    receipt = c.apply_payments(settler, 1, 2, [late])
    (event,) = c.payments_in(receipt)
    assert (event.requested, event.burned) == (20, 0)
    assert event.authorization == late.authorization.digest(c.settlement_domain)
    assert late.authorization.authorization.is_expired(_block_time(chain_env, receipt))
    assert len(c.token.events.Transfer().process_receipt(receipt, errors=DISCARD)) == 0
    assert _balance(chain_env, alice.address) == 80
    assert c.is_authorization_used(alice.address, 2)
    _skipped_alone(chain_env, 1, 3, late, SkipReason.AUTHORIZATION_USED)  # never later either


def test_an_amount_above_the_signed_maximum_is_refused(chain_env: ChainEnv) -> None:
    c, settler, alice = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users[0]
    _fund(chain_env, [(alice, 100)])
    signed = _authorize(chain_env, alice, max_points=30, nonce=5)
    with pytest.raises(ValueError, match=r"\[0, maxPoints=30\]"):
        Payment(signed, 31)
    # Past the Python check, the contract refuses it on its own.
    raw = (*payment_tuple(Payment(signed, 30))[:5], 31, signed.signature)
    with reverts_with("ExceedsAuthorizedMaximum", alice.address, 5, 31, 30):
        c.transact(settler, c.settlement.functions.applyPayments(1, 1, [raw], []))
    assert not c.is_authorization_used(alice.address, 5)
    assert _balance(chain_env, alice.address) == 100


def test_a_canceled_authorisation_cannot_be_used(chain_env: ChainEnv) -> None:
    """A cancel mined before the chunk that carries the authorisation (a front-run): the payment
    is skipped, and the rest of the chunk burns."""
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    alice, bob = users[0], users[1]
    _fund(chain_env, [(alice, 100), (bob, 100)])
    payment = _pay(chain_env, alice, 10, nonce=9)
    receipt = c.cancel_authorization(alice, 9)
    (event,) = c.settlement.events.AuthorizationCanceled().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"user": alice.address, "nonce": 9}
    assert c.is_authorization_used(alice.address, 9)
    assert not c.is_authorization_used(bob.address, 9)
    with reverts_with("AuthorizationAlreadyUsed", alice.address, 9):
        c.cancel_authorization(alice, 9)
    # Bob's nonce 9 is his own.
    receipt = c.apply_payments(settler, 1, 1, [payment, _pay(chain_env, bob, 10, nonce=9)])
    skip, paid = c.payment_outcomes_in(receipt)
    assert isinstance(skip, PaymentSkipped) and skip.reason == SkipReason.AUTHORIZATION_USED
    assert isinstance(paid, PaymentApplied) and (paid.user, paid.burned) == (bob.address, 10)
    assert (_balance(chain_env, alice.address), _balance(chain_env, bob.address)) == (100, 90)
    # Canceling an authorisation that was already paid is refused: the payment stands.
    with reverts_with("AuthorizationAlreadyUsed", bob.address, 9):
        c.cancel_authorization(bob, 9)


def test_the_contract_digest_is_the_authorisation_digest(chain_env: ChainEnv) -> None:
    c, alice = chain_env.chain, chain_env.accounts.users[0]
    domain = c.settlement_domain
    assert domain.chain_id == chain_env.w3.eth.chain_id
    assert domain.verifying_contract == bytes.fromhex(c.deployment.settlement_address[2:])
    for nonce, max_points, deadline in ((0, 1, 0), (2**256 - 1, 2**128 - 1, 2**64 - 1), (5, 30, 7)):
        authorization = PaymentAuthorization(
            user=bytes.fromhex(alice.address[2:]), station_id=STATION_B,
            max_points=max_points, nonce=nonce, deadline=deadline,
        )  # fmt: skip
        assert c.hash_payment_authorization(authorization) == authorization.digest(domain)
    assert bytes(c.settlement.functions.DOMAIN_SEPARATOR().call()) == domain.separator
    _, name, version, chain_id, verifying, _, _ = c.settlement.functions.eip712Domain().call()
    assert (name, version, chain_id, verifying) == (
        "GridPoints Settlement", "1", domain.chain_id, c.deployment.settlement_address,
    )  # fmt: skip


def test_payment_events_are_read_back_by_epoch_user_and_authorisation(chain_env: ChainEnv) -> None:
    """The auditor's join: a charge record carries the authorisation's digest, and the burn for
    it is the PaymentApplied event with that digest."""
    c, settler, users = chain_env.chain, chain_env.accounts.settler, chain_env.accounts.users
    alice, bob = users[0], users[1]
    _fund(chain_env, [(alice, 100), (bob, 100)])
    p1, p2 = _pay(chain_env, alice, 10, nonce=1), _pay(chain_env, bob, 20, nonce=1)
    c.apply_payments(settler, 1, 1, [p1, p2])
    _commit(chain_env, 2, credits=0, debits=100)
    p3 = _pay(chain_env, alice, 30, nonce=2)
    c.apply_payments(settler, 2, 0, [p3])

    every = c.payment_events(with_timestamps=True)
    assert [(e.epoch_id, e.user, e.burned) for e in every] == [
        (1, alice.address, 10), (1, bob.address, 20), (2, alice.address, 30),
    ]  # fmt: skip
    positions = [(e.position.block_number, e.position.log_index) for e in every]
    assert positions == sorted(positions)
    assert all(e.position.block_timestamp for e in every)
    assert [e.burned for e in c.payment_events(epoch_id=2)] == [30]
    assert [e.burned for e in c.payment_events(user=alice.address)] == [10, 30]
    assert [e.burned for e in c.payment_events(epoch_id=1, user=bob.address)] == [20]
    assert c.payment_events(epoch_id=3) == []
    assert c.payment_events(block_range=1) == c.payment_events()  # one block per query

    domain = c.settlement_domain
    record = rec.EnergyTransfer(
        station_id=STATION_B, sequence=1,
        user_commitment=user_commitment(bytes.fromhex(alice.address[2:]), b"\x33" * 32),
        direction=rec.Direction.CHARGE, energy_wh=7_500, meter_before_wh=0, meter_after_wh=7_500,
        start_time=0, end_time=3_600, payment_authorization=p3.authorization.digest(domain),
    )  # fmt: skip
    (burn,) = c.payment_events(authorization=record.payment_authorization)
    assert (burn.epoch_id, burn.user, burn.requested, burn.burned) == (2, alice.address, 30, 30)

    # Skips are read back with the same filters, merged in chain order with the burns.
    receipt = c.apply_payments(settler, 2, 1, [p3, _pay(chain_env, bob, 5, nonce=2)])
    outcomes = c.payment_outcomes(epoch_id=2)
    assert [(type(e).__name__, e.user, e.burned) for e in outcomes] == [
        ("PaymentApplied", alice.address, 30),
        ("PaymentSkipped", alice.address, 0),
        ("PaymentApplied", bob.address, 5),
    ]
    assert outcomes[1:] == c.payment_outcomes_in(receipt)
    (again,) = c.payment_outcomes(authorization=record.payment_authorization, skipped=True)[1:]
    assert isinstance(again, PaymentSkipped) and again.reason == SkipReason.AUTHORIZATION_USED
    assert c.payment_events(epoch_id=2) == [outcomes[0], outcomes[2]]  # burns only


# ---- roles and pause ------------------------------------------------------------------------


def test_only_the_settler_may_commit_or_apply(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    settler_role = role_id("SETTLER_ROLE")
    entry = [pack_entry(a.users[0].address, 1)]
    for intruder in (a.admin, a.registrar, a.outsider, a.users[0]):
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, _commit_fn(chain_env, 1))
    _commit(chain_env, 1, credits=10, debits=10)
    # Not even the payer may submit its own payment: settlement is the settler's job.
    payment = [payment_tuple(_pay(chain_env, a.users[0], 1, nonce=1))]
    for intruder in (a.admin, a.registrar, a.outsider, a.users[0]):
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, c.settlement.functions.applyCredits(1, 0, entry, []))
        with reverts_with("AccessControlUnauthorizedAccount", intruder.address, settler_role):
            c.transact(intruder, c.settlement.functions.applyPayments(1, 0, payment, []))
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
        ):
            with reverts_with("AccessControlUnauthorizedAccount", who.address, settlement_role):
                c.transact(who, fn)


def test_there_is_no_operator_burn_path(chain_env: ChainEnv) -> None:
    """Burning is reachable only through applyPayments, which needs the users' signatures: no
    batch burn on the token, no operator debit on the settlement contract."""
    c = chain_env.chain
    token_functions = {e["name"] for e in c.token.abi if e.get("type") == "function"}
    settlement_functions = {e["name"] for e in c.settlement.abi if e.get("type") == "function"}
    assert "burnPacked" not in token_functions
    assert "applyDebits" not in settlement_functions
    assert {"applyPayments", "cancelAuthorization", "isAuthorizationUsed"} <= settlement_functions


def test_a_paused_token_blocks_settlement(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    user = a.users[0]
    _commit(chain_env, 1, credits=20, debits=10)
    c.apply_credits(a.settler, 1, 0, [pack_entry(user.address, 10)])
    c.transact(a.admin, c.token.functions.pause())

    with reverts_with("EnforcedPause"):
        c.apply_credits(a.settler, 1, 1, [pack_entry(user.address, 1)])
    payment = _pay(chain_env, user, 1, nonce=1)
    expired = Payment(_authorize(chain_env, user, 1, nonce=2, deadline=0), 1)
    with reverts_with("EnforcedPause"):
        c.apply_payments(a.settler, 1, 2, [payment])
    with reverts_with("EnforcedPause"):  # even a chunk that would burn nothing
        c.apply_payments(a.settler, 1, 2, [expired])
    assert not c.is_authorization_used(user.address, 1)
    assert not c.is_authorization_used(user.address, 2)
    with reverts_with("EnforcedPause"):
        c.transact(user, c.token.functions.transfer(a.users[1].address, 1))
    # Anchoring is not a token movement: epochs can still be committed while paused.
    _commit(chain_env, 2, credits=1)
    assert not c.settlement.functions.isChunkApplied(1, 1).call()
    assert _balance(chain_env, user.address) == 10

    c.transact(a.admin, c.token.functions.unpause())
    c.apply_credits(a.settler, 1, 1, [pack_entry(user.address, 1)])
    c.apply_payments(a.settler, 1, 2, [payment, expired])
    assert _balance(chain_env, user.address) == 10


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
