"""The tariff document the source serves for an epoch must hash (keccak-256) to the tariff hash
the epoch anchored, and be a valid canonical tariff: only then does it value the records."""

from __future__ import annotations

from gridpoints_audit.chain_facts import ChainEpoch
from gridpoints_audit.findings import Discrepancy, Kind, as_hex
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.tariff import Tariff, TariffError


def verified_tariff(
    chain_epoch: ChainEpoch, document: bytes | None
) -> tuple[Tariff | None, list[Discrepancy]]:
    """The tariff in `document` (what the source served; None: nothing) when it is the
    anchored one, else None and why."""
    e = chain_epoch.epoch_id
    anchored = as_hex(chain_epoch.tariff_hash)
    if document is None:
        return None, [
            Discrepancy(
                Kind.TARIFF_UNAVAILABLE,
                f"the source has no tariff document for epoch {e}'s anchored hash",
                epoch_id=e,
                expected=anchored,
                found=None,
            )
        ]
    got = "0x" + keccak256(document).hex()
    if got != anchored:
        return None, [
            Discrepancy(
                Kind.TARIFF_HASH_MISMATCH,
                f"the tariff document served for epoch {e} hashes to {got}, not to the "
                f"anchored {anchored}: it is not the tariff that valued the epoch",
                epoch_id=e,
                expected=anchored,
                found=got,
            )
        ]
    try:
        return Tariff.from_canonical_bytes(document), []
    except TariffError as exc:
        return None, [
            Discrepancy(
                Kind.TARIFF_INVALID,
                f"epoch {e}'s anchored tariff document is not a valid canonical tariff: {exc}",
                epoch_id=e,
                expected="canonical gridpoints-tariff/1 JSON",
                found=getattr(exc, "reason", str(exc)),
            )
        ]
