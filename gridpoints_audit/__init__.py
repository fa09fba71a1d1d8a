"""The independent auditor: re-checks settled epochs from public data against the chain.

Inputs are a chain handle (an RPC node and the deployment file) and a *record source*
(`sources`): the backend's public read API (`ApiSource`) or exported epoch bundles
(`BundleSource`, written by ``gridpoints epoch export``, see backend/bundle.py and
docs/AUDIT.md). Nothing here opens a database, and no figure the source reports about itself
is trusted: roots, totals, counts and the tariff hash come from the chain (`chain_facts`);
records, signatures, payment authorisations and the tariff document come from the source and
are checked against the chain (`checks`). The auditor imports only gridpoints_protocol and
gridpoints_chain of this repository.

The audited epochs come from the chain: every epoch committed at the audit block (the user
may restrict the range; the report is then not complete). A committed epoch the source does
not publish is a finding (`epoch_unpublished`), and so is a bundle directory without a readable
manifest. The sources are hostile: every read is bounded (no paging beyond the committed record
count, capped documents and lines, JSON nesting bombs caught) and ends in a finding.

What is checked, per audited epoch (all chain reads pinned to one block, the head when the
audit starts, so a backend settling meanwhile cannot make the audit inconsistent):

* station key histories rebuilt from StationRegistry events; every record parsed, its digest
  recomputed under the deployment's EIP-712 domain, its signature and key validity at its end
  time checked with `gridpoints_protocol.checks.RecordVerifier` (``now=None``), payments with
  `gridpoints_protocol.payments.check_payment` against the Settlement domain, and its end
  time against the epoch's commit block time plus the documented clock skew
  (`gridpoints_protocol.checks.ends_too_late`, ingest's own rule) (`checks.records`);
* every claim the source makes about the epoch and its records (the manifest's and the API's
  figures, log positions, tariff version, counts, state, times, and each settlement step's
  chunk, entries, amount, transaction, block and gas) is checked against the chain or the
  recomputation (`checks.claims`, `checks.steps`, `checks.record_claims`);
* the published list is exactly the epoch: leaf indexes 0..recordCount-1, each once, and as
  many records as the chain's recordCount (`checks.listing`);
* no (station, sequence) twice across the audited epochs (the same record twice, or two
  different records for one sequence: an equivocation the backend hid), no authorisation
  paying for two records, no meter register running backwards (`checks.history`);
* the tariff fetched by its anchored hash hashes to it (`checks.tariff`); recordsRoot,
  creditsRoot, totalCredits and totalDebits recomputed with
  `gridpoints_protocol.accumulator.EpochAccumulator` (the sealer's own fold) equal what the
  epoch committed (`checks.anchors`);
* the token's mint Transfer events of the epoch's credit chunks credit every user exactly the
  recomputed points; every PaymentApplied event of the epoch belongs to one of its paid
  records and requested exactly min(price, maxPoints), burned at most that, and matches the
  burn Transfer before it, and no PaymentApplied uses a (user, nonce) already paid, canceled
  or voided by a skip (`nonce_paid_twice`); every paid record's authorisation was applied,
  skipped by the contract (PaymentSkipped, nothing burned) or canceled by its user
  (`checks.movements`, `checks.transactions`); a skip is legitimate only when it is what the
  contract says: AuthorizationUsed needs an earlier PaymentApplied, AuthorizationCanceled or
  PaymentSkipped of that (user, nonce) on chain, and InvalidSignature (never read as the
  user's act) needs the settlement transaction to have submitted the
  record's own signed authorisation (so the signature the contract refused is the user's, and
  the user's wallet, not the operator, made the payment uncollectable) (`checks.skips`);

and over the whole chain: every mint and burn of the token is explained by a settlement chunk
(`checks.transactions`), total supply equals minted minus burned, and equals the recomputed
credits of all epochs minus what the payments burned, an unpublished epoch earning nothing
(`checks.supply`; not compared only when the user restricted the range); and every
access-control event of the three contracts is folded into the report's `roles` (holders,
every change, pending scheduled grants and admin transfers), an account other than the
Settlement contract granted or scheduled the token's minting role being a finding
(`unexpected_minter`, `minter_grant_pending`; `checks.roles`).

Every finding is a `findings.Discrepancy` with a stable `kind` (`findings.Kind`), the epoch and
record it concerns, and what was expected and found. `core.audit` (and `core.Auditor.run`,
which reads the chain first) returns an `AuditReport`; they raise `AuditError` only when the
audit cannot run at all (no node, wrong chain, unreadable source). `cli` is the
``gridpoints-audit`` command.
"""
