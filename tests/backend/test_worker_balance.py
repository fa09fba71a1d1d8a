"""The settler's gas money is on /healthz from the start, not only after the first settlement
round, which on a backlog takes minutes (and the low-gas warning could not fire meanwhile)."""

from __future__ import annotations

from pathlib import Path

from backend.worker import write_dev_key_file
from tests.support.backend import DATABASES, chain_checkpoint, fresh_database, running_backend
from tests.support.chain import ChainEnv
from tests.support.settlement import random_traffic


def test_the_settler_balance_is_on_healthz_before_the_first_round_ends(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    env = chain_session
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(env.accounts.settler.key))
    kind = DATABASES[0]
    with chain_checkpoint(env), fresh_database(kind, tmp_path) as url:
        with running_backend(env, url, kind) as h:  # records waiting, nothing settles them yet
            random_traffic(h, stations=1, users=3, records=6, seed=51).post_all()
        balance = env.w3.eth.get_balance(env.accounts.settler.address)
        # Nothing is mined any more: the first round seals, sends the epoch's commit and waits
        # for its receipt for as long as the node holds it back.
        env.rpc("evm_setAutomine", False)
        try:
            with running_backend(
                env,
                url,
                kind,
                migrate=False,
                settlement_enabled=True,
                settler_key_file=key_file,
                epoch_seconds=0.01,
                settlement_poll_interval_s=0.05,
                receipt_timeout_s=120,
            ) as h:
                settlement = h.client.get("/healthz").json()["settlement"]
                assert settlement["settlerBalanceWei"] == str(balance)
                assert settlement["epochs"] in ({}, {"sealed": 1})  # the round is not over
        finally:
            env.rpc("evm_setAutomine", True)
            env.rpc("evm_mine")  # the pending commit, before the checkpoint rewinds it away
            env.chain.reset_nonces()
