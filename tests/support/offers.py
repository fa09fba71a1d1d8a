"""Charge offers in tests: a station directory holding a registered DevStation's key (for the
`gridpoints-station offer` command), and an offer registered by signing it directly."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any
from unittest import mock

from eth_account import Account
from eth_account.signers.local import LocalAccount

from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.offers import ChargeOffer, SignedOffer
from gridpoints_protocol.record import Domain
from station_signer.config import DevKeyConfig
from station_signer.station import init_station
from tests.support.backend import BackendHarness, DevStation

DEV_PASSWORD = "dev-password"
# What the station CLI needs in its environment to open such a directory's key.
STATION_ENV = {"GRIDPOINTS_DEVKEY_PASSWORD": DEV_PASSWORD}


def station_directory(directory: Path, station: DevStation, domain: Domain) -> Path:
    """A station directory (station.json, store, development key file) for `station` holding
    its current key, so that the station CLI signs as the registered station does."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "station-key.json"
    # A cheap KDF: the file only ever holds a throwaway test key.
    keystore = Account.encrypt(station.key.key, DEV_PASSWORD, kdf="pbkdf2", iterations=1_000)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(keystore, out)
    with mock.patch.dict(os.environ, STATION_ENV):
        init_station(
            directory,
            chain_id=domain.chain_id,
            registry=to_checksum_address(domain.verifying_contract),
            key=DevKeyConfig(key_file.name),
            station_id=station.station_id,
        )
    return directory


def signed_offer(
    h: BackendHarness,
    station_id: bytes,
    key: LocalAccount,
    *,
    max_points: int = 5,
    deadline: int | None = None,
    domain: Domain | None = None,
) -> tuple[ChargeOffer, dict[str, Any]]:
    """A fresh offer of `station_id` and its registration body signed by `key`."""
    domain = domain or h.domain
    offer = ChargeOffer(
        secrets.token_bytes(16),
        station_id,
        max_points,
        int(time.time()) + 600 if deadline is None else deadline,
        domain.chain_id,
    )
    signature = bytes(key.unsafe_sign_hash(offer.digest(domain)).signature)
    return offer, SignedOffer(offer, signature).to_json()
