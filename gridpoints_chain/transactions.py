"""The one transaction pipeline: prepare, sign, (the caller stores its intent), broadcast, wait.

Every transaction GridPoints sends goes through a `TxSender`, in explicit steps:

1. `prepare` builds the call, estimates its gas (a revert there is decoded into a
   `ContractRevertError`: nothing is spent and no nonce is taken), sets the gas limit by the one
   margin policy (`gas_limit`), lets the node's fee suggestion fill the fees and takes the nonce
   from the one `NonceManager`;
2. `sign` signs it with a `TransactionAccount`: an eth_account ``LocalAccount``, or a
   `gridpoints_chain.signer_account.SignerAccount` whose key never leaves its PKCS#11 token;
3. the caller may now make the signed transaction durable — the settlement worker stores its
   raw bytes, hash and nonce before anything leaves the process, so that after a crash it knows
   every transaction it may have sent;
4. `broadcast` hands the raw bytes to the node; a refusal (`BroadcastRefusedError`) makes the
   nonce manager ask the node again;
5. `wait` reads the receipt; a failed one is replayed to decode its revert.

`transact` runs all five at once, for callers with nothing to persist between the steps
(deployment, registration, tests). `prepare_replacement` re-prepares a stuck transaction with
its nonce and gas limit and fees high enough for a node to take it in the original's place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

from eth_account.datastructures import SignedTransaction
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    ContractLogicError,
    TransactionIndexingInProgress,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import Nonce, TxData, TxParams, TxReceipt, Wei

from gridpoints_chain.artifacts import ContractArtifact
from gridpoints_chain.errors import (
    BroadcastRefusedError,
    ChainError,
    ErrorDecoder,
    TransactionFailedError,
    revert_data,
)

# The one gas margin policy, for every transaction (settlement chunks, deployment,
# registration). State may move between the estimate and the block that includes the
# transaction (another transaction lands first and turns a zero storage slot non-zero, a
# chunk's users change their balances), so every estimated limit gets 25% on top — the larger of
# the two margins the settlement worker and the sender used to apply apart. Unused gas is not
# charged; the margin only asks the sender's balance to cover gas limit times max fee. Gas an
# estimate cannot see at all is the caller's explicit `headroom` (see `gas_limit`).
GAS_MARGIN_PERCENT = 25

# A node takes a transaction in place of a pending one with the same nonce only when both
# EIP-1559 fee fields rose by at least 10% (geth's default price bump); 12.5% also beats the
# market when the base fee rose meanwhile.
REPLACEMENT_FEE_BUMP = (9, 8)

# How often a receipt is asked for while waiting (web3's own default).
RECEIPT_POLL_INTERVAL_S = 0.1

# Replies of a node that already holds the very bytes being broadcast: nothing to do.
_ALREADY_KNOWN = ("already known", "already imported")


def gas_limit(estimate: int, *, headroom: int = 0) -> int:
    """The gas limit of an estimated call: the estimate plus `GAS_MARGIN_PERCENT`, plus the
    caller's `headroom` for gas the estimate cannot see (the settlement's payment chunks: a
    user may turn into a contract wallet before the block, which the contract then calls)."""
    return estimate + estimate * GAS_MARGIN_PERCENT // 100 + headroom


def bumped_fee(fee: int) -> int:
    """`fee` raised enough for a node to accept a replacement (see REPLACEMENT_FEE_BUMP)."""
    numerator, denominator = REPLACEMENT_FEE_BUMP
    return fee * numerator // denominator + 1


class TransactionAccount(Protocol):
    """What the pipeline needs of an account: ``LocalAccount`` or SignerAccount."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, transaction_dict: dict[str, Any]) -> SignedTransaction: ...


Sendable: TypeAlias = ContractFunction | ContractConstructor


# ---- nonces ---------------------------------------------------------------------------------


class NonceCounts(NamedTuple):
    """An account's transaction counts as the node sees them."""

    mined: int  # the lowest nonce not yet in a block
    pending: int  # the lowest nonce neither in a block nor in the node's pool


class NonceManager:
    """Hands out consecutive nonces per sender without asking the node each time.

    The first nonce of an address comes from the node's pending count; after that the manager
    counts locally, which is what lets one process send back-to-back transactions. `reset`
    forgets what it counted (after an evm_revert, a refused broadcast, or a transaction sent
    from the account behind the manager's back), so the next nonce comes from the node again;
    `taken` records a nonce used by a stored transaction broadcast again.
    """

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3
        self._next: dict[ChecksumAddress, int] = {}
        self._lock = threading.Lock()

    def reserve(self, address: str) -> int:
        key = to_checksum_address(address)
        with self._lock:
            if key not in self._next:
                self._next[key] = self._w3.eth.get_transaction_count(key, "pending")
            nonce = self._next[key]
            self._next[key] = nonce + 1
            return nonce

    def release(self, address: str, nonce: int) -> None:
        """Gives `nonce` back when its transaction never reached the node."""
        key = to_checksum_address(address)
        with self._lock:
            if self._next.get(key) == nonce + 1:
                self._next[key] = nonce
            else:
                # A later nonce was handed out meanwhile; only the node knows the truth now.
                self._next.pop(key, None)

    def taken(self, address: str, nonce: int) -> None:
        """A transaction with `nonce` reached the node without `reserve` (a stored intent
        broadcast again): the next nonce is the one after it."""
        with self._lock:
            self._next[to_checksum_address(address)] = nonce + 1

    def reset(self, address: str | None = None) -> None:
        with self._lock:
            if address is None:
                self._next.clear()
            else:
                self._next.pop(to_checksum_address(address), None)

    def on_chain(self, address: str) -> NonceCounts:
        """The node's counts for `address`, bypassing what the manager counted."""
        key = to_checksum_address(address)
        return NonceCounts(
            mined=self._w3.eth.get_transaction_count(key, "latest"),
            pending=self._w3.eth.get_transaction_count(key, "pending"),
        )


# ---- the steps' products --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    """An unsigned transaction with its gas limit, fees and nonce (`prepare`'s product)."""

    params: TxParams
    context: str
    nonce_reserved: bool  # from the NonceManager, given back if it is never signed

    @property
    def sender(self) -> ChecksumAddress:
        return to_checksum_address(str(self.params["from"]))

    @property
    def nonce(self) -> int:
        return int(self.params["nonce"])

    @property
    def gas(self) -> int:
        return int(self.params["gas"])


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed transaction (`sign`'s product): what a caller stores as its intent — raw
    bytes, hash, nonce — before `broadcast`. `params` are the unsigned fields, from which a
    failed transaction is replayed to decode its revert."""

    sender: ChecksumAddress
    nonce: int
    tx_hash: bytes
    raw: bytes
    params: TxParams
    context: str


# ---- the pipeline ---------------------------------------------------------------------------


class TxSender:
    """The transaction pipeline of one node: `prepare`, `sign`, `broadcast`, `wait` (module
    docstring), `transact` for all of them at once, and `call` for decoded read-only calls.

    Passing `gas` to `prepare` or `transact` skips the estimate: the transaction is then mined
    even if it reverts, and the revert is decoded by replaying it with eth_call on the state
    before its block.
    """

    def __init__(
        self,
        w3: Web3,
        decoder: ErrorDecoder,
        *,
        nonces: NonceManager | None = None,
        receipt_timeout: float = 120.0,
    ) -> None:
        self.w3 = w3
        self.decoder = decoder
        self.nonces = nonces or NonceManager(w3)
        self.receipt_timeout = receipt_timeout
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    # -- 1. prepare -------------------------------------------------------------------------

    def estimate(self, sender: str, call: Sendable, *, value: int = 0, context: str = "") -> int:
        """eth_estimateGas of `call` from `sender`; a revert is raised decoded."""
        try:
            return int(call.estimate_gas(self._fields(to_checksum_address(sender), value=value)))
        except ContractLogicError as exc:
            context = context or _describe(call)
            raise self.decoder.revert_error(revert_data(exc), context=context) from exc

    def prepare(
        self,
        sender: str,
        call: Sendable,
        *,
        value: int = 0,
        gas: int | None = None,
        headroom: int = 0,
        context: str = "",
    ) -> PreparedTransaction:
        """`call` from `sender` with its gas limit — `gas`, or the estimate by `gas_limit` with
        `headroom` — the node's suggested fees and the sender's next nonce."""
        context = context or _describe(call)
        address = to_checksum_address(sender)
        if gas is None:
            gas = gas_limit(
                self.estimate(address, call, value=value, context=context), headroom=headroom
            )
        nonce = self.nonces.reserve(address)
        try:
            params = call.build_transaction(
                self._fields(address, value=value, gas=gas, nonce=nonce)
            )
        except BaseException:
            self.nonces.release(address, nonce)
            raise
        return PreparedTransaction(params, context, nonce_reserved=True)

    def prepare_replacement(
        self, original: Mapping[str, Any], call: Sendable, *, context: str = ""
    ) -> PreparedTransaction:
        """`call` again in place of the pending `original` (as eth_getTransactionByHash gives
        it): same sender, nonce and gas limit, both EIP-1559 fee fields raised by
        `bumped_fee` over the original's and at least the node's current suggestion.

        The call is estimated first, so a call that would now revert is raised decoded and
        nothing is signed."""
        context = context or _describe(call)
        sender = to_checksum_address(str(original["from"]))
        value = int(original.get("value") or 0)
        self.estimate(sender, call, value=value, context=context)
        params = call.build_transaction(
            self._fields(
                sender, value=value, gas=int(original["gas"]), nonce=int(original["nonce"])
            )
        )
        old_max = int(original.get("maxFeePerGas") or original.get("gasPrice") or 0)
        old_tip = int(original.get("maxPriorityFeePerGas") or 0)
        params["maxFeePerGas"] = Wei(max(int(params.get("maxFeePerGas", 0)), bumped_fee(old_max)))
        params["maxPriorityFeePerGas"] = Wei(
            max(int(params.get("maxPriorityFeePerGas", 0)), bumped_fee(old_tip))
        )
        params.pop("gasPrice", None)
        return PreparedTransaction(params, context, nonce_reserved=False)

    def _fields(
        self,
        sender: ChecksumAddress,
        *,
        value: int,
        gas: int | None = None,
        nonce: int | None = None,
    ) -> TxParams:
        fields: TxParams = {"from": sender, "value": Wei(value), "chainId": self.chain_id}
        if gas is not None:
            fields["gas"] = gas
        if nonce is not None:
            fields["nonce"] = Nonce(nonce)
        return fields

    # -- 2. sign ----------------------------------------------------------------------------

    def sign(self, account: TransactionAccount, prepared: PreparedTransaction) -> SignedTx:
        """Signs `prepared` with `account`; a nonce it reserved is given back on failure."""
        try:
            signed = account.sign_transaction(dict(prepared.params))
        except BaseException:
            if prepared.nonce_reserved:
                self.nonces.release(prepared.sender, prepared.nonce)
            raise
        return SignedTx(
            sender=prepared.sender,
            nonce=prepared.nonce,
            tx_hash=bytes(signed.hash),
            raw=bytes(signed.raw_transaction),
            params=prepared.params,
            context=prepared.context,
        )

    # -- 3. the caller stores its intent; 4. broadcast ---------------------------------------

    def broadcast(self, raw: bytes, *, sender: str) -> bytes:
        """Hands the signed transaction `raw` from `sender` to the node; returns its hash.

        Broadcasting bytes the node already holds is a success (a stored intent sent again).
        After any failure the nonce manager asks the node next time: a refused transaction
        leaves its nonce free, and a timeout may hide a transaction the node did accept.
        Raises BroadcastRefusedError when the node refused it.
        """
        tx_hash = keccak(raw)
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            message = str(exc)
            if any(known in message.lower() for known in _ALREADY_KNOWN):
                return tx_hash
            self.nonces.reset(sender)
            raise BroadcastRefusedError(tx_hash, message) from exc
        except BaseException:
            self.nonces.reset(sender)
            raise
        return tx_hash

    # -- 5. wait ----------------------------------------------------------------------------

    def receipt(self, tx_hash: bytes) -> TxReceipt | None:
        """The receipt of `tx_hash`, or None while it is not mined (or unknown)."""
        try:
            return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except (TransactionNotFound, TransactionIndexingInProgress):
            return None

    def transaction(self, tx_hash: bytes) -> TxData | None:
        """The transaction `tx_hash` as the node knows it (pending or mined), or None."""
        try:
            return self.w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return None

    def first_receipt(
        self,
        tx_hashes: Sequence[bytes],
        *,
        timeout: float,
        poll_interval: float = RECEIPT_POLL_INTERVAL_S,
        stop: threading.Event | None = None,
    ) -> TxReceipt | None:
        """The receipt of whichever of `tx_hashes` is mined (a transaction and its
        replacements share a nonce: one at most ever is); None after `timeout` seconds, or as
        soon as `stop` is set. The receipt's status is the caller's to judge (see `check`)."""
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            for tx_hash in tx_hashes:
                receipt = self.receipt(tx_hash)
                if receipt is not None:
                    return receipt
            if time.monotonic() > deadline:
                return None
            if stop is None:
                time.sleep(poll_interval)
            else:
                stop.wait(poll_interval)
        return None

    def wait(
        self, tx_hash: bytes, *, context: str = "", replay: Mapping[str, Any] | None = None
    ) -> TxReceipt:
        """Waits up to `receipt_timeout` for the successful receipt of `tx_hash` (see `check`);
        ChainError when none comes."""
        receipt = self.first_receipt([tx_hash], timeout=self.receipt_timeout)
        if receipt is None:
            raise ChainError(
                f"no receipt for {context or 'transaction'} 0x{bytes(tx_hash).hex()} "
                f"after {self.receipt_timeout}s"
            )
        return self.check(receipt, context=context, replay=replay)

    def check(
        self, receipt: TxReceipt, *, context: str = "", replay: Mapping[str, Any] | None = None
    ) -> TxReceipt:
        """`receipt` if it succeeded. A failed one raises ContractRevertError decoded by
        replaying `replay` (the transaction's unsigned fields), or TransactionFailedError when
        the replay gives no reason."""
        if receipt["status"] == 1:
            return receipt
        if replay is not None:
            data = self._replay(replay, receipt)
            if data is not None:
                raise self.decoder.revert_error(
                    data,
                    tx_hash=bytes(receipt["transactionHash"]),
                    receipt=receipt,
                    context=context,
                )
        raise TransactionFailedError(receipt, context)

    def _replay(self, tx: Mapping[str, Any], receipt: TxReceipt) -> bytes | None:
        call: TxParams = {
            "from": tx["from"],
            "value": tx.get("value", 0),
            "data": tx.get("data", b""),
            "gas": tx["gas"],
        }
        if tx.get("to"):
            call["to"] = tx["to"]
        # The parent block's state is exact when the transaction was alone in its block (Anvil's
        # automine) and the best available approximation otherwise.
        try:
            self.w3.eth.call(call, block_identifier=max(0, receipt["blockNumber"] - 1))
        except ContractLogicError as exc:
            return revert_data(exc)
        return None

    # -- all steps at once ------------------------------------------------------------------

    def transact(
        self,
        account: TransactionAccount,
        call: Sendable,
        *,
        gas: int | None = None,
        value: int = 0,
        context: str = "",
    ) -> TxReceipt:
        """Prepares, signs, broadcasts and waits for `call` from `account`; returns its
        successful receipt.

        Raises ContractRevertError (decoded) when it reverts, TransactionFailedError when it
        was mined with status 0 and the replay gives no reason, ChainError on receipt timeout.
        """
        context = context or _describe(call)

        def prepared_and_signed() -> SignedTx:
            prepared = self.prepare(account.address, call, value=value, gas=gas, context=context)
            return self.sign(account, prepared)

        signed = prepared_and_signed()
        try:
            self.broadcast(signed.raw, sender=signed.sender)
        except BroadcastRefusedError as exc:
            if not exc.nonce_conflict:
                raise
            # Someone else sent from this account: one retry, with the nonce the node now gives.
            signed = prepared_and_signed()
            self.broadcast(signed.raw, sender=signed.sender)
        return self.wait(signed.tx_hash, context=context, replay=signed.params)

    def call(self, call: ContractFunction, *, sender: str | None = None) -> Any:
        """A read-only call whose revert is decoded like a transaction's."""
        params: TxParams = {"from": to_checksum_address(sender)} if sender else {}
        try:
            return call.call(params)
        except ContractLogicError as exc:
            raise self.decoder.revert_error(revert_data(exc), context=_describe(call)) from exc

    def deploy(
        self, account: TransactionAccount, artifact: ContractArtifact, *args: Any
    ) -> tuple[ChecksumAddress, TxReceipt]:
        """Deploys `artifact` with constructor `args`; returns its address and receipt."""
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.transact(account, factory.constructor(*args), context=artifact.name)
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"{artifact.name} deployment receipt has no contract address")
        return to_checksum_address(address), receipt


def _describe(call: Sendable) -> str:
    if isinstance(call, ContractConstructor):
        return "constructor"
    return str(getattr(call, "fn_name", "call"))
