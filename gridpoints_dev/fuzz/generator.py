"""The stream of hostile requests with valid records interleaved (seeded, deterministic)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from gridpoints_dev.fuzz.cases import (
    Expect,
    FuzzCase,
    FuzzTarget,
    Item,
)
from gridpoints_dev.fuzz.encoding_families import EncodingFamilies
from gridpoints_dev.fuzz.record_families import RecordFamilies


class Generator(RecordFamilies, EncodingFamilies):
    """Every family, weighted, in one seeded stream."""

    def __init__(self, target: FuzzTarget, seed: int, expected_cases: int) -> None:
        super().__init__(target, seed, expected_cases)
        self.families: list[tuple[str, int, Callable[[], FuzzCase]]] = [
            ("valid_single", 10, self.valid_single),
            ("valid_paid_single", 3, self.valid_paid_single),
            ("batch_mixed", 8, self.batch_mixed),
            ("signature_edge", 10, self.signature_edge),
            ("field_mutation", 10, self.field_mutation),
            ("type_confusion", 8, self.type_confusion),
            ("payment_hostile", 6, self.payment_hostile),
            ("opening_hostile", 5, self.opening_hostile),
            ("evidence_hostile", 4, self.evidence_hostile),
            ("impostor", 3, self.impostor),
            ("equivocation", 2, self.equivocation),
            ("unicode_tricks", 6, self.unicode_tricks),
            ("bytes_tricks", 5, self.bytes_tricks),
            ("structure_tricks", 5, self.structure_tricks),
            ("batch_request_level", 4, self.batch_request_level),
            ("content_type", 3, self.content_type),
            ("chunked", 2, self.chunked),
            ("domain_headers", 3, self.domain_headers),
            ("spelling", 3, self.spelling),
            ("read_tricks", 6, self.read_tricks),
        ]
        self._weights = [w for _, w, _ in self.families]

    def invalid_body(self) -> tuple[Any, Expect]:
        """A hostile record body (one of the families' items), for batches."""
        maker = self.rng.choice(
            (
                self._signature_edge_body,
                self._field_mutation_body,
                self._type_confusion_body,
                self._payment_hostile_body,
                self._opening_hostile_body,
                self._evidence_hostile_body,
                self._garbage_value,
            )
        )
        return maker()

    # -- the stream ------------------------------------------------------------------------------

    def cases(self, count: int) -> Iterator[FuzzCase]:
        for _ in range(count):
            if self.pending_valid and self.rng.random() < 0.5:
                v = self.pending_valid.pop(0)
                case = self.single("valid_single", v.body, Expect.VALID)
                case.items = [v]
                yield case
                continue
            (_name, _w, make) = self.rng.choices(self.families, weights=self._weights)[0]
            yield make()
        # Whatever is still pending is sent by the final resend.

    def leftover(self) -> list[Item]:
        return list(self.pending_valid)
