"""The OCPP gateway's durable state, in ``ocpp.sqlite`` beside the station's store.

* ``chargers``: who may connect, with the Basic-auth password hashed (scrypt, per-charger
  salt). OCPP security profile 1 sends the password on every connection; the station keeps only
  what it needs to check it.
* ``id_tokens``: which user's wallet an ``idToken`` stands for, managed by the station operator.
  The token is kept only as an HMAC under a secret of this file (an RFID UID is a personal
  identifier; an HMAC of a short UID cannot be reversed without the file's secret), never
  published, never logged.
* ``transactions`` and ``ocmf_records``: each transaction as the charger reported it, and every
  signed meter record it carried, written **before** the charger's message is answered: a
  gateway killed at any moment loses nothing a charger was told was received. A transaction is
  ``open``, ``ended`` (the charger ended it; to be judged), ``recorded`` (it became the
  station's record ``record_sequence``) or ``faulted`` (``fault_reason``, never a record).
* ``meter_pages``: the highest OCMF ``PG`` of each meter already used by a recorded session, to
  refuse a record replayed from an earlier session.
* ``payments`` (schema 2): the charge offer the gateway made for a transaction (paying with
  points, `station_signer.ocpp.pay`), written before the charger's Started is answered; when the
  backend registered it; the user's signed authorisation once collected (or why what came back
  was refused), written before the gateway acts on it; and the outcome: ``paid`` (the record
  carries the authorisation) or ``unpaid`` with its reason.

WAL and ``synchronous=FULL``, as the station's store. Used from one thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from station_signer.errors import StationError

STATE_FILE: Final = "ocpp.sqlite"
SCHEMA_VERSION: Final = 2  # 2: payments
# scrypt's cost: about 16 MiB and a few tens of ms per check, once per connection.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
MIN_PASSWORD_LENGTH: Final = 16  # OCPP 2.0.1 BasicAuthPassword: 16 to 40 characters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    schema_version INTEGER NOT NULL,
    token_secret TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chargers (
    charger_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    added_at REAL NOT NULL,
    last_boot_at REAL
);
CREATE TABLE IF NOT EXISTS id_tokens (
    token_mac TEXT PRIMARY KEY,
    wallet TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    charger_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'ended', 'recorded', 'faulted')),
    evse_id INTEGER,
    token_mac TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    record_sequence INTEGER,
    fault_reason TEXT,
    fault_message TEXT,
    fault_record INTEGER,
    decided_at REAL,
    PRIMARY KEY (charger_id, transaction_id)
);
CREATE TABLE IF NOT EXISTS ocmf_records (
    charger_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    raw TEXT NOT NULL,
    public_key TEXT,
    received_at REAL NOT NULL,
    PRIMARY KEY (charger_id, transaction_id, position),
    UNIQUE (charger_id, transaction_id, raw)
);
CREATE TABLE IF NOT EXISTS meter_pages (
    meter_serial TEXT PRIMARY KEY,
    last_page INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS payments (
    charger_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    offer TEXT NOT NULL,
    created_at REAL NOT NULL,
    registered_at REAL,
    authorization TEXT,
    refused_code TEXT,
    refused_message TEXT,
    collected_at REAL,
    outcome TEXT CHECK (outcome IN ('paid', 'unpaid')),
    outcome_reason TEXT,
    PRIMARY KEY (charger_id, transaction_id)
);
"""


class GatewayError(StationError):
    """A gateway-level problem; ``code``: ``unknown_charger``, ``weak_password``, ..."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed, bytes.fromhex(digest))


@dataclass(frozen=True, slots=True)
class TransactionRow:
    charger_id: str
    transaction_id: str
    status: str
    evse_id: int | None
    token_mac: str | None
    started_at: float
    ended_at: float | None
    record_sequence: int | None
    fault_reason: str | None
    fault_message: str | None
    fault_record: int | None

    @property
    def source(self) -> str:
        """The evidence source of the station's record of this transaction."""
        return f"ocpp:{self.charger_id}:{self.transaction_id}"

    def to_json(self) -> dict[str, object]:
        # No token, not even its HMAC: the output may be shared.
        return {
            "charger": self.charger_id,
            "transaction": self.transaction_id,
            "status": self.status,
            "sequence": self.record_sequence,
            "fault": None
            if self.fault_reason is None
            else {
                "reason": self.fault_reason,
                "message": self.fault_message,
                "record": self.fault_record,
            },
        }


@dataclass(frozen=True, slots=True)
class StoredOcmf:
    position: int
    raw: str
    public_key: str | None  # the charger's hint, as sent (base64 or hex), None if empty


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A transaction's charge offer and what became of it (see the module docstring)."""

    charger_id: str
    transaction_id: str
    offer: dict[str, Any]  # ChargeOffer.to_json()
    registered: bool
    authorization: dict[str, Any] | None  # PaymentOpening.to_json(), checked on the offer
    refused_code: str | None
    refused_message: str | None
    outcome: str | None
    outcome_reason: str | None

    @property
    def waiting(self) -> bool:
        """Whether the backend may still have something to collect for it."""
        return self.outcome is None and self.authorization is None and self.refused_code is None

    def to_json(self) -> dict[str, object]:
        # No wallet: who paid is in the record (and the user's own business).
        return {
            "offerId": self.offer["offerId"],
            "maxPoints": self.offer["maxPoints"],
            "deadline": self.offer["deadline"],
            "registered": self.registered,
            "authorised": self.authorization is not None,
            "refused": None
            if self.refused_code is None
            else {"code": self.refused_code, "message": self.refused_message},
            "outcome": self.outcome,
            "reason": self.outcome_reason,
        }


_PAY_COLUMNS: Final = (
    "charger_id, transaction_id, offer, registered_at IS NOT NULL, authorization, refused_code,"
    " refused_message, outcome, outcome_reason"
)


def _payment_row(row: tuple[Any, ...]) -> PaymentRow:
    return PaymentRow(
        row[0],
        row[1],
        json.loads(row[2]),
        bool(row[3]),
        None if row[4] is None else json.loads(row[4]),
        *row[5:],
    )


_TX_COLUMNS: Final = (
    "charger_id, transaction_id, status, evse_id, token_mac, started_at, ended_at,"
    " record_sequence, fault_reason, fault_message, fault_record"
)


class GatewayState:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            with self._transaction() as db:
                row = db.execute("SELECT schema_version FROM meta").fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO meta VALUES (1, ?, ?)",
                        (SCHEMA_VERSION, secrets.token_hex(32)),
                    )
                elif row[0] < SCHEMA_VERSION:
                    # 1 -> 2 only added the payments table (created above).
                    db.execute("UPDATE meta SET schema_version = ?", (SCHEMA_VERSION,))
                elif row[0] > SCHEMA_VERSION:
                    raise GatewayError(
                        f"{self.path} has schema version {row[0]}; this gateway reads up to "
                        f"{SCHEMA_VERSION}",
                        "newer_store",
                    )
            self._secret = bytes.fromhex(
                self._db.execute("SELECT token_secret FROM meta").fetchone()[0]
            )
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GatewayState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- chargers ---------------------------------------------------------------------------

    def add_charger(self, charger_id: str, password: str) -> None:
        """Adds the charger or replaces its password."""
        if not charger_id or len(charger_id) > 48 or "/" in charger_id or ":" in charger_id:
            raise GatewayError(
                f"charger id {charger_id!r}: 1-48 characters, no '/' or ':'", "invalid_argument"
            )
        if len(password) < MIN_PASSWORD_LENGTH:
            raise GatewayError(
                f"a charger password has at least {MIN_PASSWORD_LENGTH} characters",
                "weak_password",
            )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO chargers (charger_id, password_hash, added_at) VALUES (?, ?, ?)"
                " ON CONFLICT (charger_id) DO UPDATE SET password_hash = excluded.password_hash",
                (charger_id, hash_password(password), time.time()),
            )

    def check_charger(self, charger_id: str, password: str) -> bool:
        row = self._db.execute(
            "SELECT password_hash FROM chargers WHERE charger_id = ?", (charger_id,)
        ).fetchone()
        if row is None:
            hash_password(password)  # the same work either way: no timing oracle on ids
            return False
        return check_password(password, row[0])

    def password_hash(self, charger_id: str) -> str | None:
        row = self._db.execute(
            "SELECT password_hash FROM chargers WHERE charger_id = ?", (charger_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def chargers(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT charger_id FROM chargers ORDER BY 1")]

    def booted(self, charger_id: str) -> None:
        self._db.execute(
            "UPDATE chargers SET last_boot_at = ? WHERE charger_id = ?", (time.time(), charger_id)
        )

    # --- id tokens --------------------------------------------------------------------------

    def token_mac(self, id_token: str) -> str:
        return hmac.new(self._secret, id_token.encode(), hashlib.sha256).hexdigest()

    def bind_token(self, id_token: str, wallet: str) -> None:
        if not id_token:
            raise GatewayError("an idToken is not empty", "invalid_argument")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO id_tokens (token_mac, wallet, added_at) VALUES (?, ?, ?)"
                " ON CONFLICT (token_mac) DO UPDATE SET wallet = excluded.wallet",
                (self.token_mac(id_token), wallet, time.time()),
            )

    def unbind_token(self, id_token: str) -> bool:
        with self._transaction() as db:
            return (
                db.execute(
                    "DELETE FROM id_tokens WHERE token_mac = ?", (self.token_mac(id_token),)
                ).rowcount
                == 1
            )

    def wallet_of_mac(self, token_mac: str | None) -> str | None:
        if token_mac is None:
            return None
        row = self._db.execute(
            "SELECT wallet FROM id_tokens WHERE token_mac = ?", (token_mac,)
        ).fetchone()
        return None if row is None else str(row[0])

    # --- transactions -----------------------------------------------------------------------

    def note_event(
        self,
        charger_id: str,
        transaction_id: str,
        *,
        evse_id: int | None,
        id_token: str | None,
        ocmf: list[tuple[str, str | None]],
        ended: bool,
    ) -> TransactionRow:
        """One TransactionEvent (or MeterValues) made durable, in one transaction: the
        transaction (created on first sight, whatever the event type: a Started may have been
        lost), its idToken (as HMAC), the signed records it carried (an identical record sent
        twice is kept once) and, for ``ended``, the end. Events after the transaction was
        decided change nothing."""
        now = time.time()
        mac = None if id_token is None else self.token_mac(id_token)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO transactions (charger_id, transaction_id, status, evse_id,"
                " started_at) VALUES (?, ?, 'open', ?, ?) ON CONFLICT DO NOTHING",
                (charger_id, transaction_id, evse_id, now),
            )
            row = self._transaction_row(charger_id, transaction_id)
            if row.status in ("open", "ended"):
                if mac is not None and row.token_mac is None:
                    db.execute(
                        "UPDATE transactions SET token_mac = ? WHERE charger_id = ? AND"
                        " transaction_id = ?",
                        (mac, charger_id, transaction_id),
                    )
                position = db.execute(
                    "SELECT coalesce(max(position), 0) FROM ocmf_records WHERE charger_id = ?"
                    " AND transaction_id = ?",
                    (charger_id, transaction_id),
                ).fetchone()[0]
                for raw, public_key in ocmf:
                    position += 1
                    db.execute(
                        "INSERT INTO ocmf_records (charger_id, transaction_id, position, raw,"
                        " public_key, received_at) VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (charger_id, transaction_id, position, raw, public_key or None, now),
                    )
                if ended and row.status == "open":
                    db.execute(
                        "UPDATE transactions SET status = 'ended', ended_at = ? WHERE"
                        " charger_id = ? AND transaction_id = ?",
                        (now, charger_id, transaction_id),
                    )
            return self._transaction_row(charger_id, transaction_id)

    def open_transaction(self, charger_id: str, evse_id: int | None) -> str | None:
        """The latest open transaction of the charger on ``evse_id`` (any EVSE if None)."""
        row = self._db.execute(
            "SELECT transaction_id FROM transactions WHERE charger_id = ? AND status = 'open'"
            " AND (? IS NULL OR evse_id IS NULL OR evse_id = ?)"
            " ORDER BY started_at DESC LIMIT 1",
            (charger_id, evse_id, evse_id),
        ).fetchone()
        return None if row is None else str(row[0])

    def _transaction_row(self, charger_id: str, transaction_id: str) -> TransactionRow:
        row = self._db.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE charger_id = ? AND transaction_id = ?",
            (charger_id, transaction_id),
        ).fetchone()
        if row is None:
            raise GatewayError(f"no transaction {transaction_id} of {charger_id}", "not_found")
        return TransactionRow(*row)

    def transaction(self, charger_id: str, transaction_id: str) -> TransactionRow:
        return self._transaction_row(charger_id, transaction_id)

    def transactions(self, status: str | None = None) -> list[TransactionRow]:
        rows = self._db.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE ? IS NULL OR status = ?"
            " ORDER BY started_at, charger_id, transaction_id",
            (status, status),
        ).fetchall()
        return [TransactionRow(*r) for r in rows]

    def ocmf_records(self, charger_id: str, transaction_id: str) -> list[StoredOcmf]:
        rows = self._db.execute(
            "SELECT position, raw, public_key FROM ocmf_records WHERE charger_id = ? AND"
            " transaction_id = ? ORDER BY position",
            (charger_id, transaction_id),
        ).fetchall()
        return [StoredOcmf(*r) for r in rows]

    def last_page(self, meter_serial: str) -> int | None:
        row = self._db.execute(
            "SELECT last_page FROM meter_pages WHERE meter_serial = ?", (meter_serial,)
        ).fetchone()
        return None if row is None else int(row[0])

    def mark_recorded(
        self,
        row: TransactionRow,
        sequence: int,
        meter_serial: str | None,
        last_page: int | None,
        payment: tuple[str, str | None] | None = None,
    ) -> None:
        """The transaction is record ``sequence``; ``payment``: the outcome of its offer
        (``paid``/``unpaid`` and the reason), in the same transaction."""
        with self._transaction() as db:
            if payment is not None:
                db.execute(
                    "UPDATE payments SET outcome = ?, outcome_reason = ? WHERE charger_id = ?"
                    " AND transaction_id = ?",
                    (*payment, row.charger_id, row.transaction_id),
                )
            db.execute(
                "UPDATE transactions SET status = 'recorded', record_sequence = ?, decided_at = ?"
                " WHERE charger_id = ? AND transaction_id = ?",
                (sequence, time.time(), row.charger_id, row.transaction_id),
            )
            if meter_serial is not None and last_page is not None:
                db.execute(
                    "INSERT INTO meter_pages VALUES (?, ?) ON CONFLICT (meter_serial)"
                    " DO UPDATE SET last_page = max(last_page, excluded.last_page)",
                    (meter_serial, last_page),
                )

    def mark_faulted(
        self, row: TransactionRow, reason: str, message: str, record: int | None
    ) -> None:
        with self._transaction() as db:
            # No record, nothing to pay: the user's authorisation is never used.
            db.execute(
                "UPDATE payments SET outcome = 'unpaid', outcome_reason = 'transaction_faulted'"
                " WHERE charger_id = ? AND transaction_id = ?",
                (row.charger_id, row.transaction_id),
            )
            db.execute(
                "UPDATE transactions SET status = 'faulted', fault_reason = ?, fault_message = ?,"
                " fault_record = ?, decided_at = ? WHERE charger_id = ? AND transaction_id = ?",
                (reason, message, record, time.time(), row.charger_id, row.transaction_id),
            )

    # --- payments (charge offers) -----------------------------------------------------------

    def add_offer(self, charger_id: str, transaction_id: str, offer: dict[str, Any]) -> bool:
        """Keeps the transaction's charge offer (False if it already has one: kept as it was)."""
        with self._transaction() as db:
            return (
                db.execute(
                    "INSERT INTO payments (charger_id, transaction_id, offer, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (charger_id, transaction_id, json.dumps(offer), time.time()),
                ).rowcount
                == 1
            )

    def payment(self, charger_id: str, transaction_id: str) -> PaymentRow | None:
        row = self._db.execute(
            f"SELECT {_PAY_COLUMNS} FROM payments WHERE charger_id = ? AND transaction_id = ?",
            (charger_id, transaction_id),
        ).fetchone()
        return None if row is None else _payment_row(row)

    def payments(self) -> list[PaymentRow]:
        """Every offer, oldest first."""
        rows = self._db.execute(
            f"SELECT {_PAY_COLUMNS} FROM payments ORDER BY created_at, charger_id, transaction_id"
        ).fetchall()
        return [_payment_row(r) for r in rows]

    def offer_registered(self, charger_id: str, transaction_id: str) -> None:
        self._db.execute(
            "UPDATE payments SET registered_at = ? WHERE charger_id = ? AND transaction_id = ?"
            " AND registered_at IS NULL",
            (time.time(), charger_id, transaction_id),
        )

    def authorization_collected(
        self,
        charger_id: str,
        transaction_id: str,
        *,
        authorization: dict[str, Any] | None = None,
        refused: tuple[str, str] | None = None,
    ) -> None:
        """What the backend relayed for the offer: the authorisation (checked on the offer), or
        the code and message of why it does not answer it. Kept once: the relay itself keeps
        only the first answer to an offer."""
        code, message = refused if refused is not None else (None, None)
        self._db.execute(
            "UPDATE payments SET authorization = ?, refused_code = ?, refused_message = ?,"
            " collected_at = ? WHERE charger_id = ? AND transaction_id = ? AND outcome IS NULL"
            " AND authorization IS NULL AND refused_code IS NULL",
            (
                None if authorization is None else json.dumps(authorization),
                code,
                message,
                time.time(),
                charger_id,
                transaction_id,
            ),
        )
