"""The GridPoints demo (``scripts/demo``, or ``python -m gridpoints_dev.demo``): a day of a
vehicle fleet, end to end, with real parts only. What it does: gridpoints_dev.demo.cli.

    cli         the command: its options and help
    run         the orchestration, step by step, and the exit code (errors: which one)
    plan        the fleet, the stations and the day's sessions (pure)
    processes   the run directory, Anvil, SoftHSM2 tokens, the backend, the OCPP gateway
    stations    station keys in their tokens, registration, signing, syncing
    charger     the OCPP charger: its meter key on chain, its sessions through the gateway
    api         the backend's public API, page by page
    audit       the independent auditor, through its own command
    summary     the summary document, from the public API and the chain
    progress    step lines and bars on stderr
    render      the summary on stdout: rich tables, or one JSON line
"""
