"""backend/auth.py on both databases (migrated, no server): pending challenges are bounded in all
and per wallet and forgotten once expired, a challenge signs in once, a session expires, and
the token is stored only as its hash."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from backend.auth import (
    AuthRefused,
    SiweConfig,
    issue_challenge,
    open_session,
    session_user,
    token_hash,
)
from backend.db import Database
from backend.db.models import AuthChallenge, AuthSession
from backend.migrations import upgrade
from backend.settings import Settings
from tests.support.auth import personal_sign, wallet

CHAIN = 31337


@pytest.fixture
def db(database_url: tuple[str, str]) -> Iterator[Database]:
    database = Database(database_url[1])
    upgrade(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def config(**changes: object) -> SiweConfig:
    settings = Settings(public_url="https://points.example", **changes)  # type: ignore[arg-type]
    return SiweConfig.of(settings, CHAIN)


def address(account: object) -> bytes:
    return bytes.fromhex(account.address[2:])  # type: ignore[attr-defined]


def pending(db: Database) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(AuthChallenge)) or 0)


def test_pending_challenges_are_bounded_and_forgotten_once_expired(db: Database) -> None:
    cfg = config(siwe_max_pending=3, siwe_max_pending_per_address=2)
    now = datetime.now(UTC)
    people = [wallet() for _ in range(4)]
    with db.write() as s:
        for account in people[:3]:
            issue_challenge(s, cfg, address(account), CHAIN, now)
    with pytest.raises(AuthRefused) as caught, db.write() as s:
        issue_challenge(s, cfg, address(people[3]), CHAIN, now)
    assert (caught.value.status_code, caught.value.reason) == (503, "too_many_challenges")
    assert pending(db) == 3
    # Once they expired, they are deleted by the next issue, which then succeeds.
    later = now + timedelta(seconds=cfg.challenge_ttl_s + 1)
    with db.write() as s:
        issue_challenge(s, cfg, address(people[3]), CHAIN, later)
    assert pending(db) == 1
    # Per wallet, the newest ones are kept.
    with db.write() as s:
        nonces = [
            issue_challenge(s, cfg, address(people[0]), CHAIN, later + timedelta(seconds=i)).nonce
            for i in range(3)
        ]
    with db.read() as s:
        kept = set(
            s.scalars(
                select(AuthChallenge.nonce).where(AuthChallenge.user_address == address(people[0]))
            )
        )
    assert kept == set(nonces[1:])


def test_a_challenge_signs_in_once_and_the_session_expires(db: Database) -> None:
    cfg = config()
    account = wallet(leading_zero=True)
    now = datetime.now(UTC)
    with db.write() as s:
        text = issue_challenge(s, cfg, address(account), CHAIN, now).render()
    signature = bytes.fromhex(personal_sign(account, text)[2:])
    with db.write() as s:
        opened = open_session(s, cfg, text, signature, now)
    assert opened.user == address(account)
    with pytest.raises(AuthRefused) as caught, db.write() as s:
        open_session(s, cfg, text, signature, now)
    assert caught.value.reason == "replayed"
    with db.read() as s:
        row = s.get(AuthSession, token_hash(opened.token))
        assert row is not None and row.user_address == address(account)
        # Only the hash is stored, never the token.
        stored = [r.token_hash for r in s.scalars(select(AuthSession))]
        assert opened.token.encode() not in stored
        assert session_user(s, opened.token, now) == address(account)
        with pytest.raises(AuthRefused) as expired:
            session_user(s, opened.token, now + timedelta(seconds=cfg.session_ttl_s))
        assert expired.value.reason == "session_expired"
