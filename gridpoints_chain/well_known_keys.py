"""The publicly known development keys (Anvil's and Hardhat's standard mnemonic).

Not tooling: the product must recognise these keys to refuse them where a secret matters
(a plain settler key file off a development chain, a deployment without named role holders).
The helpers that *use* them to run a local chain live in gridpoints_dev.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.signers.local import LocalAccount

DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"

# Dev-account indices under the standard mnemonic when no role holder is named.
DEV_DEPLOYER, DEV_REGISTRAR, DEV_SETTLER = 0, 1, 2


def dev_account(index: int, mnemonic: str = DEFAULT_MNEMONIC) -> LocalAccount:
    """Anvil's dev account `index` (BIP-44 path m/44'/60'/0'/0/index) of `mnemonic`.

    Derived rather than written down so that no private key sits in the source.
    """
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def is_dev_key(account: LocalAccount) -> bool:
    """Whether `account` is one of the publicly known dev keys (first 20 of the mnemonic)."""
    return any(dev_account(i).address == account.address for i in range(20))
