"""Families of hostile records: signature edge cases, changed fields, wrong types, broken
payments, impostors, equivocations, and the valid records interleaved with them."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from gridpoints_dev.fuzz.base import GeneratorBase
from gridpoints_dev.fuzz.cases import (
    HEX_FIELDS,
    INT_FIELDS,
    Expect,
    FuzzCase,
    Item,
    StationState,
)
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.ocmf.evidence import (
    EVIDENCE_KEY,
    MAX_EVIDENCE_BYTES,
    MAX_EVIDENCE_RECORDS,
    evidence_digest,
)
from gridpoints_protocol.record import SECP256K1_N, EnergyTransfer


class RecordFamilies(GeneratorBase):
    """The families that build records (valid ones and hostile ones)."""

    # -- families --------------------------------------------------------------------------------

    def valid_single(self) -> FuzzCase:
        item = self.valid_item(paid=False)
        case = self.single("valid_single", item.body, Expect.VALID)
        case.items = [item]
        return case

    def valid_paid_single(self) -> FuzzCase:
        item = self.valid_item(paid=True)
        case = self.single("valid_paid_single", item.body, Expect.VALID)
        case.items = [item]
        return case

    def batch_mixed(self) -> FuzzCase:
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(1, 40)):
            if self.rng.random() < 0.5:
                v = self.valid_item()
                entries.append((v.body, v))
            else:
                body, expect = self.invalid_body()
                entries.append((body, Item(expect)))
        return self.batch("batch_mixed", entries)

    def _signature_edge_body(self) -> tuple[Any, Expect]:
        station, record = self.decoy_record()
        body = self._signed(station, record)
        sig = bytes.fromhex(body["signature"][2:])
        r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        n = SECP256K1_N
        rng = self.rng

        def pack(r_: int, s_: int, v_: int) -> str:
            return "0x" + r_.to_bytes(32, "big").hex() + s_.to_bytes(32, "big").hex() + f"{v_:02x}"

        choice = rng.randrange(16)
        if choice == 0:  # high s: the malleable twin of a valid signature
            text = pack(r, n - s, 55 - v)
        elif choice == 1:
            text = pack(r, s, rng.choice((0, 1)))
        elif choice == 2:
            text = pack(r, s, rng.choice((29, 35, 36, 37, 38, 255, 2, 26)))
        elif choice == 3:  # the other parity: recovers another key
            text = pack(r, s, 55 - v)
        elif choice == 4:
            text = pack(0, s, v)
        elif choice == 5:
            text = pack(r, 0, v)
        elif choice == 6:
            text = pack(n + rng.choice((0, 1, 2**40)) if rng.random() < 0.7 else 2**256 - 1, s, v)
        elif choice == 7:
            text = pack(r, rng.choice((n, n + 1, 2**256 - 1, n // 2 + 1)), v)
        elif choice == 8:
            text = "0x" + sig.hex()[: rng.choice((0, 2, 64, 128, 129))]
        elif choice == 9:
            text = "0x" + sig.hex() + rng.choice(("00", "1b", "0", "ff" * 32))
        elif choice == 10:
            text = sig.hex()  # no 0x
        elif choice == 11:
            text = "0x" + sig.hex()[:-4] + rng.choice(("zz", "gg", "  ", "\u0661\u0662", "0\x00"))
        elif choice == 12:
            text = "0x" + "0" * 130
        elif choice == 13:
            text = "0x" + "ff" * 65
        elif choice == 14:  # the signature of another record
            other_station, other = self.decoy_record()
            text = self._signed(other_station, other)["signature"]
        else:
            body["signature"] = rng.choice((None, 0, 27, [], {}, True, sig.hex().encode().hex()))
            return body, Expect.INVALID
        body["signature"] = text
        return body, Expect.INVALID

    def signature_edge(self) -> FuzzCase:
        body, expect = self._signature_edge_body()
        return self._with_valid("signature_edge", body, expect)

    def _field_mutation_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record with one field changed to another value after signing."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        wire = body["record"]
        rng = self.rng
        name = rng.choice(INT_FIELDS + HEX_FIELDS)
        old = wire[name]
        if name in INT_FIELDS:
            new: Any = rng.choice(
                (
                    old + 1,
                    old - 1,
                    0,
                    -1,
                    2**64 - 1,
                    2**64,
                    2**63,
                    -(2**63) - 1,
                    10**30,
                    3,
                    old * 2,
                )
            )
            if new == old:
                new = old + 7
        else:
            size = len(old) - 2
            new = "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(size))
            if new.lower() == old.lower():
                new = "0x" + ("1" if old[2] != "1" else "2") + old[3:]
        wire[name] = new
        return body, Expect.INVALID

    def field_mutation(self) -> FuzzCase:
        body, expect = self._field_mutation_body()
        return self._with_valid("field_mutation", body, expect)

    _WEIRD_VALUES: Final[tuple[Any, ...]] = (
        None,
        True,
        False,
        [],
        {},
        "",
        " ",
        "0x",
        "NaN",
        "Infinity",
        "-0",
        "1e3",
        "0x10",
        "+5",
        " 5",
        "\u0665",
        "\uff15",
        "1_000",
        "٣",
        "\ud800",
        "\udfff",
        "a\x00b",
        "\ufeff1",
        1.5,
        -0.0,
        1e308,
        -1e308,
        2**64,
        -(2**64),
        10**400,
        [1, 2],
        {"$gt": 0},
        "x" * 10_000,
    )

    def _type_confusion_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record with one field of the wrong type or out of every range."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        rng = self.rng
        where = rng.random()
        if where < 0.8:
            name = rng.choice((*INT_FIELDS, *HEX_FIELDS))
            body["record"][name] = rng.choice(self._WEIRD_VALUES)
        elif where < 0.9:
            del body["record"][rng.choice((*INT_FIELDS, *HEX_FIELDS))]
        else:
            body[rng.choice(("record", "signature"))] = rng.choice(self._WEIRD_VALUES)
        return body, Expect.INVALID

    def type_confusion(self) -> FuzzCase:
        body, expect = self._type_confusion_body()
        return self._with_valid("type_confusion", body, expect)

    def _payment_hostile_body(self) -> tuple[Any, Expect]:
        """A decoy's charge paid with an authorisation that breaks one rule."""
        rng = self.rng
        state = rng.choice(self.decoys)
        user = rng.choice(self.users)
        end = self.t0 + state.next_sequence * self.slot_s
        kind = rng.randrange(12)
        changes: dict[str, Any] = {}
        if kind == 0:
            changes["deadline"] = end - rng.randint(1, 10**6)  # expired before the record's end
        elif kind == 1:
            changes["station"] = rng.choice(self.valid).station.station_id  # another station
        elif kind == 2:
            changes["user"] = rng.choice([u for u in self.users if u is not user]).address
        station_id = changes.pop("station", state.station.station_id)
        payment = self._authorization(user, station_id, end, **changes)
        link = payment.link(self.target.settlement_domain)
        direction = 2 if kind == 3 else 1  # a discharge cannot be paid
        commit = keccak256(link) if kind == 4 else link  # commits to another authorisation
        # kind 2: the record's user is not the one the authorisation names
        record = self._record(state, direction=direction, user=user.address, commit=commit)
        body = self._signed(state.station, record)
        pay = payment.to_json()
        if kind <= 4:
            body["payment"] = pay
        elif kind == 5:
            pass  # no payment at all though the record commits to one
        elif kind == 6:
            body["payment"] = pay
            body["record"]["paymentAuthorization"] = "0x" + "00" * 32  # spoils the signature too
        elif kind == 7:  # signed by someone else
            other = rng.choice([u for u in self.users if u is not user])
            sig = other.sign(payment.signed.digest(self.target.settlement_domain))
            body["payment"] = {**pay, "signature": "0x" + sig.hex()}
        elif kind == 8:  # out-of-range numbers in the authorisation
            auth = dict(pay["authorization"])
            name = rng.choice(("maxPoints", "nonce", "deadline"))
            new = rng.choice((0, -1, 2**128, 2**256, 2**64, 1.5, "1e3", None, "0x1", "-0"))
            auth[name] = new if new != auth[name] else -1
            body["payment"] = {**pay, "authorization": auth}
        elif kind == 9:  # high-s / bad v authorisation signature
            sig = bytes.fromhex(pay["signature"][2:])
            s = int.from_bytes(sig[32:64], "big")
            bad = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
            if rng.random() < 0.5:
                bad = sig[:64] + bytes([rng.choice((0, 1, 29, 255))])
            body["payment"] = {**pay, "signature": "0x" + bad.hex()}
        elif kind == 10:  # shape: unknown keys, missing keys, wrong types
            body["payment"] = rng.choice(
                (
                    {**pay, "extra": 1},
                    {"authorization": pay["authorization"]},
                    [pay],
                    "0x" + "00" * 65,
                    None,
                    {**pay, "authorization": {**pay["authorization"], "evil": True}},
                )
            )
        else:
            # A valid authorisation already used by a valid record: a replay on a decoy.
            paid = [b for _, r, b in self.sent_valid if "payment" in b]
            body["payment"] = rng.choice(paid)["payment"] if paid else pay
            if not paid:
                body["record"]["paymentAuthorization"] = "0x" + "11" * 32
        return body, Expect.INVALID

    def payment_hostile(self) -> FuzzCase:
        body, expect = self._payment_hostile_body()
        return self._with_valid("payment_hostile", body, expect)

    def impostor(self) -> FuzzCase:
        """A valid station's *next* sequence signed by another key, right before the real one."""
        state = self.rng.choice(self.valid)
        sequence = state.next_sequence
        real = self.valid_item_for(state)
        forged_record = EnergyTransfer.from_json(real.body["record"])
        assert forged_record.sequence == sequence
        if self.rng.random() < 0.5:  # a different content too
            forged_record = dataclasses.replace(
                forged_record,
                energy_wh=forged_record.energy_wh + 1,
                meter_after_wh=forged_record.meter_after_wh + 1,
            )
        forger = self.rng.choice(self.decoys).station
        forged = self._signed(forger, forged_record)
        return self.batch("impostor", [(forged, Item(Expect.INVALID)), (real.body, real)])

    def valid_item_for(self, state: StationState) -> Item:
        record = self._record(state, direction=2)
        body = self._signed(state.station, record)
        self.sent_valid.append((state.station, record, body))
        self.order += 1
        return Item(Expect.VALID, record.digest(self.target.domain), body, self.order)

    def equivocation(self) -> FuzzCase:
        """A second, validly signed content for a sequence a valid record was sent with."""
        if not self.sent_valid:
            return self.valid_single()
        station, record, body = self.rng.choice(self.sent_valid)
        changed = dataclasses.replace(record, start_time=record.start_time - 1)
        evil = self._signed(station, changed)
        if "payment" in body:
            evil["payment"] = body["payment"]
        # The original goes first: it is VALID (a duplicate by now, or accepted here).
        original = Item(Expect.VALID, record.digest(self.target.domain), body, 0)
        return self.batch(
            "equivocation", [(body, original), (evil, Item(Expect.INVALID))], well_formed=True
        )

    def _opening_hostile_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record whose user opening (wallet, salt) is wrong, missing or
        misshapen: it must not open the record's userCommitment."""
        rng = self.rng
        station, record = self.decoy_record()
        body = self._signed(station, record)
        opening = dict(body["opening"])
        others = [u.checksum_address for u in self.users if u.checksum_address != opening["user"]]
        kind = rng.randrange(10)
        if kind == 0:  # another salt
            body["opening"] = {**opening, "salt": "0x" + rng.randbytes(32).hex()}
        elif kind == 1:  # another wallet (the attribution a misbehaving station might try)
            body["opening"] = {**opening, "user": rng.choice(others)}
        elif kind == 2:
            del body["opening"]
        elif kind == 3:
            body["opening"] = rng.choice((None, [], {}, "", opening["salt"], [opening], 0))
        elif kind == 4:
            body["opening"] = {**opening, rng.choice(("wallet", "extra", "Salt")): opening["salt"]}
        elif kind == 5:  # a salt of the wrong length or spelling
            salt = opening["salt"]
            body["opening"] = {
                **opening,
                "salt": rng.choice(
                    (salt[:-2], salt + "00", salt[2:], "0X" + salt[2:], salt[:-1] + "g", 32)
                ),
            }
        elif kind == 6:  # a wallet of the wrong length or kind
            user = opening["user"]
            body["opening"] = {
                **opening,
                "user": rng.choice((user[:-2], user + "00", user[2:], "0x", None, 1)),
            }
        elif kind == 7:  # the opening of another record (a valid one already sent)
            openings = [b["opening"] for _, _, b in self.sent_valid if "opening" in b]
            body["opening"] = (
                rng.choice(openings) if openings else {**opening, "salt": "0x" + "00" * 32}
            )
        elif kind == 8:  # salt and wallet swapped into each other's places
            body["opening"] = {"user": opening["salt"], "salt": opening["user"]}
        else:  # a signed commitment that is not the hash of the opening sent with it
            other = dataclasses.replace(record, user_commitment=keccak256(rng.randbytes(32)))
            body = {**self._signed(station, other), "opening": opening}
        return body, Expect.INVALID

    def opening_hostile(self) -> FuzzCase:
        body, expect = self._opening_hostile_body()
        return self._with_valid("opening_hostile", body, expect)

    def _evidence_hostile_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record with meter evidence that does not belong: evidence for a
        record that binds none, a record that binds evidence it does not carry, misshapen or
        oversized evidence, and OCMF text that does not parse."""
        rng = self.rng
        station, record = self.decoy_record()
        ocmf = [f'OCMF|{{}}|{{"SA":"{rng.randbytes(8).hex()}"}}']
        kind = rng.randrange(5)
        if kind == 0:  # evidence sent, but the record binds none (meterEvidence zero)
            body = self._signed(station, record)
            body["evidence"] = {EVIDENCE_KEY: ocmf}
            return body, Expect.INVALID
        if kind == 1:  # the record binds evidence, the submission carries none
            bound = dataclasses.replace(record, meter_evidence=rng.randbytes(32))
            return self._signed(station, bound), Expect.INVALID
        shapes: tuple[Any, ...] = (
            None,
            [],
            {},
            ocmf,
            ocmf[0],
            {EVIDENCE_KEY: 5},
            {EVIDENCE_KEY: []},
            {EVIDENCE_KEY: [None]},
            {EVIDENCE_KEY: [1, 2]},
            {EVIDENCE_KEY: ocmf, "extra": True},
            {EVIDENCE_KEY.upper(): ocmf},
            {EVIDENCE_KEY: ocmf * (MAX_EVIDENCE_RECORDS + 1)},
            {EVIDENCE_KEY: ["OCMF|{}|{}" + " " * (MAX_EVIDENCE_BYTES + 1)]},
            {EVIDENCE_KEY: ["\ud800"]},
        )
        evidence: Any = rng.choice(shapes) if kind == 2 else {EVIDENCE_KEY: ocmf}
        # kind 3: the digest matches the text, which is no meter's signed OCMF; kind 4: it does
        # not even match.
        payloads = [line.encode() for line in ocmf]
        digest = evidence_digest(payloads) if kind == 3 else rng.randbytes(32)
        bound = dataclasses.replace(record, meter_evidence=digest)
        body = self._signed(station, bound)
        body["evidence"] = evidence
        return body, Expect.INVALID

    def evidence_hostile(self) -> FuzzCase:
        body, expect = self._evidence_hostile_body()
        return self._with_valid("evidence_hostile", body, expect)
