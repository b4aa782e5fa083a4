"""The connection runtime through the in-memory harness: docs/protocol.md §2-§4, lifecycle
hooks, heartbeat. Inbound frames are written by hand; answers are compared whole."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from expect import error_frame, open_app, paths_of

from wskit_trio import (
    ERROR_CODE_META,
    CloseError,
    ConnectionContext,
    ConnectionStatistics,
    Context,
    ErrorCode,
    Heartbeat,
    Limits,
    OutboundValidationError,
    Router,
    RpcContext,
    WsKitError,
    message,
    rpc,
)
from wskit_trio.testing import TestApp, TestClient, open_test_app


@attrs.frozen
class Trace:
    trace_id: str


@attrs.frozen
class Num:
    n: int
    x: float = 0.0


@attrs.frozen
class Outer:
    inner: Ping
    items: list[Ping] = attrs.field(factory=list)


TRACED = message("TRACED", Ping, meta=Trace)
NUM = message("NUM", Num)
NESTED = message("NESTED", Outer)
LEAVE = message("LEAVE")
LEFT = message("LEFT")
SILENT = rpc("SILENT", Ping, "NEVER", Pong)
FAIL = message("FAIL", Ping)
FAIL_RPC = rpc("FAIL_RPC", Ping, "FAILED", Pong)


@attrs.define
class Seen:
    """What the handlers saw, and what FAIL / FAIL_RPC raise."""

    contexts: list[Context[Any, Conn]] = attrs.field(factory=list)
    raise_: Exception = attrs.field(factory=lambda: ValueError("no error configured"))


def build_router(seen: Seen) -> Router[Conn]:
    router: Router[Conn] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        seen.contexts.append(ctx)
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.on(TRACED)
    async def traced(ctx: Context[Ping, Conn]) -> None:
        seen.contexts.append(ctx)
        await ctx.send(PONG, Pong(reply=str(ctx.meta.get("traceId"))))

    @router.on(NUM)
    async def num(ctx: Context[Num, Conn]) -> None:
        await ctx.send(PONG, Pong(reply=repr(ctx.payload)))

    @router.on(NESTED)
    async def nested(ctx: Context[Outer, Conn]) -> None:
        await ctx.send(PONG, Pong(reply=ctx.payload.inner.text))

    @router.on(LEAVE)
    async def leave(ctx: Context[None, Conn]) -> None:
        await ctx.send(LEFT)

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        seen.contexts.append(ctx)
        await ctx.reply(Pong(reply=ctx.payload.text))

    @router.rpc(SILENT)
    async def silent(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        pass

    @router.on(FAIL)
    async def fail(ctx: Context[Ping, Conn]) -> None:
        raise seen.raise_

    @router.rpc(FAIL_RPC)
    async def fail_rpc(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        raise seen.raise_

    return router


@asynccontextmanager
async def connected(
    seen: Seen | None = None, **options: Any
) -> AsyncIterator[tuple[TestApp[Conn], TestClient[Conn]]]:
    router = build_router(seen or Seen())
    async with open_app(router, **options) as app:
        client = await app.connect(Conn())
        yield app, client


async def assert_alive(client: TestClient[Conn]) -> None:
    """The connection still serves: a PING is answered with its PONG."""
    await client.send_raw('{"type": "PING", "payload": {"text": "alive?"}}')
    assert (await client.receive()).raw == {
        "type": "PONG",
        "meta": {},
        "payload": {"reply": "alive?"},
    }
    assert client.closed is None


async def settled(client: TestClient[Conn]) -> None:
    """Every task has settled and nothing more was sent."""
    await trio.testing.wait_all_tasks_blocked()
    assert client.receive_nowait() is None


# -- docs/protocol.md §4: each row, answered, reported, and the connection survives ---------

ROWS: list[tuple[str, str | bytes, dict[str, Any]]] = [
    ("not JSON", "not json", error_frame("INVALID_ARGUMENT")),
    ("not JSON, truncated", '{"type": "PING"', error_frame("INVALID_ARGUMENT")),
    ("NaN is not JSON", '{"type": "PING", "x": NaN}', error_frame("INVALID_ARGUMENT")),
    ("not an object: array", '[{"type": "PING"}]', error_frame("INVALID_ARGUMENT")),
    ("not an object: string", '"PING"', error_frame("INVALID_ARGUMENT")),
    ("not an object: null", "null", error_frame("INVALID_ARGUMENT")),
    ("type missing", '{"payload": {"text": "x"}}', error_frame("INVALID_ARGUMENT")),
    ("type null", '{"type": null}', error_frame("INVALID_ARGUMENT")),
    ("type a number", '{"type": 42}', error_frame("INVALID_ARGUMENT")),
    ("type an array", '{"type": ["PING"]}', error_frame("INVALID_ARGUMENT")),
    (
        "type missing, correlationId echoed",
        '{"meta": {"correlationId": "c-1"}}',
        error_frame("INVALID_ARGUMENT", cid="c-1"),
    ),
    ("binary, not UTF-8", b"\xff\xfe\x00", error_frame("INVALID_ARGUMENT")),
    ("binary, UTF-8 but not JSON", b"hello", error_frame("INVALID_ARGUMENT")),
    ("binary, JSON but not an object", b"[1, 2]", error_frame("INVALID_ARGUMENT")),
    ("reserved __", '{"type": "__admin"}', error_frame("INVALID_ARGUMENT")),
    ("reserved $", '{"type": "$ws:whatever"}', error_frame("INVALID_ARGUMENT")),
    (
        "reserved: ack is server-only",
        '{"type": "__heartbeat_ack"}',
        error_frame("INVALID_ARGUMENT"),
    ),
    (
        "reserved: progress is server-only",
        '{"type": "$ws:rpc-progress", "meta": {"correlationId": "c-2"}}',
        error_frame("INVALID_ARGUMENT", cid="c-2"),
    ),
    ("abort without correlationId", '{"type": "$ws:abort"}', error_frame("INVALID_ARGUMENT")),
    ("unknown type", '{"type": "NOPE"}', error_frame("UNIMPLEMENTED")),
    (
        "unknown server type",
        '{"type": "PONG", "payload": {"reply": "x"}}',
        error_frame("UNIMPLEMENTED"),
    ),
    ("unknown ERROR type", '{"type": "ERROR"}', error_frame("UNIMPLEMENTED")),
    (
        "unknown type with correlationId",
        '{"type": "NOPE", "meta": {"correlationId": "c-3"}}',
        error_frame("UNIMPLEMENTED", rpc=True, cid="c-3"),
    ),
    (
        "unknown type with a non-string correlationId",
        '{"type": "NOPE", "meta": {"correlationId": 3}}',
        error_frame("UNIMPLEMENTED"),
    ),
    (
        "RPC without correlationId",
        '{"type": "ECHO", "payload": {"text": "x"}}',
        error_frame("INVALID_ARGUMENT"),
    ),
    (
        "RPC with meta but no correlationId",
        '{"type": "ECHO", "meta": {"timestamp": 1}, "payload": {"text": "x"}}',
        error_frame("INVALID_ARGUMENT"),
    ),
    (
        "RPC handler returned without a reply",
        '{"type": "SILENT", "meta": {"correlationId": "c-4"}, "payload": {"text": "x"}}',
        error_frame("INTERNAL", "handler returned without a reply", rpc=True, cid="c-4"),
    ),
]


@pytest.mark.parametrize(
    ("inbound", "expected"), [row[1:] for row in ROWS], ids=[r[0] for r in ROWS]
)
async def test_each_failure_gets_its_answer(inbound: str | bytes, expected: dict[str, Any]) -> None:
    async with connected() as (app, client):
        await client.send_raw(inbound)
        frame = await client.receive()
        assert frame.raw == expected
        await settled(client)
        # Also reported to on_error, once, with the same code.
        assert [e.code for e in app.errors] == [expected["payload"]["code"]]
        await assert_alive(client)
        assert len(app.errors) == 1


async def test_binary_frame_holding_utf8_json_works() -> None:
    async with connected() as (app, client):
        await client.send_raw('{"type": "PING", "payload": {"text": "héllo"}}'.encode())
        assert (await client.receive()).raw == {
            "type": "PONG",
            "meta": {},
            "payload": {"reply": "héllo"},
        }
        await client.send_raw(
            b'{"type": "ECHO", "meta": {"correlationId": "b"}, "payload": {"text": "x"}}'
        )
        assert (await client.receive()).raw == {
            "type": "ECHOED",
            "meta": {"correlationId": "b"},
            "payload": {"reply": "x"},
        }
        assert app.errors == []


async def test_heartbeat_is_acknowledged_with_server_time() -> None:
    async with connected() as (app, client):
        before = int(time.time() * 1000)
        await client.send_raw('{"type": "__heartbeat"}')
        frame = await client.receive()
        after = int(time.time() * 1000)
        assert frame.raw == {"type": "__heartbeat_ack", "meta": {"ts": frame.meta["ts"]}}
        assert type(frame.meta["ts"]) is int
        assert before <= frame.meta["ts"] <= after
        await settled(client)
        assert app.errors == []
        await client.send_raw(b'{"type": "__heartbeat"}')
        assert (await client.receive()).type == "__heartbeat_ack"


async def test_abort_for_an_unknown_id_is_ignored() -> None:
    async with connected() as (app, client):
        await client.send_raw('{"type": "$ws:abort", "meta": {"correlationId": "never-sent"}}')
        await settled(client)
        assert app.errors == []
        await assert_alive(client)


# -- validation failures (docs/protocol.md §2) ---------------------------------------------

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown root key", {"type": "PING", "payload": {"text": "a"}, "id": 1}, ["$.id"]),
    ("topic is not a key", {"type": "PING", "payload": {"text": "a"}, "topic": "t"}, ["$.topic"]),
    (
        "unknown meta key",
        {"type": "PING", "meta": {"foo": 1}, "payload": {"text": "a"}},
        ["$.meta.foo"],
    ),
    ("unknown payload key", {"type": "PING", "payload": {"text": "a", "x": 1}}, ["$.payload.x"]),
    (
        "unknown nested key",
        {"type": "NESTED", "payload": {"inner": {"text": "a", "deep": True}}},
        ["$.payload.inner.deep"],
    ),
    (
        "unknown key in a list item",
        {"type": "NESTED", "payload": {"inner": {"text": "a"}, "items": [{"text": "b"}, {"z": 1}]}},
        ["$.payload.items[1].text", "$.payload.items[1].z"],
    ),
    ("missing payload key", {"type": "PING", "payload": {}}, ["$.payload.text"]),
    ("missing nested key", {"type": "NESTED", "payload": {"inner": {}}}, ["$.payload.inner.text"]),
    ("missing payload", {"type": "PING"}, ["$.payload"]),
    ("payload null", {"type": "PING", "payload": None}, ["$.payload"]),
    ("payload not an object", {"type": "PING", "payload": ["a"]}, ["$.payload"]),
    ("wrong type", {"type": "PING", "payload": {"text": 5}}, ["$.payload.text"]),
    ("wrong nested type", {"type": "NESTED", "payload": {"inner": "a"}}, ["$.payload.inner"]),
    ("boolean is not an integer", {"type": "NUM", "payload": {"n": True}}, ["$.payload.n"]),
    ("boolean is not a number", {"type": "NUM", "payload": {"n": 1, "x": False}}, ["$.payload.x"]),
    ("string is not a number", {"type": "NUM", "payload": {"n": "1"}}, ["$.payload.n"]),
    ("float is not an integer", {"type": "NUM", "payload": {"n": 1.5}}, ["$.payload.n"]),
    ("boolean timestamp", {"type": "LEAVE", "meta": {"timestamp": True}}, ["$.meta.timestamp"]),
    ("string timeoutMs", {"type": "LEAVE", "meta": {"timeoutMs": "5"}}, ["$.meta.timeoutMs"]),
    ("meta not an object", {"type": "LEAVE", "meta": []}, ["$.meta"]),
    ("payload for a payload-less schema", {"type": "LEAVE", "payload": {}}, ["$.payload"]),
    ("null payload for a payload-less schema", {"type": "LEAVE", "payload": None}, ["$.payload"]),
    ("extended meta missing", {"type": "TRACED", "payload": {"text": "a"}}, ["$.meta.traceId"]),
    (
        "extended meta wrong type",
        {"type": "TRACED", "meta": {"traceId": 1}, "payload": {"text": "a"}},
        ["$.meta.traceId"],
    ),
    (
        "extended meta unknown key",
        {"type": "TRACED", "meta": {"traceId": "t", "spanId": "s"}, "payload": {"text": "a"}},
        ["$.meta.spanId"],
    ),
    (
        "extended meta key on a schema without it",
        {"type": "PING", "meta": {"traceId": "t"}, "payload": {"text": "a"}},
        ["$.meta.traceId"],
    ),
    (
        "every problem at once",
        {"type": "NUM", "meta": {"x": 1}, "payload": {"n": True, "x": "y", "z": 0}, "data": 1},
        ["$.data", "$.meta.x", "$.payload.n", "$.payload.x", "$.payload.z"],
    ),
]


@pytest.mark.parametrize(("frame", "paths"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
async def test_validation_failure_lists_each_problem_with_its_path(
    frame: dict[str, Any], paths: list[str]
) -> None:
    seen = Seen()
    async with connected(seen) as (app, client):
        await client.send_raw(json.dumps(frame))
        answer = (await client.receive()).raw
        assert answer == error_frame(
            "INVALID_ARGUMENT", details={"errors": answer["payload"]["details"]["errors"]}
        )
        assert paths_of(answer) == sorted(paths)
        await settled(client)
        assert [e.code for e in app.errors] == ["INVALID_ARGUMENT"]
        assert app.errors[0].details == answer["payload"]["details"]
        assert seen.contexts == []  # no handler saw it
        await assert_alive(client)


async def test_validation_failure_echoes_the_correlation_id() -> None:
    async with connected() as (_, client):
        await client.send_raw('{"type": "PING", "meta": {"correlationId": "e-1"}, "payload": {}}')
        frame = (await client.receive()).raw
        assert frame["type"] == "ERROR"  # PING is not an RPC
        assert frame["meta"] == {"correlationId": "e-1"}
        assert paths_of(frame) == ["$.payload.text"]

        await client.send_raw(
            '{"type": "ECHO", "meta": {"correlationId": "r-1"}, "payload": {"text": 1}}'
        )
        frame = (await client.receive()).raw
        assert frame == error_frame(
            "INVALID_ARGUMENT", rpc=True, cid="r-1", details=frame["payload"]["details"]
        )
        assert paths_of(frame) == ["$.payload.text"]

        # An invalid correlationId is itself a problem, and cannot be echoed.
        await client.send_raw(
            '{"type": "ECHO", "meta": {"correlationId": 7}, "payload": {"text": "x"}}'
        )
        frame = (await client.receive()).raw
        assert frame == error_frame("INVALID_ARGUMENT", details=frame["payload"]["details"])
        assert paths_of(frame) == ["$.meta.correlationId"]
        await assert_alive(client)


async def test_payloadless_message_without_payload_is_handled() -> None:
    async with connected() as (_, client):
        await client.send_raw('{"type": "LEAVE"}')
        assert (await client.receive()).raw == {"type": "LEFT", "meta": {}}
        await client.send_raw('{"type": "LEAVE", "meta": {}}')
        assert (await client.receive()).raw == {"type": "LEFT", "meta": {}}


async def test_reserved_meta_keys_are_stripped_and_never_visible() -> None:
    seen = Seen()
    async with connected(seen) as (app, client):
        await client.send_raw(
            '{"type": "PING", "meta": {"clientId": "spoofed", "receivedAt": 1, "timestamp": 5,'
            ' "correlationId": "c-1"}, "payload": {"text": "a"}}'
        )
        assert (await client.receive()).type == "PONG"
        await client.send_raw(
            '{"type": "ECHO", "meta": {"clientId": {"any": "value"}, "receivedAt": "x",'
            ' "correlationId": "c-2"}, "payload": {"text": "b"}}'
        )
        assert (await client.receive()).type == "ECHOED"
        await client.send_raw(
            '{"type": "TRACED", "meta": {"traceId": "t", "clientId": "spoofed"},'
            ' "payload": {"text": "c"}}'
        )
        assert (await client.receive()).payload == {"reply": "t"}
        assert app.errors == []
    ping, echo, traced = seen.contexts
    assert ping.meta == {"timestamp": 5, "correlationId": "c-1"}
    assert echo.meta == {"correlationId": "c-2"}
    assert traced.meta == {"traceId": "t"}
    for ctx in seen.contexts:
        assert ctx.client_id == client.client_id != "spoofed"
        assert abs(ctx.received_at - time.time() * 1000) < 60_000


async def test_extended_meta_is_validated_and_visible() -> None:
    seen = Seen()
    async with connected(seen) as (_, client):
        await client.send_raw(
            '{"type": "TRACED", "meta": {"traceId": "t-9", "timestamp": 1},'
            ' "payload": {"text": "a"}}'
        )
        assert (await client.receive()).raw == {
            "type": "PONG",
            "meta": {},
            "payload": {"reply": "t-9"},
        }
    assert seen.contexts[0].meta == {"traceId": "t-9", "timestamp": 1}
    assert seen.contexts[0].payload == Ping("a")


# -- handler errors (docs/protocol.md §3, §4) ------------------------------------------------

WSKIT_ERRORS: list[tuple[WsKitError, dict[str, Any]]] = [
    (
        WsKitError("NOT_FOUND", "User not found", {"id": "u1"}),
        {
            "code": "NOT_FOUND",
            "message": "User not found",
            "details": {"id": "u1"},
            "retryable": False,
        },
    ),
    (
        WsKitError(
            ErrorCode.RESOURCE_EXHAUSTED,
            "Rate limit exceeded",
            {"cost": 1, "capacity": 10, "remaining": 0},
            retry_after_ms=1250,
        ),
        {
            "code": "RESOURCE_EXHAUSTED",
            "message": "Rate limit exceeded",
            "details": {"cost": 1, "capacity": 10, "remaining": 0},
            "retryable": True,
            "retryAfterMs": 1250,
        },
    ),
    (
        WsKitError("UNAVAILABLE"),
        {
            "code": "UNAVAILABLE",
            "message": ERROR_CODE_META["UNAVAILABLE"].description,
            "retryable": True,
            "retryAfterMs": 100,
        },
    ),
    (
        WsKitError("UNAVAILABLE", "Down", retry_after_ms=None),
        {"code": "UNAVAILABLE", "message": "Down", "retryable": True, "retryAfterMs": None},
    ),
    (
        WsKitError("UNAVAILABLE", "Down", retryable=False),
        {"code": "UNAVAILABLE", "message": "Down", "retryable": False},
    ),
    (
        WsKitError("DEADLINE_EXCEEDED", "Slow"),
        {"code": "DEADLINE_EXCEEDED", "message": "Slow", "retryable": True, "retryAfterMs": 50},
    ),
    (
        WsKitError("ABORTED", "Conflict", {}),
        {"code": "ABORTED", "message": "Conflict", "retryable": True, "retryAfterMs": 50},
    ),
    (
        WsKitError("INTERNAL", "Database down", retryable=True),
        {"code": "INTERNAL", "message": "Database down", "retryable": True, "retryAfterMs": 200},
    ),
    (
        WsKitError("INTERNAL", "Database down"),
        {"code": "INTERNAL", "message": "Database down", "retryable": False},
    ),
    (
        WsKitError("PERMISSION_DENIED", retry_after_ms=10),
        {
            "code": "PERMISSION_DENIED",
            "message": ERROR_CODE_META["PERMISSION_DENIED"].description,
            "retryable": False,
            "retryAfterMs": 10,
        },
    ),
    (
        WsKitError("QUOTA_GONE", "Custom", {"left": 0}, retryable=True),
        {"code": "QUOTA_GONE", "message": "Custom", "details": {"left": 0}, "retryable": True},
    ),
    (
        WsKitError("QUOTA_GONE"),
        {"code": "QUOTA_GONE", "message": "QUOTA_GONE", "retryable": False},
    ),
]


@pytest.mark.parametrize(("error", "payload"), WSKIT_ERRORS, ids=[repr(e[0]) for e in WSKIT_ERRORS])
async def test_handler_wskit_error_is_sent_with_its_fields(
    error: WsKitError, payload: dict[str, Any]
) -> None:
    async with connected(Seen(raise_=error)) as (app, client):
        await client.send_raw('{"type": "FAIL", "payload": {"text": "x"}}')
        assert (await client.receive()).raw == {"type": "ERROR", "meta": {}, "payload": payload}
        await client.send_raw(
            '{"type": "FAIL", "meta": {"correlationId": "e"}, "payload": {"text": "x"}}'
        )
        assert (await client.receive()).raw == {
            "type": "ERROR",
            "meta": {"correlationId": "e"},
            "payload": payload,
        }
        await client.send_raw(
            '{"type": "FAIL_RPC", "meta": {"correlationId": "r"}, "payload": {"text": "x"}}'
        )
        assert (await client.receive()).raw == {
            "type": "RPC_ERROR",
            "meta": {"correlationId": "r"},
            "payload": payload,
        }
        await settled(client)
        assert app.errors == [error, error, error]
        await assert_alive(client)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("secret-token-123"),
        KeyError("secret-token-123"),
        RuntimeError("secret-token-123"),
        AssertionError("secret-token-123"),
        ZeroDivisionError("secret-token-123"),
    ],
)
async def test_handler_crash_is_internal_with_no_exception_text(exc: Exception) -> None:
    async with connected(Seen(raise_=exc)) as (app, client):
        await client.send_raw('{"type": "FAIL", "payload": {"text": "x"}}')
        frame = await client.receive()
        assert frame.raw == error_frame("INTERNAL", "Internal error")
        await client.send_raw(
            '{"type": "FAIL_RPC", "meta": {"correlationId": "r"}, "payload": {"text": "x"}}'
        )
        rpc_frame = await client.receive()
        assert rpc_frame.raw == error_frame("INTERNAL", "Internal error", rpc=True, cid="r")
        for sent in (frame, rpc_frame):
            text = json.dumps(sent.raw)
            assert "secret" not in text and type(exc).__name__ not in text
        await settled(client)
        assert [e.code for e in app.errors] == ["INTERNAL", "INTERNAL"]
        assert all(e.__cause__ is exc for e in app.errors)
        await assert_alive(client)


async def test_invalid_outbound_payload_raises_in_the_handler_and_sends_nothing() -> None:
    caught: list[OutboundValidationError] = []
    router: Router[Conn] = Router()

    @router.on(PING)
    async def bad(ctx: Context[Ping, Conn]) -> None:
        try:
            await ctx.send(PONG, Pong(reply=1))  # type: ignore[arg-type]
        except OutboundValidationError as exc:
            caught.append(exc)
        await ctx.send(PONG, Ping("wrong class"))  # type: ignore[misc]

    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        # The uncaught second one is an ordinary handler crash: INTERNAL, nothing else.
        assert (await client.receive()).raw == error_frame("INTERNAL", "Internal error")
        await trio.testing.wait_all_tasks_blocked()
        assert client.receive_nowait() is None
        assert caught[0].errors == [("$.payload.reply", "expected string, got integer")]
        assert isinstance(app.errors[0].__cause__, OutboundValidationError)


async def test_ctx_error_sends_an_error_frame() -> None:
    router: Router[Conn] = Router()

    @router.on(PING)
    async def refuse(ctx: Context[Ping, Conn]) -> None:
        await ctx.error("FAILED_PRECONDITION", "Join a room first", {"room": None})

    @router.rpc(ECHO)
    async def refuse_rpc(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.error("NOT_FOUND", retry_after_ms=None)
        await ctx.reply(Pong("too late"))  # one-shot: nothing more is sent

    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        assert (await client.receive()).raw == error_frame(
            "FAILED_PRECONDITION", "Join a room first", details={"room": None}
        )
        await client.send_raw(
            '{"type": "ECHO", "meta": {"correlationId": "q"}, "payload": {"text": "x"}}'
        )
        assert (await client.receive()).raw == error_frame(
            "NOT_FOUND",
            ERROR_CODE_META["NOT_FOUND"].description,
            rpc=True,
            cid="q",
            retry_after_ms=None,
        )
        await trio.testing.wait_all_tasks_blocked()
        assert client.receive_nowait() is None


# -- frame size (docs/protocol.md §4, §8) --------------------------------------------------

LIMIT = 64
PREFIX, SUFFIX = '{"type": "PING", "payload": {"text": "', '"}}'


def ping_of_bytes(size: int, char: str = "é") -> str:
    """A PING frame of exactly ``size`` UTF-8 bytes, padded with ``char``s then ASCII."""
    room = size - len((PREFIX + SUFFIX).encode())
    width = len(char.encode())
    text = char * (room // width) + "a" * (room % width)
    frame = PREFIX + text + SUFFIX
    assert len(frame.encode()) == size
    return frame


async def test_frame_at_the_limit_is_accepted() -> None:
    async with connected(limits=Limits(max_message_bytes=LIMIT)) as (app, client):
        await client.send_raw(ping_of_bytes(LIMIT))
        assert (await client.receive()).type == "PONG"
        await client.send_raw(ping_of_bytes(LIMIT).encode())
        assert (await client.receive()).type == "PONG"
        assert app.errors == []


@pytest.mark.parametrize(
    "frame",
    [
        ping_of_bytes(LIMIT + 1, "a"),
        ping_of_bytes(LIMIT + 1, "é"),
        ping_of_bytes(LIMIT + 1, "é").encode(),
        ping_of_bytes(LIMIT * 3, "😀"),
    ],
)
async def test_oversize_frame_closes_1009(frame: str | bytes) -> None:
    closes: list[str] = []
    router = build_router(Seen())
    router.on_close(lambda ctx: closes.append(ctx.client_id))
    async with open_app(router, limits=Limits(max_message_bytes=LIMIT)) as app:
        client = await app.connect(Conn())
        await client.send_raw(frame)
        code, _ = await client.wait_closed()
        assert code == 1009
        assert client.received == []  # no answer frame, just the close
        await trio.testing.wait_all_tasks_blocked()
        assert client.connection.closed is not None and client.connection.closed[0] == 1009
        assert closes == [client.client_id]
        assert len(app.errors) == 1  # reported to on_error too


async def test_size_is_counted_in_bytes_not_characters() -> None:
    # 40 characters of 'é' fit a 64-character limit but are 80 bytes.
    frame = PREFIX + "é" * 20 + SUFFIX
    assert len(frame) <= LIMIT < len(frame.encode())
    async with connected(limits=Limits(max_message_bytes=LIMIT)) as (_, client):
        await client.send_raw(frame)
        assert (await client.wait_closed())[0] == 1009


async def test_default_limit_is_one_mebibyte() -> None:
    mib = 1024 * 1024
    assert Limits().max_message_bytes == mib
    async with connected() as (_, client):
        await client.send_raw(ping_of_bytes(mib))
        assert (await client.receive()).type == "PONG"
        await client.send_raw(ping_of_bytes(mib + 1))
        assert (await client.wait_closed())[0] == 1009


SLOW = rpc("SLOW", Ping, "SLOWED", Pong)
#: Room for the RPC requests below (their meta makes them longer than ``LIMIT``).
RPC_LIMIT = 128


def oversize_router(cancelled: list[str]) -> Router[Conn]:
    """``build_router`` plus SLOW, an RPC that never answers (it notes its cancellation)."""
    router = build_router(Seen())

    @router.rpc(SLOW)
    async def slow(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(ctx.payload.text)

    return router


@pytest.mark.parametrize(
    "big", [ping_of_bytes(RPC_LIMIT + 1), ping_of_bytes(RPC_LIMIT + 1).encode()]
)
async def test_answers_queued_before_an_oversize_frame_go_out_before_the_1009_close(
    big: str | bytes,
) -> None:
    # The messages before the oversize one were accepted, so their answers are not
    # lost: the client reads nothing until it has sent everything, and with no room
    # in its buffer the writer holds the first answer, the rest stay queued.
    cancelled: list[str] = []
    limits = Limits(max_message_bytes=RPC_LIMIT)
    async with open_app(oversize_router(cancelled), limits=limits) as app:
        client = await app.connect(Conn(), client_buffer=0)
        await client.send_raw('{"type": "PING", "payload": {"text": "one"}}')
        await client.request(ECHO, Ping("two"), correlation_id="e")
        await trio.testing.wait_all_tasks_blocked()  # ECHO has replied: queued
        await client.request(SLOW, Ping("slow"), correlation_id="s")
        await client.send_raw('{"type": "PING", "payload": {"text": "three"}}')
        await client.send_raw(big)
        await trio.testing.wait_all_tasks_blocked()
        assert [e.code for e in app.errors] == ["RESOURCE_EXHAUSTED"]
        assert app.errors[0].message == "Message too big"
        assert cancelled == ["slow"]  # in flight: cancelled, nothing sent for it
        assert await client.wait_closed() == (1009, "Message too big")
        assert [frame.raw for frame in client.received] == [
            {"type": "PONG", "meta": {}, "payload": {"reply": "one"}},
            {"type": "ECHOED", "meta": {"correlationId": "e"}, "payload": {"reply": "two"}},
            {"type": "PONG", "meta": {}, "payload": {"reply": "three"}},
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert client.connection.closed == (1009, "Message too big")
        assert len(app.errors) == 1


async def test_a_client_that_reads_nothing_after_an_oversize_frame_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended_at: list[float] = []
    ended = trio.Event()
    cancelled: list[str] = []
    router = oversize_router(cancelled)

    @router.on_close
    def on_close(ctx: ConnectionContext[Conn]) -> None:
        ended_at.append(trio.current_time())
        ended.set()

    limits = Limits(max_message_bytes=RPC_LIMIT, close_timeout=5)
    async with open_app(router, limits=limits, within=100) as app:
        client = await app.connect(Conn(), client_buffer=0)
        await client.request(SLOW, Ping("slow"), correlation_id="s")
        for text in ("one", "two", "three"):
            await client.send_raw(json.dumps({"type": "PING", "payload": {"text": text}}))
        await client.send_raw(ping_of_bytes(RPC_LIMIT + 1))
        start = trio.current_time()
        await ended.wait()  # the client reads nothing: the answers cannot go out
        assert ended_at[0] - start <= limits.close_timeout + 0.01
        assert client.connection.closed == (1009, "Message too big")
        assert cancelled == ["slow"]
        assert [e.code for e in app.errors] == ["RESOURCE_EXHAUSTED"]
        assert await client.wait_closed() == (1009, "Message too big")


# -- lifecycle hooks ------------------------------------------------------------------


async def test_on_open_runs_first_and_can_send_and_assign_data() -> None:
    router: Router[Conn] = Router()

    @router.on_open
    async def opened(ctx: ConnectionContext[Conn]) -> None:
        ctx.assign_data(user_id="u-7")
        await ctx.send(PONG, Pong("welcome"))

    @router.on(PING)
    async def who(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(str(ctx.data.user_id)))

    async with open_app(router) as app:
        client = await app.connect(Conn())
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        assert (await client.receive()).payload == {"reply": "welcome"}
        assert (await client.receive()).payload == {"reply": "u-7"}
        assert client.data == Conn(user_id="u-7")


async def test_on_open_close_error_closes_with_its_code() -> None:
    ran: list[str] = []
    router: Router[Conn] = Router()

    @router.on_open
    def refuse(ctx: ConnectionContext[Conn]) -> None:
        raise CloseError(4003, "go away")

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        ran.append("handler")

    router.on_close(lambda ctx: ran.append("close"))
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        assert await client.wait_closed() == (4003, "go away")
        assert client.received == []
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["close"]
        assert app.errors == []


async def test_on_open_crash_closes_with_1011() -> None:
    ran: list[str] = []
    router: Router[Conn] = Router()
    boom = RuntimeError("secret")

    @router.on_open
    async def crash(ctx: ConnectionContext[Conn]) -> None:
        raise boom

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        ran.append("handler")

    router.on_close(lambda ctx: ran.append("close"))
    async with open_app(router) as app:
        client = await app.connect()
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        code, reason = await client.wait_closed()
        assert code == 1011
        assert "secret" not in reason
        assert client.received == []
        await trio.testing.wait_all_tasks_blocked()
        assert ran == ["close"]
        assert [e.code for e in app.errors] == ["INTERNAL"]
        assert app.errors[0].__cause__ is boom


async def _close_by_client(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    await client.close(1000, "bye")


async def _close_by_handler(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    await client.send_raw('{"type": "BYE"}')
    await client.wait_closed()


async def _close_by_oversize(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    await client.send_raw("x" * 200)
    await client.wait_closed()


async def _close_by_shutdown(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    await app.shutdown(grace=0)


async def _close_by_drop(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    client.drop()


async def _close_by_heartbeat(app: TestApp[Conn], client: TestClient[Conn]) -> None:
    client.responsive = False
    await trio.sleep(100)


CLOSERS: dict[str, tuple[Callable[[TestApp[Conn], TestClient[Conn]], Awaitable[None]], int]] = {
    "client close": (_close_by_client, 1000),
    "handler ctx.close": (_close_by_handler, 4001),
    "oversize frame": (_close_by_oversize, 1009),
    "graceful shutdown": (_close_by_shutdown, 1001),
    "dropped connection": (_close_by_drop, 1006),
    "heartbeat timeout": (_close_by_heartbeat, 1008),
}


@pytest.mark.parametrize("how", list(CLOSERS))
async def test_on_close_runs_once_whatever_closed_the_connection(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    closer, code = CLOSERS[how]
    closed: list[tuple[str, Conn]] = []
    router: Router[Conn] = Router()

    @router.on(message("BYE"))
    async def bye(ctx: Context[None, Conn]) -> None:
        await ctx.close(4001, "bye")

    @router.on_close
    async def on_close(ctx: ConnectionContext[Conn]) -> None:
        await trio.lowlevel.checkpoint()
        closed.append((ctx.client_id, ctx.data))

    with trio.fail_after(300):
        async with open_test_app(
            router,
            limits=Limits(max_message_bytes=100),
            heartbeat=Heartbeat(interval=10, timeout=5),
        ) as app:
            client = await app.connect(Conn(user_id="u"))
            other = await app.connect(Conn(user_id="other"))
            await closer(app, client)
            await trio.testing.wait_all_tasks_blocked()
            assert client.connection.closed is not None
            assert client.connection.closed[0] == code
            assert (client.client_id, Conn(user_id="u")) in closed
            if how != "graceful shutdown":
                assert other.closed is None
                assert len(closed) == 1
        await trio.testing.wait_all_tasks_blocked()
    # Every connection's on_close ran exactly once, including at app exit.
    assert sorted(c[0] for c in closed) == sorted([client.client_id, other.client_id])


async def test_on_close_runs_when_the_app_exits() -> None:
    closed: list[str] = []
    router: Router[Conn] = Router()
    router.on_close(lambda ctx: closed.append(ctx.client_id))
    async with open_app(router) as app:
        clients = [await app.connect() for _ in range(3)]
    assert sorted(closed) == sorted(c.client_id for c in clients)


async def test_on_error_hooks_get_the_error_and_the_connection() -> None:
    reported: list[tuple[str, str]] = []
    router = build_router(Seen(raise_=WsKitError("NOT_FOUND")))

    @router.on_error
    def sync_hook(err: WsKitError, ctx: ConnectionContext[Conn]) -> None:
        reported.append(("sync", f"{err.code} {ctx.client_id}"))

    @router.on_error
    async def broken_hook(err: WsKitError, ctx: ConnectionContext[Conn]) -> None:
        raise RuntimeError("a failing hook is logged, not raised")

    @router.on_error
    async def async_hook(err: WsKitError, ctx: ConnectionContext[Conn]) -> None:
        await trio.lowlevel.checkpoint()
        reported.append(("async", f"{err.code} {ctx.client_id}"))

    async with open_app(router) as app:
        client = await app.connect(Conn())
        await client.send_raw('{"type": "FAIL", "payload": {"text": "x"}}')
        await client.receive_error()
        await client.send_raw("{}")
        await client.receive_error()
        await trio.testing.wait_all_tasks_blocked()
        cid = client.client_id
        assert reported == [
            ("sync", f"NOT_FOUND {cid}"),
            ("async", f"NOT_FOUND {cid}"),
            ("sync", f"INVALID_ARGUMENT {cid}"),
            ("async", f"INVALID_ARGUMENT {cid}"),
        ]
        await assert_alive(client)


# -- connection data ------------------------------------------------------------------


async def test_assign_data_is_visible_to_later_handlers() -> None:
    router: Router[Conn] = Router()

    @router.on(message("JOIN", {"room": str}))
    async def join(ctx: Context[Any, Conn]) -> None:
        ctx.assign_data(room_id=ctx.payload.room)

    @router.on(PING)
    async def where(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(str(ctx.data.room_id)))

    async with open_app(router) as app:
        client = await app.connect(Conn(user_id="u"))
        other = await app.connect(Conn(user_id="v"))
        await client.send_raw('{"type": "JOIN", "payload": {"room": "r1"}}')
        await client.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        assert (await client.receive()).payload == {"reply": "r1"}
        await other.send_raw('{"type": "PING", "payload": {"text": "x"}}')
        assert (await other.receive()).payload == {"reply": "None"}
        assert client.data == Conn(user_id="u", room_id="r1")


@attrs.frozen
class FrozenData:
    user_id: str
    room_id: str | None = None


async def test_assign_data_evolves_frozen_data_and_updates_dicts() -> None:
    router: Router[Any] = Router()

    @router.on(message("JOIN", {"room": str}))
    async def join(ctx: Context[Any, Any]) -> None:
        ctx.assign_data(room_id=ctx.payload.room)

    async with open_app(router) as app:
        frozen = await app.connect(FrozenData("u"))
        as_dict = await app.connect({"user_id": "v"})
        for client in (frozen, as_dict):
            await client.send_raw('{"type": "JOIN", "payload": {"room": "r9"}}')
        await trio.testing.wait_all_tasks_blocked()
        assert frozen.data == FrozenData("u", "r9")
        assert as_dict.data == {"user_id": "v", "room_id": "r9"}


# -- server-side liveness pings -------------------------------------------------------


async def test_unresponsive_client_is_closed_1008(autojump_clock: trio.testing.MockClock) -> None:
    heartbeat = Heartbeat(interval=30, timeout=10)
    async with connected(heartbeat=heartbeat, within=1000) as (_, client):
        await trio.sleep(30 * 5)  # a responsive client stays
        assert client.closed is None
        await assert_alive(client)
        client.responsive = False
        start = trio.current_time()
        assert (await client.wait_closed())[0] == 1008
        assert trio.current_time() - start <= 30 + 10 + 1


async def test_correlation_ids_are_echoed_exactly() -> None:
    async with connected() as (_, client):
        for cid in ("", "ü-ñ", "c" * 300, '"quoted"'):
            await client.send_raw(
                json.dumps(
                    {"type": "ECHO", "meta": {"correlationId": cid}, "payload": {"text": "x"}}
                )
            )
            frame = await client.receive()
            assert frame.raw == {
                "type": "ECHOED",
                "meta": {"correlationId": cid},
                "payload": {"reply": "x"},
            }
            await client.send_raw(json.dumps({"type": "NOPE", "meta": {"correlationId": cid}}))
            assert (await client.receive()).raw == error_frame("UNIMPLEMENTED", rpc=True, cid=cid)


async def test_statistics_show_a_connections_load(autojump_clock: trio.testing.MockClock) -> None:
    """``ctx.statistics()``: RPCs in flight, topics and the outbound queue, public."""
    router: Router[Conn] = Router()
    seen: list[ConnectionStatistics] = []

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.topics.subscribe("room:1")
        await ctx.send(PONG, Pong(reply="one"))
        seen.append(ctx.statistics())

    async with open_test_app(router) as app:
        client = await app.connect(Conn())
        await client.send(PING, Ping("x"))
        assert await client.receive_payload(PONG) == Pong("one")
    (stats,) = seen
    assert stats.client_id == client.client_id
    assert (stats.rpcs_in_flight, stats.topics) == (0, 1)
    # Written at once, from the handler's own ``send`` (the channel took it).
    assert (stats.outbox.queued, stats.outbox.sent, stats.outbox.dropped) == (0, 1, 0)


@pytest.mark.parametrize(
    ("frame", "path", "cid"),
    [
        ('{"type": "__heartbeat", "x": 1}', "$.x", None),
        ('{"type": "__heartbeat", "payload": {}}', "$.payload", None),
        (
            '{"type": "$ws:abort", "meta": {"correlationId": "c-9", "why": "bored"}}',
            "$.meta.why",
            "c-9",
        ),
    ],
)
async def test_control_frames_are_strict_too(
    frame: str, path: str, cid: str | None, autojump_clock: trio.testing.MockClock
) -> None:
    """``__heartbeat`` and ``$ws:abort`` follow strict mode like every frame (§1-§2):
    no other root keys, no payload, standard meta keys only."""
    async with open_test_app(Router[Conn]()) as app:
        client = await app.connect(Conn())
        await client.send_raw(frame)
        error = await client.receive_error()
        assert error.type == "ERROR" and error.error_code == "INVALID_ARGUMENT"
        assert error.correlation_id == cid
        assert [e["path"] for e in error.payload["details"]["errors"]] == [path]
        # Well-formed control frames still work on the same connection.
        await client.send_raw('{"type": "__heartbeat", "meta": {"timestamp": 1}}')
        assert (await client.receive()).type == "__heartbeat_ack"
