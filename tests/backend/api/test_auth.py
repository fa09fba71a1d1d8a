"""Sign-in with Ethereum and the private views, over a real uvicorn backend on both databases:
a wallet (eth_account key, one with a leading zero byte) signs the backend's EIP-4361 challenge
and reads its own records; each refusal — expired, replayed, wrong domain, wrong chain, bad
signature, another signer, unknown nonce, a changed message, malformed — has its code; one
user can never read another's records; no session, a wrong or a signed-out token is a 401."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from backend.db import Database
from backend.db.models import AuthChallenge
from gridpoints_protocol.authorization import PaymentOpening
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.offers import ChargeOffer
from gridpoints_protocol.siwe import SiweMessage, format_time, parse_message
from tests.support.auth import bearer, challenge, personal_sign, sign_in, wallet
from tests.support.backend import (
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.offers import signed_offer
from tests.support.payments import charge_payment
from tests.support.settlement import Traffic

PUBLIC_URL = "http://127.0.0.1:8000"  # the harness's default public origin (host:port setting)


def session(h: BackendHarness, message: str, signature: str) -> httpx.Response:
    return h.client.post("/v1/auth/session", json={"message": message, "signature": signature})


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def post_records(h: BackendHarness, user: str, count: int) -> list[dict[str, Any]]:
    station = h.register_station()
    bodies = [h.signed(station, user=user) for _ in range(count)]
    response = h.post_batch(bodies)
    assert response.json()["accepted"] == count, response.text
    return bodies


# ---- signing in ----------------------------------------------------------------------------


def test_a_wallet_signs_in_and_reads_only_its_own_records(backend: BackendHarness) -> None:
    h = backend
    alice, bob = wallet(leading_zero=True), wallet()
    post_records(h, alice.address, 3)
    post_records(h, bob.address, 2)
    message = parse_message(challenge(h, alice))
    # The challenge is the EIP-4361 message of this service, for this wallet and chain.
    assert message.domain == "127.0.0.1:8000" and message.uri == PUBLIC_URL
    assert message.address == bytes.fromhex(alice.address[2:])
    assert message.chain_id == h.env.deployment.chain_id
    assert message.expiration_time is not None and len(message.nonce) >= 16
    alice_token, bob_token = sign_in(h, alice), sign_in(h, bob)
    mine = h.client.get("/v1/me/records", headers=bearer(alice_token))
    assert mine.status_code == 200, mine.text
    page = mine.json()
    assert page["user"] == alice.address
    assert len(page["records"]) == 3
    assert {r["opening"]["user"] for r in page["records"]} == {alice.address}
    # Each record's opening opens its commitment.
    for r in page["records"]:
        opening = UserOpening.from_json(r["opening"])
        assert "0x" + opening.commitment.hex() == r["record"]["record"]["userCommitment"]
    assert all(r["state"] == "pending" and r["proof"] is None for r in page["records"])
    # Bob's token gives Bob's records, never Alice's; no parameter names a user.
    theirs = h.client.get("/v1/me/records", headers=bearer(bob_token)).json()
    assert {r["opening"]["user"] for r in theirs["records"]} == {bob.address}
    assert len(theirs["records"]) == 2
    export = h.client.get("/v1/me/export", headers=bearer(bob_token)).json()
    assert export["user"] == bob.address
    assert {r["opening"]["user"] for r in export["pending"]} == {bob.address}
    assert alice.address.lower()[2:] not in str(export).lower()


def test_without_a_valid_session_the_private_views_are_401_with_a_reason(
    backend: BackendHarness,
) -> None:
    h = backend
    account = wallet()
    for path in ("/v1/me/records", "/v1/me/export"):
        missing = h.client.get(path)
        assert missing.status_code == 401 and error_code(missing) == "missing_token"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = h.client.get(path, headers=bearer(secrets.token_urlsafe(32)))
        assert wrong.status_code == 401 and error_code(wrong) == "unknown_session"
        basic = h.client.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401 and error_code(basic) == "missing_token"
    token = sign_in(h, account)
    assert h.client.get("/v1/me/records", headers=bearer(token)).status_code == 200
    out = h.client.delete("/v1/auth/session", headers=bearer(token))
    assert out.status_code == 204, out.text
    after = h.client.get("/v1/me/records", headers=bearer(token))
    assert after.status_code == 401 and error_code(after) == "unknown_session"
    # A wallet's history by address is that wallet's too: no session 401, another's 403.
    mine = h.client.get(f"/v1/users/{account.address}", headers=bearer(sign_in(h, account)))
    assert mine.status_code == 200, mine.text
    anonymous = h.client.get(f"/v1/users/{account.address}")
    assert anonymous.status_code == 401 and error_code(anonymous) == "missing_token"
    other = h.client.get(f"/v1/users/{account.address}", headers=bearer(sign_in(h, wallet())))
    assert other.status_code == 403 and error_code(other) == "not_your_wallet"
    again = h.client.delete("/v1/auth/session", headers=bearer(token))
    assert again.status_code == 401 and error_code(again) == "unknown_session"


def test_an_expired_session_is_refused(backend: BackendHarness) -> None:
    h = backend
    token = sign_in(h, wallet())
    db = Database(h.database_url)
    try:
        from sqlalchemy import update

        from backend.auth import token_hash
        from backend.db.models import AuthSession

        with db.write() as s:
            s.execute(
                update(AuthSession)
                .where(AuthSession.token_hash == token_hash(token))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    finally:
        db.dispose()
    response = h.client.get("/v1/me/records", headers=bearer(token))
    assert response.status_code == 401 and error_code(response) == "session_expired"


# ---- each refusal of a sign-in --------------------------------------------------------------


def test_a_replayed_challenge_is_refused(backend: BackendHarness) -> None:
    h = backend
    account = wallet()
    message = challenge(h, account)
    signature = personal_sign(account, message)
    first = session(h, message, signature)
    assert first.status_code == 201, first.text
    second = session(h, message, signature)
    assert second.status_code == 401 and error_code(second) == "replayed", second.text


def test_an_expired_challenge_is_refused(backend: BackendHarness) -> None:
    """The backend issued this challenge ten minutes ago with a five-minute lifetime (written
    into its table as it would have been then: no test waits minutes)."""
    h = backend
    account = wallet(leading_zero=True)
    issued = int(time.time()) - 600
    message = SiweMessage(
        scheme="http",
        domain="127.0.0.1:8000",
        address=bytes.fromhex(account.address[2:]),
        statement=h.settings.siwe_statement,
        uri=PUBLIC_URL,
        chain_id=h.env.deployment.chain_id,
        nonce=secrets.token_hex(16),
        issued_at=format_time(issued),
        expiration_time=format_time(issued + 300),
    )
    text = message.render()
    db = Database(h.database_url)
    try:
        with db.write() as s:
            s.add(
                AuthChallenge(
                    nonce=message.nonce,
                    user_address=message.address,
                    message=text,
                    issued_at=datetime.fromtimestamp(issued, UTC),
                    expires_at=datetime.fromtimestamp(issued + 300, UTC),
                )
            )
    finally:
        db.dispose()
    response = session(h, text, personal_sign(account, text))
    assert response.status_code == 401 and error_code(response) == "expired", response.text


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda m: m.replace("127.0.0.1:8000 wants", "evil.example wants"), "wrong_domain"),
        (lambda m: m.replace("URI: http://127.0.0.1:8000", "URI: https://evil.ex"), "wrong_domain"),
        (lambda m: m.replace("Chain ID: 31337", "Chain ID: 1"), "wrong_chain"),
        (lambda m: m.replace("Nonce: ", "Nonce: 0000"), "unknown_nonce"),
        (lambda m: m.replace("Sign in to", "Sign over to"), "message_mismatch"),
        (lambda m: m + "\n", "malformed_message"),
        (lambda m: m.replace("Version: 1", "Version: 2"), "malformed_message"),
    ],
    ids=["domain", "uri", "chain", "nonce", "statement", "trailing-newline", "version"],
)  # fmt: skip
def test_a_changed_message_is_refused_with_its_reason(
    backend: BackendHarness, change: Any, code: str
) -> None:
    """The wallet signs what it is shown; a message not issued as is by this service, for this
    domain and chain, is refused even with the wallet's valid signature over it."""
    h = backend
    assert h.env.deployment.chain_id == 31337
    account = wallet()
    message = challenge(h, account)
    changed = change(message)
    assert changed != message
    response = session(h, changed, personal_sign(account, changed))
    assert response.status_code == (422 if code == "malformed_message" else 401), response.text
    assert error_code(response) == code, response.text
    # The untouched challenge still signs in: a refused attempt does not use it up.
    assert session(h, message, personal_sign(account, message)).status_code == 201


def test_a_challenge_for_another_chain_is_not_issued(backend: BackendHarness) -> None:
    h = backend
    response = h.client.post("/v1/auth/challenge", json={"address": wallet().address, "chainId": 1})
    assert response.status_code == 422 and error_code(response) == "wrong_chain"
    bad = h.client.post("/v1/auth/challenge", json={"address": "0x1234", "chainId": 31337})
    assert bad.status_code == 422 and error_code(bad) == "invalid_parameter"


def test_bad_signatures_are_refused(backend: BackendHarness) -> None:
    h = backend
    account, other = wallet(), wallet(leading_zero=True)
    message = challenge(h, account)
    by_other = session(h, message, personal_sign(other, message))
    assert by_other.status_code == 401 and error_code(by_other) == "wrong_signer"
    signature = bytes.fromhex(personal_sign(account, message)[2:])
    garbage = session(h, message, "0x" + (b"\x00" * 64 + b"\x1b").hex())
    assert garbage.status_code == 401 and error_code(garbage) == "bad_signature"
    # The same signature with a high s (n - s): malleable, refused.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s_value = int.from_bytes(signature[32:64], "big")
    high = signature[:32] + (n - s_value).to_bytes(32, "big") + bytes((signature[64] ^ 1,))
    high_s = session(h, message, "0x" + high.hex())
    assert high_s.status_code == 401 and error_code(high_s) == "bad_signature"
    short = session(h, message, "0x1234")
    assert short.status_code == 422 and error_code(short) == "bad_signature"
    # v as 0/1 (some hardware wallets) is the same signature.
    low_v = signature[:64] + bytes((signature[64] - 27,))
    ok = session(h, message, "0x" + low_v.hex())
    assert ok.status_code == 201, ok.text


def test_pending_challenges_are_bounded_per_address(backend: BackendHarness) -> None:
    """An address keeps at most siwe_max_pending_per_address challenges: the oldest go first."""
    h = backend
    account = wallet()
    limit = h.settings.siwe_max_pending_per_address
    messages = [challenge(h, account) for _ in range(limit + 2)]
    first = session(h, messages[0], personal_sign(account, messages[0]))
    assert first.status_code == 401 and error_code(first) == "unknown_nonce"
    last = session(h, messages[-1], personal_sign(account, messages[-1]))
    assert last.status_code == 201, last.text


def test_challenges_are_rate_limited_per_remote_address(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    """Challenges are stored until they expire: a remote address may ask for only so many
    (the bucket is per process and in memory, the same on either database)."""
    with (
        chain_checkpoint(chain_session),
        fresh_database("sqlite", tmp_path) as url,
        running_backend(
            chain_session,
            url,
            "sqlite",
            rate_limit_enabled=True,
            siwe_challenge_burst=2,
            siwe_challenge_per_s=0.001,
        ) as h,
    ):
        account = wallet()
        challenge(h, account)
        challenge(h, account)
        refused = h.client.post(
            "/v1/auth/challenge",
            json={"address": account.address, "chainId": h.env.deployment.chain_id},
        )
        assert refused.status_code == 429 and error_code(refused) == "rate_limited"
        assert int(refused.headers["retry-after"]) > 0


# ---- the signed-in wallet's payment authorisations -------------------------------------------


def relay_for(h: BackendHarness, account: LocalAccount) -> tuple[ChargeOffer, dict[str, Any]]:
    """A fresh station's registered offer, answered through the relay by `account`."""
    station = h.register_station()
    offer, registration = signed_offer(h, station.station_id, station.key)
    assert h.client.post("/v1/offers", json=registration).status_code == 201
    signed = charge_payment(
        account,
        offer.station_id,
        h.env.chain.settlement_domain,
        max_points=offer.max_points,
        deadline=offer.deadline,
    ).to_json()
    answer = h.client.post(f"/v1/offers/{offer.offer_hex}/authorization", json=signed)
    assert answer.status_code == 201, answer.text
    return offer, signed


def test_a_wallet_lists_only_its_own_authorisations_relayed_and_on_records(
    backend: BackendHarness,
) -> None:
    h = backend
    alice, bob = wallet(leading_zero=True), wallet()
    traffic = Traffic(h)
    station = h.register_station()
    paid = [traffic.add_paid(station, alice, 5 + i) for i in range(2)]
    bobs_paid = traffic.add_paid(station, bob, 4)
    h.advance_registry_past(max(b["record"]["endTime"] for b in traffic.bodies))
    assert h.post_batch(traffic.bodies).json()["accepted"] == 3
    offer, relayed = relay_for(h, alice)
    relay_for(h, bob)
    alice_token, bob_token = sign_in(h, alice), sign_in(h, bob)

    mine = h.client.get("/v1/me/authorizations", headers=bearer(alice_token))
    assert mine.status_code == 200, mine.text
    page = mine.json()
    assert page["user"] == alice.address
    assert [(r["offerId"], r["signed"]) for r in page["relayed"]] == [(offer.offer_hex, relayed)]
    assert [s["signed"] for s in page["stored"]] == [b["payment"] for b in paid]
    # The stored digest is the one the chain burns under; the record carries its salted link.
    domain = h.env.chain.settlement_domain
    openings = [PaymentOpening.from_json(s["signed"]) for s in page["stored"]]
    assert [s["digest"] for s in page["stored"]] == [
        "0x" + o.signed.digest(domain).hex() for o in openings
    ]
    assert ["0x" + o.link(domain).hex() for o in openings] == [
        b["record"]["paymentAuthorization"] for b in paid
    ]
    assert page["nextAfterLogIndex"] is None
    assert bob.address.lower()[2:] not in mine.text.lower()
    # Paged by the records' log index; the relayed ones come with the first page only.
    first = h.client.get("/v1/me/authorizations?limit=1", headers=bearer(alice_token)).json()
    assert [s["signed"] for s in first["stored"]] == [paid[0]["payment"]]
    assert (
        len(first["relayed"]) == 1 and first["nextAfterLogIndex"] == first["stored"][0]["logIndex"]
    )
    rest = h.client.get(
        f"/v1/me/authorizations?limit=1&afterLogIndex={first['nextAfterLogIndex']}",
        headers=bearer(alice_token),
    ).json()
    assert [s["signed"] for s in rest["stored"]] == [paid[1]["payment"]] and rest["relayed"] == []

    theirs = h.client.get("/v1/me/authorizations", headers=bearer(bob_token)).json()
    assert [s["signed"] for s in theirs["stored"]] == [bobs_paid["payment"]]
    assert [r["signed"]["authorization"]["user"] for r in theirs["relayed"]] == [bob.address]
    assert alice.address.lower()[2:] not in str(theirs).lower()

    missing = h.client.get("/v1/me/authorizations")
    assert missing.status_code == 401 and error_code(missing) == "missing_token"
    bad = h.client.get("/v1/me/authorizations?limit=0", headers=bearer(alice_token))
    assert bad.status_code == 422 and error_code(bad) == "invalid_parameter"
