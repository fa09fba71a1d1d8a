#!/usr/bin/env python3
"""Gas used by settlement on a fresh, throwaway Anvil chain (started and stopped here).

    .venv/bin/python scripts/gas_report.py           # a table
    .venv/bin/python scripts/gas_report.py --json    # the same figures as JSON

Measures commitEpoch, applyCredits with 1 and 100 credits to fresh addresses and to addresses
that already hold points, applyPayments with 1 and 100 user-signed payments (each user's first
authorisation, whose nonce opens a fresh bitmap word, and a later one in an already used word),
applyPayments with 100 payments the contract skips (nonces already used; signatures by the
wrong keys) and with one payment whose ERC-1271 wallet refuses at once or burns all the gas it
is given (the most one user can make one payment cost), and a single PointsToken.mint to a
fresh and to an existing holder.
In a real deployment only the Settlement contract may mint; to measure a lone mint, this
script grants SETTLEMENT_ROLE to a temporary dev account in its throwaway deployment (scheduled,
the node's clock moved past the admin delay, executed).
Figures are receipt gasUsed, so each includes the 21,000 intrinsic gas and the calldata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Annotated

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from rich.console import Console
from rich.table import Table

from gridpoints_chain.artifacts import load_artifact
from gridpoints_chain.contracts import (
    Payment,
    PaymentApplied,
    SkipReason,
    pack_entry,
)
from gridpoints_chain.transactions import GAS_MARGIN_PERCENT
from gridpoints_chain.well_known_keys import dev_account
from gridpoints_dev.anvil import AnvilNode
from gridpoints_dev.chain import deploy_dev_contracts, grant_token_role_after_delay
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.plan import SettlementPlan, credit_chunk_leaf, payment_chunk_leaf

app = typer.Typer(add_completion=False, help=__doc__)

CHUNK = 100
# Settlement.WALLET_CHECK_MIN_GASLEFT (the run reads it back from the contract and checks it).
WALLET_CHECK_MIN_GASLEFT = 111_587
# The block gas limit the payment chunk size is sized against, and the share of it a chunk may
# ask for (a third spare for everybody else's transactions and estimation error).
BLOCK_GAS_LIMIT = 30_000_000
CHUNK_SHARE_OF_BLOCK = 2 / 3
TEMP_MINTER_INDEX = 9  # an Anvil dev account that holds no role in the deployment


@dataclass(frozen=True, slots=True)
class Measurement:
    key: str
    operation: str
    entries: int
    holders: str  # "fresh" (zero balance before) or "existing"
    gas: int
    note: str = ""


def _addresses(label: str, count: int) -> list[ChecksumAddress]:
    # Deterministic, so every run measures the same calldata (zero bytes are cheaper).
    return [to_checksum_address(keccak(text=f"gas-report:{label}:{i}")[12:]) for i in range(count)]


def _entries(addresses: list[ChecksumAddress]) -> list[bytes]:
    return [pack_entry(address, 1_000 + i) for i, address in enumerate(addresses)]


def _payers(count: int) -> list[LocalAccount]:
    # Throwaway wallets with keys derived from public labels: they exist only on this Anvil.
    return [Account.from_key(keccak(text=f"gas-report:payer:{i}")) for i in range(count)]


def measure() -> tuple[dict[str, object], list[Measurement]]:
    rows: list[Measurement] = []
    with AnvilNode() as node:
        dev = deploy_dev_contracts(node.rpc_url)
        w3, deployment, chain = dev.w3, dev.deployment, dev.chain
        admin, settler = dev.roles.admin, dev.roles.settler
        domain = chain.settlement_domain
        deadline = int(w3.eth.get_block("latest")["timestamp"]) + 86_400

        # Every chunk of epoch 1 is decided before its commit, which names their plan (the
        # contract applies only planned chunks): credit chunks 0-6, payment chunks 10-18.
        holders = _addresses("holders", CHUNK + 1)
        one, hundred = holders[:1], holders[1:]
        payers = _payers(CHUNK + 2)
        warm, first, rest = payers[-1], payers[:1], payers[1 : CHUNK + 1]
        # One payment by an ERC-1271 wallet (a test contract of contracts/test/utils), signed by
        # its owner: refusing at once, then burning all the gas it is given.
        owner = payers[0]
        wallet_address, _ = chain.sender.deploy(
            admin, load_artifact("ERC1271Wallet"), owner.address
        )
        wallet = w3.eth.contract(wallet_address, abi=load_artifact("ERC1271Wallet").abi)

        def authorization(user: str, nonce: int) -> PaymentAuthorization:
            return PaymentAuthorization(
                user=bytes.fromhex(user[2:]),
                # 32 bytes that look random, as a real charge commitment does (calldata gas).
                charge_commitment=keccak(text="gas-report:charge"),
                max_points=1_000,
                nonce=nonce,
                deadline=deadline,
            )

        def signed_by(accounts: list[LocalAccount], nonce: int) -> list[Payment]:
            return [
                Payment(sign_authorization(a, authorization(a.address, nonce), domain), 500)
                for a in accounts
            ]

        def forged(accounts: list[LocalAccount], nonce: int) -> list[Payment]:
            # Each authorisation signed by the next payer's key: the right digest, the wrong key.
            signed = []
            for i, account in enumerate(accounts):
                a = authorization(account.address, nonce)
                other = accounts[(i + 1) % len(accounts)]
                signature = bytes(Account.unsafe_sign_hash(a.digest(domain), other.key).signature)
                signed.append(Payment(SignedAuthorization(a, signature), 500))
            return signed

        def by_wallet(nonce: int) -> list[Payment]:
            a = authorization(wallet_address, nonce)
            signature = bytes(Account.unsafe_sign_hash(a.digest(domain), owner.key).signature)
            return [Payment(SignedAuthorization(a, signature), 500)]

        credit_chunks: dict[int, list[bytes]] = {
            0: _entries(_addresses("warm-up", 1)),
            1: _entries(one),
            2: _entries(hundred),
            3: _entries(one),
            4: _entries(hundred),
            5: _entries([p.address for p in payers]),
            6: [pack_entry(wallet_address, 1_000)],
        }
        payment_chunks: dict[int, list[Payment]] = {
            10: signed_by([warm], 0),
            11: signed_by(first, 0),
            12: signed_by(rest, 0),
            13: signed_by(first, 1),
            14: signed_by(rest, 1),
            # The same 100 authorisations again: every nonce is used, every payment skipped.
            15: signed_by(rest, 1),
            16: forged(rest, 2),
            # Each skip voids its nonce: every row gets a nonce in a fresh bitmap word of its
            # own, so that both pay the same zero-to-nonzero store.
            17: by_wallet(256),
            18: by_wallet(512),
        }
        leaves = [keccak(text=f"gas-report:unplanned:{i}") for i in range(19)]
        for chunk_id, entries in credit_chunks.items():
            leaves[chunk_id] = credit_chunk_leaf(entries)
        for chunk_id, payments in payment_chunks.items():
            leaves[chunk_id] = payment_chunk_leaf(
                [(p.authorization.digest(domain), p.amount) for p in payments]
            )
        plan = SettlementPlan(leaves)

        def commit(epoch_id: int) -> int:
            this = plan if epoch_id == 1 else SettlementPlan([])
            receipt = chain.commit_epoch(
                settler, epoch_id,
                records_root=keccak(text=f"records {epoch_id}"),
                credits_root=keccak(text=f"credits {epoch_id}"),
                tariff_hash=keccak(text="tariff"),
                record_count=1_000, total_credits=10**12, total_debits=10**12,
                plan_root=this.root, chunk_count=this.chunk_count,
            )  # fmt: skip
            return int(receipt["gasUsed"])

        def credits(chunk_id: int) -> int:
            entries = credit_chunks[chunk_id]
            receipt = chain.apply_credits(settler, 1, chunk_id, entries, plan.proof(chunk_id))
            return int(receipt["gasUsed"])

        rows.append(Measurement("commit_first", "commitEpoch", 0, "-", commit(1), "epoch 1"))
        rows.append(
            Measurement(
                "credits_first_chunk",
                "applyCredits",
                1,
                "fresh",
                credits(0),
                "1st chunk of epoch (a)",
            )
        )
        for key, entries, kind, chunk_id in (
            ("credits_1_fresh", 1, "fresh", 1),
            ("credits_100_fresh", CHUNK, "fresh", 2),
            ("credits_1_existing", 1, "existing", 3),
            ("credits_100_existing", CHUNK, "existing", 4),
        ):
            rows.append(Measurement(key, "applyCredits", entries, kind, credits(chunk_id)))
        rows.append(
            Measurement("commit_later", "commitEpoch", 0, "-", commit(2), "epoch 2 and later")
        )

        # Payments: every payer holds points (credited here) and signs its own authorisations.
        credits(5)

        def send(chunk_id: int, outcome: int | SkipReason) -> int:
            """Applies the chunk; every payment must burn `outcome` points, or be skipped for
            `outcome` when it is a SkipReason."""
            signed = payment_chunks[chunk_id]
            receipt = chain.apply_payments(settler, 1, chunk_id, signed, plan.proof(chunk_id))
            seen = [
                e.burned if isinstance(e, PaymentApplied) else e.reason
                for e in chain.payment_outcomes_in(receipt)
            ]
            if seen != [outcome] * len(signed):
                raise SystemExit(f"unexpected outcomes in payment chunk {chunk_id}: {seen}")
            return int(receipt["gasUsed"])

        rows.append(
            Measurement(
                "payments_first_chunk", "applyPayments", 1, "existing", send(10, 500),
                "1st payment chunk of epoch (a)",
            )
        )  # fmt: skip
        for key, count, chunk_id, note in (
            ("payments_1_first", 1, 11, "first nonce of the user (c)"),
            ("payments_100_first", CHUNK, 12, "first nonce of each user (c)"),
            ("payments_1_later", 1, 13, "nonce in a used word (c)"),
            ("payments_100_later", CHUNK, 14, "nonce in a used word (c)"),
        ):
            rows.append(
                Measurement(key, "applyPayments", count, "existing", send(chunk_id, 500), note)
            )
        rows.append(
            Measurement(
                "payments_100_skipped_used", "applyPayments", CHUNK, "existing",
                send(15, SkipReason.AUTHORIZATION_USED), "skipped: nonce used (d)",
            )
        )  # fmt: skip
        rows.append(
            Measurement(
                "payments_100_skipped_invalid", "applyPayments", CHUNK, "existing",
                send(16, SkipReason.INVALID_SIGNATURE), "skipped: wrong key (d)",
            )
        )  # fmt: skip
        credits(6)
        for key, mode, chunk_id, note in (
            ("payments_1_wallet_refuses", 1, 17, "skipped: wallet refuses (e)"),
            ("payments_1_wallet_burns_gas", 4, 18, "skipped: wallet burns its gas (e)"),
        ):
            chain.transact(admin, wallet.functions.setMode(mode))
            rows.append(
                Measurement(
                    key, "applyPayments", 1, "existing",
                    send(chunk_id, SkipReason.INVALID_SIGNATURE), note,
                )
            )  # fmt: skip
        info_wallet_check_gas = chain.wallet_check_gas
        info_wallet_min_gasleft = int(
            chain.call(chain.settlement.functions.WALLET_CHECK_MIN_GASLEFT())
        )

        # A lone mint, as a contract without packed batches would do it. Only possible here
        # because this throwaway deployment grants the role to a temporary account.
        minter: LocalAccount = dev_account(TEMP_MINTER_INDEX)
        grant_token_role_after_delay(chain, admin, "SETTLEMENT_ROLE", minter.address)
        single_fresh = _addresses("single", 1)[0]
        for key, holders, to in (
            ("mint_fresh", "fresh", single_fresh),
            ("mint_existing", "existing", one[0]),
        ):
            receipt = chain.transact(minter, chain.token.functions.mint(to, 1_000))
            rows.append(
                Measurement(
                    key,
                    "PointsToken.mint",
                    1,
                    holders,
                    int(receipt["gasUsed"]),
                    "temporary minter (b)",
                )
            )
        info: dict[str, object] = {
            "chain_id": deployment.chain_id,
            "anvil": "fresh throwaway node, stopped after the run",
            "temporary_minter": minter.address,
            "wallet_check_gas": info_wallet_check_gas,
            "wallet_check_min_gasleft": info_wallet_min_gasleft,
        }
    return info, rows


def derive(rows: list[Measurement]) -> dict[str, float]:
    gas = {row.key: row.gas for row in rows}
    return {
        "credit_avg_fresh": gas["credits_100_fresh"] / CHUNK,
        "credit_avg_existing": gas["credits_100_existing"] / CHUNK,
        "credit_marginal_fresh": (gas["credits_100_fresh"] - gas["credits_1_fresh"]) / (CHUNK - 1),
        "credit_marginal_existing": (gas["credits_100_existing"] - gas["credits_1_existing"])
        / (CHUNK - 1),
        "batch_vs_single_mints_fresh": gas["credits_100_fresh"] / (CHUNK * gas["mint_fresh"]),
        "batch_vs_single_mints_existing": gas["credits_100_existing"]
        / (CHUNK * gas["mint_existing"]),
        "payment_avg_first": gas["payments_100_first"] / CHUNK,
        "payment_avg_later": gas["payments_100_later"] / CHUNK,
        "payment_marginal_first": (gas["payments_100_first"] - gas["payments_1_first"])
        / (CHUNK - 1),
        "payment_marginal_later": (gas["payments_100_later"] - gas["payments_1_later"])
        / (CHUNK - 1),
        "skip_avg_used": gas["payments_100_skipped_used"] / CHUNK,
        "skip_avg_invalid": gas["payments_100_skipped_invalid"] / CHUNK,
        "wallet_griefing_extra": gas["payments_1_wallet_burns_gas"]
        - gas["payments_1_wallet_refuses"],
        # What the settlement worker asks per payment in the worst case: every payment's wallet
        # burns its gas when estimated (the whole one-payment chunk without the 21,000 intrinsic
        # gas, an upper bound of one payment's share), plus the pipeline's 25 % margin, plus the
        # headroom for a wallet that appears after the estimate (WALLET_CHECK_MIN_GASLEFT).
        "payment_gas_limit_worst": (gas["payments_1_wallet_burns_gas"] - 21_000)
        * (100 + GAS_MARGIN_PERCENT)
        / 100
        + WALLET_CHECK_MIN_GASLEFT,
        "payment_gas_limit_eoa": (gas["payments_100_first"] / CHUNK)
        * (100 + GAS_MARGIN_PERCENT)
        / 100
        + WALLET_CHECK_MIN_GASLEFT,
    }


@app.command()
def main(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    info, rows = measure()
    if info["wallet_check_min_gasleft"] != WALLET_CHECK_MIN_GASLEFT:
        raise SystemExit(f"WALLET_CHECK_MIN_GASLEFT is {info['wallet_check_min_gasleft']} now")
    derived = derive(rows)
    derived["payment_chunk_max"] = int(
        BLOCK_GAS_LIMIT * CHUNK_SHARE_OF_BLOCK // derived["payment_gas_limit_worst"]
    )
    if as_json:
        typer.echo(
            json.dumps({**info, "rows": [asdict(r) for r in rows], "derived": derived}, indent=2)
        )
        return
    # Wide enough for the table even when stdout is not a terminal (CI logs, files).
    console = Console(width=max(Console().width, 100))
    table = Table(title="GridPoints settlement gas (receipt gasUsed, Anvil, Prague)")
    table.add_column("operation")
    table.add_column("entries", justify="right")
    table.add_column("holders")
    table.add_column("gas", justify="right")
    table.add_column("gas / entry", justify="right")
    table.add_column("note")
    for row in rows:
        per = f"{row.gas / row.entries:,.0f}" if row.entries else ""
        table.add_row(
            row.operation, str(row.entries or ""), row.holders, f"{row.gas:,}", per, row.note
        )
    console.print(table)
    summary = Table(title="Per-entry figures", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_row("average per credit, fresh holders", f"{derived['credit_avg_fresh']:,.0f}")
    summary.add_row(
        "average per credit, existing holders", f"{derived['credit_avg_existing']:,.0f}"
    )
    summary.add_row(
        "marginal per credit, fresh ((100-chunk - 1-chunk) / 99)",
        f"{derived['credit_marginal_fresh']:,.0f}",
    )
    summary.add_row("marginal per credit, existing", f"{derived['credit_marginal_existing']:,.0f}")
    summary.add_row(
        "100-credit chunk / 100 single mints, fresh",
        f"{derived['batch_vs_single_mints_fresh']:.1%}",
    )
    summary.add_row(
        "100-credit chunk / 100 single mints, existing",
        f"{derived['batch_vs_single_mints_existing']:.1%}",
    )
    summary.add_row("average per payment, first nonce", f"{derived['payment_avg_first']:,.0f}")
    summary.add_row(
        "average per payment, nonce in a used word", f"{derived['payment_avg_later']:,.0f}"
    )
    summary.add_row(
        "marginal per payment, first nonce", f"{derived['payment_marginal_first']:,.0f}"
    )
    summary.add_row(
        "marginal per payment, nonce in a used word", f"{derived['payment_marginal_later']:,.0f}"
    )
    summary.add_row("average per skipped payment, nonce used", f"{derived['skip_avg_used']:,.0f}")
    summary.add_row("average per skipped payment, wrong key", f"{derived['skip_avg_invalid']:,.0f}")
    summary.add_row(
        f"gas-burning wallet over a refusing one (cap {info['wallet_check_gas']:,})",
        f"{derived['wallet_griefing_extra']:,.0f}",
    )
    summary.add_row(
        "gas limit asked per payment: EOA / every wallet burns its gas",
        f"{derived['payment_gas_limit_eoa']:,.0f} / {derived['payment_gas_limit_worst']:,.0f}",
    )
    summary.add_row(
        f"payments per chunk within {CHUNK_SHARE_OF_BLOCK:.0%} of a {BLOCK_GAS_LIMIT:,} block, "
        "worst case (f)",
        f"{derived['payment_chunk_max']:,}",
    )
    console.print(summary)
    console.print(
        "(a) The first chunk of an epoch touches the epoch's slots cold (here also the token's "
        "total supply, written for the first time: the first mint ever); the other applyCredits "
        "rows are measured after it (steady state). The first payment chunk of an epoch also "
        "writes its applied debits for the first time.\n"
        f"(b) Single mints were sent by {info['temporary_minter']}, a temporary account granted "
        "SETTLEMENT_ROLE in this throwaway deployment only; in a real deployment only the "
        "Settlement contract holds that role.\n"
        "(c) Each payment carries the user's EIP-712 authorisation and 65-byte signature; the "
        "contract checks the signature (EXTCODESIZE + ecrecover), reads the nonce's bit, marks "
        "the nonce in the user's bitmap (a fresh 256-nonce word costs a zero-to-nonzero store; "
        "later nonces in the same word are cheaper), reads the balance, burns and emits "
        "PaymentApplied.\n"
        "(d) Skipped payments burn nothing and emit PaymentSkipped; the signature is checked "
        "first (ecrecover in both rows), and a wrong key voids the nonce (a store in a used "
        "word here).\n"
        "(e) The wallet's isValidSignature gets exactly WALLET_CHECK_GAS (the contract reverts "
        f"unless {info['wallet_check_min_gasleft']:,} gas is left before asking); a wallet "
        "that spins until it runs out costs the chunk at most that much more than one that "
        "refuses. Each row voids a nonce in a fresh bitmap word.\n"
        "(f) The settlement worker's gas limit for a payment chunk is the estimate plus "
        f"{GAS_MARGIN_PERCENT} % plus WALLET_CHECK_MIN_GASLEFT per payment; the worst case is "
        "every payment's wallet burning its gas at the estimate. GRIDPOINTS_PAYMENT_CHUNK_SIZE "
        "is capped below this figure.\n"
        "Fresh holders had a zero balance before; existing holders already held points. "
        "All figures include the 21,000 intrinsic gas and the calldata."
    )


if __name__ == "__main__":
    app()
