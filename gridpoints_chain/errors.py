"""Chain errors and revert decoding.

Every failed chain interaction is a `ChainError`; a revert is a `ContractRevertError` carrying
the custom error's name and decoded arguments, looked up by `ErrorDecoder` in the ABIs of all
three contracts: a revert raised by the token during a settlement call surfaces as
`EnforcedPause` or `ERC20InsufficientBalance`, not as opaque bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string), from require/revert("...")
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256), from asserts and checked arithmetic


# ---- errors ---------------------------------------------------------------------------------


class ChainError(RuntimeError):
    """A chain interaction failed."""


class ContractRevertError(ChainError):
    """A call or transaction reverted.

    ``error_name`` is the custom error (``"EpochOutOfOrder"``), ``"Error"`` for a revert string,
    ``"Panic"`` for a panic code, or None when the revert data matches nothing known (then
    ``data`` holds the raw bytes). ``error_args`` are the decoded arguments in ABI order, with
    addresses checksummed; ``named_args`` maps the ABI's parameter names to them.
    """

    def __init__(
        self,
        error_name: str | None,
        error_args: tuple[Any, ...],
        data: bytes,
        *,
        named_args: Mapping[str, Any] | None = None,
        tx_hash: bytes | None = None,
        receipt: TxReceipt | None = None,
        context: str = "",
    ) -> None:
        self.error_name = error_name
        self.error_args = error_args
        self.named_args: dict[str, Any] = dict(named_args or {})
        self.data = data
        self.tx_hash = tx_hash
        self.receipt = receipt
        self.context = context
        if error_name is None:
            what = f"unknown revert data 0x{data.hex()}" if data else "revert without data"
        else:
            what = f"{error_name}({', '.join(_short(a) for a in error_args)})"
        where = f" in {context}" if context else ""
        mined = f" (mined in tx 0x{tx_hash.hex()})" if tx_hash else ""
        super().__init__(f"reverted{where}: {what}{mined}")

    @property
    def error(self) -> tuple[str | None, tuple[Any, ...]]:
        """``(error_name, error_args)``, convenient for a single equality assertion."""
        return self.error_name, self.error_args


class TransactionFailedError(ChainError):
    """A transaction was mined with status 0 and replaying it gave no revert reason."""

    def __init__(self, receipt: TxReceipt, context: str = "") -> None:
        self.receipt = receipt
        where = f" {context}" if context else ""
        super().__init__(f"transaction{where} 0x{bytes(receipt['transactionHash']).hex()} failed")


class BroadcastRefusedError(ChainError):
    """The node refused a signed transaction: its nonce is taken, its fees are too low, ...

    ``node_message`` is the node's own words; nothing of the transaction reached the pool.
    """

    def __init__(self, tx_hash: bytes, node_message: str) -> None:
        self.tx_hash = tx_hash
        self.node_message = node_message
        super().__init__(f"node refused transaction 0x{tx_hash.hex()}: {node_message}")

    @property
    def nonce_conflict(self) -> bool:
        """Whether the node refused the nonce ("nonce too low", "nonce already used", ...)."""
        return "nonce" in self.node_message.lower()


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return repr(value) if isinstance(value, str) else str(value)


# ---- revert decoding ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One custom error of an ABI."""

    name: str
    signature: str
    types: tuple[str, ...]
    arg_names: tuple[str, ...]

    @property
    def selector(self) -> bytes:
        return keccak(text=self.signature)[:4]


class ErrorDecoder:
    """Maps revert data to the custom errors of a set of ABIs.

    The same error declared in several ABIs (OpenZeppelin's AccessControl errors are in all
    three) has one selector and one meaning, so duplicates collapse; two *different* errors
    sharing a selector would make decoding ambiguous and are refused.
    """

    def __init__(self, abis: Iterable[Sequence[Mapping[str, Any]]]) -> None:
        self._specs: dict[bytes, ErrorSpec] = {
            ERROR_STRING_SELECTOR: ErrorSpec("Error", "Error(string)", ("string",), ("message",)),
            PANIC_SELECTOR: ErrorSpec("Panic", "Panic(uint256)", ("uint256",), ("code",)),
        }
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                inputs = entry.get("inputs", [])
                types = tuple(collapse_if_tuple(dict(i)) for i in inputs)
                spec = ErrorSpec(
                    name=entry["name"],
                    signature=f"{entry['name']}({','.join(types)})",
                    types=types,
                    arg_names=tuple(i.get("name", "") for i in inputs),
                )
                known = self._specs.get(spec.selector)
                if known is not None and known.signature != spec.signature:
                    raise ValueError(f"selector clash: {known.signature} and {spec.signature}")
                self._specs[spec.selector] = spec

    @property
    def names(self) -> set[str]:
        return {spec.name for spec in self._specs.values()}

    def spec(self, name: str) -> ErrorSpec:
        for candidate in self._specs.values():
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def decode(self, data: bytes) -> tuple[str | None, tuple[Any, ...], dict[str, Any]]:
        """``(name, args, named_args)``; name None when the data matches no known error."""
        spec = self._specs.get(bytes(data[:4])) if len(data) >= 4 else None
        if spec is None:
            return None, (), {}
        try:
            raw = abi_decode(list(spec.types), bytes(data[4:]))
        except (DecodingError, OverflowError, ValueError):
            return None, (), {}
        args = tuple(_normalize(t, v) for t, v in zip(spec.types, raw, strict=True))
        named = {n: v for n, v in zip(spec.arg_names, args, strict=True) if n}
        return spec.name, args, named

    def revert_error(self, data: bytes, **kwargs: Any) -> ContractRevertError:
        name, args, named = self.decode(data)
        return ContractRevertError(name, args, bytes(data), named_args=named, **kwargs)


def _normalize(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    return value


def revert_data(exc: ContractLogicError) -> bytes:
    """The raw revert bytes that web3 attached to `exc` (empty when there were none)."""
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return b""
