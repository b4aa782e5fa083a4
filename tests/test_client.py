"""The typed client (``wskit_trio.client``) against a real ``serve()`` on 127.0.0.1.

Bytes cross real loopback sockets while ``net_clock`` (a ``MockClock`` that jumps
once every task has been idle for 10 ms of real time) runs timeouts, backoff and
heartbeats in virtual time. A few tests use a scripted trio-websocket server to
send what ``serve()`` never would (progress with only ``data``, an error frame
without ``retryable``, silence).
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from _net import net_clock, running_server
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import (
    Context,
    ErrorCode,
    OutboundValidationError,
    RateLimited,
    Router,
    RpcContext,
    Server,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
)
from wskit_trio.client import (
    Auth,
    Backoff,
    ClientHeartbeat,
    ClientState,
    ConnectError,
    ConnectionClosed,
    FrameDropped,
    InboundMessage,
    InboundValidationError,
    OfflineQueuePolicy,
    Reconnect,
    RequestTimeout,
    Retry,
    RpcError,
    open_client,
)

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

EchoCtx = RpcContext[Ping, Pong, Any]
LEAVE = message("LEAVE")
STATUS = rpc("STATUS", None, "STATUS_OK", Pong)
NEWS = message("NEWS", Pong)
WHOAMI = rpc("WHOAMI", None, "ME", Pong)
#: Reconnect at once (virtual time anyway, but keeps attempt counts small).
FAST = Reconnect(backoff=Backoff(initial=0.05, max=0.05, jitter="none"))


@attrs.frozen
class Count:
    count: int


def echo_router(seen: list[Any] | None = None, holding: trio.Event | None = None) -> Router[Any]:
    """PING → PONG, LEAVE, STATUS, and ECHO driven by its text ("hold" waits for a
    "release"; ``holding`` is set when it starts)."""
    router: Router[Any] = Router()
    release = trio.Event()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Any]) -> None:
        if seen is not None:
            seen.append(ctx.payload.text)
        if ctx.payload.text == "news":
            await ctx.send(NEWS, Pong("extra"))
        await ctx.send(PONG, Pong(ctx.payload.text))

    @router.on(LEAVE)
    async def leave(ctx: Context[None, Any]) -> None:
        await ctx.send(PONG, Pong("left"))

    @router.rpc(STATUS)
    async def status(ctx: RpcContext[None, Pong, Any]) -> None:
        await ctx.reply(Pong("fine"))

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        if seen is not None:
            seen.append(dict(ctx.meta))
        text = ctx.payload.text
        if text == "progress":
            await ctx.progress(Pong("working"))
            await ctx.progress(Pong("almost"))
        elif text == "hold":
            if holding is not None:
                holding.set()
            await release.wait()
        elif text == "release":
            release.set()
        await ctx.reply(Pong(text.upper()))

    return router


@asynccontextmanager
async def scripted_server(
    script: Callable[[trio_websocket.WebSocketConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare trio-websocket server running ``script(ws)`` per connection; yields its URL."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with suppress(trio_websocket.ConnectionClosed):
            await script(ws)

    async with trio.open_nursery() as nursery:
        server: trio_websocket.WebSocketServer = await nursery.start(
            trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
        )
        yield f"ws://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def recv_frame(ws: trio_websocket.WebSocketConnection) -> Any:
    message = await ws.get_message()
    assert isinstance(message, str)
    return json.loads(message)


# -- send, on, request -------------------------------------------------------------------


async def test_send_and_on_round_trip(net_clock: trio.testing.MockClock) -> None:
    got: list[InboundMessage[Pong]] = []
    arrived = trio.Event()
    with trio.fail_after(10):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url) as client,
        ):
            assert client.state == ClientState.OPEN

            @client.on(PONG)
            async def on_pong(msg: InboundMessage[Pong]) -> None:
                got.append(msg)
                if len(got) == 3:
                    arrived.set()

            sync_seen: list[str] = []
            off = client.on(PONG, lambda msg: sync_seen.append(msg.payload.reply))
            assert await client.send(PING, Ping("one")) is True
            assert await client.send(PING, Ping("two")) is True
            assert await client.send(LEAVE) is True  # no payload
            await arrived.wait()
            assert [(m.type, m.payload) for m in got] == [
                ("PONG", Pong("one")),
                ("PONG", Pong("two")),
                ("PONG", Pong("left")),
            ]
            assert got[0].meta == {}
            assert sync_seen == ["one", "two", "left"]

            off()
            await client.send(PING, Ping("three"))
            assert await client.request(ECHO, Ping("barrier")) == Pong("BARRIER")
            assert sync_seen == ["one", "two", "left"]
            assert got[-1].payload == Pong("three")


async def test_send_validates_before_anything_goes_out(
    net_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(10):
        async with (
            running_server(echo_router(seen)) as server,
            open_client(server.url) as client,
        ):
            with pytest.raises(OutboundValidationError):
                await client.send(PING, Pong("wrong class"))  # type: ignore[misc]
            with pytest.raises(OutboundValidationError):
                await client.send(PING, {"text": 5})  # type: ignore[misc]
            with pytest.raises(OutboundValidationError, match=r"meta\.roomId"):
                await client.send(PING, Ping("x"), meta={"roomId": "r1"})
            with pytest.raises(OutboundValidationError):
                await client.request(ECHO, {"nope": 1})  # type: ignore[misc]
            assert await client.request(ECHO, Ping("ok")) == Pong("OK")
            assert len(seen) == 1  # only the valid request arrived


async def test_request_sends_uuid_correlation_id_and_remaining_budget(
    net_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):  # later than the 30 s default timeout
        async with (
            running_server(echo_router(seen)) as server,
            open_client(server.url) as client,
        ):
            reply = await client.request(ECHO, Ping("hi"))
            assert reply == Pong("HI")
            with trio.move_on_after(5):  # the caller's deadline is sooner than timeout=30
                assert await client.request(ECHO, Ping("a"), timeout=30) == Pong("A")
            assert await client.request(ECHO, Ping("b"), timeout=None) == Pong("B")
            assert await client.request(STATUS) == Pong("fine")
            first, second, third = seen
            assert uuid.UUID(first["correlationId"]).version == 4
            assert len({m["correlationId"] for m in seen}) == 3
            assert first["timeoutMs"] == 30_000
            assert second["timeoutMs"] == 5_000
            assert third["timeoutMs"] == 60_000  # no client timeout: the caller's fail_after
            assert isinstance(first["timestamp"], int)


async def test_progress_by_callback_and_by_stream(net_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url) as client,
        ):
            sync_progress: list[Pong] = []
            reply = await client.request(ECHO, Ping("progress"), on_progress=sync_progress.append)
            assert (sync_progress, reply) == ([Pong("working"), Pong("almost")], Pong("PROGRESS"))

            async_progress: list[Pong] = []

            async def on_progress(progress: Pong) -> None:
                await trio.sleep(1)
                async_progress.append(progress)

            await client.request(ECHO, Ping("progress"), on_progress=on_progress)
            assert async_progress == [Pong("working"), Pong("almost")]

            async with client.stream(ECHO, Ping("progress")) as call:
                assert [p async for p in call] == [Pong("working"), Pong("almost")]
                assert call.done
                assert await call.result() == Pong("PROGRESS")

            async with client.stream(ECHO, Ping("progress")) as call:
                assert await call.result() == Pong("PROGRESS")  # progress skipped


async def test_progress_falls_back_to_data(net_clock: trio.testing.MockClock) -> None:
    async def script(ws: trio_websocket.WebSocketConnection) -> None:
        request = await recv_frame(ws)
        cid = request["meta"]["correlationId"]
        meta = {"correlationId": cid}
        for frame in (
            {"type": "$ws:rpc-progress", "meta": meta, "data": {"reply": "old-style"}},
            {"type": "$ws:rpc-progress", "meta": meta, "payload": {"reply": "new"}},
            {"type": "$ws:rpc-progress", "meta": meta, "payload": {"reply": 5}},  # invalid
            {"type": "ECHOED", "meta": meta, "payload": {"reply": "done"}},
        ):
            await ws.send_message(json.dumps(frame))
        await ws.get_message()

    errors: list[Exception] = []
    progress: list[Pong] = []
    with trio.fail_after(10):
        async with (
            scripted_server(script) as url,
            open_client(url, on_error=errors.append) as client,
        ):
            reply = await client.request(ECHO, Ping("x"), on_progress=progress.append)
    assert (progress, reply) == ([Pong("old-style"), Pong("new")], Pong("done"))
    (error,) = errors
    assert isinstance(error, InboundValidationError)
    assert error.errors == [("$.payload.reply", "expected string, got integer")]


# -- errors ------------------------------------------------------------------------------


def failing_router() -> Router[Any]:
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        text = ctx.payload.text
        if text == "not-found":
            raise WsKitError(ErrorCode.NOT_FOUND, "No such user", {"id": "u1"})
        if text == "unavailable":
            raise WsKitError(ErrorCode.UNAVAILABLE)
        if text == "custom":
            raise WsKitError("TEAPOT", "I am a teapot", retryable=True, retry_after_ms=250)
        if text == "never":
            raise RateLimited(cost=20, capacity=10, remaining=10, retry_after_ms=None)
        if text == "crash":
            raise RuntimeError("secret")
        await ctx.reply(Pong(text))

    return router


async def test_rpc_error_fields(net_clock: trio.testing.MockClock) -> None:
    async def fail(client: Any, text: str) -> RpcError:
        with pytest.raises(RpcError) as info:
            await client.request(ECHO, Ping(text))
        return info.value

    with trio.fail_after(10):
        async with (
            running_server(failing_router()) as server,
            open_client(server.url) as client,
        ):
            err = await fail(client, "not-found")
            assert (err.code, err.message, err.details) == (
                ErrorCode.NOT_FOUND,
                "No such user",
                {"id": "u1"},
            )
            assert (err.retryable, err.retry_after_ms, err.should_retry) == (False, None, False)
            assert (err.type, err.correlation_id) == ("ECHO", err.correlation_id)
            assert isinstance(err, WsKitError)

            err = await fail(client, "unavailable")
            assert (err.code, err.message) == (ErrorCode.UNAVAILABLE, "Service unavailable")
            assert (err.retryable, err.retry_after_ms, err.should_retry) == (True, 100, True)

            err = await fail(client, "custom")
            assert (err.code, err.retryable, err.retry_after_ms) == ("TEAPOT", True, 250)

            err = await fail(client, "never")  # retryAfterMs: null means "never"
            assert err.code == ErrorCode.RESOURCE_EXHAUSTED
            assert (err.retryable, err.retry_after_ms, err.should_retry) == (True, None, False)
            assert err.details == {"cost": 20, "capacity": 10, "remaining": 10}

            err = await fail(client, "crash")
            assert (err.code, err.message, err.retryable) == (
                ErrorCode.INTERNAL,
                "Internal error",
                False,
            )
            assert await client.request(ECHO, Ping("still fine")) == Pong("still fine")


async def test_retryable_is_inferred_from_the_code_table(
    net_clock: trio.testing.MockClock,
) -> None:
    async def script(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            request = await recv_frame(ws)
            code = request["payload"]["text"]
            await ws.send_message(
                json.dumps(
                    {
                        "type": "RPC_ERROR",
                        "meta": {"correlationId": request["meta"]["correlationId"]},
                        "payload": {"code": code, "message": "m"},  # no retry keys
                    }
                )
            )

    expected = {
        "UNAVAILABLE": (True, 100),
        "ABORTED": (True, 50),
        "NOT_FOUND": (False, None),
        "INTERNAL": (False, None),
        "CUSTOM": (False, None),
    }
    with trio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            for code, (retryable, after) in expected.items():
                with pytest.raises(RpcError) as info:
                    await client.request(ECHO, Ping(code))
                assert (info.value.code, info.value.retryable) == (code, retryable)
                assert info.value.retry_after_ms == after


async def test_invalid_reply_fails_the_request(net_clock: trio.testing.MockClock) -> None:
    strict_echo = rpc("ECHO", Ping, "ECHOED", Count)  # the server replies {"reply": ...}
    errors: list[Exception] = []
    with trio.fail_after(10):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, on_error=errors.append) as client,
        ):
            with pytest.raises(InboundValidationError) as info:
                await client.request(strict_echo, Ping("x"))
            assert info.value.type == "ECHOED"
            assert ("$.payload.count", "required key missing") in info.value.errors
            assert errors == [info.value]


async def test_invalid_unknown_and_error_frames_are_reported(
    net_clock: trio.testing.MockClock,
) -> None:
    strict_pong = message("PONG", Count)
    unknown_to_server = message("NOPE", Ping)
    errors: list[Exception] = []
    unhandled: list[dict[str, Any]] = []
    handled: list[Count] = []
    with trio.fail_after(10):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, on_error=errors.append, on_unhandled=unhandled.append) as c,
        ):
            c.on(strict_pong, lambda msg: handled.append(msg.payload))
            await c.send(PING, Ping("news"))  # NEWS (not registered), then PONG (invalid)
            await c.send(unknown_to_server, Ping("x"))  # answered ERROR UNIMPLEMENTED
            assert await c.request(ECHO, Ping("barrier")) == Pong("BARRIER")
            await trio.testing.wait_all_tasks_blocked()  # the handler queue is drained
    assert handled == []
    assert unhandled == [{"type": "NEWS", "meta": {}, "payload": {"reply": "extra"}}]
    invalid, unimplemented = errors
    assert isinstance(invalid, InboundValidationError)
    assert invalid.type == "PONG"
    assert isinstance(unimplemented, RpcError)
    assert unimplemented.code == ErrorCode.UNIMPLEMENTED
    assert unimplemented.type is None


async def test_handler_exceptions_are_reported_and_the_client_goes_on(
    net_clock: trio.testing.MockClock,
) -> None:
    errors: list[Exception] = []
    with trio.fail_after(10):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, on_error=errors.append) as client,
        ):

            def boom(msg: InboundMessage[Pong]) -> None:
                raise ValueError(msg.payload.reply)

            client.on(PONG, boom)
            await client.send(PING, Ping("first"))
            await client.send(PING, Ping("second"))
            assert await client.request(ECHO, Ping("x")) == Pong("X")
            await trio.testing.wait_all_tasks_blocked()
    assert [str(e) for e in errors] == ["first", "second"]


# -- deadlines and cancellation ------------------------------------------------------------


Outcome = tuple[str, bool]


def abort_router(outcomes: trio.MemorySendChannel[Outcome], started: trio.Event) -> Router[Any]:
    """ECHO never replies; when its handler ends, ``(correlationId, aborted)`` is sent."""
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        # Ignore our own deadline (timeoutMs), so only `$ws:abort` can stop this.
        ctx.cancel_scope.deadline = math.inf
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            outcomes.send_nowait((ctx.correlation_id or "", ctx.aborted))

    return router


async def test_timeout_raises_and_aborts_on_the_server(
    net_clock: trio.testing.MockClock,
) -> None:
    send, outcomes = trio.open_memory_channel[Outcome](math.inf)
    with trio.fail_after(30):
        async with (
            running_server(abort_router(send, trio.Event())) as server,
            open_client(server.url) as client,
        ):
            start = trio.current_time()
            with pytest.raises(RequestTimeout) as info:
                await client.request(ECHO, Ping("slow"), timeout=1.5)
            assert trio.current_time() - start == pytest.approx(1.5)
            err = info.value
            assert isinstance(err, TimeoutError)
            assert isinstance(err, WsKitError)
            assert (err.code, err.type, err.timeout) == ("DEADLINE_EXCEEDED", "ECHO", 1.5)
            assert await outcomes.receive() == (err.correlation_id, True)


async def test_cancelled_request_aborts_on_the_server(net_clock: trio.testing.MockClock) -> None:
    send, outcomes = trio.open_memory_channel[Outcome](math.inf)
    started = trio.Event()
    with trio.fail_after(30):
        async with (
            running_server(abort_router(send, started)) as server,
            open_client(server.url) as client,
        ):
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    await client.request(ECHO, Ping("slow"), correlation_id="c-cancel")
                    raise AssertionError("not reached")

                nursery.start_soon(call)
                await started.wait()
                nursery.cancel_scope.cancel()
            assert await outcomes.receive() == ("c-cancel", True)

            # Leaving a stream before its reply aborts as well.
            async with client.stream(ECHO, Ping("x"), correlation_id="c-left") as stream:
                assert stream.correlation_id == "c-left"
            assert await outcomes.receive() == ("c-left", True)
            assert client.statistics().pending_requests == 0


async def test_without_extensions_no_timeout_ms_and_no_abort_go_out(
    net_clock: trio.testing.MockClock,
) -> None:
    """``extensions=False`` (for a WS-Kit 0.10 server, whose strict meta refuses
    ``timeoutMs``): the request carries no ``timeoutMs`` and a timeout sends no
    ``$ws:abort``; the deadline holds on the client alone."""
    send, outcomes = trio.open_memory_channel[Outcome](math.inf)
    metas: list[dict[str, Any]] = []
    router = abort_router(send, trio.Event())

    @router.use
    async def record_meta(ctx: Any, next: Any) -> None:
        metas.append(dict(ctx.meta))
        await next()

    with trio.fail_after(30):
        async with (
            running_server(router) as server,
            open_client(server.url, extensions=False) as client,
        ):
            with pytest.raises(RequestTimeout):
                await client.request(ECHO, Ping("slow"), timeout=1.5, correlation_id="c-x")
            await trio.sleep(1)  # an abort would have ended the handler by now
            with pytest.raises(trio.WouldBlock):
                outcomes.receive_nowait()
        [meta] = metas
        assert meta["correlationId"] == "c-x" and "timeoutMs" not in meta
        # The handler ended only with the connection, never aborted.
        assert await outcomes.receive() == ("c-x", False)


# -- reconnect, offline queue --------------------------------------------------------------


@asynccontextmanager
async def server_on(router: Router[Any], port: int, **options: Any) -> AsyncIterator[Server[Any]]:
    options.setdefault("transport", _net.TRANSPORT)
    async with trio.open_nursery() as nursery:
        server: Server[Any] = await nursery.start(
            serve(router, host="127.0.0.1", port=port, handle_signals=False, **options)
        )
        try:
            yield server
        finally:
            await server.aclose(grace=0)


async def test_server_restart_reconnects_flushes_queue_and_fails_pending(
    net_clock: trio.testing.MockClock,
) -> None:
    holding = trio.Event()
    second_seen: list[Any] = []
    states: list[ClientState] = []
    with trio.fail_after(60):
        async with running_server(echo_router(holding=holding)) as first:
            port = first.port
            async with open_client(first.url, reconnect=FAST, on_state=states.append) as client:
                assert await client.request(ECHO, Ping("before")) == Pong("BEFORE")
                failures: list[ConnectionClosed] = []
                async with trio.open_nursery() as nursery:

                    async def pending() -> None:
                        try:
                            await client.request(ECHO, Ping("hold"))
                        except ConnectionClosed as exc:
                            failures.append(exc)

                    nursery.start_soon(pending)
                    await holding.wait()
                    await first.aclose(grace=0)
                assert len(failures) == 1
                assert (failures[0].code, failures[0].reason) == (1001, "server shutting down")

                # Offline: these wait in the queue, in order.
                await client.wait_state(ClientState.RECONNECTING, ClientState.CONNECTING)
                for text in ("q1", "q2", "q3"):
                    assert await client.send(PING, Ping(text)) is True
                assert client.statistics().queued == 3
                async with trio.open_nursery() as nursery:
                    replies: list[Pong] = []

                    async def queued_request() -> None:
                        replies.append(await client.request(ECHO, Ping("queued")))

                    nursery.start_soon(queued_request)
                    await trio.sleep(1)  # a few failed attempts against the closed port
                    assert client.statistics().reconnect_attempt >= 2
                    async with server_on(echo_router(second_seen), port):
                        await client.wait_state(ClientState.OPEN)
                        assert await client.request(ECHO, Ping("after")) == Pong("AFTER")
                        assert client.statistics().connects == 2
                        assert client.statistics().reconnect_attempt == 0  # reset on success
                assert replies == [Pong("QUEUED")]
                assert second_seen[:3] == ["q1", "q2", "q3"]
                assert second_seen[3]["timeoutMs"] < 30_000  # what was left of its budget
    assert states[:2] == [ClientState.CONNECTING, ClientState.OPEN]
    assert ClientState.RECONNECTING in states
    assert states[-2:] == [ClientState.CLOSING, ClientState.CLOSED]


async def test_no_reconnect_when_disabled(net_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, reconnect=False) as client,
        ):
            for conn in list(server.connections):
                await conn.shutdown(0)
            await client.wait_state(ClientState.CLOSED)
            with pytest.raises(ConnectionClosed) as info:
                await client.send(PING, Ping("x"))
            assert info.value.code == 1001
            with pytest.raises(ConnectionClosed):
                await client.request(ECHO, Ping("x"))
            assert server.statistics().accepted == 1


async def test_offline_queue_policies(net_clock: trio.testing.MockClock) -> None:
    async with running_server(echo_router()) as probe:
        port = probe.port
    url = f"ws://127.0.0.1:{port}"
    cases: list[tuple[OfflineQueuePolicy, list[bool], list[str]]] = [
        ("drop_newest", [True, True, False], ["a", "b"]),
        ("drop_oldest", [True, True, True], ["b", "c"]),
        ("off", [False, False, False], []),
    ]
    for policy, expected_sent, expected_seen in cases:
        errors: list[Exception] = []
        seen: list[Any] = []
        with trio.fail_after(30):
            async with open_client(
                url,
                queue=policy,
                queue_size=2,
                wait_open=False,
                reconnect=FAST,
                on_error=errors.append,
            ) as client:
                sent = [await client.send(PING, Ping(text)) for text in "abc"]
                assert sent == expected_sent, policy
                async with server_on(echo_router(seen), port):
                    await client.wait_state(ClientState.OPEN)
                    await client.request(ECHO, Ping("barrier"))
        assert seen[:-1] == expected_seen, policy
        dropped = [e for e in errors if isinstance(e, FrameDropped)]
        assert len(dropped) == (0 if policy == "off" else 1), policy
        assert all(e.type == "PING" for e in dropped)

    # A request that cannot be queued fails at once.
    with trio.fail_after(30):
        async with open_client(url, queue="off", wait_open=False) as client:
            with pytest.raises(FrameDropped):
                await client.request(ECHO, Ping("x"))


async def test_pending_requests_limit(net_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, pending_requests_limit=1) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(client.request, ECHO, Ping("hold"))
            await trio.testing.wait_all_tasks_blocked()
            assert client.statistics().pending_requests == 1
            with pytest.raises(RpcError) as info:
                await client.request(ECHO, Ping("over"))
            assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
            await client.send(PING, Ping("still works"))
            # Free the held request (its handler waits for "release").
            async with open_client(server.url) as other:
                await other.request(ECHO, Ping("release"))


async def test_connect_errors(net_clock: trio.testing.MockClock) -> None:
    async with running_server(echo_router()) as probe:
        url = probe.url
    with trio.fail_after(30), pytest.raises(ConnectError) as info:
        async with open_client(url):
            raise AssertionError("not reached")
    assert info.value.status is None
    assert isinstance(info.value, ConnectionClosed)


async def test_leaving_the_block_completes_the_close_handshake_at_once(
    net_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with running_server(echo_router()) as server:
            async with open_client(server.url) as client:
                assert await client.request(ECHO, Ping("bye")) == Pong("BYE")
                start = trio.current_time()
            # The server's close frame got through: no close_timeout (5 s) waited out.
            assert trio.current_time() - start < 1


# -- a server (or a proxy in front of it) that drops the connection before the upgrade --


async def read_request(stream: trio.SocketStream) -> None:
    """Read the client's upgrade request (so closing sends a FIN, not a reset)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            return
        data += chunk


async def close_at_once(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def close_after_request(stream: trio.SocketStream) -> None:
    await read_request(stream)
    await stream.aclose()


async def reset_after_request(stream: trio.SocketStream) -> None:
    await read_request(stream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # an RST


async def cut_off_503(stream: trio.SocketStream) -> None:
    await read_request(stream)
    await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n")
    await stream.aclose()


async def not_http(stream: trio.SocketStream) -> None:
    await read_request(stream)
    await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await stream.aclose()


DROPS = [close_at_once, close_after_request, reset_after_request, cut_off_503, not_http]


@pytest.mark.parametrize("drop", DROPS, ids=lambda drop: drop.__name__)
async def test_connection_dropped_before_the_upgrade_fails_at_once(
    drop: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    # Real time: the attempt must not wait out the (default, 10 s) connect timeout.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, drop, listeners)
        with trio.fail_after(2), pytest.raises(ConnectError) as info:
            async with open_client(f"ws://127.0.0.1:{port}"):
                raise AssertionError("not reached")
        nursery.cancel_scope.cancel()
    assert info.value.status == (503 if drop is cut_off_503 else None)
    if drop is cut_off_503:
        assert "'HTTP/1.1 503 Service Unavailable'" in str(info.value)


async def test_reconnect_backs_off_past_a_dropping_server_until_serve_appears() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    errors: list[Exception] = []
    failed_thrice = trio.Event()

    def on_error(exc: Exception) -> None:
        errors.append(exc)
        if len(errors) >= 3:
            failed_thrice.set()

    with trio.fail_after(30):
        async with open_client(
            f"ws://127.0.0.1:{port}", reconnect=FAST, wait_open=False, on_error=on_error
        ) as client:
            async with trio.open_nursery() as fake:
                fake.start_soon(trio.serve_listeners, close_after_request, listeners)
                # Three attempts in 2 s of real time: none waits out the 10 s timeout.
                with trio.fail_after(2):
                    await failed_thrice.wait()
                assert client.state in (ClientState.CONNECTING, ClientState.RECONNECTING)
                fake.cancel_scope.cancel()
            # The fake server is gone (its listener closed): attempts are refused until
            # serve() listens on the same port.
            async with server_on(echo_router(), port):
                await client.wait_state(ClientState.OPEN)
                assert await client.request(ECHO, Ping("back")) == Pong("BACK")
    assert all(isinstance(exc, ConnectError) for exc in errors)
    assert "before completing the upgrade" in str(errors[0])


# -- auth ----------------------------------------------------------------------------------


def auth_router(tokens: list[str]) -> tuple[Router[Conn], Callable[[UpgradeRequest], Any]]:
    router: Router[Conn] = Router()

    @router.rpc(WHOAMI)
    async def me(ctx: RpcContext[None, Pong, Conn]) -> None:
        await ctx.reply(Pong(ctx.data.user_id or ""))

    def authenticate(request: UpgradeRequest) -> Conn | None:
        tokens.append(
            f"query={request.query.get('access_token')} protocols={list(request.subprotocols)}"
        )
        if request.token is None or not request.token.startswith("good"):
            return None
        return Conn(user_id=request.token)

    return router, authenticate


async def test_auth_by_query_parameter(net_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []
    router, authenticate = auth_router(seen)

    async def token() -> str:
        await trio.sleep(0.1)
        return "good-q"

    with trio.fail_after(30):
        async with (
            running_server(router, authenticate=authenticate) as server,
            open_client(server.url + "/ws?room=1", auth=token) as client,
        ):
            assert await client.request(WHOAMI) == Pong("good-q")
            assert client.subprotocol is None
    assert seen == ["query=good-q protocols=[]"]


async def test_auth_by_subprotocol(net_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []
    router, authenticate = auth_router(seen)
    auth = Auth(token=lambda: "good-p", attach="subprotocol")
    with trio.fail_after(30):
        async with (
            running_server(router, authenticate=authenticate) as server,
            open_client(server.url, auth=auth, subprotocols=["chat.v1"]) as client,
        ):
            assert await client.request(WHOAMI) == Pong("good-p")
            assert client.subprotocol == "bearer.good-p"
    assert seen == ["query=None protocols=['chat.v1', 'bearer.good-p']"]


async def test_bad_token_is_a_connect_error(net_clock: trio.testing.MockClock) -> None:
    seen: list[str] = []
    router, authenticate = auth_router(seen)
    with trio.fail_after(30):
        async with running_server(router, authenticate=authenticate) as server:
            with pytest.raises(ConnectError) as info:
                async with open_client(server.url, auth=lambda: "bad-secret"):
                    raise AssertionError("not reached")
            assert (info.value.status, info.value.body) == (401, "Unauthorized")
            # The token never reaches the error (nor the logs it goes to).
            assert "bad-secret" not in str(info.value) and "bad-secret" not in info.value.url
            assert "access_token=***" in info.value.url
            with pytest.raises(ConnectError, match="cannot get a token"):
                async with open_client(server.url, auth=lambda: 1 / 0):  # type: ignore[arg-type,return-value]
                    raise AssertionError("not reached")
    assert seen == ["query=bad-secret protocols=[]"]  # no retries before the first open


async def test_token_is_fetched_again_on_every_attempt(
    net_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []
    router, authenticate = auth_router(seen)
    issued: list[str] = []

    def token() -> str:
        issued.append(f"good-{len(issued) + 1}")
        return issued[-1]

    with trio.fail_after(60):
        async with running_server(router, authenticate=authenticate) as first:
            port = first.port
            async with open_client(first.url, auth=token, reconnect=FAST) as client:
                assert await client.request(WHOAMI) == Pong("good-1")
                await first.aclose(grace=0)
                await client.wait_state(ClientState.RECONNECTING, ClientState.CONNECTING)
                await trio.sleep(0.2)
                async with server_on(router, port, authenticate=authenticate):
                    await client.wait_state(ClientState.OPEN)
                    latest = await client.request(WHOAMI)
    assert len(issued) >= 3  # the first, the failed attempts, the one that worked
    assert latest == Pong(issued[-1])
    assert seen == [f"query={t} protocols=[]" for t in ("good-1", issued[-1])]


# -- heartbeat, retry ----------------------------------------------------------------------


async def test_heartbeat_detects_a_dead_server_and_reconnects(
    net_clock: trio.testing.MockClock,
) -> None:
    received: list[list[Any]] = []

    async def silent(ws: trio_websocket.WebSocketConnection) -> None:
        frames: list[Any] = []
        received.append(frames)
        while True:
            frames.append(await recv_frame(ws))  # never answers

    errors: list[Exception] = []
    heartbeat = ClientHeartbeat(interval=5, timeout=2)
    with trio.fail_after(60):
        async with (
            scripted_server(silent) as url,
            open_client(url, heartbeat=heartbeat, reconnect=FAST, on_error=errors.append) as c,
        ):
            start = trio.current_time()
            await c.wait_state(ClientState.RECONNECTING)
            assert trio.current_time() - start == pytest.approx(7.0)  # interval + timeout
            await c.wait_state(ClientState.OPEN)
            assert c.statistics().connects == 2
    assert received[0] == [{"type": "__heartbeat"}]
    assert any("heartbeat" in str(e) for e in errors)


@pytest.mark.parametrize("mode", ["frame", "ping"])
async def test_heartbeat_keeps_a_live_connection(
    net_clock: trio.testing.MockClock, mode: str
) -> None:
    heartbeat = ClientHeartbeat(interval=5, timeout=2, mode=mode)  # type: ignore[arg-type]
    with trio.fail_after(60):
        async with (
            running_server(echo_router()) as server,
            open_client(server.url, heartbeat=heartbeat) as client,
        ):
            await trio.sleep(60 * 0.5)
            assert client.statistics().connects == 1
            assert client.state == ClientState.OPEN
            assert await client.request(ECHO, Ping("x")) == Pong("X")


async def test_retry_policy_resends_retryable_requests(
    net_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[str, float]] = []
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def flaky(ctx: EchoCtx) -> None:
        attempts.append((ctx.correlation_id or "", trio.current_time()))
        if ctx.payload.text == "never" or len(attempts) < 3:
            raise WsKitError(ErrorCode.UNAVAILABLE, retry_after_ms=500)
        await ctx.reply(Pong("ok"))

    retry = Retry(max_attempts=3, backoff=Backoff(initial=0.1, jitter="none"))
    with trio.fail_after(60):
        async with running_server(router) as server:
            async with open_client(server.url, retry=retry) as client:
                assert await client.request(ECHO, Ping("x")) == Pong("ok")
                assert len({cid for cid, _ in attempts}) == 3
                times = [t for _, t in attempts]
                assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.5, 0.5])
                attempts.clear()
                with pytest.raises(RpcError):  # three attempts, then the error
                    await client.request(ECHO, Ping("never"))
                assert len(attempts) == 3
                attempts.clear()
                with pytest.raises(RpcError):  # no retry that would outlive the timeout
                    await client.request(ECHO, Ping("never"), timeout=0.8)
                assert len(attempts) == 2
            attempts.clear()
            async with open_client(server.url) as client:  # no policy: no retry
                with pytest.raises(RpcError):
                    await client.request(ECHO, Ping("never"))
                assert len(attempts) == 1
