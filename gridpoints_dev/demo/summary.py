"""The summary of a finished run, one JSON-ready document: what the stations recorded (from the
backend's public log), what the token contract minted and burned and the balances it holds,
every epoch as the backend and the chain record it, the audit's verdict, and which records
carry meter evidence (their signed ``meterEvidence`` field in the public log, matched with the
OCMF readings the OCPP station kept: those are not published).

Nothing here is taken from the demo's own bookkeeping when the chain or the API can say it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from backend.settings import TARIFFS_DIR
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_dev.demo.api import BackendApi
from gridpoints_dev.demo.audit import AuditResult
from gridpoints_dev.demo.charger import CHARGER_ID, EVIDENCE_NOTE, ChargerSite
from gridpoints_dev.demo.errors import DemoError
from gridpoints_dev.demo.plan import Vehicle
from gridpoints_dev.demo.processes import SETTLER_KEY_LABEL, SETTLER_TOKEN
from gridpoints_dev.demo.stations import LiveStation
from gridpoints_protocol.tariff import Tariff, TariffBook, value_record
from station_signer.proofs import ChainAnchors

# A record without meter evidence (a station without a signing meter).
ZERO_EVIDENCE = "0x" + "00" * 32

TOP_BALANCES = 10
ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True, slots=True)
class WaveReport:
    name: str
    title: str
    recorded: int
    synced: int
    queued_offline: int


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """The run once every epoch is settled: what the summary reports on."""

    run_dir: Path
    run_dir_kept: bool
    keep_running: bool
    rpc_url: str
    anvil_pid: int | None
    api: BackendApi
    backend_pid: int | None
    database_url: str
    deployment_path: Path
    chain: GridPointsChain
    settler_address: str
    day: date
    timezone: str
    seed: int
    stations: Sequence[LiveStation]
    vehicles: Sequence[Vehicle]
    waves: Sequence[WaveReport]
    backlog: dict[str, Any]
    pin_file: Path
    started_at: float
    charger: ChargerSite | None = None
    gateway_pid: int | None = None


@dataclass(slots=True)
class Traffic:
    """The backend's record log, added up by direction and by station."""

    total: int = 0
    energy_wh: dict[str, int] = field(default_factory=lambda: {"discharge": 0, "charge": 0})
    counts: dict[str, int] = field(
        default_factory=lambda: {"discharge": 0, "charge": 0, "paidWithPoints": 0}
    )
    per_station: defaultdict[str, defaultdict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    paid_price: int = 0  # what the charges paid with points cost, before the wallets' caps


def add_up_traffic(
    records: list[dict[str, Any]], epochs: list[dict[str, Any]], stations: Sequence[LiveStation]
) -> Traffic:
    by_station = {s.spec.hex_id: s for s in stations}
    tariffs = TariffBook.load(TARIFFS_DIR)
    tariff_of: dict[int, Tariff] = {}  # log index -> the tariff its epoch anchored
    for e in epochs:
        tariff = tariffs.by_hash(e["tariffHash"])
        for index in range(e["firstLogIndex"], e["firstLogIndex"] + e["recordCount"]):
            tariff_of[index] = tariff
    traffic = Traffic(total=len(records))
    for item in records:
        record = item["record"]
        direction = "charge" if int(record["direction"]) == 1 else "discharge"
        traffic.energy_wh[direction] += int(record["energyWh"])
        traffic.counts[direction] += 1
        stats = traffic.per_station[record["stationId"]]
        stats["records"] += 1
        stats[f"{direction}Wh"] += int(record["energyWh"])
        if int(record["paymentAuthorization"], 16):
            traffic.counts["paidWithPoints"] += 1
            stats["paid"] += 1
            # What the charge cost in points; the wallet's maxPoints may cap what it pays.
            traffic.paid_price += value_record(
                tariff_of[item["logIndex"]],
                zone=by_station[record["stationId"]].spec.zone,
                direction=int(record["direction"]),
                energy_wh=int(record["energyWh"]),
                start_time=int(record["startTime"]),
                end_time=int(record["endTime"]),
            )
    unknown = [sid for sid in traffic.per_station if sid not in by_station]
    if unknown:
        raise DemoError(f"the backend holds records of unknown stations {unknown}")
    return traffic


@dataclass(frozen=True, slots=True)
class Points:
    """What the token contract says: minted and burned per wallet, balances, the supply."""

    earned: dict[str, int]
    spent: dict[str, int]
    balances: dict[str, int]
    supply: int


def read_points(chain: GridPointsChain, vehicles: Sequence[Vehicle]) -> Points:
    # Minted and burned: the token contract's own Transfer events.
    earned: dict[str, int] = defaultdict(int)
    spent: dict[str, int] = defaultdict(int)
    transfers = chain.token.events.Transfer().get_logs(from_block=chain.deployment.deployment_block)
    for event in transfers:
        args = event["args"]
        if args["from"] == ZERO_ADDRESS:
            earned[args["to"]] += int(args["value"])
        elif args["to"] == ZERO_ADDRESS:
            spent[args["from"]] += int(args["value"])
    balances = {v.address: int(chain.token.functions.balanceOf(v.address).call()) for v in vehicles}
    supply = int(chain.token.functions.totalSupply().call())
    return Points(earned, spent, balances, supply)


def epoch_rows(
    chain: GridPointsChain, api: BackendApi, epochs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every epoch as the backend lists it, beside what Settlement.getEpoch holds for it."""
    anchors = ChainAnchors(chain)
    rows = []
    for e in epochs:
        detail = api.get(f"/v1/epochs/{e['epochId']}")
        on_chain = chain.call(chain.settlement.functions.getEpoch(e["epochId"]))
        anchored = anchors.epoch(e["epochId"])
        chain_root = "0x" + bytes(on_chain[0]).hex()
        rows.append(
            {
                "epochId": e["epochId"],
                "recordCount": e["recordCount"],
                "recordsRoot": e["recordsRoot"],
                "creditsRoot": e["creditsRoot"],
                "tariffHash": e["tariffHash"],
                "tariffVersion": e["tariffVersion"],
                "state": e["state"],
                "totalCredits": e["totalCredits"],
                "totalDebits": e["totalDebits"],
                "onChain": {
                    "recordsRoot": chain_root,
                    "recordCount": int(on_chain[3]),
                    "appliedCredits": int(on_chain[7]),
                    "appliedDebits": int(on_chain[8]),
                    "commitTxHash": anchored.commit_tx_hash if anchored else None,
                    "commitBlock": anchored.commit_block if anchored else None,
                },
                "rootMatchesChain": chain_root == e["recordsRoot"],
                "txHashes": [s["txHash"] for s in detail.get("steps") or [] if s["txHash"]],
            }
        )
    mismatched = [r["epochId"] for r in rows if not r["rootMatchesChain"]]
    if mismatched:
        raise DemoError(f"epochs {mismatched}: the backend's records root is not the chain's")
    return rows


def station_rows(
    run: FinishedRun, traffic: Traffic, evidence: dict[str, Any] | None
) -> list[dict[str, Any]]:
    rows = []
    for live in run.stations:
        stats = traffic.per_station[live.spec.hex_id]
        rows.append(
            {
                "name": live.spec.name,
                "zone": live.spec.zone,
                "stationId": live.spec.hex_id,
                "address": live.address,
                "maxPowerW": live.spec.max_power_w,
                "tokenLabel": live.spec.token_label,
                "directory": str(live.directory),
                "registerTxHash": live.register_tx,
                "records": stats["records"],
                "dischargeKwh": stats["dischargeWh"] / 1000,
                "chargeKwh": stats["chargeWh"] / 1000,
                "paidWithPoints": stats["paid"],
                "wentOffline": live.spec.name == run.backlog.get("station"),
                "ocpp": live.spec.ocpp,
                "meterEvidence": evidence["records"]
                if evidence is not None and live.spec.ocpp
                else 0,
            }
        )
    return rows


def meter_evidence(
    run: FinishedRun, records: list[dict[str, Any]], epochs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Which records of the backend's public log carry meter evidence: those whose signed
    ``meterEvidence`` is not zero, each matched with the OCMF records the OCPP station kept for
    it (their digest must be the record's field) and placed in its epoch."""
    site = run.charger
    if site is None:
        return None
    station_id = site.live.spec.hex_id
    epoch_of = {
        index: e["epochId"]
        for e in epochs
        for index in range(e["firstLogIndex"], e["firstLogIndex"] + e["recordCount"])
    }
    kept_by_sequence = {kept["sequence"]: kept for kept in site.evidence()}
    items = []
    for item in records:
        record = item["record"]
        if record.get("meterEvidence", ZERO_EVIDENCE) == ZERO_EVIDENCE:
            continue
        kept = kept_by_sequence.pop(int(record["sequence"]), None)
        if record["stationId"] != station_id or kept is None:
            raise DemoError(
                f"log index {item['logIndex']} binds meter evidence its station did not keep"
            )
        if kept["meterEvidence"] != record["meterEvidence"]:
            raise DemoError(f"record #{record['sequence']}: the kept OCMF is not what it binds")
        items.append(
            {
                **kept,
                "logIndex": item["logIndex"],
                "epochId": epoch_of.get(item["logIndex"]),
                "userCommitment": record["userCommitment"],
            }
        )
    if kept_by_sequence:
        raise DemoError(
            f"{site.live.spec.name}'s records {sorted(kept_by_sequence)} were built from meter "
            "readings but the log shows no meter evidence for them"
        )
    return {
        "station": site.live.spec.name,
        "stationId": station_id,
        "charger": CHARGER_ID,
        "gatewayUrl": None if site.url is None else f"{site.url}/ocpp/{CHARGER_ID}",
        "meterSerial": site.meter.serial,
        "meterPublicKey": site.meter.public_key_der.hex(),
        "meterRegisterTxHash": site.meter_register_tx,
        "sessionsRun": site.sessions_run,
        "records": len(items),
        "recordsWithout": len(records) - len(items),
        "note": EVIDENCE_NOTE,
        "items": items,
    }


def summarize(run: FinishedRun, epochs: list[dict[str, Any]], audit: AuditResult) -> dict[str, Any]:
    deployment = run.chain.deployment
    log_records = run.api.log_records()
    traffic = add_up_traffic(log_records, epochs, run.stations)
    evidence = meter_evidence(run, log_records, epochs)
    points = read_points(run.chain, run.vehicles)
    epochs_json = epoch_rows(run.chain, run.api, epochs)
    stations_json = station_rows(run, traffic, evidence)
    names = {v.address: v.name for v in run.vehicles}
    top = sorted(points.balances.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_BALANCES]
    return {
        "runDir": str(run.run_dir),
        "runDirKept": run.run_dir_kept,
        "keepRunning": run.keep_running,
        "rpcUrl": run.rpc_url,
        "apiUrl": run.api.url,
        "docsUrl": run.api.url + "/docs",
        "deploymentFile": str(run.deployment_path),
        "databaseUrl": run.database_url,
        "chainId": deployment.chain_id,
        "contracts": dict(deployment.addresses),
        "settler": {
            "address": run.settler_address,
            "token": SETTLER_TOKEN,
            "keyLabel": SETTLER_KEY_LABEL,
        },
        "pids": {
            "demo": os.getpid(),
            "anvil": run.anvil_pid,
            "backend": run.backend_pid,
            "gateway": run.gateway_pid,
        },
        "day": run.day.isoformat(),
        "timezone": run.timezone,
        "seed": run.seed,
        "stations": stations_json,
        "vehicles": [
            {"name": v.name, "address": v.address, "homeStation": v.home + 1} for v in run.vehicles
        ],
        "waves": [
            {
                "wave": w.name,
                "title": w.title,
                "recorded": w.recorded,
                "sent": w.synced,
                "queuedOffline": w.queued_offline,
            }
            for w in run.waves
        ],
        "offlineStation": run.backlog,
        "records": {
            "total": traffic.total,
            **traffic.counts,
            "withMeterEvidence": 0 if evidence is None else evidence["records"],
        },
        "meterEvidence": evidence,
        "energyKwh": {k: v / 1000 for k, v in traffic.energy_wh.items()},
        "points": {
            "earned": sum(points.earned.values()),
            "spent": sum(points.spent.values()),
            "priceOfChargesPaidWithPoints": traffic.paid_price,
            "requestedByPayments": sum(e["totalDebits"] for e in epochs),
            "totalSupply": points.supply,
        },
        "balances": points.balances,
        "topBalances": [
            {
                "vehicle": names.get(address, "?"),
                "address": address,
                "balance": balance,
                "earned": points.earned.get(address, 0),
                "spent": points.spent.get(address, 0),
            }
            for address, balance in top
        ],
        "epochs": epochs_json,
        "audit": audit.to_json(),
        "pinFile": str(run.pin_file),
        "durationS": round(time.monotonic() - run.started_at, 1),
    }
