"""The backend's long-lived parts wired together: database, chain handle, registry follower,
verifier, ingestor and metrics. The API's lifespan starts one `BackendService` and stops it."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from web3 import Web3

from backend.db.session import Database
from backend.errors import BackendError
from backend.ingest.classify import Candidate, Outcome
from backend.ingest.group_commit import GroupCommitter
from backend.ingest.transaction import Ingestor
from backend.ledger import TreeCache
from backend.meter_evidence import EvidenceChecker, split_evidence
from backend.metrics import Metrics
from backend.migrations import check_schema
from backend.queries import log_size
from backend.ratelimit import (
    UNREGISTERED_STATION,
    BucketPolicy,
    TokenBuckets,
    retry_after_header,
    station_key,
)
from backend.receipts import ReceiptIssuer, load_receipt_signer
from backend.registry import RegistryFollower
from backend.settings import Settings, redact_url
from backend.worker import SealAndSettle, close_account, load_settler_account, scrub
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.deployment import Deployment, deployment_domain
from gridpoints_protocol.checks import Deferral, Problem, RecordVerifier
from gridpoints_protocol.keys import NOTHING_DECIDED, KeyDirectory
from gridpoints_protocol.ocmf.meter_keys import MeterDirectory
from gridpoints_protocol.record import Domain
from gridpoints_protocol.tariff import TariffBook, TariffError
from gridpoints_protocol.wire import DeferReason, RejectReason

log = logging.getLogger(__name__)


class ConfigurationError(BackendError, RuntimeError):
    """The settings, the deployment file and the chain do not fit together."""


class BackendService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.declare_outcomes(
            (reason.value for reason in RejectReason), (reason.value for reason in DeferReason)
        )
        self.db = Database(
            settings.effective_database_url,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=settings.db_pool_size,
            sqlite_cache_mib=settings.sqlite_cache_mib,
        )
        self.deployment: Deployment | None = None
        self.chain: GridPointsChain | None = None
        # Nothing is decided until the follower says up to which block it has applied events.
        self.directory = KeyDirectory(decided_before=NOTHING_DECIDED)
        self.meters = MeterDirectory()
        self.evidence = EvidenceChecker(self.directory, self.meters)
        self.follower: RegistryFollower | None = None
        self.verifier: RecordVerifier | None = None
        # The claimed-station rate limit on stored rejections (backend.ratelimit).
        self.station_limits: TokenBuckets | None = None
        if settings.rate_limit_enabled:
            self.station_limits = TokenBuckets(
                BucketPolicy(settings.rate_limit_station_burst, settings.rate_limit_station_per_s),
                max_sources=settings.rate_limit_max_sources,
            )
        self.ingestor = Ingestor(
            self.db, admit_rejection=None if self.station_limits is None else self._admit_rejection
        )
        # Concurrent requests share ingest transactions (see GroupCommitter), and the receipts
        # of one transaction share one signature (`_sign_receipts`).
        self.committer = GroupCommitter(self.ingestor, after_commit=self._sign_receipts)
        try:
            self.tariffs = TariffBook.load(settings.tariffs_dir)
        except TariffError as exc:
            raise ConfigurationError(f"tariffs in {settings.tariffs_dir}: {exc}") from exc
        self.trees = TreeCache()
        # The sealing and settlement loop, when this process is configured to run it.
        self.worker: SealAndSettle | None = None
        # Signs the ingest receipts, when a receipt key is configured (backend.receipts).
        self.receipts: ReceiptIssuer | None = None

    @property
    def own_domain(self) -> Domain:
        """The EIP-712 domain this backend verifies records for."""
        if self.verifier is None:
            raise RuntimeError("the backend is not started")
        return self.verifier.domain

    def start(self) -> None:
        """Checks the schema and the deployment, catches the registry up and starts following.

        Raises DatabaseNotMigratedError, DeploymentFileError, RegistryMismatchError or
        ConfigurationError: each means the operator must fix something before serving.
        """
        settings = self.settings
        check_schema(self.db.engine, self.db.display_url)
        deployment = Deployment.load(settings.deployment_file)
        w3 = Web3(
            Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": settings.rpc_timeout_s})
        )
        chain = GridPointsChain(w3, deployment)
        try:
            node_chain_id = int(w3.eth.chain_id)
        except Exception as exc:  # any transport error: the follower retries in the background
            log.warning(
                "no Ethereum node answers at %s yet (%s); following later",
                redact_url(settings.rpc_url),
                scrub(str(exc), settings),
            )
        else:
            if node_chain_id != deployment.chain_id:
                raise ConfigurationError(
                    f"the node at {redact_url(settings.rpc_url)} is on chain {node_chain_id}, "
                    f"the deployment file {settings.deployment_file} on chain {deployment.chain_id}"
                )
        self.deployment, self.chain = deployment, chain
        self.follower = RegistryFollower(
            self.db,
            chain,
            confirmations=settings.confirmations_for(deployment.chain_id),
            block_range=settings.registry_block_range,
            poll_interval=settings.registry_poll_interval_s,
            directory=self.directory,
            meters=self.meters,
            metrics=self.metrics,
        )
        self.follower.open()
        try:
            # Catch up before the first request, so known stations are not refused as unknown.
            self.follower.sync_once()
        except Exception as exc:  # the mirror in the database still serves
            log.warning(
                "registry catch-up failed at start-up (%s); retrying in background",
                self.follower.describe_error(exc),
            )
        self.follower.start()
        self.verifier = RecordVerifier(
            deployment_domain(deployment),
            self.directory,
            settlement_domain=chain.settlement_domain,
            clock_skew_s=settings.clock_skew_s,
            registry_retry_slack_s=math.ceil(settings.registry_poll_interval_s),
        )
        receipt_signer = load_receipt_signer(settings)
        if receipt_signer is None:
            log.warning(
                "no receipt key configured (GRIDPOINTS_RECEIPT_PKCS11_* or "
                "GRIDPOINTS_RECEIPT_KEY_FILE): accepted records get no signed receipt"
            )
        else:
            self.receipts = ReceiptIssuer(
                receipt_signer, self.verifier.domain, settings.max_merge_delay_s
            )
            log.info("ingest receipts are signed by %s", receipt_signer.address)
        with self.db.read() as session:
            self.metrics.log_size.set(log_size(session))
        if settings.settlement_enabled:
            self.worker = SealAndSettle(
                self.db,
                chain,
                settings,
                account=load_settler_account(settings, deployment.chain_id),
                tariffs=self.tariffs,
                metrics=self.metrics,
            )
            self.worker.start()
        log.info(
            "GridPoints backend ready: database %s, chain %d, registry %s",
            self.db.display_url,
            deployment.chain_id,
            deployment.registry_address,
        )

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            if self.worker.settler is not None:
                close_account(self.worker.settler.account)
        if self.follower is not None:
            self.follower.stop()
        if self.receipts is not None:
            close_account(self.receipts.signer)
        self.db.dispose()

    def balance_of(self, address: str) -> int:
        """The user's PointsToken balance, read from the chain now."""
        if self.chain is None:
            raise RuntimeError("the backend is not started")
        return int(self.chain.token.functions.balanceOf(address).call())

    def submit(
        self, items: Sequence[Any], *, claimed_domain: Domain | None = None
    ) -> list[Outcome]:
        """Verifies and stores submitted JSON values; one outcome each, in order."""
        candidates, received_at = self._candidates(items, claimed_domain)
        return self._counted(self.committer.ingest(candidates, received_at))

    async def submit_async(
        self, items: Sequence[Any], *, claimed_domain: Domain | None = None
    ) -> list[Outcome]:
        """`submit` on the event loop: verifies in place (one record's checks cost less than a
        hop to a worker thread) and awaits the group commit without holding a thread."""
        candidates, received_at = self._candidates(items, claimed_domain)
        return self._counted(await self.committer.ingest_async(candidates, received_at))

    def _sign_receipts(
        self, candidates: Sequence[Candidate], outcomes: list[Outcome]
    ) -> list[Outcome]:
        """The committer's `after_commit`: one receipt signature per committed transaction
        (in the committer's thread, never on the event loop)."""
        receipts = self.receipts
        return outcomes if receipts is None else receipts.issue(candidates, outcomes)

    def _candidates(
        self, items: Sequence[Any], claimed_domain: Domain | None
    ) -> tuple[list[Candidate], datetime]:
        verifier = self.verifier
        if verifier is None:
            raise RuntimeError("the backend is not started")
        # One instant per request: the clock-skew check and the receipts agree.
        received_at = datetime.now(UTC)
        now = int(received_at.timestamp())
        candidates = []
        # The OCMF evidence is judged beside the record and never reaches a rejection body.
        split = [split_evidence(submitted) for submitted in items]
        verdicts = verifier.verify_json_many(
            [item for item, _ in split], now=now, claimed_domain=claimed_domain
        )
        for (item, evidence), verdict in zip(split, verdicts, strict=True):
            verdict, verified = self.evidence.check(verdict, evidence)
            candidate = Candidate.of(item, verdict)
            if verified is not None:
                candidate = replace(candidate, evidence=verified)
            candidates.append(candidate)
        return candidates, received_at

    def _admit_rejection(self, candidate: Candidate, problem: Problem) -> Deferral | None:
        """Lets `candidate`'s rejection be stored while its claimed station's bucket holds a
        token (taking it), else defers it as `rate_limited` (see backend.ratelimit)."""
        limits = self.station_limits
        assert limits is not None
        key = station_key(candidate.station_id, self._registered)
        wait = limits.take(key)
        if wait == 0.0:
            return None
        self.metrics.rate_limited.labels(scope="station").inc()
        retry_after = int(retry_after_header(wait))
        whose = "unregistered station ids" if key == UNREGISTERED_STATION else "this station"
        return Deferral(
            DeferReason.RATE_LIMITED,
            f"too many records naming {whose} were rejected lately; this one would be rejected "
            f"too ({problem.reason.value}: {problem.message}) and is not stored: fix it, or "
            f"send it again after {retry_after} s to have its rejection recorded",
            retry_after,
        )

    def _registered(self, station_id: bytes) -> bool:
        return self.directory.station(station_id) is not None

    def _counted(self, outcomes: list[Outcome]) -> list[Outcome]:
        tally = Counter((o.status, o.reason or "") for o in outcomes)
        records = self.metrics.records
        for (status, reason), count in tally.items():
            records.labels(outcome=status, reason=reason).inc(count)
        if self.ingestor.log_size is not None:
            self.metrics.log_size.set(self.ingestor.log_size)
        return outcomes
