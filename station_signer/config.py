"""The station directory's ``station.json`` (`StationConfig`): station id, deployment (chain id and
StationRegistry), and where the key is (a PKCS#11 token or a development key file). It holds no
secret: PINs and passwords come from the environment or a file when the key is opened.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from gridpoints_files import write_atomically
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.record import (
    Domain,
)
from station_signer.errors import StationError
from station_signer.transfer import parse_bytes32

if TYPE_CHECKING:
    pass

CONFIG_FILE: Final = "station.json"
STORE_FILE: Final = "station.sqlite"
DEV_KEY_FILE: Final = "dev-key.json"
CONFIG_SCHEMA_VERSION: Final = 1
DEFAULT_TOKEN_LABEL: Final = "gridpoints-station"
DEFAULT_KEY_LABEL: Final = "gridpoints-station"
SOFTHSM_SO_PIN_ENV: Final = "GRIDPOINTS_SOFTHSM_SO_PIN"


# ---- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pkcs11KeyConfig:
    """A key in a PKCS#11 token. ``softhsm_conf`` is set when the token is a SoftHSM2 directory
    that ``init`` created; it is exported as ``SOFTHSM2_CONF`` before the module is loaded."""

    module: str
    token_label: str
    key_label: str
    softhsm_conf: str | None = None
    kind: Literal["pkcs11"] = "pkcs11"


@dataclass(frozen=True, slots=True)
class DevKeyConfig:
    """A development key file (relative paths are relative to the station directory)."""

    path: str
    kind: Literal["devkey"] = "devkey"


KeyConfig = Pkcs11KeyConfig | DevKeyConfig


def _key_from_json(data: Any) -> KeyConfig:
    if not isinstance(data, Mapping):
        raise StationError("station.json: signer must be an object", "config")
    kind = data.get("kind")
    try:
        if kind == "pkcs11":
            conf = data.get("softhsm_conf")
            return Pkcs11KeyConfig(
                module=str(data["module"]),
                token_label=str(data["token_label"]),
                key_label=str(data["key_label"]),
                softhsm_conf=None if conf is None else str(conf),
            )
        if kind == "devkey":
            return DevKeyConfig(path=str(data["path"]))
    except KeyError as exc:
        raise StationError(f"station.json: signer lacks {exc}", "config") from None
    raise StationError(f"station.json: unknown signer kind {kind!r}", "config")


@dataclass(frozen=True, slots=True)
class StationConfig:
    """``station.json`` of a station directory."""

    station_id: bytes
    address: str
    chain_id: int
    registry: str  # EIP-55
    key: KeyConfig
    created_at: str

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, parse_address(self.registry))

    def to_json(self) -> dict[str, Any]:
        key: dict[str, Any]
        if isinstance(self.key, Pkcs11KeyConfig):
            key = {
                "kind": "pkcs11",
                "module": self.key.module,
                "token_label": self.key.token_label,
                "key_label": self.key.key_label,
                "softhsm_conf": self.key.softhsm_conf,
            }
        else:
            key = {"kind": "devkey", "path": self.key.path}
        return {
            "schema_version": CONFIG_SCHEMA_VERSION,
            "station_id": "0x" + self.station_id.hex(),
            "address": self.address,
            "chain_id": self.chain_id,
            "registry": self.registry,
            "signer": key,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> StationConfig:
        if not isinstance(data, Mapping):
            raise StationError("station.json does not hold an object", "config")
        if data.get("schema_version") != CONFIG_SCHEMA_VERSION:
            raise StationError(
                f"station.json has schema version {data.get('schema_version')!r}; this version "
                f"reads {CONFIG_SCHEMA_VERSION}",
                "config",
            )
        try:
            config = cls(
                station_id=parse_bytes32(data["station_id"], "station_id"),
                address=to_checksum_address(parse_address(data["address"])),
                chain_id=int(data["chain_id"]),
                registry=to_checksum_address(parse_address(data["registry"])),
                key=_key_from_json(data["signer"]),
                created_at=str(data["created_at"]),
            )
            config.domain  # noqa: B018 - validates chain id and registry together
        except KeyError as exc:
            raise StationError(f"station.json lacks {exc}", "config") from None
        except (TypeError, ValueError) as exc:
            raise StationError(f"station.json is malformed: {exc}", "config") from None
        return config

    def save(self, directory: Path) -> Path:
        """Writes ``station.json`` atomically and durably (it holds no secret)."""
        return write_atomically(
            directory / CONFIG_FILE, json.dumps(self.to_json(), indent=2) + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> StationConfig:
        path = directory / CONFIG_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StationError(
                f"{directory} is not a station directory (no {CONFIG_FILE}); run "
                "`gridpoints-station init` first",
                "not_initialised",
            ) from None
        except OSError as exc:
            raise StationError(f"cannot read {path}: {exc.strerror}", "config") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StationError(f"{path} is not JSON: {exc}", "config") from None
        return cls.from_json(data)
