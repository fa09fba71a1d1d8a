"""``gridpoints-station``: what a station operator runs.

Commands: ``init``, ``address``, ``register`` (identity.py), ``authorize`` (authorize.py),
``record`` (record.py), ``sync``, ``status`` (sync.py), ``verify`` (verify.py), ``proof``
(proof.py); main.py assembles them (see station_signer/README.md). Output is for humans by
default; ``--json`` prints exactly one JSON document on stdout instead (common.py). Errors are
one line with a code and a non-zero exit code (errors.py).

Secrets never go on the command line: the PKCS#11 PIN comes from ``GRIDPOINTS_PKCS11_PIN_FILE``
or ``GRIDPOINTS_PKCS11_PIN`` (or ``--pin-file``), a development key's password from
``GRIDPOINTS_DEVKEY_PASSWORD``, the registrar key from ``GRIDPOINTS_REGISTRAR_KEY`` or a key
file, a development wallet key for ``authorize`` from an environment variable (named by
``--user-key-env``) or a key file (accounts.py).
"""
