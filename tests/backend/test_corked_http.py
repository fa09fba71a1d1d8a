"""The corked transport of `gridpoints serve` (backend/cli/corked_http.py): the writes of one
event-loop iteration leave as one, in order, and nothing is lost at a close. A real socket pair
and a real event loop; the only addition is a counter around the real transport's `write`, to
see how many system-level writes the cork made."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx

from backend.cli.corked_http import CorkedTransport
from tests.support.backend import ServerThread


class _CountingProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def _pair() -> tuple[CorkedTransport, list[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(_CountingProtocol, ours)
    writes: list[bytes] = []
    real_write = transport.write

    def counted(data: Any) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = counted  # type: ignore[method-assign]
    return CorkedTransport(transport, loop), writes, theirs  # type: ignore[arg-type]


async def _read_all(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while len(received) < size:
        chunk = await loop.sock_recv(peer, 65536)
        if not chunk:
            break
        received += chunk
    return received


def test_writes_of_one_iteration_leave_as_one_write_in_order() -> None:
    async def scenario() -> tuple[list[bytes], bytes]:
        corked, writes, peer = await _pair()
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(bytearray(b"body"))
        corked.write(memoryview(b"!"))
        assert writes == []  # nothing sent before the iteration ends
        received = await _read_all(peer, 24)
        corked.close()
        peer.close()
        return writes, received

    writes, received = asyncio.run(scenario())
    assert writes == [b"HTTP/1.1 200 OK\r\n\r\nbody!"]
    assert received == b"HTTP/1.1 200 OK\r\n\r\nbody!"


def test_writes_of_later_iterations_follow_in_order() -> None:
    async def scenario() -> tuple[list[bytes], bytes]:
        corked, writes, peer = await _pair()
        corked.write(b"one ")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        corked.write(b"two ")
        corked.write(b"three")
        received = await _read_all(peer, 13)
        corked.close()
        peer.close()
        return writes, received

    writes, received = asyncio.run(scenario())
    assert writes == [b"one ", b"two three"]
    assert received == b"one two three"


def test_a_buffer_changed_after_the_write_is_sent_as_it_was() -> None:
    async def scenario() -> bytes:
        corked, _, peer = await _pair()
        buffer = bytearray(b"before")
        corked.write(buffer)
        buffer[:] = b"AFTER!"
        received = await _read_all(peer, 6)
        corked.close()
        peer.close()
        return received

    assert asyncio.run(scenario()) == b"before"


def test_close_sends_what_is_pending_first() -> None:
    async def scenario() -> bytes:
        corked, _, peer = await _pair()
        corked.write(b"last words")
        corked.close()
        received = await _read_all(peer, 1 << 20)  # up to the end of the stream
        peer.close()
        return received

    assert asyncio.run(scenario()) == b"last words"


def test_a_flush_after_the_transport_closed_drops_quietly() -> None:
    async def scenario() -> list[bytes]:
        corked, writes, peer = await _pair()
        corked.write(b"never sent")
        corked._transport.close()  # the real transport closes under the cork
        await asyncio.sleep(0)
        peer.close()
        return writes

    assert asyncio.run(scenario()) == []


def test_a_live_server_answers_keep_alive_requests_through_the_cork() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = f"{scope['method']} {scope['path']}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            for index in range(50):
                response = client.get(f"/path/{index}")
                assert response.status_code == 200
                assert response.text == f"GET /path/{index}"
            head = client.head("/nobody")
            assert head.status_code == 200 and head.content == b""
            assert client.get("/after-head").text == "GET /after-head"
    finally:
        server.stop()


def test_a_client_that_half_closes_after_its_request_gets_its_response() -> None:
    """Found in review: the response waited in the cork while asyncio closed the transport on
    the client's end of stream, and was dropped (0 of 50 answered; uvicorn alone: 50)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    server = ServerThread(app).start()
    try:
        for _ in range(20):
            with socket.create_connection((server.host, server.port), timeout=10) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                client.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := client.recv(4096):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"ok")
    finally:
        server.stop()


def test_a_streaming_producer_is_still_paused_by_a_client_that_does_not_read() -> None:
    """Found in review: a producer whose only awaits are its sends never saw the transport's
    backpressure, because the cork held everything until the end of the loop's iteration
    (64 of 64 MiB buffered; uvicorn alone stops it after a few). The cork now writes through
    at its high-water mark."""
    chunk, chunks = 1 << 20, 64
    sent = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        length = str(chunk * chunks).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        payload = b"x" * chunk
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            sent[0] += 1
        await send({"type": "http.response.body", "body": b""})

    server = ServerThread(app).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # Wait until the producer stops making progress (the client reads nothing).
            last, steady_since = -1, time.monotonic()
            while time.monotonic() - steady_since < 0.5:
                if sent[0] != last:
                    last, steady_since = sent[0], time.monotonic()
                time.sleep(0.05)
            assert sent[0] < chunks // 4
            received = 0
            while received < chunk * chunks:
                data = client.recv(1 << 20)
                assert data
                received += len(data)
        assert sent[0] == chunks
    finally:
        server.stop()


def test_write_eof_writelines_and_abort_keep_the_cork_consistent() -> None:
    async def scenario() -> tuple[list[bytes], bytes, int]:
        corked, writes, peer = await _pair()
        corked.writelines([b"a", bytearray(b"b")])
        pending = corked.get_write_buffer_size()
        corked.write_eof()  # flushes first, then ends our side of the stream
        received = await _read_all(peer, 1 << 20)
        corked.write(b"dropped")
        corked.abort()
        await asyncio.sleep(0)
        peer.close()
        return writes, received, pending

    writes, received, pending = asyncio.run(scenario())
    assert writes == [b"ab"] and received == b"ab" and pending == 2
