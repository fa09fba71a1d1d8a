"""StationRegistry through real transactions: registration, rotation, revocation, the key
history rebuilt from events against the contract's own views, and every role restriction."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils.crypto import keccak
from web3.logs import DISCARD

from gridpoints_chain.contracts import role_id
from gridpoints_chain.errors import ChainError
from gridpoints_protocol.keys import KeyPeriod, StationKeyRotated, StationRegistered, StationRevoked
from tests.support.chain import ChainEnv, reverts_with

ZONE = 7
MAX_POWER_W = 150_000
ZERO = "0x" + "00" * 20


def _station(label: str) -> bytes:
    return keccak(text=f"station:{label}")


def _keys(n: int) -> list[str]:
    # Fresh addresses: a station key never needs funds, it only signs records off chain.
    return [Account.create().address for _ in range(n)]


def _register(env: ChainEnv, station_id: bytes, signer: str, active_from: int) -> None:
    c = env.chain
    fn = c.registry.functions.registerStation(station_id, signer, ZONE, MAX_POWER_W, active_from)
    c.transact(env.accounts.registrar, fn)


def test_register_station_emits_the_event_and_sets_the_state(chain_env: ChainEnv) -> None:
    c, sid = chain_env.chain, _station("a")
    (k1,) = _keys(1)
    active_from = chain_env.latest_timestamp() - 60
    fn = c.registry.functions.registerStation(sid, k1, ZONE, MAX_POWER_W, active_from)
    receipt = c.transact(chain_env.accounts.registrar, fn)

    (log,) = c.registry.events.StationRegistered().process_receipt(receipt, errors=DISCARD)
    assert dict(log["args"]) == {
        "stationId": sid, "signer": k1, "zone": ZONE, "maxPowerW": MAX_POWER_W,
        "activeFrom": active_from,
    }  # fmt: skip
    assert c.registry.functions.getStation(sid).call() == (k1, ZONE, MAX_POWER_W, active_from, 0)
    assert c.registry.functions.currentSigner(sid).call() == k1
    assert c.key_history_view(sid) == [KeyPeriod(k1, active_from, 0)]
    assert c.registry.functions.stationCount().call() == 1
    assert c.registry.functions.stationIdAt(0).call() == sid


def test_full_history_from_events_matches_the_views(chain_env: ChainEnv) -> None:
    c, env = chain_env.chain, chain_env
    sid, other = _station("rotating"), _station("bystander")
    k1, k2, k3, o1 = _keys(4)
    base = env.latest_timestamp() + 1_000
    active_from = base - 3_600

    env.next_block_at(base)
    _register(env, sid, k1, active_from)
    env.next_block_at(base + 50)
    _register(env, other, o1, base)  # interleaved: must not leak into sid's history
    env.next_block_at(base + 100)
    c.transact(env.accounts.registrar, c.registry.functions.rotateKey(sid, k2))
    env.next_block_at(base + 200)
    c.transact(env.accounts.registrar, c.registry.functions.rotateKey(sid, k3))
    env.next_block_at(base + 300)
    c.transact(env.accounts.registrar, c.registry.functions.revokeStation(sid))

    history = c.station_history(sid, with_timestamps=True)
    assert [type(e) for e in history.events] == [
        StationRegistered, StationKeyRotated, StationKeyRotated, StationRevoked,
    ]  # fmt: skip
    positions = [(e.position.block_number, e.position.log_index) for e in history.events]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert [e.position.block_timestamp for e in history.events] == [
        base, base + 100, base + 200, base + 300,
    ]  # fmt: skip
    rotations = [e for e in history.events if isinstance(e, StationKeyRotated)]
    assert [(r.old_signer, r.new_signer, r.rotated_at) for r in rotations] == [
        (k1, k2, base + 100), (k2, k3, base + 200),
    ]  # fmt: skip
    assert history.events[-1] == StationRevoked(sid, k3, base + 300, history.events[-1].position)

    expected_keys = [
        KeyPeriod(k1, active_from, base + 100),
        KeyPeriod(k2, base + 100, base + 200),
        KeyPeriod(k3, base + 200, 0),
    ]
    assert history.keys == expected_keys == c.key_history_view(sid)
    assert history.revoked_at == base + 300
    assert c.registry.functions.getStation(sid).call() == (
        k3, ZONE, MAX_POWER_W, active_from, base + 300,
    )  # fmt: skip

    # The rebuilt history and the contract agree on every boundary, for every key.
    instants = [active_from - 1, active_from, base + 99, base + 100, base + 199, base + 200]
    instants += [base + 299, base + 300, base + 10_000]
    for signer in (k1, k2, k3, o1, ZERO):
        for t in instants:
            on_chain = c.registry.functions.isKeyValidAt(sid, signer, t).call()
            assert history.is_key_valid_at(signer, t) == on_chain, (signer, t)
    valid = c.registry.functions.isKeyValidAt
    assert valid(sid, k1, base + 99).call() and not valid(sid, k1, base + 100).call()
    assert valid(sid, k2, base + 100).call() and not valid(sid, k2, base + 200).call()
    assert valid(sid, k3, base + 299).call() and not valid(sid, k3, base + 300).call()
    assert not valid(sid, k1, active_from - 1).call()

    everything = c.station_histories()
    assert list(everything) == [sid, other]
    assert everything[other].keys == [KeyPeriod(o1, base, 0)]
    assert everything[other].revoked_at is None
    # Small block ranges, as against a public node that caps eth_getLogs, give the same events.
    assert c.station_events(sid, block_range=1) == c.station_events(sid)


def test_old_key_stays_valid_for_records_that_ended_before_the_rotation(
    chain_env: ChainEnv,
) -> None:
    c, env, sid = chain_env.chain, chain_env, _station("b")
    k1, k2 = _keys(2)
    start = env.latest_timestamp() + 10
    env.next_block_at(start)
    _register(env, sid, k1, start)
    env.next_block_at(start + 500)
    c.transact(env.accounts.registrar, c.registry.functions.rotateKey(sid, k2))
    assert c.registry.functions.isKeyValidAt(sid, k1, start + 499).call()
    assert not c.registry.functions.isKeyValidAt(sid, k2, start + 499).call()
    assert c.registry.functions.isKeyValidAt(sid, k2, start + 500).call()


def test_only_the_registrar_may_register_rotate_or_revoke(chain_env: ChainEnv) -> None:
    c, a, sid = chain_env.chain, chain_env.accounts, _station("c")
    k1, k2 = _keys(2)
    registrar_role = role_id("REGISTRAR_ROLE")
    _register(chain_env, sid, k1, 0)
    for intruder in (a.admin, a.settler, a.outsider):
        calls = (
            c.registry.functions.registerStation(_station("x"), k1, ZONE, MAX_POWER_W, 0),
            c.registry.functions.rotateKey(sid, k2),
            c.registry.functions.revokeStation(sid),
        )
        for fn in calls:
            with reverts_with("AccessControlUnauthorizedAccount", intruder.address, registrar_role):
                c.transact(intruder, fn)
    assert c.registry.functions.currentSigner(sid).call() == k1
    assert c.registry.functions.stationCount().call() == 1


def test_the_admin_grants_the_registrar_role_and_nobody_else_can(chain_env: ChainEnv) -> None:
    c, a = chain_env.chain, chain_env.accounts
    registrar_role = role_id("REGISTRAR_ROLE")
    with reverts_with(
        "AccessControlUnauthorizedAccount", a.outsider.address, role_id("DEFAULT_ADMIN_ROLE")
    ):
        c.transact(a.outsider, c.registry.functions.grantRole(registrar_role, a.outsider.address))
    c.transact(a.admin, c.registry.functions.grantRole(registrar_role, a.outsider.address))
    (k1,) = _keys(1)
    fn = c.registry.functions.registerStation(_station("granted"), k1, ZONE, MAX_POWER_W, 0)
    c.transact(a.outsider, fn)
    assert c.registry.functions.stationCount().call() == 1


def test_registration_rejects_invalid_and_duplicate_stations(chain_env: ChainEnv) -> None:
    c, registrar, sid = chain_env.chain, chain_env.accounts.registrar, _station("d")
    k1, k2 = _keys(2)
    register = c.registry.functions.registerStation
    with reverts_with("InvalidStationId"):
        c.transact(registrar, register(b"\x00" * 32, k1, ZONE, MAX_POWER_W, 0))
    with reverts_with("InvalidSigner"):
        c.transact(registrar, register(sid, ZERO, ZONE, MAX_POWER_W, 0))
    with reverts_with("InvalidMaxPower"):
        c.transact(registrar, register(sid, k1, ZONE, 0, 0))
    c.transact(registrar, register(sid, k1, ZONE, MAX_POWER_W, 0))
    with reverts_with("StationAlreadyRegistered", sid):
        c.transact(registrar, register(sid, k2, ZONE, MAX_POWER_W, 0))


def test_rotation_rejects_same_zero_or_unknown(chain_env: ChainEnv) -> None:
    c, registrar, sid = chain_env.chain, chain_env.accounts.registrar, _station("e")
    k1, k2 = _keys(2)
    _register(chain_env, sid, k1, 0)
    with reverts_with("SameSigner", k1):
        c.transact(registrar, c.registry.functions.rotateKey(sid, k1))
    with reverts_with("InvalidSigner"):
        c.transact(registrar, c.registry.functions.rotateKey(sid, ZERO))
    unknown = _station("nobody")
    with reverts_with("UnknownStation", unknown):
        c.transact(registrar, c.registry.functions.rotateKey(unknown, k2))
    with reverts_with("UnknownStation", unknown):
        c.transact(registrar, c.registry.functions.revokeStation(unknown))
    with reverts_with("UnknownStation", unknown):
        c.call(c.registry.functions.getStation(unknown))
    with reverts_with("UnknownStation", unknown):
        c.call(c.registry.functions.keyHistory(unknown))
    assert not c.registry.functions.isKeyValidAt(unknown, k1, 1).call()


def test_a_revoked_station_can_neither_rotate_nor_be_revoked_again(chain_env: ChainEnv) -> None:
    c, env, sid = chain_env.chain, chain_env, _station("f")
    k1, k2 = _keys(2)
    _register(env, sid, k1, 0)
    revoked_at = env.latest_timestamp() + 30
    env.next_block_at(revoked_at)
    c.transact(env.accounts.registrar, c.registry.functions.revokeStation(sid))
    with reverts_with("StationIsRevoked", sid, revoked_at):
        c.transact(env.accounts.registrar, c.registry.functions.rotateKey(sid, k2))
    with reverts_with("StationIsRevoked", sid, revoked_at):
        c.transact(env.accounts.registrar, c.registry.functions.revokeStation(sid))
    with reverts_with("StationAlreadyRegistered", sid):  # ids are never reused
        _register(env, sid, k2, 0)
    assert c.station_history(sid).revoked_at == revoked_at
    assert c.registry.functions.isKeyValidAt(sid, k1, revoked_at - 1).call()
    assert not c.registry.functions.isKeyValidAt(sid, k1, revoked_at).call()


def test_history_of_a_station_without_events_is_an_error(chain_env: ChainEnv) -> None:
    with pytest.raises(ChainError, match="no events for station"):
        chain_env.chain.station_history(_station("never registered"))
