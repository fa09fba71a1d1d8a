"""The payment chunk size is capped so that a chunk's gas limit fits a block (issue 16 item 9).

The settlement worker asks, per payment, the estimate plus 25 % plus WALLET_CHECK_MIN_GASLEFT
(111,587) for a wallet that appears after the estimate; when every payment's wallet burns its
gas at the estimate that is at most ~316,000 gas per payment (`scripts/gas_report.py`, note f;
~306,000 before the chunk's plan proof of issue 16 item 5), so 63 payments ask ~19.9 M gas,
within two thirds of a 30 M block. 1,000 (the old cap) asked ~306 M, more than ten blocks: such
a chunk could never be mined and settlement would stall."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.settings import Settings


def test_the_payment_chunk_size_is_capped_to_what_fits_a_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDPOINTS_PAYMENT_CHUNK_SIZE", "63")
    assert Settings().payment_chunk_size == 63
    for refused in ("64", "1000", "0"):
        monkeypatch.setenv("GRIDPOINTS_PAYMENT_CHUNK_SIZE", refused)
        with pytest.raises(ValidationError, match="payment_chunk_size"):
            Settings()
    monkeypatch.delenv("GRIDPOINTS_PAYMENT_CHUNK_SIZE")
    assert Settings().payment_chunk_size == 50
