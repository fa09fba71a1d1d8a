"""The operator's signed ingest receipts, end to end with the shipped commands: the receipt key
is generated inside a real SoftHSM2 token (``gridpoints receipt-key create``), ``gridpoints
serve`` signs with it, ``GET /v1/info`` publishes its address, and every accepted record (single
and batch routes) and every duplicate sent again carries a receipt that verifies under that
address for exactly that record — and no longer once anything in it is changed. Once per
database.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridpoints_dev.chain import register_station
from gridpoints_dev.child_process import environment_without_settings
from gridpoints_dev.serve import ServeProcess, gridpoints_command, upgrade_database
from gridpoints_dev.tokens import ThrowawayTokens
from gridpoints_protocol.receipts import IngestReceipt, ReceiptError
from gridpoints_protocol.record import Domain
from tests.support.backend import (
    DATABASES,
    ZONE,
    DevStation,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    sign,
    signed_of,
)
from tests.support.chain import ChainEnv

TOKEN = "gridpoints-receipts"
KEY_LABEL = "receipt-key"
MERGE_DELAY_S = 900


@pytest.fixture(params=DATABASES)
def served(
    request: pytest.FixtureRequest, chain_session: ChainEnv, tmp_path: Path
) -> Iterator[tuple[ServeProcess, dict[str, str], str]]:
    env = chain_session
    tokens = ThrowawayTokens(tmp_path / "softhsm")
    token = tokens.create(TOKEN)
    with contextlib.ExitStack() as stack:
        stack.enter_context(chain_checkpoint(env))
        url = stack.enter_context(fresh_database(request.param, tmp_path))
        variables = environment_without_settings()
        variables.update(
            GRIDPOINTS_DATABASE_URL=url,
            GRIDPOINTS_RPC_URL=env.anvil.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(env.deployment_path),
            GRIDPOINTS_CONFIRMATIONS="0",
            GRIDPOINTS_REGISTRY_POLL_INTERVAL_S="0.1",
            GRIDPOINTS_RECEIPT_PKCS11_TOKEN=TOKEN,
            GRIDPOINTS_RECEIPT_PKCS11_KEY_LABEL=KEY_LABEL,
            GRIDPOINTS_RECEIPT_PKCS11_PIN_FILE=str(tokens.write_pin_file(tmp_path / "pin")),
            GRIDPOINTS_MAX_MERGE_DELAY_S=str(MERGE_DELAY_S),
            SOFTHSM2_CONF=str(token.conf_path),
        )
        upgrade_database(variables)
        # As an operator does: generate the key inside the token, then serve with it.
        created = receipt_key_command(variables, "create")
        process = ServeProcess(variables, tmp_path / "serve.log")
        stack.callback(process.stop)
        process.start()
        yield process, variables, created


def receipt_key_command(variables: dict[str, str], action: str) -> str:
    done = subprocess.run(
        [gridpoints_command(), "receipt-key", action, "--json"],
        env=variables,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    address: str = json.loads(done.stdout)["address"]
    return address


def post_until_judged(url: str, path: str, body: Any) -> httpx.Response:
    """Posts until the backend judges the records (a deferral: its follower is still behind
    their end)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(url + path, json=body, timeout=30)
        outcomes = response.json().get("outcomes", [response.json()])
        if all(o["status"] != "deferred" for o in outcomes) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_receipts_are_signed_in_softhsm_and_verify_only_untouched(
    served: tuple[ServeProcess, dict[str, str], str], chain_session: ChainEnv
) -> None:
    process, variables, created = served
    env = chain_session
    assert receipt_key_command(variables, "address") == created
    info = process.get("/v1/info")
    assert info["receiptKey"] == created and info["maxMergeDelayS"] == MERGE_DELAY_S
    domain_json = info["domain"]

    station = DevStation(new_station_id(), new_key())
    register_station(
        env.chain,
        env.accounts.registrar,
        station.station_id,
        station.key.address,
        zone=ZONE,
        max_power_w=station.max_power_w,
    )
    registered_at = int(env.w3.eth.block_number)
    deadline = time.monotonic() + 30
    while (process.get("/v1/registry")["lastBlock"] or -1) < registered_at:  # followed yet?
        assert time.monotonic() < deadline, "the registry follower did not catch up"
        time.sleep(0.05)
    domain = Domain(
        int(domain_json["chainId"]), bytes.fromhex(domain_json["verifyingContract"][2:])
    )
    single = sign(station.record(), station.key, domain)
    first = post_until_judged(process.url, "/v1/records", single)
    assert first.status_code == 201, first.text
    batch = [sign(station.record(), station.key, domain) for _ in range(3)]
    answered = post_until_judged(process.url, "/v1/records/batch", batch).json()
    again = httpx.post(process.url + "/v1/records", json=single, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"

    bodies = [single, *batch, single]
    outcomes = [first.json(), *answered["outcomes"], again.json()]
    receipts = []
    for body, outcome in zip(bodies, outcomes, strict=True):
        signed = signed_of(body)
        receipt = IngestReceipt.from_json(outcome["receipt"]["signed"])
        receipt.verify(domain, created)
        entry = receipt.entry
        assert entry.record_digest == signed.digest(domain)
        assert (entry.station_id, entry.sequence) == (station.station_id, signed.record.sequence)
        assert entry.sealed_by == entry.received_at + MERGE_DELAY_S
        receipts.append(receipt)
    # The batch's three receipts share one HSM signature over their tree; the duplicate's
    # receipt promises the same time as the original's (the stored receipt time).
    assert len({r.signature for r in receipts[1:4]}) == 1 and receipts[1].size == 3
    assert receipts[4].entry == receipts[0].entry
    # Nothing else in the answer is personal data beyond the record's own: no user address.
    assert set(outcomes[0]["receipt"]["signed"]) == {
        "version", "recordDigest", "stationId", "sequence", "receivedAt", "sealedBy",
        "index", "size", "path", "signature",
    }  # fmt: skip

    tampered = replace(receipts[2], entry=replace(receipts[2].entry, sequence=99))
    with pytest.raises(ReceiptError):
        tampered.verify(domain, created)
    later = replace(receipts[0], entry=replace(receipts[0].entry, sealed_by=2**40))
    with pytest.raises(ReceiptError):
        later.verify(domain, created)


def test_with_receipt_is_replace_and_keeps_every_field() -> None:
    """`Outcome.with_receipt` builds the outcome field by field (for speed): it must stay the
    same as ``dataclasses.replace``, also when Outcome gains a field."""
    import dataclasses
    from datetime import UTC, datetime

    from backend.ingest.classify import Outcome
    from gridpoints_protocol.checks import Deferral, Problem
    from gridpoints_protocol.receipts import IngestReceipt, ReceiptEntry
    from gridpoints_protocol.wire import DeferReason, RejectReason

    assert [f.name for f in dataclasses.fields(Outcome)] == [
        "status",
        "digest",
        "log_index",
        "received_at",
        "problem",
        "deferral",
        "signed_receipt",
    ]
    outcome = Outcome(
        "accepted",
        b"\x01" * 32,
        7,
        datetime.now(UTC),
        Problem(RejectReason.MALFORMED, "m"),
        Deferral(DeferReason.END_IN_FUTURE, "d", 3),
    )
    receipt = IngestReceipt(
        ReceiptEntry(b"\x01" * 32, b"\x02" * 32, 5, 1_700_000_000, 1_700_000_060),
        0,
        1,
        (),
        b"\x03" * 65,
    )
    assert outcome.with_receipt(receipt) == dataclasses.replace(outcome, signed_receipt=receipt)
