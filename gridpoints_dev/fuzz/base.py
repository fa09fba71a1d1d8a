"""The generator's state and the helpers its families share: consistent records of registered
stations, signed bodies, payment authorisations, single and batch requests."""

from __future__ import annotations

import random
from typing import Any

from gridpoints_dev.fuzz.cases import (
    MAX_POWER_W,
    WINDOW_S,
    Expect,
    FuzzCase,
    FuzzStation,
    FuzzTarget,
    Item,
    StationState,
    dumps,
    make_stations,
)
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    PaymentOpening,
    SignedAuthorization,
)
from gridpoints_protocol.commitment import UserOpening, charge_commitment
from gridpoints_protocol.record import Direction, EnergyTransfer


class GeneratorBase:
    """The generator's state (seeded, deterministic) and what every family uses."""

    def __init__(self, target: FuzzTarget, seed: int, expected_cases: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.valid = [StationState(s) for s in target.stations]
        self.decoys = [StationState(s) for s in target.decoys]
        # One time slot per record of a station; every record ends before `end_before`.
        self.slot_s = max(30, min(600, WINDOW_S // max(1, expected_cases + 10)))
        self.t0 = target.end_before - 60 - self.slot_s * (WINDOW_S // self.slot_s)
        self.max_energy_wh = max(1, self.slot_s * (MAX_POWER_W // 4) // 3_600)
        self.users = make_stations(seed.to_bytes(8, "big", signed=True), "user", 8)
        self.order = 0
        self.nonces: set[int] = set()
        # The opening of every user commitment this run made, sent with its record.
        self.openings: dict[bytes, UserOpening] = {}
        # Signed valid bodies already acknowledged-or-sent, for replays and equivocations.
        self.sent_valid: list[tuple[FuzzStation, EnergyTransfer, dict[str, Any]]] = []
        # Valid records generated inside other cases, to be sent on their own later in the stream.
        self.pending_valid: list[Item] = []

    # -- records ---------------------------------------------------------------------------------

    def _record(
        self,
        state: StationState,
        *,
        direction: int | None = None,
        user: bytes | None = None,
        commit: bytes | None = None,
    ) -> EnergyTransfer:
        rng = self.rng
        direction = direction or rng.choice((1, 2))
        sequence = state.next_sequence
        state.next_sequence += 1
        energy = rng.randint(1, self.max_energy_wh)
        before = state.meters[direction] + rng.choice((0, 0, 0, rng.randint(1, 5_000)))
        state.meters[direction] = before + energy
        end = self.t0 + sequence * self.slot_s
        if end >= self.target.end_before:
            raise RuntimeError("more records for one station than time slots: raise WINDOW_S")
        # A salt from the run's generator keeps the stream deterministic per seed.
        opening = UserOpening(
            user if user is not None else rng.choice(self.users).address,
            bytes(rng.getrandbits(8) for _ in range(31)) + b"\x01",
        )
        self.openings[opening.commitment] = opening
        return EnergyTransfer(
            station_id=state.station.station_id,
            sequence=sequence,
            user_commitment=opening.commitment,
            direction=Direction(direction),
            energy_wh=energy,
            meter_before_wh=before,
            meter_after_wh=before + energy,
            start_time=end - self.slot_s + rng.randint(0, self.slot_s // 2),
            end_time=end,
            **({} if commit is None else {"payment_authorization": commit}),
        )

    def _signed(self, station: FuzzStation, record: EnergyTransfer) -> dict[str, Any]:
        signature = station.sign(record.digest(self.target.domain))
        body: dict[str, Any] = {"record": record.to_json(), "signature": "0x" + signature.hex()}
        opening = self.openings.get(record.user_commitment)
        if opening is not None:
            body["opening"] = opening.to_json()
        return body

    def _nonce(self) -> int:
        """A nonce never drawn before in this run: small, 64-bit or 256-bit. Only the replay
        case reuses one on purpose."""
        while True:
            nonce = self.rng.getrandbits(self.rng.choice((10, 64, 256)))
            if nonce not in self.nonces:
                self.nonces.add(nonce)
                return nonce

    def _authorization(
        self, wallet: FuzzStation, station_id: bytes, end_time: int, **changes: Any
    ) -> PaymentOpening:
        """Signed by `wallet`, committing to `station_id` under a fresh salt; `changes` override
        fields (a forgery when they change the user)."""
        salt = self.rng.randbytes(32)
        values: dict[str, Any] = {
            "user": wallet.address,
            "charge_commitment": charge_commitment(station_id, salt),
            "max_points": self.rng.randint(1, 10_000),
            "nonce": self._nonce(),
            "deadline": end_time + self.rng.randint(0, 10 * 86_400),
        }
        values.update(changes)
        authorization = PaymentAuthorization(**values)
        digest = authorization.digest(self.target.settlement_domain)
        return PaymentOpening(SignedAuthorization(authorization, wallet.sign(digest)), salt)

    def valid_item(self, *, paid: bool | None = None) -> Item:
        """The next valid record of a random valid station (paid for with points, sometimes)."""
        state = self.rng.choice(self.valid)
        if paid is None:
            paid = self.rng.random() < 0.2
        if paid:
            user = self.rng.choice(self.users)
            end = self.t0 + state.next_sequence * self.slot_s
            payment = self._authorization(user, state.station.station_id, end)
            record = self._record(
                state,
                direction=1,
                user=user.address,
                commit=payment.link(self.target.settlement_domain),
            )
            body = self._signed(state.station, record)
            body["payment"] = payment.to_json()
        else:
            record = self._record(state)
            body = self._signed(state.station, record)
        self.sent_valid.append((state.station, record, body))
        self.order += 1
        return Item(Expect.VALID, record.digest(self.target.domain), body, self.order)

    def decoy_record(self, **kwargs: Any) -> tuple[FuzzStation, EnergyTransfer]:
        """A consistent next record of a decoy station (valid until a case spoils it)."""
        state = self.rng.choice(self.decoys)
        return state.station, self._record(state, **kwargs)

    def invalid_body(self) -> tuple[Any, Expect]:
        """A hostile record body of one of the families, for batches (the `Generator` picks)."""
        raise NotImplementedError

    # -- case helpers ----------------------------------------------------------------------------

    def single(self, family: str, body: Any, expect: Expect, **kwargs: Any) -> FuzzCase:
        content = body if isinstance(body, bytes) else dumps(body)
        return FuzzCase(
            family,
            "POST",
            "/v1/records",
            content=content,
            headers={"content-type": "application/json"},
            items=[Item(expect)],
            **kwargs,
        )

    def batch(self, family: str, items: list[tuple[Any, Item]], **kwargs: Any) -> FuzzCase:
        content = b"[" + b",".join(b if isinstance(b, bytes) else dumps(b) for b, _ in items) + b"]"
        return FuzzCase(
            family,
            "POST",
            "/v1/records/batch",
            content=content,
            headers={"content-type": "application/json"},
            items=[item for _, item in items],
            batch=True,
            **kwargs,
        )

    def _with_valid(self, family: str, body: Any, expect: Expect) -> FuzzCase:
        """The hostile body alone, or in a batch between valid records."""
        if self.rng.random() < 0.5:
            return self.single(family, body, expect)
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(0, 3)):
            v = self.valid_item()
            entries.append((v.body, v))
        entries.append((body, Item(expect)))
        for _ in range(self.rng.randint(0, 3)):
            v = self.valid_item()
            entries.append((v.body, v))
        return self.batch(family, entries)
