"""StationRegistry's meter keys through real transactions on Anvil, and verifyMeterSignature over
real OCMF records (tests/vectors/ocmf/real_meter_records.json): the meter's DER public key and
the record's DER signature converted by gridpoints_chain's helpers, checked on chain by the
P-256 precompile that Anvil's default hardfork provides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from web3.logs import DISCARD

from gridpoints_chain.meter_abi import (
    P256_N,
    Meter,
    MeterKeyPeriod,
    meter_id,
    p256_public_key,
    p256_signature,
)
from gridpoints_protocol.ocmf import parse_record
from tests.support.chain import ChainEnv, reverts_with

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ocmf" / "real_meter_records.json"
P256_PRECOMPILE = "0x" + "00" * 18 + "0100"


def _sample(index: int) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))[index]
    assert entry["curve"] == "secp256r1"
    record = parse_record(entry["ocmf"])
    return {
        "payload": record.payload_bytes,
        "signature": record.signature.der,
        "key": bytes.fromhex(entry["publicKeyDer"]),
        "serial": record.payload.meter_serial,
        "valid": entry["valid"],
    }


def _station(env: ChainEnv, label: str, active_from: int) -> bytes:
    sid = label.encode().ljust(32, b"\0")
    fn = env.chain.registry.functions.registerStation(
        sid, env.accounts.spare.address, 1, 22_000, active_from
    )
    env.chain.transact(env.accounts.registrar, fn)
    return sid


def _other_s(signature: bytes) -> tuple[bytes, bytes]:
    r, s = p256_signature(signature)
    return r, (P256_N - int.from_bytes(s, "big")).to_bytes(32, "big")


def test_anvil_answers_the_p256_precompile(chain_env: ChainEnv) -> None:
    # Wycheproof's small valid signature, the one OpenZeppelin's P256 probes the precompile with.
    words = [
        0xBB5A52F42F9C9261ED4361F59422A1E30036E7C32B270C8807A419FECA605023, 5, 1,
        0xA71AF64DE5126A4A4E02B7922D66CE9415CE88A4C9D25514D91082C8725AC957,
        0x5D47723C8FBE580BB369FEC9C2665D8E30A435B9932645482E7C9F11E872296B,
    ]  # fmt: skip
    data = b"".join(w.to_bytes(32, "big") for w in words)
    answer = chain_env.w3.eth.call({"to": P256_PRECOMPILE, "data": data})
    assert int.from_bytes(answer, "big") == 1


def test_a_real_record_verifies_on_chain_high_and_low_s(chain_env: ChainEnv) -> None:
    env, c = chain_env, chain_env.chain
    now = env.latest_timestamp()
    sid = _station(env, "meter-station", now - 86_400)
    smp = _sample(0)  # written by the meter with a high s
    assert smp["serial"] == "1ESY1162641121"
    qx, qy = p256_public_key(smp["key"])

    receipt = c.register_meter(env.accounts.registrar, sid, smp["serial"], smp["key"], now - 3_600)
    meter = meter_id(smp["serial"])
    (log,) = c.registry.events.MeterRegistered().process_receipt(receipt, errors=DISCARD)
    assert dict(log["args"]) == {
        "stationId": sid, "meterId": meter, "serial": smp["serial"], "qx": qx, "qy": qy,
        "validFrom": now - 3_600,
    }  # fmt: skip
    assert c.get_meter(sid, meter) == Meter(qx, qy, now - 3_600, 0)
    assert c.meter_key_history(sid, meter) == [MeterKeyPeriod(qx, qy, now - 3_600, 0)]
    assert c.meter_key_at(sid, meter, now) == (qx, qy)
    assert c.meter_key_at(sid, meter, now - 3_601) is None
    assert c.is_meter_key_valid_at(sid, meter, smp["key"], now)
    assert not c.is_meter_key_valid_at(sid, meter, _sample(5)["key"], now), (
        "a key hint that is not the registered key"
    )

    r, s = p256_signature(smp["signature"])
    assert int.from_bytes(s, "big") > P256_N // 2
    assert c.verify_meter_signature(sid, meter, smp["payload"], smp["signature"], now)
    assert c.verify_meter_signature(sid, meter, smp["payload"], (r, s), now)
    assert c.verify_meter_signature(sid, meter, smp["payload"], _other_s(smp["signature"]), now)

    tampered = smp["payload"].replace(b'"RV":1709.539307', b'"RV":1709.539308', 1)
    assert tampered != smp["payload"]
    assert not c.verify_meter_signature(sid, meter, tampered, smp["signature"], now)
    assert not c.verify_meter_signature(sid, meter, tampered, _other_s(smp["signature"]), now)
    assert not c.verify_meter_signature(sid, meter, smp["payload"], smp["signature"], now - 3_601)

    # The gas of the dispute view with the precompile (Anvil's default hardfork has it), as a
    # transaction would pay it: 21,000 + the 1,819-byte payload's calldata + execution. With
    # OpenZeppelin's Solidity fallback instead, the execution alone is about 240,000 (forge's
    # test_Gas_MeterFunctions, whose EVM has no precompile).
    fn = c.registry.functions.verifyMeterSignature(sid, meter, smp["payload"], r, s, now)
    verify_gas = fn.estimate_gas()
    assert verify_gas < 150_000, verify_gas
    assert 80_000 < receipt["gasUsed"] < 160_000, receipt["gasUsed"]


def test_every_p256_record_verifies_as_the_file_says(chain_env: ChainEnv) -> None:
    env, c = chain_env, chain_env.chain
    now = env.latest_timestamp()
    sid = _station(env, "all-records", now - 60)
    for index in (0, 5, 6, 7, 8, 9, 10):
        smp = _sample(index)
        serial = f"record-{index}"
        c.register_meter(env.accounts.registrar, sid, serial, smp["key"], now - 60)
        meter = meter_id(serial)
        for signature in (smp["signature"], _other_s(smp["signature"])):
            verdict = c.verify_meter_signature(sid, meter, smp["payload"], signature, now)
            assert verdict is smp["valid"], index


def test_revoked_and_rotated_meter_keys(chain_env: ChainEnv) -> None:
    env, c = chain_env, chain_env.chain
    base = env.latest_timestamp() + 100
    sid = _station(env, "revoking", base - 1_000)
    smp, other = _sample(5), _sample(0)
    meter = meter_id(smp["serial"])
    env.next_block_at(base)
    c.register_meter(env.accounts.registrar, sid, smp["serial"], smp["key"], base - 500)
    env.next_block_at(base + 10)
    rotation = c.rotate_meter_key(env.accounts.registrar, sid, meter, other["key"])
    (log,) = c.registry.events.MeterKeyRotated().process_receipt(rotation, errors=DISCARD)
    assert log["args"]["rotatedAt"] == base + 10
    env.next_block_at(base + 20)
    c.revoke_meter(env.accounts.registrar, sid, meter)

    qx, qy = p256_public_key(smp["key"])
    ox, oy = p256_public_key(other["key"])
    assert c.meter_key_history(sid, meter) == [
        MeterKeyPeriod(qx, qy, base - 500, base + 10), MeterKeyPeriod(ox, oy, base + 10, 0),
    ]  # fmt: skip
    assert c.get_meter(sid, meter).revoked_at == base + 20
    verify = c.verify_meter_signature
    assert verify(sid, meter, smp["payload"], smp["signature"], base + 9)
    assert not verify(sid, meter, smp["payload"], smp["signature"], base + 10), "rotated away"
    assert verify(sid, meter, other["payload"], other["signature"], base + 19)
    assert not verify(sid, meter, other["payload"], other["signature"], base + 20), "revoked"

    with reverts_with("MeterIsRevoked", sid, meter, base + 20):
        c.rotate_meter_key(env.accounts.registrar, sid, meter, smp["key"])
    with reverts_with("MeterAlreadyRegistered", sid, meter):
        c.register_meter(env.accounts.registrar, sid, smp["serial"], smp["key"], base)
    with reverts_with("NotOnCurve", qx, ox):
        c.register_meter(env.accounts.registrar, sid, "off-curve", (qx, ox), base)
    with reverts_with("UnknownMeter", sid, meter_id("nobody")):
        c.get_meter(sid, meter_id("nobody"))


def test_the_registry_follower_reads_only_station_events(chain_env: ChainEnv) -> None:
    # Meter events come from the same contract; the station-event reader filters by topic and
    # must neither see nor choke on them.
    env, c = chain_env, chain_env.chain
    now = env.latest_timestamp()
    sid = _station(env, "follower", now - 60)
    smp = _sample(5)
    c.register_meter(env.accounts.registrar, sid, smp["serial"], smp["key"], now - 60)
    c.revoke_meter(env.accounts.registrar, sid, meter_id(smp["serial"]))
    events = c.station_events(sid)
    assert [type(e).__name__ for e in events] == ["StationRegistered"]


def test_key_and_signature_helpers_refuse_other_curves_and_garbage() -> None:
    secp256k1 = json.loads(VECTORS.read_text(encoding="utf-8"))[1]
    with pytest.raises(ValueError, match="not a P-256 key"):
        p256_public_key(bytes.fromhex(secp256k1["publicKeyDer"]))
    with pytest.raises(ValueError, match="not a DER"):
        p256_public_key(b"\x30\x00")
    with pytest.raises(ValueError, match="not a DER ECDSA signature"):
        p256_signature(b"\x30\x02\x02\x00")
    with pytest.raises(ValueError, match="non-empty"):
        meter_id("")
