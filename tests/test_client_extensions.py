"""Protocol extensions, advertised at the upgrade and used only where advertised.

Our server lists its extensions in the 101 (``X-WsKit-Extensions``, docs/protocol.md
§7) on both transports; the client reads them on every connect and sends
``meta.timeoutMs`` and ``$ws:abort`` only to a server that has them, so with its
defaults it talks to a plain WS-Kit server too (a raw server here; WS-Kit 0.10 on
Bun itself in ``test_client_wskit_bun.py``). ``extensions=True``/``False``
override what the server says.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from _net import AUTOJUMP_THRESHOLD, net_clock, running_server
from conftest import ECHO, Ping, Pong

from wskit_trio import Router, RpcContext
from wskit_trio._protocol import extensions
from wskit_trio._transport._http import accept_response
from wskit_trio.client import Backoff, ClientState, Reconnect, RequestTimeout, open_client

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

EchoCtx = RpcContext[Ping, Pong, Any]
ADVERTISED = ((extensions.HEADER, extensions.HEADER_VALUE),)
FAST = Reconnect(backoff=Backoff(initial=0.05, max=0.05, jitter="none"))


@pytest.fixture
def raw_clock() -> trio.testing.MockClock:
    """Virtual time over real sockets, for tests against a raw server (one run, not
    one per transport as with ``net_clock``)."""
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_THRESHOLD)


# -- the header -------------------------------------------------------------------------


def test_the_header_lists_every_extension() -> None:
    assert extensions.HEADER_VALUE == "timeoutMs, abort, heartbeat, errors, positions"
    assert extensions.advertised(ADVERTISED) == extensions.ALL
    assert b"\r\nX-WsKit-Extensions: timeoutMs, abort, heartbeat, errors, positions\r\n" in (
        accept_response("dGhlIHNhbXBsZSBub25jZQ==", None)
    )


def test_advertised_reads_every_header_line_in_any_case() -> None:
    headers = [
        ("content-type", "abort"),
        ("x-wskit-extensions", " timeoutMs ,abort,, "),
        ("X-WSKIT-EXTENSIONS", "positions, future"),
    ]
    assert extensions.advertised(headers) == {"timeoutMs", "abort", "positions", "future"}
    assert extensions.advertised([]) == frozenset()  # a WS-Kit server


def test_in_use_is_the_advertised_set_unless_overridden() -> None:
    some = frozenset({"abort"})
    assert extensions.in_use(some, None) == some
    assert extensions.in_use(frozenset(), None) == frozenset()
    assert extensions.in_use(frozenset(), True) == extensions.ALL
    assert extensions.in_use(some, False) == frozenset()


# -- our server -------------------------------------------------------------------------


Outcome = tuple[str, bool]


def recording_router(
    metas: list[dict[str, Any]], outcomes: trio.MemorySendChannel[Outcome]
) -> Router[Any]:
    """ECHO records its meta; "hang" never replies and reports ``(correlationId,
    aborted)`` when its handler ends."""
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        metas.append(dict(ctx.meta))
        if ctx.payload.text != "hang":
            await ctx.reply(Pong(ctx.payload.text.upper()))
            return
        ctx.cancel_scope.deadline = math.inf  # only `$ws:abort` (or the close) ends it
        try:
            await trio.sleep_forever()
        finally:
            outcomes.send_nowait((ctx.correlation_id or "", ctx.aborted))

    return router


async def test_our_server_advertises_and_the_client_uses_them(
    net_clock: trio.testing.MockClock,
) -> None:
    """With its defaults the client finds the header (on either transport) and uses
    the extensions: ``timeoutMs`` reaches the handler, a cancelled call is aborted."""
    metas: list[dict[str, Any]] = []
    send, outcomes = trio.open_memory_channel[Outcome](math.inf)
    with trio.fail_after(30):
        async with running_server(recording_router(metas, send)) as server:
            async with trio_websocket.open_websocket_url(server.url) as ws:
                assert (
                    b"x-wskit-extensions",
                    extensions.HEADER_VALUE.encode(),
                ) in ws.handshake_headers
            async with open_client(server.url) as client:
                assert client.extensions == extensions.ALL
                assert await client.request(ECHO, Ping("hi"), timeout=5) == Pong("HI")
                assert metas[-1]["timeoutMs"] == 5000
                with trio.move_on_after(1):
                    await client.request(ECHO, Ping("hang"), correlation_id="c-gone")
                assert await outcomes.receive() == ("c-gone", True)


async def test_forced_off_on_our_server(net_clock: trio.testing.MockClock) -> None:
    metas: list[dict[str, Any]] = []
    send, _ = trio.open_memory_channel[Outcome](math.inf)
    with trio.fail_after(30):
        async with (
            running_server(recording_router(metas, send)) as server,
            open_client(server.url, extensions=False) as client,
        ):
            assert client.extensions == frozenset()
            assert await client.request(ECHO, Ping("hi"), timeout=5) == Pong("HI")
            assert "timeoutMs" not in metas[-1]


# -- a server that advertises nothing --------------------------------------------------------


class RawServer:
    """A bare trio-websocket server: ECHO → ECHOED for every request except "hang",
    everything it receives recorded in order. Connection ``n`` (from 0) is accepted
    with ``advertise[n]`` as its 101's extra headers (none once the list runs out)."""

    def __init__(self, advertise: list[tuple[tuple[str, str], ...]]) -> None:
        self.advertise = advertise
        self.received: list[dict[str, Any]] = []
        self.connections: list[trio_websocket.WebSocketConnection] = []
        self.url = ""

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        n = len(self.connections)
        headers = self.advertise[n] if n < len(self.advertise) else ()
        ws = await request.accept(
            extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        )
        self.connections.append(ws)
        with suppress(trio_websocket.ConnectionClosed):
            while True:
                frame = json.loads(await ws.get_message())
                self.received.append(frame)
                if frame["type"] == "ECHO" and frame["payload"]["text"] != "hang":
                    reply = {
                        "type": "ECHOED",
                        "meta": {"correlationId": frame["meta"]["correlationId"]},
                        "payload": {"reply": frame["payload"]["text"].upper()},
                    }
                    await ws.send_message(json.dumps(reply))

    def types(self) -> list[str]:
        return [frame["type"] for frame in self.received]


@asynccontextmanager
async def raw_server(*advertise: tuple[tuple[str, str], ...]) -> AsyncIterator[RawServer]:
    server = RawServer(list(advertise))
    async with trio.open_nursery() as nursery:
        listener: trio_websocket.WebSocketServer = await nursery.start(
            trio_websocket.serve_websocket, server._handle, "127.0.0.1", 0, None
        )
        server.url = f"ws://127.0.0.1:{listener.port}"
        yield server
        nursery.cancel_scope.cancel()


async def test_plain_ws_kit_to_a_server_without_the_header(
    raw_clock: trio.testing.MockClock,
) -> None:
    """No header: no ``timeoutMs``, no ``$ws:abort``; requests still complete and
    time out on the client's side alone."""
    with trio.fail_after(30):
        async with raw_server() as server, open_client(server.url) as client:
            assert client.extensions == frozenset()
            assert await client.request(ECHO, Ping("one"), timeout=5) == Pong("ONE")
            with pytest.raises(RequestTimeout):
                await client.request(ECHO, Ping("hang"), timeout=1)
            # Frames arrive in order: an abort would be in before this request.
            assert await client.request(ECHO, Ping("two")) == Pong("TWO")
        assert server.types() == ["ECHO", "ECHO", "ECHO"]
        assert all("timeoutMs" not in frame["meta"] for frame in server.received)


async def test_forced_on_to_a_server_without_the_header(
    raw_clock: trio.testing.MockClock,
) -> None:
    """``extensions=True`` (a wskit_trio server behind a proxy that drops the header)."""
    with trio.fail_after(30):
        async with raw_server() as server, open_client(server.url, extensions=True) as client:
            assert client.extensions == extensions.ALL
            assert await client.request(ECHO, Ping("one"), timeout=5) == Pong("ONE")
            with pytest.raises(RequestTimeout):
                await client.request(ECHO, Ping("hang"), timeout=1, correlation_id="c-h")
            assert await client.request(ECHO, Ping("two")) == Pong("TWO")
        assert server.types() == ["ECHO", "ECHO", "$ws:abort", "ECHO"]
        assert server.received[0]["meta"]["timeoutMs"] == 5000
        assert server.received[2]["meta"] == {"correlationId": "c-h"}


async def test_decided_again_on_every_connect(raw_clock: trio.testing.MockClock) -> None:
    """The first connection advertises, the one after the reconnect does not (another
    server behind the same address): the client follows."""
    connects = 0
    reconnected = trio.Event()

    async def on_connect(client: Any) -> None:
        nonlocal connects
        connects += 1
        if connects == 2:
            reconnected.set()

    with trio.fail_after(30):
        async with (
            raw_server(ADVERTISED) as server,
            open_client(server.url, reconnect=FAST, on_connect=on_connect) as client,
        ):
            assert client.extensions == extensions.ALL
            assert await client.request(ECHO, Ping("one"), timeout=5) == Pong("ONE")
            assert server.received[-1]["meta"]["timeoutMs"] == 5000
            await server.connections[0].aclose()
            await reconnected.wait()
            await client.wait_state(ClientState.OPEN)
            assert client.extensions == frozenset()
            assert await client.request(ECHO, Ping("two"), timeout=5) == Pong("TWO")
            assert "timeoutMs" not in server.received[-1]["meta"]
