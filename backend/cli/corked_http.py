"""uvicorn's httptools protocol with its writes corked until the end of the loop's iteration.

Why: uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and the body when it sends ``http.response.body``: two ``send()``
calls, two TCP segments and two wake-ups of the client for every small response. In py-spy
profiles of the servers under single-record POSTs (``--gil``: the samples where the interpreter
lock was held), uvicorn's ``RequestResponseCycle.send`` was a quarter of all samples, nearly all
of it those system calls. Here the writes of one iteration of the event loop go out as one
(``call_soon`` flushes them, after the app's two ``send`` calls have both run), so a
response costs one system call. Order is kept: every write goes through the cork, and closing
flushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """`transport` whose writes are joined and sent at the end of the loop's iteration."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # A copy of anything mutable: the caller may reuse its buffer before the flush.
        chunk = data if type(data) is bytes else bytes(data)
        if self._pending is None:
            self._pending = [chunk]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(chunk)

    def flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (pause/resume reading, extra info, is_closing, set_protocol, ...) is
        # the transport's own.
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``--http httptools`` protocol on a `CorkedTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked: Any = CorkedTransport(transport, self.loop)
        super().connection_made(corked)
