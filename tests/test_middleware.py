"""Ready-made middleware: require_auth, log_messages, Metrics."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import (
    Context,
    ErrorCode,
    MemoryRateLimiter,
    Metrics,
    Router,
    RpcContext,
    WsKitError,
    log_messages,
    message,
    rate_limit,
    require_auth,
)
from wskit_trio.middleware import frame_type
from wskit_trio.testing import TestClient, open_test_app

SHOUT = message("SHOUT", Ping)


async def settle(client: TestClient[Any]) -> None:
    await trio.testing.wait_all_tasks_blocked()
    assert client.receive_nowait() is None


# -- require_auth -------------------------------------------------------------------


def ping_router(*middleware: Any) -> tuple[Router[Any], list[str]]:
    calls: list[str] = []
    router: Router[Any] = Router()
    for mw in middleware:
        router.use(mw)

    @router.on(PING)
    async def ping(ctx: Context[Ping, Any]) -> None:
        calls.append(ctx.payload.text)
        if ctx.payload.text == "slow":
            await trio.sleep(0.25)
        elif ctx.payload.text == "missing":
            raise WsKitError(ErrorCode.NOT_FOUND, "no such thing")
        elif ctx.payload.text == "bug":
            raise ValueError("oops")
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        calls.append(ctx.payload.text)
        if ctx.payload.text == "hang":
            await trio.sleep_forever()
        await ctx.reply(Pong(reply=ctx.payload.text))

    return router, calls


UNAUTHENTICATED = {
    "type": "ERROR",
    "meta": {},
    "payload": {"code": "UNAUTHENTICATED", "message": "Not authenticated", "retryable": False},
}


async def test_require_auth_needs_a_user_id_by_default() -> None:
    router, calls = ping_router(require_auth())
    async with open_test_app(router) as app:
        refused: list[Any] = [None, Conn(), {"user_id": None}, {}]
        for data in refused:
            client = await app.connect(data)
            await client.send(PING, Ping("a"))
            assert (await client.receive()).raw == UNAUTHENTICATED
            # The connection stays open.
            await client.send(PING, Ping("b"))
            assert (await client.receive()).raw == UNAUTHENTICATED
            assert client.closed is None
        assert calls == []
        accepted: list[Any] = [Conn(user_id="u1"), {"user_id": "u2"}]
        for data in accepted:
            client = await app.connect(data)
            await client.send(PING, Ping("ok"))
            assert (await client.receive()).type == "PONG"
        assert calls == ["ok", "ok"]


async def test_require_auth_with_a_predicate_sync_or_async() -> None:
    async def is_admin(data: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return bool(data and data.get("role") == "admin")

    async def shout(ctx: Context[Ping, Any]) -> None:
        await ctx.send(PONG, Pong(reply="shout"))

    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        await ctx.reply(Pong(reply="hi"))

    router, _ = ping_router()
    router.on(
        SHOUT,
        shout,
        middleware=[require_auth(lambda data: data.get("user_id") == "u1", message="Who?")],
    )
    # Per-route guard on RPCs: the error is an RPC_ERROR for the request.
    guarded: Router[Any] = Router()
    guarded.rpc(ECHO, echo, middleware=[require_auth(is_admin)])
    router.mount("admin.", guarded)
    async with open_test_app(router) as app:
        client = await app.connect({"user_id": "u2", "role": "user"})
        await client.send(SHOUT, Ping("x"))
        assert (await client.receive()).raw == {
            "type": "ERROR",
            "meta": {},
            "payload": {"code": "UNAUTHENTICATED", "message": "Who?", "retryable": False},
        }
        await client.send_json(
            {"type": "admin.ECHO", "meta": {"correlationId": "c1"}, "payload": {"text": "x"}}
        )
        assert (await client.receive()).raw == {
            "type": "RPC_ERROR",
            "meta": {"correlationId": "c1"},
            "payload": {"code": "UNAUTHENTICATED", "message": "Not authenticated",
                        "retryable": False},
        }  # fmt: skip
        admin = await app.connect({"user_id": "u1", "role": "admin"})
        await admin.send(SHOUT, Ping("x"))
        assert (await admin.receive()).raw["payload"] == {"reply": "shout"}
        await admin.send_json(
            {"type": "admin.ECHO", "meta": {"correlationId": "c1"}, "payload": {"text": "x"}}
        )
        assert (await admin.receive()).raw["payload"] == {"reply": "hi"}


# -- log_messages -------------------------------------------------------------------


async def test_log_messages_records_type_client_outcome_and_duration(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wskit_trio.messages")
    router, _ = ping_router(log_messages())
    async with open_test_app(router) as app:
        client = await app.connect(Conn(user_id="u1"))
        for text in ("slow", "missing", "bug"):
            await client.send(PING, Ping(text))
        cid = await client.request(ECHO, Ping("hang"))
        await trio.testing.wait_all_tasks_blocked()
        await client.abort(cid)
        for _ in range(3):
            await client.receive()
        await settle(client)
    records = [r for r in caplog.records if r.name == "wskit_trio.messages"]
    got = [
        (r.levelno, r.ws_type, r.ws_client, r.ws_outcome, r.ws_duration_ms, r.ws_correlation_id)  # type: ignore[attr-defined]
        for r in records
    ]
    client_id = client.client_id
    assert got == [
        (logging.INFO, "PING", client_id, "ok", pytest.approx(250.0), None),
        (logging.WARNING, "PING", client_id, "NOT_FOUND", 0.0, None),
        (logging.WARNING, "PING", client_id, "INTERNAL", 0.0, None),
        (logging.WARNING, "ECHO", client_id, "cancelled", 0.0, cid),
    ]
    assert records[0].getMessage() == f"PING from {client_id}: ok in 250.0 ms"


async def test_log_messages_costs_nothing_when_disabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.quiet")
    logger.setLevel(logging.ERROR)
    router, calls = ping_router(log_messages(logger))
    async with open_test_app(router) as app:
        client = await app.connect(Conn())
        await client.send(PING, Ping("missing"))
        assert (await client.receive()).error_code == "NOT_FOUND"
        await client.send(PING, Ping("a"))
        assert (await client.receive()).type == "PONG"
    assert calls == ["missing", "a"]
    assert not [r for r in caplog.records if r.name == "test.quiet"]


# -- metrics ------------------------------------------------------------------------


def test_frame_type_reads_encoded_frames_cheaply_and_falls_back() -> None:
    assert frame_type('{"type":"PONG","meta":{}}') == "PONG"
    assert frame_type('{"type":"A\\"B","meta":{}}') == 'A"B'
    assert frame_type('{"meta":{},"type":"X"}') == "X"
    assert frame_type("not json") == "<invalid>"
    assert frame_type("[1]") == "<invalid>"


async def test_metrics_count_connections_frames_errors_rate_limits_and_publishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def hook(name: str, labels: Mapping[str, str], amount: int) -> None:
        events[name, tuple(sorted(labels.items()))] += amount

    metrics = Metrics(hook=hook)
    router, _ = ping_router()
    router.plugin(metrics)
    router.use(rate_limit(limiter=MemoryRateLimiter(capacity=2, tokens_per_second=1)))

    @router.on(SHOUT)
    async def shout(ctx: Context[Ping, Any]) -> None:
        await ctx.topics.subscribe("room")
        assert (await ctx.publish("room", PONG, Pong(reply="all"))).ok
        assert not (await ctx.publish("bad topic", PONG, Pong(reply="no"))).ok

    async with open_test_app(router) as app:
        client = await app.connect(Conn(user_id="u1"))
        for text in ("a", "b", "c"):
            await client.send(PING, Ping(text))
        await client.send_raw("garbage")
        await client.send_json({"type": "NOPE"})
        await client.send_json({"type": "$weird"})
        await client.send_json({"type": "__heartbeat"})
        await client.send(SHOUT, Ping("x"))
        received = [(await client.receive()).type for _ in range(8)]
        await settle(client)
        before_close = metrics.statistics()
        await client.close()
        await trio.testing.wait_all_tasks_blocked()

    # SHOUT's publish comes back as a PONG delivery.
    assert Counter(received) == {"PONG": 3, "ERROR": 4, "__heartbeat_ack": 1}
    stats = metrics.statistics()
    assert before_close.connections_active == 1
    assert (stats.connections_opened, stats.connections_closed) == (1, 1)
    assert stats.connections_active == 0
    assert stats.frames_in == {
        "PING": 3, "<invalid>": 1, "<unknown>": 2, "__heartbeat": 1, "SHOUT": 1,
    }  # fmt: skip
    assert stats.frames_out == {"PONG": 3, "ERROR": 4, "__heartbeat_ack": 1}
    assert stats.errors == {"RESOURCE_EXHAUSTED": 1, "INVALID_ARGUMENT": 2, "UNIMPLEMENTED": 1}
    assert stats.rate_limited == {"PING": 1}
    assert stats.publishes == {"ok": 1, "INVALID_ARGUMENT": 1}
    # The hook saw exactly the same increments.
    from_hook: dict[str, dict[str, int]] = {}
    for (name, labels), amount in events.items():
        key = labels[0][1] if labels else ""
        from_hook.setdefault(name, {})[key] = amount
    assert from_hook == {
        "connections_opened": {"": 1},
        "connections_closed": {"": 1},
        "frames_in": dict(stats.frames_in),
        "frames_out": dict(stats.frames_out),
        "errors": dict(stats.errors),
        "rate_limited": dict(stats.rate_limited),
        "publishes": dict(stats.publishes),
    }
    # Snapshots are copies.
    assert before_close.frames_in == stats.frames_in
    assert before_close.connections_closed == 0


async def test_a_failing_metrics_hook_is_logged_once_and_counting_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(name: str, labels: Mapping[str, str], amount: int) -> None:
        raise RuntimeError("exporter down")

    metrics = Metrics(hook=hook)
    router, _ = ping_router()
    router.plugin(metrics)
    async with open_test_app(router) as app:
        client = await app.connect(Conn())
        for text in ("a", "b"):
            await client.send(PING, Ping(text))
            assert (await client.receive()).type == "PONG"
        await settle(client)
    stats = metrics.statistics()
    assert stats.frames_in == {"PING": 2}
    assert stats.frames_out == {"PONG": 2}
    failures = [r for r in caplog.records if "metrics hook" in r.getMessage()]
    assert len(failures) == 1


async def test_without_metrics_the_router_has_no_observer() -> None:
    router, _ = ping_router()
    assert router.observer is None
    assert router.compile().observer is None
