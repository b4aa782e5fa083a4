"""serve() on a real socket, checked from outside with the third-party ``websockets``
client: frames are written by hand from docs/protocol.md, answers parsed as plain JSON.
Also the upgrade decision (docs/protocol.md §7): authentication and subprotocols."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from expect import error_frame, paths_of
from wsclient import HandshakeRefused, WsClient, open_client

from wskit_trio import (
    CloseError,
    ConnectionContext,
    Context,
    Limits,
    Router,
    RpcContext,
    Server,
    UpgradeRejected,
    UpgradeRequest,
    WsKitError,
    serve,
)
from wskit_trio._transport import select_subprotocol
from wskit_trio.testing import open_test_app

TIMEOUT = 10

# Every test here runs once on each transport (the wsproto one and trio-websocket).
pytestmark = pytest.mark.usefixtures("transport")


def app_router() -> Router[Any]:
    router: Router[Any] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Any]) -> None:
        if ctx.payload.text == "crash":
            raise ValueError("secret")
        if ctx.payload.text == "whoami":
            await ctx.send(PONG, Pong(reply=repr(ctx.data)))
            return
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        if ctx.payload.text == "missing":
            raise WsKitError("NOT_FOUND", "User not found", {"id": "u1"})
        await ctx.reply(Pong(reply=ctx.payload.text))

    return router


@asynccontextmanager
async def running(router: Router[Any], **options: Any) -> AsyncIterator[Server[Any]]:
    options.setdefault("transport", _net.TRANSPORT)
    async with trio.open_nursery() as nursery:
        server: Server[Any] = await nursery.start(
            serve(router, port=0, host="127.0.0.1", handle_signals=False, **options)
        )
        try:
            yield server
        finally:
            await server.aclose()


async def exchange(client: WsClient, frame: str | bytes) -> Any:
    await client.send(frame)
    return await client.recv_json()


async def test_messages_and_rpc_over_the_wire() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(app_router()) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}" and server.port > 0
            client = await open_client(server.url)
            await client.send(
                '{"type": "PING", "meta": {"timestamp": 1}, "payload": {"text": "hi"}}'
            )
            text = await client.recv()
            assert isinstance(text, str)  # a text frame
            assert json.loads(text) == {"type": "PONG", "meta": {}, "payload": {"reply": "hi"}}
            assert await exchange(
                client,
                '{"type": "ECHO", "meta": {"correlationId": "c-1"}, "payload": {"text": "yo"}}',
            ) == {"type": "ECHOED", "meta": {"correlationId": "c-1"}, "payload": {"reply": "yo"}}
            assert await exchange(
                client,
                '{"type": "ECHO", "meta": {"correlationId": "c-2"},'
                ' "payload": {"text": "missing"}}',
            ) == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "c-2"},
                "payload": {
                    "code": "NOT_FOUND",
                    "message": "User not found",
                    "details": {"id": "u1"},
                    "retryable": False,
                },
            }
            await client.close()


async def test_every_failure_is_answered_and_the_connection_survives() -> None:
    rows: list[tuple[str | bytes, dict[str, Any]]] = [
        ("not json", error_frame("INVALID_ARGUMENT")),
        ("[1]", error_frame("INVALID_ARGUMENT")),
        ('{"payload": {}}', error_frame("INVALID_ARGUMENT")),
        ('{"type": 5, "meta": {"correlationId": "t"}}', error_frame("INVALID_ARGUMENT", cid="t")),
        (b"\xff\xfe", error_frame("INVALID_ARGUMENT")),
        ('{"type": "__admin"}', error_frame("INVALID_ARGUMENT")),
        ('{"type": "$ws:nope"}', error_frame("INVALID_ARGUMENT")),
        ('{"type": "NOPE"}', error_frame("UNIMPLEMENTED")),
        (
            '{"type": "NOPE", "meta": {"correlationId": "u"}}',
            error_frame("UNIMPLEMENTED", rpc=True, cid="u"),
        ),
        ('{"type": "ECHO", "payload": {"text": "x"}}', error_frame("INVALID_ARGUMENT")),
        (
            '{"type": "PING", "payload": {"text": "crash"}}',
            error_frame("INTERNAL", "Internal error"),
        ),
    ]
    errors: list[str] = []
    router = app_router()
    router.on_error(lambda err, ctx: errors.append(str(err.code)))
    with trio.fail_after(TIMEOUT):
        async with running(router) as server:
            client = await open_client(server.url)
            for inbound, expected in rows:
                assert await exchange(client, inbound) == expected, inbound
            answer = await exchange(
                client,
                '{"type": "PING", "meta": {"clientId": "spoof", "x": 1},'
                ' "payload": {"text": 1, "extra": true}, "id": 9}',
            )
            assert answer == error_frame("INVALID_ARGUMENT", details=answer["payload"]["details"])
            assert paths_of(answer) == ["$.id", "$.meta.x", "$.payload.extra", "$.payload.text"]
            ack = await exchange(client, '{"type": "__heartbeat"}')
            assert ack == {"type": "__heartbeat_ack", "meta": {"ts": ack["meta"]["ts"]}}
            assert type(ack["meta"]["ts"]) is int
            assert await exchange(client, b'{"type": "PING", "payload": {"text": "bin"}}') == {
                "type": "PONG",
                "meta": {},
                "payload": {"reply": "bin"},
            }
            await client.close()
    assert errors == [str(row[1]["payload"]["code"]) for row in rows] + ["INVALID_ARGUMENT"]


async def test_oversize_frame_closes_1009_counting_bytes() -> None:
    # 'é' is one character but two bytes: too_big is 61 characters, 81 bytes, limit 64.
    prefix, suffix = '{"type": "PING", "payload": {"text": "', '"}}'
    fits = prefix + "é" * 11 + "a" + suffix
    too_big = prefix + "é" * 20 + suffix
    assert len(fits.encode()) == 64 and len(too_big) <= 64 < len(too_big.encode())
    closed: list[str] = []
    router = app_router()
    router.on_close(lambda ctx: closed.append(ctx.client_id))
    with trio.fail_after(TIMEOUT):
        async with running(router, limits=Limits(max_message_bytes=64)) as server:
            client = await open_client(server.url)
            assert (await exchange(client, fits))["type"] == "PONG"
            await client.send(too_big)
            assert (await client.wait_closed())[0] == 1009
            other = await open_client(server.url)  # the server is fine
            assert (await exchange(other, fits))["type"] == "PONG"
            await other.close()
    assert len(closed) == 2


@pytest.mark.parametrize("binary", [False, True])
async def test_answers_before_an_oversize_frame_arrive_before_the_1009_close(
    binary: bool,
) -> None:
    # The messages before the oversize one were accepted: the RPC's reply and the
    # event's answer reach the client, then the close. The client reads nothing until
    # it has sent everything.
    replied, sent = trio.Event(), trio.Event()
    errors: list[tuple[str, str]] = []
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        await ctx.reply(Pong(reply=ctx.payload.text))
        replied.set()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Any]) -> None:
        # Inline in the reader: the oversize frame is read only once this returns,
        # after it was sent and the RPC's reply was queued.
        await replied.wait()
        await sent.wait()
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    router.on_error(lambda err, ctx: errors.append((str(err.code), err.message)))
    too_big = '{"type": "PING", "payload": {"text": "' + "x" * 200 + '"}}'
    with trio.fail_after(TIMEOUT):
        async with running(router, limits=Limits(max_message_bytes=128)) as server:
            client = await open_client(server.url)
            await client.send(
                '{"type": "ECHO", "meta": {"correlationId": "e"}, "payload": {"text": "rpc"}}'
            )
            await client.send('{"type": "PING", "payload": {"text": "event"}}')
            await client.send(too_big.encode() if binary else too_big)
            sent.set()
            assert await client.recv_json() == {
                "type": "ECHOED",
                "meta": {"correlationId": "e"},
                "payload": {"reply": "rpc"},
            }
            assert await client.recv_json() == {
                "type": "PONG",
                "meta": {},
                "payload": {"reply": "event"},
            }
            assert await client.wait_closed() == (1009, "Message too big")
    assert errors == [("RESOURCE_EXHAUSTED", "Message too big")]


async def test_a_lone_surrogate_cannot_crash_the_server() -> None:
    # Valid JSON text (an escape), but not encodable as UTF-8 once decoded: echoing it
    # used to crash the writer, and with it every connection of the server.
    with trio.fail_after(TIMEOUT):
        async with running(app_router()) as server:
            client = await open_client(server.url)
            other = await open_client(server.url)
            answer = await exchange(client, '{"type": "PING", "payload": {"text": "\\ud800!"}}')
            assert answer == {"type": "PONG", "meta": {}, "payload": {"reply": "\ud800!"}}
            answer = await exchange(client, '{"type": "PING", "payload": {"\\udfff": 1}}')
            assert paths_of(answer) == ["$.payload.text", "$.payload.\udfff"]
            assert (await exchange(other, '{"type": "PING", "payload": {"text": "ok"}}'))[
                "payload"
            ] == {"reply": "ok"}
            await client.close()
            await other.close()


# -- lifecycle over the wire ----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"), [(CloseError(4003, "go away"), 4003), (RuntimeError("secret"), 1011)]
)
async def test_on_open_refusal_closes_with_its_code(exc: Exception, code: int) -> None:
    router = app_router()

    @router.on_open
    def refuse(ctx: ConnectionContext[Any]) -> None:
        raise exc

    with trio.fail_after(TIMEOUT):
        async with running(router) as server:
            client = await open_client(server.url)
            got, reason = await client.wait_closed()
            assert got == code
            assert reason is not None and "secret" not in reason


async def test_aclose_closes_clients_with_1001_and_runs_on_close() -> None:
    closed: list[str] = []
    router = app_router()
    router.on_close(lambda ctx: closed.append(ctx.client_id))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: Server[Any] = await nursery.start(
                serve(router, port=0, host="127.0.0.1", handle_signals=False)
            )
            clients = [await open_client(server.url) for _ in range(2)]
            for client in clients:  # both fully open
                assert (await exchange(client, '{"type": "__heartbeat"}'))["type"].endswith("ack")
            assert server.statistics().connections == 2
            await server.aclose()
            for client in clients:
                assert (await client.wait_closed())[0] == 1001
    assert len(closed) == 2


# -- authentication (docs/protocol.md §7) --------------------------------------------------


async def test_authenticate_returning_none_refuses_with_401() -> None:
    handled: list[str] = []
    router = app_router()
    router.on_open(lambda ctx: handled.append("open"))
    with trio.fail_after(TIMEOUT):
        async with running(router, authenticate=lambda request: None) as server:
            with pytest.raises(HandshakeRefused) as info:
                await open_client(server.url)
            assert info.value.status == 401
            assert server.statistics().rejected == 1
    assert handled == []


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (UpgradeRejected(403, "Banned"), 403, b"Banned"),
        (UpgradeRejected(), 401, b"Unauthorized"),
        (UpgradeRejected(429, "Slow down"), 429, b"Slow down"),
        (RuntimeError("authenticate bug"), 500, None),
    ],
)
async def test_authenticate_raising_refuses_with_its_status(
    exc: Exception, status: int, body: bytes | None
) -> None:
    def authenticate(request: UpgradeRequest) -> Conn:
        raise exc

    with trio.fail_after(TIMEOUT):
        async with running(app_router(), authenticate=authenticate) as server:
            with pytest.raises(HandshakeRefused) as info:
                await open_client(server.url)
            assert info.value.status == status
            if body is not None:
                assert info.value.body == body
            else:
                assert b"authenticate bug" not in info.value.body


async def test_authenticate_sees_the_request_and_its_result_is_the_data() -> None:
    seen: list[UpgradeRequest] = []

    async def authenticate(request: UpgradeRequest) -> Conn | None:
        await trio.lowlevel.checkpoint()
        seen.append(request)
        return Conn(user_id=request.token) if request.token else None

    with trio.fail_after(TIMEOUT):
        async with running(
            app_router(), authenticate=authenticate, subprotocols=["chat.v1"]
        ) as server:
            client = await open_client(
                server.url + "/rooms/r1?access_token=tok-1&room=r1&room=r2",
                subprotocols=["chat.v1", "bearer.other"],
                headers=[("X-Trace", "abc"), ("X-Trace", "def")],
            )
            assert client.subprotocol == "chat.v1"
            answer = await exchange(client, '{"type": "PING", "payload": {"text": "whoami"}}')
            assert answer["payload"] == {"reply": repr(Conn(user_id="tok-1"))}
            await client.close()

            bearer = await open_client(server.url, subprotocols=["bearer.tok-2"])
            assert bearer.subprotocol == "bearer.tok-2"
            answer = await exchange(bearer, '{"type": "PING", "payload": {"text": "whoami"}}')
            assert answer["payload"] == {"reply": repr(Conn(user_id="tok-2"))}
            await bearer.close()

            with pytest.raises(HandshakeRefused) as info:
                await open_client(server.url + "/?other=1")
            assert info.value.status == 401

    first = seen[0]
    assert first.path == "/rooms/r1"
    assert dict(first.query) == {"access_token": "tok-1", "room": "r1"}
    assert first.header("x-trace") == "abc"
    assert [v for k, v in first.headers if k == "x-trace"] == ["abc", "def"]
    assert first.header("HOST") == f"127.0.0.1:{server.port}"
    assert list(first.subprotocols) == ["chat.v1", "bearer.other"]
    assert first.token == "tok-1"
    assert first.remote is not None and first.remote.startswith("127.0.0.1:")
    assert int(first.remote.rsplit(":", 1)[1]) > 0
    assert seen[1].path == "/" and seen[1].token == "tok-2"
    assert seen[2].token is None


# -- subprotocol selection (docs/protocol.md §7) -------------------------------------------

SELECTION: list[tuple[list[str], list[str], str | None]] = [
    (["chat.v2", "chat.v1"], ["chat.v1", "chat.v2"], "chat.v2"),  # first offered, not ours
    (["bearer.tok"], [], "bearer.tok"),  # only the bearer one: select it
    (["chat.v9", "bearer.tok"], ["chat.v1"], "bearer.tok"),
    (["bearer.tok", "chat.v1"], ["chat.v1"], "chat.v1"),  # a spoken one beats bearer
    (["chat.v9"], ["chat.v1"], None),
    ([], ["chat.v1"], None),
]


@pytest.mark.parametrize(("offered", "spoken", "selected"), SELECTION)
def test_select_subprotocol(offered: list[str], spoken: list[str], selected: str | None) -> None:
    assert select_subprotocol(offered, spoken) == selected


@pytest.mark.parametrize(("offered", "spoken", "selected"), SELECTION)
async def test_subprotocol_negotiated_over_the_wire(
    offered: Sequence[str], spoken: Sequence[str], selected: str | None
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(app_router(), subprotocols=spoken) as server:
            client = await open_client(server.url, subprotocols=offered)
            assert client.subprotocol == selected
            assert (await exchange(client, '{"type": "__heartbeat"}'))["type"] == "__heartbeat_ack"
            await client.close()


# -- the same decision through the in-memory harness ----------------------------------


@attrs.frozen
class User:
    name: str


async def test_harness_connect_goes_through_authenticate() -> None:
    def authenticate(request: UpgradeRequest) -> User | None:
        if request.query.get("access_token") == "banned":
            raise UpgradeRejected(403, "Banned")
        return User(request.token) if request.token else None

    router: Router[User] = Router()

    @router.on(PING)
    async def whoami(ctx: Context[Ping, User]) -> None:
        await ctx.send(PONG, Pong(ctx.data.name))

    with trio.fail_after(TIMEOUT):
        async with open_test_app(router, authenticate=authenticate) as app:
            with pytest.raises(UpgradeRejected) as info:
                await app.connect()
            assert (info.value.status, info.value.body) == (401, "Unauthorized")
            with pytest.raises(UpgradeRejected) as info:
                await app.connect(path="/?access_token=banned")
            assert (info.value.status, info.value.body) == (403, "Banned")
            assert app.server.connections == set()
            client = await app.connect(subprotocols=["bearer.alice"])
            await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
            assert (await client.receive()).payload == {"reply": "alice"}
