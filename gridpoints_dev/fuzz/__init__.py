"""Hostile input for the live API: the generators and the runner behind ``scripts/fuzz_api.py``
and its short version in the test suite (tests/backend/api/test_fuzz_api.py).

The package reads in the order of a run: `cases` (stations, target, one case), `base` (the
generator's state and helpers), `record_families` and `encoding_families` (the hostile
generators), `generator` (all families in one seeded stream), `runner` (send, judge, read the log
back; schemathesis), `stack` (Anvil + database + server of its own for scripts/fuzz_api.py).

Two sources of cases, both sent over real HTTP to a running backend:

* **schemathesis** loads the server's own ``/openapi.json`` and generates requests for every
  operation and every parameter, in its positive (fits the schema) and negative (does not) modes;
  each response is checked against the schema (status code, content type, body);
* **our own generators** (seeded ``random.Random``, so a seed gives the same stream) build the
  ingest formats the schema cannot describe well: single records, batches, records that pay with
  a user's signed payment authorisation, signature edge cases (high s, ``v`` of 0, 1, 29, 35,
  255 and the other parity, ``r`` or ``s`` of 0 or >= n, wrong length, not hex), encoding tricks
  (lone surrogates, NUL, overlong and invalid UTF-8, a BOM, numbers beyond any integer type,
  floats for integers, duplicate keys, nesting near the parser's limit, unknown keys en masse,
  wrong content types, chunked bodies, bad domain headers).

VALID records, signed by registered stations with their real keys, are interleaved with the
garbage — alone and inside batches next to bad items. Every generated item carries what the
server may do with it: a VALID record must be acknowledged (``accepted`` or ``duplicate``), an
INVALID one must never be accepted, an ANY one (a valid record in an unusual but legitimate
spelling) may be either. At the end, valid records whose request the server refused as a whole
(a 400 for the whole batch, say) are sent again in clean batches, as a station would, and the
record log is read back (``GET /v1/records``): a valid record that is not there is **lost**.

A 5xx answer is a failure, except the documented 503 of a single record the backend cannot judge
yet (``deferred`` with ``Retry-After``, e.g. an end time in the future), which is counted apart.
429 (rate limited) is never a failure.
"""

from gridpoints_dev.fuzz.cases import (
    DEFAULT_SEED,
    SCHEMA_SHARE,
    Expect,
    FuzzCase,
    FuzzStation,
    FuzzTarget,
    Item,
    make_stations,
)
from gridpoints_dev.fuzz.generator import Generator
from gridpoints_dev.fuzz.runner import FuzzReport, Ledger, check_log, judge, run_fuzz
from gridpoints_dev.fuzz.stack import FuzzChain, fuzz_chain, fuzz_database

__all__ = [
    "DEFAULT_SEED",
    "SCHEMA_SHARE",
    "Expect",
    "FuzzCase",
    "FuzzChain",
    "FuzzReport",
    "FuzzStation",
    "FuzzTarget",
    "Generator",
    "Item",
    "Ledger",
    "check_log",
    "fuzz_chain",
    "fuzz_database",
    "judge",
    "make_stations",
    "run_fuzz",
]
