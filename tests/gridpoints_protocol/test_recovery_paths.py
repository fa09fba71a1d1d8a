"""The direct libsecp256k1 recovery (`record._recover_point`, used by `recover_signer_bytes`)
gives what coincurve's public API gives, and refuses what it refuses."""

from __future__ import annotations

import random

import coincurve
import pytest

from gridpoints_protocol import record


def test_the_direct_path_is_the_one_in_use() -> None:
    assert record._recover_point is not record._recover_point_public


def test_direct_and_public_recovery_agree_on_random_signatures() -> None:
    rng = random.Random(5)
    for _ in range(300):
        key = coincurve.PrivateKey(rng.randbytes(32))
        digest = rng.randbytes(32)
        raw = key.sign_recoverable(digest, hasher=None)
        point = record._recover_point(raw[:64], raw[64], digest)
        assert point == key.public_key.format(compressed=False)[1:]
        assert point == record._recover_point_public(raw[:64], raw[64], digest)
        # Another recovery id recovers another point (or none), on both paths alike.
        other = raw[64] ^ 1
        try:
            public = record._recover_point_public(raw[:64], other, digest)
        except ValueError:
            with pytest.raises(ValueError):
                record._recover_point(raw[:64], other, digest)
        else:
            assert record._recover_point(raw[:64], other, digest) == public != point


@pytest.mark.parametrize(
    ("compact", "recovery_id", "digest"),
    [
        (b"\xff" * 64, 0, b"\x01" * 32),  # r and s beyond the group order: does not parse
        (bytes(64), 0, b"\x01" * 32),  # r = s = 0
        (b"\x01" * 64, 4, b"\x01" * 32),  # recovery id out of range
        (b"\x01" * 63, 0, b"\x01" * 32),  # short signature
        (b"\x01" * 64, 0, b"\x01" * 31),  # short digest
    ],
)
def test_both_paths_refuse_what_cannot_be_recovered(
    compact: bytes, recovery_id: int, digest: bytes
) -> None:
    with pytest.raises(ValueError):
        record._recover_point_public(compact, recovery_id, digest)
    with pytest.raises(ValueError):
        record._recover_point(compact, recovery_id, digest)
