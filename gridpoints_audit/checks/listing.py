"""The published list is exactly the epoch: leaf indexes 0..recordCount-1, each once, and as
many records as the chain's recordCount."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridpoints_audit.findings import Discrepancy, Kind


def published_leaf(item: Any) -> int | None:
    """The leaf index a published record claims (None: none, or not an integer)."""
    leaf = item.get("leafIndex") if isinstance(item, Mapping) else None
    return leaf if type(leaf) is int else None


class PublishedList:
    """Follows an epoch's published records in the order the source lists them."""

    def __init__(self, epoch_id: int, record_count: int) -> None:
        self.epoch_id = epoch_id
        self.record_count = record_count  # anchored
        self.published = 0  # records listed so far
        self.placed = 0  # records at a leaf position of their own
        self.expected_leaf = 0

    def place(self, leaf: int | None) -> list[Discrepancy]:
        """The next published record, at `leaf`."""
        e = self.epoch_id
        self.published += 1
        if leaf is None or leaf < self.expected_leaf or leaf >= self.record_count:
            # Repeated, out of order, beyond the epoch, or unnumbered: it takes no leaf of the
            # anchored tree.
            return [
                Discrepancy(
                    Kind.LEAF_INDEX_MISMATCH,
                    f"record number {self.published} of epoch {e} is published at leaf "
                    f"{leaf}, expected {self.expected_leaf} (the epoch has "
                    f"{self.record_count} leaves)",
                    epoch_id=e,
                    leaf_index=leaf,
                    expected=self.expected_leaf,
                    found=leaf,
                )
            ]
        out = self._missing(leaf)
        self.expected_leaf = leaf + 1
        self.placed += 1
        return out

    def complete(self) -> list[Discrepancy]:
        """Once the whole list was read: the leaves after the last one published, and the
        count against the anchored recordCount."""
        e = self.epoch_id
        out = self._missing(self.record_count)
        if self.placed != self.record_count or self.published != self.record_count:
            out.append(
                Discrepancy(
                    Kind.RECORD_COUNT_MISMATCH,
                    f"epoch {e} anchors {self.record_count} records; the source publishes "
                    f"{self.placed} at distinct leaves ({self.published} in all)",
                    epoch_id=e,
                    expected=self.record_count,
                    found=self.placed,
                    details={"published": self.published},
                )
            )
        return out

    def _missing(self, before: int) -> list[Discrepancy]:
        """The leaves from the next expected one up to `before`, none of them published."""
        return [
            Discrepancy(
                Kind.RECORD_MISSING,
                f"leaf {missing} of epoch {self.epoch_id} is not in the published list",
                epoch_id=self.epoch_id,
                leaf_index=missing,
                expected=f"a record at leaf {missing}",
                found="none",
            )
            for missing in range(self.expected_leaf, before)
        ]
