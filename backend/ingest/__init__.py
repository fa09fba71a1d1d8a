"""Ingestion, the stateful half of accepting records: what a record means next to the records
already stored, and storing it.

* `backend.ingest.classify` — pure classification of each candidate (duplicate, deferred,
  rejected, equivocation, meter running backwards, replayed authorisation, accepted) against
  an in-memory view of the stored log, and the rows each outcome stores;
* `backend.ingest.storage` — the SQLAlchemy reads that load that view and the writes that store
  the outcomes (records, rejections, equivocation evidence, payment authorisations, station
  progress and gaps);
* `backend.ingest.transaction` — `Ingestor`: one transaction per call (lock, load, classify,
  write), retried on a uniqueness conflict;
* `backend.ingest.group_commit` — `GroupCommitter`: concurrent requests share transactions and
  are answered only after their commit.

The stateless half (parse, domain, signature, key validity, physics, payment) is
`gridpoints_protocol.checks`.
"""
