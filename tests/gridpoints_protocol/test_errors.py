"""One error base for the protocol core: every exception a gridpoints_protocol module defines
derives from `ProtocolError`, and the root errors keep the builtin bases callers catch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gridpoints_protocol
from gridpoints_protocol.accumulator import SealingError
from gridpoints_protocol.eip712 import ValueProblem
from gridpoints_protocol.errors import ProtocolError, RecordValidationError
from gridpoints_protocol.payments import PaymentProblem
from gridpoints_protocol.record import SignatureError
from gridpoints_protocol.tariff import TariffError, ValuationError


def _defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.iter_modules(gridpoints_protocol.__path__):
        module = importlib.import_module(f"gridpoints_protocol.{info.name}")
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_exception_of_the_core_is_a_protocol_error() -> None:
    defined = _defined_exceptions()
    assert {SignatureError, RecordValidationError, TariffError, SealingError} <= set(defined)
    assert [e for e in defined if not issubclass(e, ProtocolError)] == []


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (RecordValidationError, ValueError),
        (SignatureError, ValueError),
        (TariffError, ValueError),
        (ValuationError, ValueError),
        (SealingError, RuntimeError),
        (PaymentProblem, Exception),
        (ValueProblem, Exception),
    ],
)
def test_root_errors_keep_their_builtin_base(
    error: type[ProtocolError], builtin: type[Exception]
) -> None:
    assert issubclass(error, ProtocolError) and issubclass(error, builtin)
