"""The audit's checks, one module per family. Each is a plain function or a small class that
takes the facts it needs (chain facts, a published record, a recomputed epoch) and returns
the `Discrepancy` findings; none reads the chain or the source itself.

* records — one published record: parse, digest, signature and key validity, its end time
  against its epoch's commit, its payment;
* record_claims — what the source says about a record besides it: log index, signer, receipt
  time;
* history — records against each other: (station, sequence) once, an authorisation once,
  meters forward;
* listing — the published list is the epoch: leaf indexes and record count;
* claims — what the source says about the epoch: anchors against the chain, log position,
  tariff version and counts against the recomputation, state and times;
* steps — the settlement steps the source claims, against the recomputed plan and the chain;
* tariff — the tariff document against its anchored hash;
* anchors — the epoch refolded from its records against its anchored roots and totals;
* movements — an epoch's mints and payments against the recomputed credits and payments;
* skips — payments the contract skipped, against what justifies a skip;
* transactions — each transaction's token transfers against its settlement events;
* supply — the token as a whole;
* roles — who may mint and burn: every role holder change, every pending scheduled grant.
"""
