"""The suite's fixtures live in tests/support/ (one module per kind of real part) and are
registered here, once, for every test: a test imports helpers from ``tests.support.*`` and gets
the fixtures by name."""

pytest_plugins = [
    "tests.support.chain",
    "tests.support.backend",
    "tests.support.settlement",
]
