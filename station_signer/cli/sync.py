"""``gridpoints-station sync`` and ``status``: the queue of signed records, sent to the backend
and reported on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridpoints_signers.base import SignerError
from station_signer.cli.common import (
    DEFAULT_DIR,
    DirOption,
    JsonOption,
    PinFileOption,
    emit,
    iso,
    progress_bar,
    read_pin,
)
from station_signer.cli.errors import EXIT_REJECTED, CliError, handled
from station_signer.config import STORE_FILE, StationConfig
from station_signer.errors import StationError
from station_signer.station import open_station
from station_signer.store import RecordStatus, StationStore
from station_signer.sync import DEFAULT_BATCH_SIZE, RetryPolicy, SyncClient

if TYPE_CHECKING:
    from station_signer.store import StationState

app = typer.Typer()


@app.command()
@handled
def sync(
    backend_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL.")
    ],
    directory: DirOption = DEFAULT_DIR,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Records per request.")
    ] = DEFAULT_BATCH_SIZE,
    attempts: Annotated[int, typer.Option(min=1, help="Attempts per request.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 30.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar (default: on a terminal when more than one batch is queued).",
        ),
    ] = None,
    pin_file: PinFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send queued records to the backend; rejected ones are kept with the backend's reason."""
    config = StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        interrupted = bool(store.reserved())
    recovered = 0
    if interrupted:
        # Signings cut short by a crash are finished first; only that needs the key. Without
        # the key the signed queue still goes out; the reserved rows wait.
        try:
            station = open_station(directory, pin=read_pin(pin_file))
        except (SignerError, StationError) as exc:
            typer.echo(
                f"warning: reserved records stay unsigned until the key is available: {exc}",
                err=True,
            )
        else:
            recovered = len(station.recovered)
            station.store.close()
    with StationStore(directory / STORE_FILE) as store:
        state = store.state()
        if state.station_id != config.station_id:
            raise CliError("config", f"{STORE_FILE} is not the store of this station")
        # Deferred records not due yet wait for a later sync: not counted as work for this one.
        queued = store.count_due()
        bar = progress_bar(progress, worth_showing=queued > batch_size, as_json=as_json)
        with (
            bar,
            SyncClient(
                backend_url,
                batch_size=batch_size,
                retry=RetryPolicy(attempts=attempts),
                timeout=timeout,
            ) as client,
        ):
            task = bar.add_task("syncing records", total=queued)
            report = client.sync(store, lambda done, _total: bar.update(task, completed=done))
        after = store.state()
    data = {
        **report.to_json(),
        "recovered": recovered,
        "queueLength": after.queue_length,
        "backendUrl": backend_url,
    }
    lines = [
        f"sent {report.sent} record(s): {report.accepted} accepted, {report.duplicate} already "
        f"there, {report.rejected} rejected, {report.deferred} deferred ({report.requests} "
        f"request(s), {report.retries} retries)"
    ]
    for rejection in report.rejections:
        lines.append(f"  rejected #{rejection.sequence}: {rejection.reason}: {rejection.message}")
    for deferral in report.deferrals:
        lines.append(
            f"  deferred #{deferral.sequence}: {deferral.reason}, kept queued until "
            f"{iso(deferral.retry_at)}: {deferral.message}"
        )
    lines.append(f"queue: {after.queue_length} record(s) left")
    emit(as_json, data, lines)
    if report.rejected:
        if not as_json:
            typer.echo(
                f"warning: the backend rejected {report.rejected} record(s); they are kept "
                "(see `gridpoints-station status`)",
                err=True,
            )
        raise typer.Exit(EXIT_REJECTED)


def _status_data(
    config: StationConfig, state: StationState, rejected: list[Any], deferred: list[Any]
) -> dict[str, Any]:
    return {
        "stationId": "0x" + config.station_id.hex(),
        "address": config.address,
        "chainId": config.chain_id,
        "registry": config.registry,
        "signer": config.key.kind,
        "queueLength": state.queue_length,
        "lastSequence": state.last_sequence,
        "nextSequence": state.next_sequence,
        "meters": {"chargeWh": state.meter_charge_wh, "dischargeWh": state.meter_discharge_wh},
        "counts": {status.value: count for status, count in state.counts.items()},
        "lastError": state.last_error,
        "lastSyncAt": iso(state.last_sync_at),
        "rejected": [
            {"sequence": r.sequence, "reason": r.reject_reason, "message": r.reject_message}
            for r in rejected
        ],
        # Queued records the backend could not judge yet; they are sent again, never dropped.
        "deferred": {
            "count": sum(state.deferred.values()),
            "byReason": state.deferred,
            "nextRetryAt": iso(state.next_retry_at),
            "records": [
                {
                    "sequence": r.sequence,
                    "reason": r.deferral.reason,
                    "message": r.deferral.message,
                    "deferrals": r.deferral.count,
                    "retryAt": iso(r.deferral.retry_at),
                }
                for r in deferred
            ],
        },
    }


@app.command()
@handled
def status(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Queue length, last sequence, last sync error and counts by status (no PIN needed)."""
    config = StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        state = store.state()
        rejected = store.records(RecordStatus.REJECTED)
        deferred = [r for r in store.records(RecordStatus.QUEUED) if r.deferral is not None]
    data = _status_data(config, state, rejected, deferred)
    counts = ", ".join(f"{count} {status}" for status, count in data["counts"].items())
    lines = [
        f"station id:    {data['stationId']}",
        f"address:       {config.address} ({config.key.kind})",
        f"domain:        chain {config.chain_id}, registry {config.registry}",
        f"queue length:  {state.queue_length}",
        f"last sequence: {state.last_sequence}",
        f"records:       {counts}",
        f"meters:        charge {state.meter_charge_wh} Wh, "
        f"discharge {state.meter_discharge_wh} Wh",
        f"last sync:     {data['lastSyncAt'] or 'never'}",
        f"last error:    {state.last_error or 'none'}",
    ]
    waiting = data["deferred"]
    if waiting["count"]:
        reasons = ", ".join(f"{count} {reason}" for reason, count in waiting["byReason"].items())
        lines.append(
            f"deferred:      {waiting['count']} queued record(s) the backend cannot judge yet "
            f"({reasons}); next attempt {waiting['nextRetryAt']}"
        )
    for item in data["rejected"]:
        lines.append(f"  rejected #{item['sequence']}: {item['reason']}: {item['message']}")
    for item in waiting["records"]:
        lines.append(
            f"  deferred #{item['sequence']}: {item['reason']} ({item['deferrals']}x, next "
            f"attempt {item['retryAt']}): {item['message']}"
        )
    emit(as_json, data, lines)
