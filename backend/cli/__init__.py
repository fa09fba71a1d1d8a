"""``gridpoints``: the operator's command line, one module per command group.

    gridpoints serve          run the ingest API under uvicorn (serve.py)
    gridpoints db …           database schema migrations (db.py)
    gridpoints stations       status table of every registered station (stations.py)
    gridpoints epoch …        seal, list, show and export epochs (epochs.py)
    gridpoints settle         seal when due and settle on chain (settle.py)
    gridpoints settler …      the settler's key (settler.py)

main.py assembles the app; common.py holds what the commands share. Configuration comes from
the environment (see backend.settings: ``GRIDPOINTS_*``, ``DATABASE_URL``); the options
override it for one run.
"""
