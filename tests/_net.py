"""Real-socket helpers for the lifecycle tests: ``serve()`` on 127.0.0.1 and a
trio-websocket client in the same trio run.

The client runs as trio tasks (no threads), so a ``MockClock`` with a small
autojump threshold drives deadlines, heartbeats and grace periods in virtual
time while the bytes still cross real loopback sockets: the clock only jumps
once every task has been blocked for :data:`AUTOJUMP_THRESHOLD` real seconds,
i.e. when nothing is on its way through the kernel either.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
import wsproto.events as ws_events

from wskit_trio import Router, Server, TransportName, serve

__all__ = [
    "AUTOJUMP_THRESHOLD",
    "RawClient",
    "close_of",
    "net_clock",
    "ready_port",
    "recv_json",
    "running_server",
    "send_json",
]

AUTOJUMP_THRESHOLD = 0.01

#: The transport ``running_server`` serves on; the ``transport`` fixture (conftest)
#: sets it, so every test over real sockets runs on each transport.
TRANSPORT: TransportName = "wsproto"


@pytest.fixture
def net_clock(transport: TransportName) -> trio.testing.MockClock:
    """Virtual time for tests over real sockets (pytest-trio uses any Clock fixture).
    Tests that use it run once per transport (``transport`` fixture)."""
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_THRESHOLD)


@asynccontextmanager
async def running_server(router: Router[Any], **options: Any) -> AsyncIterator[Server[Any]]:
    """``serve(router, port=0, handle_signals=False, **options)`` for the block; on exit
    it is shut down (grace 0) and every task of it has ended. The transport is the
    one the ``transport`` fixture chose, unless given."""
    options.setdefault("transport", TRANSPORT)
    async with trio.open_nursery() as nursery:
        server: Server[Any] = await nursery.start(
            serve(router, host="127.0.0.1", port=0, handle_signals=False, **options)
        )
        try:
            yield server
        finally:
            await server.aclose(grace=0)


async def send_json(ws: trio_websocket.WebSocketConnection, frame: Any) -> None:
    await ws.send_message(json.dumps(frame))


async def recv_json(ws: trio_websocket.WebSocketConnection) -> Any:
    message = await ws.get_message()
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return json.loads(message)


def close_of(exc: trio_websocket.ConnectionClosed) -> tuple[int, str | None]:
    """``(code, reason)`` of the close a trio-websocket client saw."""
    assert exc.reason is not None
    return int(exc.reason.code), exc.reason.reason


class RawClient:
    """A WebSocket client on wsproto that reads frames but never answers pings."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.pings: list[float] = []

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(ws_events.TextMessage(text)))

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(
            client.ws.send(ws_events.Request(host=f"127.0.0.1:{port}", target="/"))
        )
        event = await client.next_event()
        assert isinstance(event, ws_events.AcceptConnection), event
        return client

    async def next_event(self) -> ws_events.Event:
        while True:
            for event in self.ws.events():
                if isinstance(event, ws_events.Ping):
                    self.pings.append(trio.current_time())  # and no Pong
                    continue
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)


async def ready_port(process: trio.Process) -> int:
    """The port a child server announces with its first line, ``READY <port>``."""
    assert process.stdout is not None
    data = b""
    while b"\n" not in data:
        chunk = await process.stdout.receive_some()
        assert chunk, f"instance exited before it was ready (status {process.poll()})"
        data += chunk
    word, port = data.split(b"\n")[0].split()
    assert word == b"READY"
    return int(port)
