"""RPC lifecycle (docs/protocol.md §3-§5): reply, progress, one-shot terminals, throttle,
deadlines, abort, disconnect, concurrency and the in-flight limit.

Most tests run through the in-memory harness under ``autojump_clock``; the last
section repeats the essentials over real sockets (``serve()`` on 127.0.0.1).
"""

from __future__ import annotations

import contextvars
import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from _net import net_clock, recv_json, running_server, send_json
from _probe import Probe
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import (
    Context,
    ErrorCode,
    Limits,
    OutboundValidationError,
    Router,
    RpcContext,
    WsKitError,
    rpc,
)
from wskit_trio.testing import TestClient, open_test_app

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

EchoCtx = RpcContext[Ping, Pong, Conn]
EchoNetCtx = RpcContext[Ping, Pong, None]


async def settle(client: TestClient[Any]) -> None:
    """Let every task run to a blocking point, then check that nothing more came."""
    await trio.testing.wait_all_tasks_blocked()
    assert client.receive_nowait() is None


async def barrier(client: TestClient[Any]) -> None:
    """An event round trip: every frame queued before it has arrived once PONG does."""
    await client.send(PING, Ping("barrier"))
    frame = await client.receive()
    assert (frame.type, frame.payload) == ("PONG", {"reply": "barrier"}), frame.raw


def add_ping(router: Router[Conn]) -> None:
    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(ctx.payload.text))


# -- frames and one-shot terminals ---------------------------------------------------


async def test_reply_and_progress_frames_are_exactly_protocol_3(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await ctx.progress(Pong("working"))
        await ctx.progress(Pong("almost"))
        await ctx.reply(Pong(ctx.payload.text.upper()))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            cid = await client.request(ECHO, Ping("hi"), correlation_id="c-1")
            frames = [(await client.receive()).raw for _ in range(3)]
            assert frames == [
                {
                    "type": "$ws:rpc-progress",
                    "meta": {"correlationId": cid},
                    "payload": {"reply": "working"},
                    "data": {"reply": "working"},
                },
                {
                    "type": "$ws:rpc-progress",
                    "meta": {"correlationId": cid},
                    "payload": {"reply": "almost"},
                    "data": {"reply": "almost"},
                },
                {"type": "ECHOED", "meta": {"correlationId": "c-1"}, "payload": {"reply": "HI"}},
            ]
            await settle(client)
            assert app.errors == []


async def test_terminal_frames_are_one_shot(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    add_ping(router)
    outcomes: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        if ctx.payload.text == "reply-first":
            await ctx.reply(Pong("one"))
            await ctx.reply(Pong("two"))
            await ctx.progress(Pong("late progress"))
            await ctx.error(ErrorCode.NOT_FOUND, "too late")
        else:
            await ctx.error(ErrorCode.NOT_FOUND, "gone")
            await ctx.reply(Pong("after error"))
            await ctx.progress(Pong("late progress"))
            await ctx.error(ErrorCode.ABORTED, "second error")
        outcomes.append("returned")

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("reply-first"), correlation_id="a")
            await client.request(ECHO, Ping("error-first"), correlation_id="b")
            first, second = await client.receive(), await client.receive()
            by_cid = {first.correlation_id: first.raw, second.correlation_id: second.raw}
            assert by_cid["a"] == {
                "type": "ECHOED",
                "meta": {"correlationId": "a"},
                "payload": {"reply": "one"},
            }
            assert by_cid["b"] == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "b"},
                "payload": {"code": "NOT_FOUND", "message": "gone", "retryable": False},
            }
            await barrier(client)
            await settle(client)
            assert outcomes == ["returned", "returned"]


async def test_progress_throttle_skips_updates_inside_the_window(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    sent_at: list[float] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        start = trio.current_time()
        for step in range(20):  # one update every 30 ms, for 600 ms
            await ctx.progress(Pong(str(step)), throttle_ms=100)
            await trio.sleep(0.03)
        sent_at.append(start)
        await ctx.reply(Pong("done"))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"))
            steps: list[str] = []
            while (frame := await client.receive()).type == "$ws:rpc-progress":
                steps.append(frame.payload["reply"])
            assert frame.payload == {"reply": "done"}
    # Sent at 0, 120, 240, 360, 480 ms (each ≥ 100 ms after the last one sent).
    assert steps == ["0", "4", "8", "12", "16"]


async def test_invalid_outbound_payload_raises_in_handler_and_sends_nothing(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    raised: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        bad: Any = Pong(reply=123)  # type: ignore[arg-type]
        for attempt in (ctx.progress, ctx.reply):
            try:
                await attempt(bad)
            except OutboundValidationError as exc:
                raised.append(exc.type)
        await ctx.reply(Pong("valid"))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"), correlation_id="c-9")
            frame = await client.receive()
            assert frame.raw == {
                "type": "ECHOED",
                "meta": {"correlationId": "c-9"},
                "payload": {"reply": "valid"},
            }
            await settle(client)
    assert raised == ["ECHOED", "ECHOED"]


async def test_returning_without_reply_is_internal_error(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await ctx.progress(Pong("half-way"))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"), correlation_id="c-1")
            assert (await client.receive()).type == "$ws:rpc-progress"
            frame = await client.receive()
            assert frame.raw == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "c-1"},
                "payload": {
                    "code": "INTERNAL",
                    "message": "handler returned without a reply",
                    "retryable": False,
                },
            }
            await settle(client)
            assert [e.code for e in app.errors] == [ErrorCode.INTERNAL]


async def test_handler_exceptions_become_rpc_errors(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        if ctx.payload.text == "app":
            raise WsKitError(ErrorCode.NOT_FOUND, "no such echo", {"text": "app"})
        raise RuntimeError("secret internals")

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("app"), correlation_id="a")
            assert (await client.receive()).raw == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "a"},
                "payload": {
                    "code": "NOT_FOUND",
                    "message": "no such echo",
                    "details": {"text": "app"},
                    "retryable": False,
                },
            }
            await client.request(ECHO, Ping("bug"), correlation_id="b")
            frame = await client.receive()
            assert frame.type == "RPC_ERROR" and frame.correlation_id == "b"
            assert frame.payload["code"] == "INTERNAL"
            assert frame.payload["message"] == "Internal error"
            assert "secret" not in str(frame.raw)


async def test_rpc_without_correlation_id_is_invalid_argument_error(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    ran: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        ran.append(ctx.payload.text)
        await ctx.reply(Pong("x"))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.send_json({"type": "ECHO", "meta": {}, "payload": {"text": "hi"}})
            frame = await client.receive()
            assert frame.type == "ERROR"
            assert frame.meta == {}
            assert frame.payload["code"] == "INVALID_ARGUMENT"
            await settle(client)
            assert ran == []
            assert client.closed is None


async def test_duplicate_correlation_id_in_flight_is_refused(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await release.wait()
        await ctx.reply(Pong(ctx.payload.text))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("first"), correlation_id="dup")
            await client.request(ECHO, Ping("second"), correlation_id="dup")
            frame = await client.receive()
            assert (frame.type, frame.correlation_id) == ("RPC_ERROR", "dup")
            assert frame.payload["code"] == "INVALID_ARGUMENT"
            release.set()
            reply = await client.receive()
            assert reply.payload == {"reply": "first"}


# -- concurrency ---------------------------------------------------------------------


async def test_rpcs_run_concurrently_each_in_own_task_and_scope(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    """RPC "a" waits for something only RPC "b" does: sequential dispatch would hang.
    Both run within the connection's nursery: "a" in the connection's own task (its
    reader, which runs what it reads until it blocks), which then leaves reading
    to a new task of that nursery, where "b" runs; event handlers run in whichever
    task reads."""
    b_started = trio.Event()
    seen: dict[str, tuple[trio.lowlevel.Task, trio.CancelScope, trio.Nursery | None]] = {}
    readers: list[trio.lowlevel.Task] = []

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        readers.append(trio.lowlevel.current_task())
        await ctx.send(PONG, Pong(ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        task = trio.lowlevel.current_task()
        seen[ctx.payload.text] = (task, ctx.cancel_scope, task.parent_nursery)
        if ctx.payload.text == "a":
            await b_started.wait()
        else:
            b_started.set()
        await ctx.reply(Pong(ctx.payload.text))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("a"), correlation_id="a")
            await client.request(ECHO, Ping("b"), correlation_id="b")
            first, second = await client.receive(), await client.receive()
            assert (first.correlation_id, second.correlation_id) == ("b", "a")
            await barrier(client)
            conn_nursery = client.connection._nursery
            other = await app.connect()
            await barrier(other)
            other_nursery = other.connection._nursery
    task_a, scope_a, _ = seen["a"]
    task_b, scope_b, parent_b = seen["b"]
    assert task_a is not task_b
    assert scope_a is not scope_b
    assert conn_nursery is not None and other_nursery is not None
    assert task_a is conn_nursery.parent_task
    assert parent_b is conn_nursery
    reader, other_reader = readers
    assert reader is task_b  # the reader that took over
    assert other_reader is other_nursery.parent_task
    assert other_nursery is not conn_nursery  # one nursery per connection


class Spawns(trio.abc.Instrument):
    """Counts the tasks started while it is installed."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def test_an_rpc_that_never_waits_costs_no_task_and_one_that_waits_keeps_its_own(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    """The reader runs an RPC handler until it first waits: one that replies without
    waiting needs no task at all. One that waits keeps the task it started in (its
    cancel scope was entered there), and a new task takes over reading."""
    tasks: dict[str, list[trio.lowlevel.Task]] = {}
    release = trio.Event()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        seen = tasks.setdefault(ctx.payload.text, [])
        seen.append(trio.lowlevel.current_task())
        if ctx.payload.text == "wait":
            await release.wait()
            seen.append(trio.lowlevel.current_task())
        await ctx.reply(Pong(ctx.payload.text))

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        tasks.setdefault("ping", []).append(trio.lowlevel.current_task())
        await ctx.send(PONG, Pong(ctx.payload.text))

    spawns = Spawns()
    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await barrier(client)
            trio.lowlevel.add_instrument(spawns)
            for i in range(10):
                await client.request(ECHO, Ping(f"quick{i}"))
                assert (await client.receive()).payload == {"reply": f"quick{i}"}
            assert spawns.count == 0
            await client.request(ECHO, Ping("wait"))
            await barrier(client)  # handled while the RPC waits
            assert spawns.count == 1  # the new reader
            release.set()
            assert (await client.receive()).payload == {"reply": "wait"}
            await client.request(ECHO, Ping("after"))
            assert (await client.receive()).payload == {"reply": "after"}
            trio.lowlevel.remove_instrument(spawns)
    reader = tasks["quick0"][0]
    assert all(tasks[f"quick{i}"] == [reader] for i in range(10))
    waited = tasks["wait"]
    assert waited == [reader, reader]  # started in the reader, and stayed in its task
    new_reader = tasks["ping"][1]
    assert new_reader is not reader
    assert tasks["after"] == [new_reader]
    # The first reader is the connection's own task; the new one, a task of its nursery.
    assert new_reader.parent_nursery is not None
    assert new_reader.parent_nursery.parent_task is reader


async def test_a_reply_queued_before_the_handler_waits_goes_out_at_once(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()
    cleaned_up: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await ctx.reply(Pong("early"))
        try:
            await release.wait()  # e.g. cleaning up after replying
        finally:
            cleaned_up.append(ctx.payload.text)

    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"), correlation_id="c-1")
            frame = await client.receive()
            assert (frame.correlation_id, frame.payload) == ("c-1", {"reply": "early"})
            assert probe.statistics().rpcs_in_flight == 1  # still running
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert probe.statistics().rpcs_in_flight == 0
    assert cleaned_up == ["x"]


async def test_context_variables_an_rpc_sets_stay_with_it(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    """As in a task of its own: what an RPC handler sets is not seen by the handlers
    of the messages after it, whether it waited or not."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        var.set(ctx.payload.text)
        if ctx.payload.text == "wait":
            await trio.sleep(1)
        seen.append(var.get())
        await ctx.reply(Pong(var.get()))

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        seen.append(var.get())
        await ctx.send(PONG, Pong(var.get()))

    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            for text in ("quick", "wait"):
                await client.request(ECHO, Ping(text))
                await client.send(PING, Ping("next"))
                frames: dict[str, Any] = {}
                for _ in range(2):
                    frame = await client.receive()
                    frames[frame.type] = frame.payload
                assert frames == {"ECHOED": {"reply": text}, "PONG": {"reply": "unset"}}
    assert seen == ["quick", "unset", "unset", "wait"]


async def test_event_handlers_keep_arrival_order_while_rpcs_run(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    order: list[str] = []

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        # Earlier messages take longer: concurrent dispatch would reverse them.
        await trio.sleep(1.0 / (1 + len(order)))
        order.append(ctx.payload.text)
        await ctx.send(PONG, Pong(ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await trio.sleep(10)
        await ctx.reply(Pong("slow"))

    with trio.fail_after(30):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"))
            for i in range(5):
                await client.send(PING, Ping(str(i)))
            pongs = [(await client.receive()).payload["reply"] for _ in range(5)]
            assert pongs == ["0", "1", "2", "3", "4"]
            assert trio.current_time() < 10  # the RPC did not hold the events up
            assert (await client.receive()).payload == {"reply": "slow"}
    assert order == ["0", "1", "2", "3", "4"]


async def test_in_flight_limit_answers_resource_exhausted(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()
    started: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        started.append(ctx.payload.text)
        await release.wait()
        await ctx.reply(Pong(ctx.payload.text))

    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(5):
        async with open_test_app(router, limits=Limits(max_in_flight_rpcs=3)) as app:
            client = await app.connect()
            for i in range(4):
                await client.request(ECHO, Ping(str(i)), correlation_id=f"r{i}")
            frame = await client.receive()
            assert frame.raw == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "r3"},
                "payload": {
                    "code": "RESOURCE_EXHAUSTED",
                    "message": frame.payload["message"],
                    "retryable": True,
                    "retryAfterMs": 100,
                },
            }
            assert started == ["0", "1", "2"]
            assert probe.statistics(client).rpcs_in_flight == 3
            release.set()
            replies = sorted([(await client.receive()).correlation_id or "" for _ in range(3)])
            assert replies == ["r0", "r1", "r2"]
            await trio.testing.wait_all_tasks_blocked()
            assert probe.statistics(client).rpcs_in_flight == 0
            # Room again: the next request is admitted.
            await client.request(ECHO, Ping("4"), correlation_id="r4")
            assert (await client.receive()).payload == {"reply": "4"}


async def test_default_in_flight_limit_is_1000() -> None:
    assert Limits().max_in_flight_rpcs == 1000


# -- deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout_ms", "max_rpc_timeout", "expected"),
    [(1500, 120.0, 1.5), (10_000, 2.0, 2.0), (None, 3.0, 3.0), (0, 120.0, 0.0)],
)
async def test_deadline_exceeded_at_the_right_virtual_time(
    router: Router[Conn],
    autojump_clock: trio.testing.MockClock,
    timeout_ms: int | None,
    max_rpc_timeout: float,
    expected: float,
) -> None:
    deadlines: list[float] = []
    cancelled: list[float] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        deadlines.append(ctx.deadline)
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())

    limits = Limits(max_rpc_timeout=max_rpc_timeout)
    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            client = await app.connect()
            start = trio.current_time()
            await client.request(ECHO, Ping("x"), correlation_id="d", timeout_ms=timeout_ms)
            frame = await client.receive()
            assert trio.current_time() - start == pytest.approx(expected)
            assert frame.raw == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "d"},
                "payload": {
                    "code": "DEADLINE_EXCEEDED",
                    "message": frame.payload["message"],
                    "retryable": True,
                    "retryAfterMs": 50,
                },
            }
            await settle(client)
            assert probe.statistics(client).rpcs_in_flight == 0
    assert deadlines == [pytest.approx(start + expected)]
    assert cancelled == [pytest.approx(start + expected)]


async def test_no_deadline_when_the_server_has_no_maximum(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    deadlines: list[float] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        deadlines.append(ctx.deadline)
        await trio.sleep(1000)
        await ctx.reply(Pong("late but fine"))

    with trio.fail_after(2000):
        async with open_test_app(router, limits=Limits(max_rpc_timeout=0)) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"))
            assert (await client.receive()).payload == {"reply": "late but fine"}
    assert deadlines == [float("inf")]


async def test_reply_racing_the_deadline_wins_and_sends_one_frame(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    """A handler that replies and then keeps working past its deadline: the reply
    stands, and the deadline sends nothing more."""

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await ctx.reply(Pong("made it"))
        await trio.sleep_forever()

    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(10):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"), timeout_ms=500)
            assert (await client.receive()).payload == {"reply": "made it"}
            await trio.sleep(1)
            await settle(client)
            assert probe.statistics(client).rpcs_in_flight == 0


# -- cancellation --------------------------------------------------------------------


async def test_abort_cancels_the_handler_mid_await_and_sends_nothing_more(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    add_ping(router)
    reached: list[str] = []
    handler_started = trio.Event()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        try:
            await ctx.progress(Pong("started"))
            handler_started.set()
            await trio.sleep(100)
            reached.append("after sleep")  # never
            await ctx.reply(Pong("too late"))
        except trio.Cancelled:
            reached.append("cancelled")
            # Anything it still tries to send after the abort is dropped.
            await ctx.progress(Pong("ignored"))
            await ctx.reply(Pong("ignored"))
            raise

    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(10):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.request(ECHO, Ping("x"), correlation_id="c-1")
            assert (await client.receive()).type == "$ws:rpc-progress"
            await handler_started.wait()
            before = trio.current_time()
            await client.abort("c-1")
            await client.abort("unknown-id")  # ignored: no answer
            await barrier(client)
            await settle(client)
            assert trio.current_time() == before  # cancelled at once, not at the deadline
            assert reached == ["cancelled"]
            assert probe.statistics(client).rpcs_in_flight == 0
            assert app.errors == []


async def test_abort_without_correlation_id_is_invalid_argument(
    router: Router[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(5):
        async with open_test_app(router) as app:
            client = await app.connect()
            await client.send_json({"type": "$ws:abort", "meta": {}})
            frame = await client.receive()
            assert (frame.type, frame.payload["code"]) == ("ERROR", "INVALID_ARGUMENT")


@pytest.mark.parametrize("how", ["drop", "close"])
async def test_disconnect_cancels_every_handler_of_the_connection(
    router: Router[Conn], autojump_clock: trio.testing.MockClock, how: str
) -> None:
    running = 0
    cancelled: list[str] = []
    closed: list[str] = []

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        nonlocal running
        running += 1
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(ctx.payload.text)
            raise

    @router.on_close
    def on_close(ctx: Any) -> None:
        closed.append(ctx.client_id)

    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(10):
        async with open_test_app(router) as app:
            client = await app.connect()
            other = await app.connect()
            await other.request(ECHO, Ping("other"))
            for i in range(5):
                await client.request(ECHO, Ping(str(i)))
            await trio.testing.wait_all_tasks_blocked()
            assert running == 6
            conn = client.connection
            if how == "drop":
                client.drop()
            else:
                await client.close(1000)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(cancelled) == ["0", "1", "2", "3", "4"]
            assert probe.statistics(client).rpcs_in_flight == 0
            assert conn.closed is not None and conn.closed[0] == (1006 if how == "drop" else 1000)
            assert closed == [client.client_id]
            assert app.server.connections == {other.connection}
            # The other connection's handler is untouched.
            assert probe.statistics(other).rpcs_in_flight == 1


# -- over real sockets ---------------------------------------------------------------


def net_router(
    cancelled: list[str] | None = None,
    requests: dict[str, RpcContext[Ping, Pong, None]] | None = None,
) -> Router[None]:
    """``cancelled`` collects the correlationIds of cancelled handlers, ``requests``
    each handler's context by correlationId."""
    router: Router[None] = Router()
    release = trio.Event()

    @router.on(PING)
    async def ping(ctx: Context[Ping, None]) -> None:
        if ctx.payload.text == "release":
            release.set()
        await ctx.send(PONG, Pong(ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, None]) -> None:
        if requests is not None:
            requests[ctx.correlation_id or ""] = ctx
        text = ctx.payload.text
        if text == "progress":
            for step in range(10):  # every 30 ms; throttled to every 100 ms
                await ctx.progress(Pong(str(step)), throttle_ms=100)
                await trio.sleep(0.03)
            await ctx.reply(Pong("done"))
            await ctx.reply(Pong("again"))  # one-shot: not sent
            await ctx.error(ErrorCode.INTERNAL)  # not sent either
        elif text == "error":
            await ctx.error(ErrorCode.NOT_FOUND, "User not found", {"id": "u1"})
            await ctx.progress(Pong("late"))  # nothing after a terminal
        elif text == "hold":
            await release.wait()
            await ctx.reply(Pong("released"))
        else:
            try:
                await trio.sleep_forever()
            finally:
                if cancelled is not None:
                    cancelled.append(ctx.correlation_id or "")

    return router


async def test_net_frames_one_shot_and_throttle(net_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with (
            running_server(net_router()) as server,
            trio_websocket.open_websocket_url(server.url) as ws,
        ):
            await send_json(
                ws,
                {
                    "type": "ECHO",
                    "meta": {"correlationId": "c-1"},
                    "payload": {"text": "progress"},
                },
            )
            frames = []
            while True:
                frame = await recv_json(ws)
                frames.append(frame)
                if frame["type"] != "$ws:rpc-progress":
                    break
            assert frames == [
                {
                    "type": "$ws:rpc-progress",
                    "meta": {"correlationId": "c-1"},
                    "payload": {"reply": step},
                    "data": {"reply": step},
                }
                for step in ("0", "4", "8")
            ] + [
                {
                    "type": "ECHOED",
                    "meta": {"correlationId": "c-1"},
                    "payload": {"reply": "done"},
                }
            ]

            await send_json(
                ws,
                {
                    "type": "ECHO",
                    "meta": {"correlationId": "c-2"},
                    "payload": {"text": "error"},
                },
            )
            assert await recv_json(ws) == {
                "type": "RPC_ERROR",
                "meta": {"correlationId": "c-2"},
                "payload": {
                    "code": "NOT_FOUND",
                    "message": "User not found",
                    "details": {"id": "u1"},
                    "retryable": False,
                },
            }
            # Nothing else was queued for c-1 or c-2: the next frame is the PONG.
            await send_json(ws, {"type": "PING", "payload": {"text": "barrier"}})
            assert await recv_json(ws) == {
                "type": "PONG",
                "meta": {},
                "payload": {"reply": "barrier"},
            }


async def test_net_deadline_abort_and_in_flight_limit(net_clock: trio.testing.MockClock) -> None:
    limits = Limits(max_in_flight_rpcs=2, max_rpc_timeout=30)
    requests: dict[str, EchoNetCtx] = {}
    probe = Probe()
    with trio.fail_after(60):
        async with (
            running_server(net_router(requests=requests).plugin(probe), limits=limits) as server,
            trio_websocket.open_websocket_url(server.url) as ws,
        ):
            start = trio.current_time()
            await send_json(
                ws,
                {
                    "type": "ECHO",
                    "meta": {"correlationId": "slow", "timeoutMs": 2500},
                    "payload": {"text": "forever"},
                },
            )
            await send_json(
                ws,
                {
                    "type": "ECHO",
                    "meta": {"correlationId": "ab"},
                    "payload": {"text": "forever"},
                },
            )
            await send_json(
                ws,
                {"type": "ECHO", "meta": {"correlationId": "over"}, "payload": {"text": "x"}},
            )
            over = await recv_json(ws)
            assert (over["type"], over["meta"], over["payload"]["code"]) == (
                "RPC_ERROR",
                {"correlationId": "over"},
                "RESOURCE_EXHAUSTED",
            )
            assert probe.statistics().rpcs_in_flight == 2
            await trio.testing.wait_all_tasks_blocked()  # both handlers have started
            assert set(requests) == {"slow", "ab"}
            ab = requests["ab"]
            await send_json(ws, {"type": "$ws:abort", "meta": {"correlationId": "ab"}})
            deadline = await recv_json(ws)
            assert trio.current_time() - start == pytest.approx(2.5)
            assert deadline["type"] == "RPC_ERROR"
            assert deadline["meta"] == {"correlationId": "slow"}
            assert deadline["payload"]["code"] == "DEADLINE_EXCEEDED"
            assert ab.aborted and ab.cancel_scope.cancelled_caught
            assert probe.statistics().rpcs_in_flight == 0
            # Nothing was sent for the aborted request.
            await send_json(ws, {"type": "PING", "payload": {"text": "b"}})
            assert (await recv_json(ws))["type"] == "PONG"


async def test_net_disconnect_cancels_handlers(net_clock: trio.testing.MockClock) -> None:
    cancelled: list[str] = []
    probe = Probe()
    with trio.fail_after(30):
        async with running_server(net_router(cancelled).plugin(probe)) as server:
            async with trio_websocket.open_websocket_url(server.url) as ws:
                for i in range(3):
                    await send_json(
                        ws,
                        {
                            "type": "ECHO",
                            "meta": {"correlationId": f"c{i}"},
                            "payload": {"text": "forever"},
                        },
                    )
                await send_json(ws, {"type": "PING", "payload": {"text": "sync"}})
                assert (await recv_json(ws))["type"] == "PONG"
                assert probe.statistics().rpcs_in_flight == 3
                assert cancelled == []
            # Client closed: the server cancels all three and forgets the connection.
            await probe.wait_ended()
            await trio.testing.wait_all_tasks_blocked()
            assert server.connections == set()
            assert probe.statistics().rpcs_in_flight == 0
            assert sorted(cancelled) == ["c0", "c1", "c2"]


@attrs.frozen
class Reading:
    value: float


MEASURE = rpc("MEASURE", None, "READING", Reading)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_a_reply_json_cannot_carry_is_refused_and_the_rpc_still_answered(
    bad: float, autojump_clock: trio.testing.MockClock
) -> None:
    """NaN and infinities are no JSON: replying one raises in the handler (nothing is
    sent), and the RPC still gets its one terminal frame, INTERNAL, never silence."""
    raised: list[OutboundValidationError] = []
    router: Router[Conn] = Router()

    @router.rpc(MEASURE)
    async def measure(ctx: RpcContext[None, Reading, Conn]) -> None:
        try:
            await ctx.reply(Reading(bad))
        except OutboundValidationError as exc:
            raised.append(exc)
            raise

    async with open_test_app(router) as app:
        client = await app.connect(Conn())
        cid = await client.request(MEASURE, None)
        answer = await client.receive_error()
        assert (answer.type, answer.error_code, answer.correlation_id) == (
            "RPC_ERROR",
            "INTERNAL",
            cid,
        )
    [exc] = raised
    assert exc.errors == [("$.payload.value", "expected a finite number")]
