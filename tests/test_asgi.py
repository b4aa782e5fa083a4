"""``wskit_trio.asgi.WebSocketApp``: the router as an ASGI app.

Two halves. Over real sockets: a Starlette app with an HTTP route and the router's
WebSocket route runs under a real Hypercorn trio worker in the test's nursery, and
the third-party ``websockets`` client (``wsclient``) talks to it with frames written
by hand from docs/protocol.md. In memory: the app is driven by hand with ASGI events
(no server), under the mock clock, for what needs exact timing or a view of the
app's tasks (heartbeat, lifespan, the pub/sub hub without a lifespan).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import attrs
import hypercorn.trio
import pytest
import trio
from conftest import ECHO, PING, PONG, Ping, Pong
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from wsclient import HandshakeRefused, open_client

import wskit_trio
from wskit_trio import (
    Context,
    Heartbeat,
    Limits,
    Router,
    RpcContext,
    UpgradeRequest,
    message,
    rpc,
)
from wskit_trio._protocol import extensions
from wskit_trio.asgi import WebSocketApp

TIMEOUT = 10


@attrs.frozen
class Room:
    room: str


@attrs.frozen
class Said:
    text: str


@attrs.frozen
class Wait:
    seconds: float


JOIN = message("JOIN", Room)
JOINED = message("JOINED", Room)
SAY = message("SAY", Said)
HEARD = message("HEARD", Said)
SLOW = rpc("SLOW", Wait, "DONE", Wait)


@attrs.define
class User:
    name: str


def make_router(slow_started: trio.Event | None = None) -> Router[User | None]:
    """PING → PONG; ECHO (RPC): one progress, then the reply; SLOW (RPC): sets
    ``slow_started``, sleeps ``seconds``, then replies; JOIN subscribes to
    ``room:<room>`` and answers JOINED; SAY publishes HEARD to ``room:lobby``."""
    router: Router[User | None] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, User | None]) -> None:
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, User | None]) -> None:
        await ctx.progress(Pong(reply="working"))
        await ctx.reply(Pong(reply=ctx.payload.text))

    @router.rpc(SLOW)
    async def slow(ctx: RpcContext[Wait, Wait, User | None]) -> None:
        if slow_started is not None:
            slow_started.set()
        await trio.sleep(ctx.payload.seconds)
        await ctx.reply(ctx.payload)

    @router.on(JOIN)
    async def join(ctx: Context[Room, User | None]) -> None:
        await ctx.topics.subscribe(f"room:{ctx.payload.room}")
        await ctx.send(JOINED, ctx.payload)

    @router.on(SAY)
    async def say(ctx: Context[Said, User | None]) -> None:
        await ctx.publish("room:lobby", HEARD, ctx.payload)

    return router


def authenticate(request: UpgradeRequest) -> User | None:
    """``?access_token=good`` is Alice; anything else is refused (401)."""
    return User("alice") if request.token == "good" else None


def frame(type_: str, payload: Any = None, **meta: Any) -> str:
    out: dict[str, Any] = {"type": type_}
    if meta:
        out["meta"] = meta
    if payload is not None:
        out["payload"] = payload
    return json.dumps(out)


# -- under Hypercorn --------------------------------------------------------------


def starlette_app(ws: WebSocketApp[Any]) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello from starlette")

    return Starlette(
        routes=[Route("/hello", hello), WebSocketRoute("/ws", ws)],
        lifespan=ws.lifespan,
    )


@attrs.define
class Hypercorn:
    port: int
    stop: trio.Event
    #: Set once ``hypercorn.trio.serve`` has returned.
    stopped: trio.Event

    def url(self, token: str | None = "good") -> str:
        query = f"?access_token={token}" if token else ""
        return f"ws://127.0.0.1:{self.port}/ws{query}"


@asynccontextmanager
async def hypercorn_serving(
    app: Starlette,
    *,
    graceful_timeout: float = 5.0,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[Hypercorn]:
    """Hypercorn's trio worker on a free port in this nursery; stopped (its shutdown
    trigger fires) at the end of the block, or earlier by ``.stop.set()``. The
    trigger awaits ``before_stop`` before it returns."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    stop, stopped = trio.Event(), trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()
        if before_stop is not None:
            await before_stop()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn.trio.serve(
            cast(ASGIFramework, app),
            config,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
        stopped.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(run)
            port = int(binds[0].rpartition(":")[2])
            try:
                yield Hypercorn(port, stop, stopped)
            finally:
                stop.set()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def site() -> AsyncIterator[Hypercorn]:
    ws = WebSocketApp(make_router(), authenticate=authenticate)
    async with hypercorn_serving(starlette_app(ws)) as running:
        yield running


async def test_http_route_beside_the_websocket(site: Hypercorn) -> None:
    assert await http_get(site.port, "/hello") == (200, b"hello from starlette")


async def test_typed_event_round_trip(site: Hypercorn) -> None:
    client = await open_client(site.url())
    # The 101 lists the protocol extensions, as serve()'s does.
    assert client.ws.response is not None
    assert client.ws.response.headers["X-WsKit-Extensions"] == extensions.HEADER_VALUE
    await client.send(frame("PING", {"text": "hi"}))
    assert await client.recv_json() == {"type": "PONG", "meta": {}, "payload": {"reply": "hi"}}
    await client.close()


async def test_rpc_progress_then_reply(site: Hypercorn) -> None:
    client = await open_client(site.url())
    await client.send(frame("ECHO", {"text": "x"}, correlationId="c-1"))
    progress = await client.recv_json()
    assert progress["type"] == "$ws:rpc-progress"
    assert progress["meta"]["correlationId"] == "c-1"
    assert progress["payload"] == {"reply": "working"}
    reply = await client.recv_json()
    assert reply == {"type": "ECHOED", "meta": {"correlationId": "c-1"}, "payload": {"reply": "x"}}
    await client.close()


async def test_rpc_deadline_exceeded(site: Hypercorn) -> None:
    client = await open_client(site.url())
    await client.send(frame("SLOW", {"seconds": 60}, correlationId="c-2", timeoutMs=50))
    answer = await client.recv_json()
    assert answer["type"] == "RPC_ERROR"
    assert answer["meta"]["correlationId"] == "c-2"
    assert answer["payload"]["code"] == "DEADLINE_EXCEEDED"
    await client.close()


async def test_malformed_frame_gets_its_answer_and_the_connection_stays(site: Hypercorn) -> None:
    client = await open_client(site.url())
    await client.send("{not json")
    answer = await client.recv_json()
    assert answer["type"] == "ERROR"
    assert answer["payload"]["code"] == "INVALID_ARGUMENT"
    await client.send(frame("NOPE", correlationId="c-3"))
    answer = await client.recv_json()
    assert (answer["type"], answer["payload"]["code"]) == ("RPC_ERROR", "UNIMPLEMENTED")
    await client.send(frame("PING", {"text": "still here"}))
    assert (await client.recv_json())["payload"] == {"reply": "still here"}
    await client.close()


async def test_pubsub_between_two_clients(site: Hypercorn) -> None:
    alice = await open_client(site.url())
    bob = await open_client(site.url())
    await alice.send(frame("JOIN", {"room": "lobby"}))
    assert (await alice.recv_json())["type"] == "JOINED"
    await bob.send(frame("SAY", {"text": "hello alice"}))
    assert await alice.recv_json() == {"type": "HEARD", "payload": {"text": "hello alice"}}
    await alice.close()
    await bob.close()


async def test_authenticate_refuses_with_its_status(site: Hypercorn) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        await open_client(site.url(token="bad"))
    assert refused.value.status == 401
    assert refused.value.body == b"Unauthorized"


async def test_origin_refused_before_accept() -> None:
    ws = WebSocketApp(make_router(), allowed_origins=["https://app.example.com"])
    async with hypercorn_serving(starlette_app(ws)) as running:
        with pytest.raises(HandshakeRefused) as refused:
            await open_client(running.url(None), headers=[("Origin", "https://evil.example")])
        assert refused.value.status == 403
        client = await open_client(
            running.url(None), headers=[("Origin", "https://app.example.com")]
        )
        await client.close()


async def test_heartbeat_closes_a_silent_client() -> None:
    # An ASGI app cannot ping: a silent client is a stale one (see WebSocketApp).
    ws = WebSocketApp(make_router(), heartbeat=Heartbeat(interval=0.05, timeout=0.05))
    async with hypercorn_serving(starlette_app(ws)) as running:
        client = await open_client(running.url(None))
        assert await client.wait_closed() == (1008, "heartbeat timeout")


async def test_shutdown_trigger_closes_open_connections_with_1001() -> None:
    """Hypercorn's own shutdown: stop accepting, ``graceful_timeout``, cancel. The
    cancelled connection still says goodbye as ``serve()`` does, and nothing of the
    app is left running once ``serve`` has returned."""
    ws = WebSocketApp(make_router())
    async with hypercorn_serving(starlette_app(ws), graceful_timeout=0.05) as running:
        client = await open_client(running.url(None))
        await client.send(frame("PING", {"text": "up"}))
        await client.recv_json()
        (conn,) = ws.server.connections
        running.stop.set()
        assert await client.wait_closed() == (1001, "server shutting down")
        await running.stopped.wait()
    assert conn.closed == (1001, "server shutting down")
    assert ws.server.statistics().connections == 0
    assert not ws._hub.running


async def test_graceful_shutdown_in_the_trigger_lets_rpcs_finish() -> None:
    """``await ws.shutdown()`` in the trigger: in-flight RPCs get the grace (their reply
    goes out), then 1001; Hypercorn's cancel never has anything left to cancel."""
    slow_started = trio.Event()
    ws = WebSocketApp(make_router(slow_started))
    async with hypercorn_serving(starlette_app(ws), before_stop=ws.shutdown) as running:
        client = await open_client(running.url(None))
        await client.send(frame("SLOW", {"seconds": 0.2}, correlationId="c-9"))
        await slow_started.wait()
        running.stop.set()
        assert (await client.recv_json())["type"] == "DONE"
        assert await client.wait_closed() == (1001, "server shutting down")
        await running.stopped.wait()
    assert not ws._hub.running


# -- in memory: the app driven by hand ----------------------------------------------


class Peer:
    """An ASGI server's side of one scope: what it puts in ``receive``, what the app
    gave ``send``."""

    def __init__(self) -> None:
        self._in_send, self._in_receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._out_send, self._out_receive = trio.open_memory_channel[dict[str, Any]](math.inf)

    async def receive(self) -> dict[str, Any]:
        return await self._in_receive.receive()

    async def send(self, event: dict[str, Any]) -> None:
        await self._out_send.send(event)

    def put(self, event: dict[str, Any]) -> None:
        self._in_send.send_nowait(event)

    def say(self, text: str) -> None:
        self.put({"type": "websocket.receive", "text": text})

    async def sent(self) -> dict[str, Any]:
        return await self._out_receive.receive()

    async def sent_frame(self) -> Any:
        event = await self.sent()
        assert event["type"] == "websocket.send", event
        return json.loads(event["text"])

    def nothing_sent(self) -> bool:
        try:
            event = self._out_receive.receive_nowait()
        except trio.WouldBlock:
            return True
        raise AssertionError(f"unexpected {event!r}")


def ws_scope(query: bytes = b"", *, extensions: bool = True) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws",
        "query_string": query,
        "headers": [(b"host", b"example.com")],
        "subprotocols": [],
        "client": ("127.0.0.1", 50000),
        "extensions": {"websocket.http.response": {}} if extensions else {},
    }


async def connect(nursery: trio.Nursery, app: WebSocketApp[Any], query: bytes = b"") -> Peer:
    peer = Peer()
    nursery.start_soon(app, ws_scope(query), peer.receive, peer.send)
    peer.put({"type": "websocket.connect"})
    assert (await peer.sent())["type"] == "websocket.accept"
    return peer


async def test_heartbeat_keeps_a_talking_client(autojump_clock: trio.abc.Clock) -> None:
    app = WebSocketApp(make_router(), heartbeat=Heartbeat(interval=1, timeout=1))
    async with trio.open_nursery() as nursery:
        talking = await connect(nursery, app)
        silent = await connect(nursery, app)
        for _ in range(10):  # 15 s, one __heartbeat every 1.5 s
            await trio.sleep(1.5)
            talking.say('{"type": "__heartbeat"}')
            assert (await talking.sent_frame())["type"] == "__heartbeat_ack"
        assert await silent.sent() == {
            "type": "websocket.close",
            "code": 1008,
            "reason": "heartbeat timeout",
        }
        silent.put({"type": "websocket.disconnect", "code": 1008})
        talking.put({"type": "websocket.disconnect", "code": 1000})


async def test_refusal_without_the_response_extension_closes_before_accept() -> None:
    app = WebSocketApp(make_router(), authenticate=authenticate)
    peer = Peer()
    peer.put({"type": "websocket.connect"})
    await app(ws_scope(extensions=False), peer.receive, peer.send)
    event = await peer.sent()
    assert event["type"] == "websocket.close"  # the server answers 403
    assert peer.nothing_sent()


async def test_refusal_with_the_response_extension() -> None:
    app = WebSocketApp(make_router(), authenticate=authenticate, path="/other")
    peer = Peer()
    peer.put({"type": "websocket.connect"})
    await app(ws_scope(b"access_token=good"), peer.receive, peer.send)
    start, body = await peer.sent(), await peer.sent()
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 404)
    assert body == {"type": "websocket.http.response.body", "body": b"Not found"}


async def test_plain_http_gets_426() -> None:
    app = WebSocketApp(make_router())
    peer = Peer()
    await app({"type": "http", "path": "/ws"}, peer.receive, peer.send)
    start = await peer.sent()
    assert start["status"] == 426
    assert (b"upgrade", b"websocket") in start["headers"]


async def test_client_disconnect_ends_the_connection() -> None:
    app = WebSocketApp(make_router())
    async with trio.open_nursery() as nursery:
        peer = await connect(nursery, app)
        peer.say(frame("PING", {"text": "a"}))
        assert (await peer.sent_frame())["payload"] == {"reply": "a"}
        (conn,) = app.server.connections
        peer.put({"type": "websocket.disconnect", "code": 4002, "reason": "bye"})
    assert conn.closed == (4002, "bye")
    assert app.server.statistics().connections == 0
    assert peer.nothing_sent()  # no close after the client's: the server echoed it


async def test_message_too_big_closes_1009_after_the_answers_before_it() -> None:
    app = WebSocketApp(make_router(), limits=Limits(max_message_bytes=64))
    async with trio.open_nursery() as nursery:
        peer = await connect(nursery, app)
        peer.say(frame("PING", {"text": "small"}))
        peer.say(frame("PING", {"text": "x" * 100}))
        assert (await peer.sent_frame())["payload"] == {"reply": "small"}
        assert await peer.sent() == {
            "type": "websocket.close",
            "code": 1009,
            "reason": "Message too big",
        }
        peer.put({"type": "websocket.disconnect", "code": 1009})


async def test_lifespan_hosts_the_hub_and_shuts_down_gracefully(
    autojump_clock: trio.abc.Clock,
) -> None:
    app = WebSocketApp(make_router(), limits=Limits(shutdown_grace=5))
    life = Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, life.receive, life.send)
        life.put({"type": "lifespan.startup"})
        assert await life.sent() == {"type": "lifespan.startup.complete"}
        assert app._hub.running
        peer = await connect(nursery, app)
        peer.say(frame("SLOW", {"seconds": 2}, correlationId="c-1"))
        await trio.sleep(1)
        life.put({"type": "lifespan.shutdown"})
        assert (await peer.sent_frame())["type"] == "DONE"
        assert await peer.sent() == {
            "type": "websocket.close",
            "code": 1001,
            "reason": "server shutting down",
        }
        peer.put({"type": "websocket.disconnect", "code": 1001})
        assert await life.sent() == {"type": "lifespan.shutdown.complete"}
    assert not app._hub.running


async def test_without_a_lifespan_the_first_connection_hosts_the_hub() -> None:
    """No lifespan (a framework's that was not hooked in): the first connection's task
    runs the hub, and stays until the last connection that used it has ended."""
    app = WebSocketApp(make_router())
    async with trio.open_nursery() as nursery:
        first = await connect(nursery, app)
        second = await connect(nursery, app)
        first.say(frame("JOIN", {"room": "lobby"}))
        assert (await first.sent_frame())["type"] == "JOINED"
        second.say(frame("SAY", {"text": "one"}))
        assert (await first.sent_frame())["payload"] == {"text": "one"}
        # The host's client leaves; the hub stays for the second one.
        first.put({"type": "websocket.disconnect", "code": 1000})
        await trio.testing.wait_all_tasks_blocked()
        assert app._hub.running
        second.say(frame("JOIN", {"room": "lobby"}))
        assert (await second.sent_frame())["type"] == "JOINED"
        second.say(frame("SAY", {"text": "two"}))
        assert (await second.sent_frame())["payload"] == {"text": "two"}
        second.put({"type": "websocket.disconnect", "code": 1000})
    assert not app._hub.running
    # A later connection hosts a hub of its own.
    async with trio.open_nursery() as nursery:
        third = await connect(nursery, app)
        third.say(frame("JOIN", {"room": "lobby"}))
        assert (await third.sent_frame())["type"] == "JOINED"
        assert app._hub.running
        third.put({"type": "websocket.disconnect", "code": 1000})


def test_the_asgi_modules_import_no_server_and_no_framework() -> None:
    package = Path(wskit_trio.__file__).parent
    for path in (package / "asgi.py", package / "_transport" / "_asgi.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"hypercorn", "starlette", "asyncio"}, name
