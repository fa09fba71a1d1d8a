"""StationRegistry's meter keys as the OCMF rules need them: the meter events (for the backend's
mirror) and the registry's answer for one meter at one time (for the gateway and the auditor,
who ask the chain itself)."""

from __future__ import annotations

from hexbytes import HexBytes

from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.errors import ContractRevertError
from gridpoints_chain.meter_abi import meter_id
from gridpoints_protocol.keys import LogPosition
from gridpoints_protocol.ocmf.meter_keys import (
    METER_EVENT_KINDS,
    MeterEvent,
    MeterKeyRotated,
    MeterRegistered,
    MeterRevoked,
    p256_der,
)
from gridpoints_protocol.ocmf.session import KeyState, MeterKey


def meter_events(
    chain: GridPointsChain, *, from_block: int | None = None, to_block: int | str = "latest"
) -> list[MeterEvent]:
    """The registry's meter events (MeterRegistered, MeterKeyRotated, MeterRevoked) of every
    station, in chain order."""
    registry = chain.registry
    kinds = {
        bytes(HexBytes(getattr(registry.events, name)().topic)): name for name in METER_EVENT_KINDS
    }
    start = chain.deployment.deployment_block if from_block is None else from_block
    end = chain.w3.eth.block_number if to_block == "latest" else int(to_block)
    if end < start:
        return []
    logs = list(
        chain.w3.eth.get_logs(
            {
                "address": registry.address,
                "fromBlock": start,
                "toBlock": end,
                "topics": [["0x" + t.hex() for t in kinds]],
            }
        )
    )
    logs.sort(key=lambda log: (log["blockNumber"], log["logIndex"]))
    events: list[MeterEvent] = []
    for log in logs:
        name = kinds[bytes(log["topics"][0])]
        args = getattr(registry.events, name)().process_log(log)["args"]
        position = LogPosition(
            block_number=log["blockNumber"],
            log_index=log["logIndex"],
            tx_hash=bytes(log["transactionHash"]),
        )
        sid, mid = bytes(args["stationId"]), bytes(args["meterId"])
        event: MeterEvent
        if name == "MeterRegistered":
            event = MeterRegistered(
                sid,
                mid,
                str(args["serial"]),
                bytes(args["qx"]),
                bytes(args["qy"]),
                int(args["validFrom"]),
                position,
            )
        elif name == "MeterKeyRotated":
            event = MeterKeyRotated(
                sid,
                mid,
                bytes(args["oldQx"]),
                bytes(args["oldQy"]),
                bytes(args["newQx"]),
                bytes(args["newQy"]),
                int(args["rotatedAt"]),
                position,
            )
        else:
            event = MeterRevoked(
                sid, mid, bytes(args["qx"]), bytes(args["qy"]), int(args["revokedAt"]), position
            )
        events.append(event)
    return events


def meter_key_state(
    chain: GridPointsChain, station_id: bytes | str, serial: str, at: int
) -> MeterKey:
    """What StationRegistry says about meter ``serial`` of the station for a signature at
    unix time ``at``, in the terms of the OCMF session rules (the gateway and the auditor
    ask the chain this; the backend asks its mirror of the same events)."""
    meter = meter_id(serial)
    try:
        registered = chain.get_meter(station_id, meter)
    except ContractRevertError as exc:
        if exc.error_name == "UnknownMeter":
            return MeterKey(KeyState.UNREGISTERED)
        raise
    if registered.revoked_at and at >= registered.revoked_at:
        return MeterKey(KeyState.REVOKED)
    key = chain.meter_key_at(station_id, meter, at)
    if key is None:
        return MeterKey(KeyState.NOT_VALID)
    return MeterKey(KeyState.VALID, p256_der(*key))
