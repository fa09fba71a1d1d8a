"""Chain access, shared by the station, the operator and the auditor: contract artifacts, the
deployment file, typed contract handles with decoded reverts and events, and the transaction
pipeline (one nonce manager, sign locally, broadcast, wait for the receipt).

Import the modules themselves (`gridpoints_chain.contracts`, `.deployment`, `.deploy`, ...);
this package re-exports nothing, so importing one part never loads the others.
"""
