"""Back-pressure: the bounded per-connection outbound queue and its policies.

A client that stops reading must cost the server a bounded amount of memory:
the queue never holds more than ``capacity`` frames plus one terminal frame per
RPC in flight. ``wait`` back-pressures the handler, ``drop_oldest`` drops
progress first (never a terminal frame), ``close`` closes the client with 1008.
A slow client never holds up another connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from _net import close_of, net_clock, recv_json, running_server, send_json
from _probe import Probe
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import Context, ErrorCode, Limits, QueuePolicy, Router, RpcContext
from wskit_trio._outbound import FrameKind, Outbox, OutboxStatistics
from wskit_trio.testing import TestClient, open_test_app

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

EchoCtx = RpcContext[Ping, Pong, Conn]


# -- the Outbox itself ---------------------------------------------------------------


async def test_wait_policy_parks_senders_until_the_writer_takes_frames() -> None:
    outbox = Outbox(2, "wait")
    assert await outbox.put("a") and await outbox.put("b")
    done: list[str] = []

    async def third() -> None:
        await outbox.put("c")
        done.append("c")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and len(outbox) == 2
            assert await outbox.get_batch() == ["a", "b"]
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and len(outbox) == 2  # the writer still holds them
            outbox.written()  # the transport took the batch: room again
            await trio.testing.wait_all_tasks_blocked()
            assert done == ["c"]
            assert await outbox.get_batch() == ["c"]
    assert outbox.statistics() == OutboxStatistics(
        queued=1,
        capacity=2,
        dropped=0,
        sent=2,
        high_water=2,
        queued_bytes=1,
        capacity_bytes=8 << 20,
        high_water_bytes=2,
    )


async def test_terminal_frames_never_wait_and_never_drop() -> None:
    policies: tuple[QueuePolicy, ...] = ("wait", "drop_oldest", "close")
    for policy in policies:
        outbox = Outbox(2, policy)
        outbox.put_nowait("p1", FrameKind.PROGRESS)
        outbox.put_nowait("p2", FrameKind.PROGRESS)
        with trio.fail_after(1):  # would hang if a terminal frame waited
            for i in range(3):
                assert await outbox.put(f"t{i}", FrameKind.TERMINAL)
        assert len(outbox) == 5 and outbox.high_water == 5
        assert not outbox.overflowed
        assert await outbox.get_batch() == ["p1", "p2", "t0", "t1", "t2"]


async def test_drop_oldest_drops_progress_first_then_plain_never_terminal() -> None:
    outbox = Outbox(3, "drop_oldest")
    outbox.put_nowait("plain1", FrameKind.PLAIN)
    outbox.put_nowait("prog1", FrameKind.PROGRESS)
    outbox.put_nowait("term1", FrameKind.TERMINAL)
    assert outbox.put_nowait("plain2", FrameKind.PLAIN)  # evicts prog1
    assert outbox.put_nowait("prog2", FrameKind.PROGRESS)  # evicts plain1 (no progress left)
    assert outbox.put_nowait("plain3", FrameKind.PLAIN)  # evicts prog2
    assert outbox.dropped == 3
    # Full of frames of which only terminals remain: nothing to evict, new plain dropped.
    full = Outbox(1, "drop_oldest")
    full.put_nowait("t", FrameKind.TERMINAL)
    assert not full.put_nowait("x", FrameKind.PLAIN)
    assert full.dropped == 1 and len(full) == 1
    # What is left, in order: what the writer takes next.
    assert await outbox.get_batch() == ["term1", "plain2", "plain3"]
    assert await full.get_batch() == ["t"]


async def test_put_replacing_evicts_only_its_own_group() -> None:
    outbox = Outbox(3)
    assert outbox.put_replacing("cursor1", "cursor")
    assert outbox.put_nowait("chat1")
    assert outbox.put_replacing("state1", "state")
    # Full: the oldest cursor frame makes room, nothing else.
    assert outbox.put_replacing("cursor2", "cursor")
    assert outbox.put_replacing("cursor3", "cursor")
    assert outbox.dropped == 2
    # No frame of this group left to supersede: refused, nothing dropped.
    stuffed = Outbox(2)
    assert stuffed.put_nowait("chat1") and stuffed.put_replacing("state1", "state")
    assert not stuffed.put_replacing("cursor1", "cursor")
    assert stuffed.dropped == 0
    assert await outbox.get_batch() == ["chat1", "state1", "cursor3"]
    assert await stuffed.get_batch() == ["chat1", "state1"]
    # The writer holds all it counts: one frame of the group goes in over the bound.
    assert stuffed.put_replacing("cursor2", "cursor") and len(stuffed) == 3
    assert stuffed.put_replacing("cursor3", "cursor") and len(stuffed) == 3
    assert not stuffed.put_replacing("state2", "state")  # cursor3 is not its to drop
    assert stuffed.dropped == 1


def test_close_policy_overflows_instead_of_queueing() -> None:
    outbox = Outbox(1, "close")
    assert outbox.put_nowait("a")
    assert not outbox.put_nowait("b")
    assert outbox.overflowed
    assert outbox.statistics().dropped == 1 and len(outbox) == 1


async def test_wait_room() -> None:
    drop = Outbox(1, "drop_oldest")
    drop.put_nowait("p", FrameKind.PROGRESS)
    assert await drop.wait_room()  # evicts rather than waits
    assert len(drop) == 0 and drop.dropped == 1
    close = Outbox(1, "close")
    close.put_nowait("a")
    assert not await close.wait_room()
    assert close.overflowed
    wait = Outbox(1, "wait")
    wait.put_nowait("a")
    with trio.move_on_after(0.01) as scope:
        await wait.wait_room()
    assert scope.cancelled_caught
    wait.close()
    assert not await wait.wait_room()


async def test_a_batch_taken_in_the_writers_place_counts_until_written() -> None:
    """``take_nowait``: the reader writes the frames itself while the writer waits.
    They hold their room until ``written``, and nothing is taken while they do."""
    outbox = Outbox(2, "wait")
    assert outbox.take_nowait() is None  # nothing queued
    outbox.put_nowait("a")
    outbox.put_nowait("b", FrameKind.TERMINAL)
    done: list[str] = []

    async def third() -> None:
        await outbox.put("c")
        done.append("c")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            assert outbox.take_nowait() == ["a", "b"]
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and len(outbox) == 2  # still held: no room
            outbox.written()
            await trio.testing.wait_all_tasks_blocked()
            assert done == ["c"]
            outbox.put_nowait("d", FrameKind.TERMINAL)
            assert outbox.take_nowait() == ["c", "d"]
            assert outbox.take_nowait() is None  # one batch at a time
            outbox.put_nowait("e", FrameKind.TERMINAL)
            assert outbox.take_nowait() is None
            # The writer adds to that batch, which counts until its write is out too.
            assert await outbox.get_batch() == ["e"]
            assert len(outbox) == 3
            outbox.written()
    stats = outbox.statistics()
    assert (stats.sent, stats.queued, stats.high_water) == (5, 0, 3)


class Writers:
    """The connection's side of the on-demand writer (an ``OutboxOwner``):
    ``start_writer`` starts a task that takes batches until ``get_batch`` says
    ``None``; ``send`` is the transport's write, ``flush_nowait`` writes in place."""

    def __init__(
        self,
        outbox: Outbox,
        nursery: trio.Nursery,
        send: Callable[[], Awaitable[None]] | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.outbox = outbox
        self.nursery = nursery
        self.send = send
        self.settle = settle
        self.started = 0
        self.running = 0
        self.batches: list[list[str]] = []
        self.flushed: list[list[str]] = []
        self.overflows = 0
        outbox.owner = self

    def start_writer(self) -> None:
        self.started += 1
        self.nursery.start_soon(self.write)

    def flush_nowait(self) -> None:
        batch = self.outbox.take_nowait()
        if batch is not None:
            self.flushed.append(batch)
            self.outbox.written()

    def outbox_overflowed(self) -> None:
        self.overflows += 1

    async def write(self) -> None:
        self.running += 1
        settle = self.settle
        try:
            while (batch := await self.outbox.get_batch(settle)) is not None:
                settle = None
                self.batches.append(batch)
                if not batch and self.outbox.closed:
                    return
                if self.send is not None:
                    await self.send()
                self.outbox.written()
        finally:
            self.running -= 1


async def test_a_writer_runs_only_while_frames_wait() -> None:
    """No task waits for frames: one is started when frames are queued and nobody
    writes them, and ends once the queue is empty. Frames queued while it writes
    join its next batch, with no second writer."""
    outbox = Outbox(8, "wait")
    sending = trio.lowlevel.ParkingLot()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writers = Writers(outbox, nursery, sending.park)
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 0
            outbox.put_nowait("a")
            outbox.put_nowait("b")
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 1 and writers.batches == [["a", "b"]]
            outbox.put_nowait("c")  # while the writer sends
            sending.unpark_all()
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 1 and writers.batches == [["a", "b"], ["c"]]
            sending.unpark_all()
            await trio.testing.wait_all_tasks_blocked()
            assert writers.running == 0 and len(outbox) == 0  # ended: nothing to write
            assert outbox.statistics().sent == 3
            outbox.put_nowait("d")
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 2 and writers.batches[-1] == ["d"]
            sending.unpark_all()
            await trio.testing.wait_all_tasks_blocked()
            assert writers.running == 0


async def test_a_sender_waiting_for_room_starts_the_writer_for_quiet_frames() -> None:
    """Frames queued with ``wake=False`` fill the queue; a sender that must wait for
    room then starts the writer itself, or it would wait forever."""
    outbox = Outbox(2, "wait")
    done: list[str] = []

    async def sender() -> None:
        assert await outbox.put("c")
        done.append("c")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writers = Writers(outbox, nursery)
            outbox.put_nowait("a", wake=False)
            outbox.put_nowait("b", wake=False)
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 0
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            # (The first writer ended with the queue empty, before "c" came.)
            assert done == ["c"] and writers.batches == [["a", "b"], ["c"]]
            assert writers.running == 0


async def test_put_writes_in_place_outside_a_burst_and_not_within_one() -> None:
    """``put`` calls ``flush`` (the connection's write-it-now) when no burst runs;
    in the reader's burst it neither flushes nor starts the writer: the reader
    writes the burst's frames once at its end."""
    outbox = Outbox(8, "wait")
    async with trio.open_nursery() as nursery:
        writers = Writers(outbox, nursery)
        flushed = writers.flushed
        assert await outbox.put("a")
        assert flushed == [["a"]]
        outbox.burst_task = trio.lowlevel.current_task()
        assert await outbox.put("b") and await outbox.put("c")
        await trio.testing.wait_all_tasks_blocked()
        assert flushed == [["a"]] and writers.started == 0 and len(outbox) == 2
        outbox.burst_task = None
        writers.flush_nowait()
        assert flushed == [["a"], ["b", "c"]]


async def test_the_writer_is_started_as_asked() -> None:
    """``put_nowait(wake=False)`` starts no writer until ``notify_writer``;
    ``wake_writer`` starts one even with nothing queued (to finish a write someone
    else started); ``close`` starts one for the close handshake."""
    outbox = Outbox(4, "wait")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writers = Writers(outbox, nursery)
            outbox.put_nowait("quiet", FrameKind.TERMINAL, wake=False)
            await trio.testing.wait_all_tasks_blocked()
            assert writers.batches == [] and writers.started == 0
            outbox.notify_writer()
            await trio.testing.wait_all_tasks_blocked()
            assert writers.batches == [["quiet"]]
            outbox.notify_writer()  # nothing queued: nothing to do
            await trio.testing.wait_all_tasks_blocked()
            assert writers.started == 1
            outbox.wake_writer()
            await trio.testing.wait_all_tasks_blocked()
            assert writers.batches == [["quiet"], []] and writers.started == 2
            outbox.close()
    assert writers.batches == [["quiet"], [], []] and writers.started == 3


async def test_frames_written_in_the_writers_place_while_it_settles_are_not_taken_again() -> None:
    """The writer, started for frames, waits in ``settle``; meanwhile someone writes
    them in its place (the hub's flush). Written whole: the writer ends, it sends
    no empty batch. Written in part: it returns ``[]`` to finish that write, or, if
    more frames came, takes them too; the unfinished batch counts until the
    writer's send is done."""
    outbox = Outbox(8, "wait")
    settling = trio.lowlevel.ParkingLot()
    sending = trio.lowlevel.ParkingLot()

    async def settle() -> None:
        await settling.park()

    async def step() -> None:
        await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writers = Writers(outbox, nursery, sending.park, settle)
            batches = writers.batches
            outbox.put_nowait("a")
            await step()  # the writer is in settle
            assert outbox.take_nowait() == ["a"]
            outbox.written()  # written whole
            settling.unpark_all()
            await step()
            assert batches == [] and writers.running == 0  # nothing left: ended
            outbox.put_nowait("b")
            await step()
            assert outbox.take_nowait() == ["b"]
            outbox.wake_writer()  # written in part: the writer finishes it
            settling.unpark_all()
            await step()
            assert batches == [[]] and len(outbox) == 1  # "b" counts until then
            sending.unpark_all()
            await step()
            assert len(outbox) == 0
            outbox.put_nowait("c")
            await step()  # the writer is in settle
            assert outbox.take_nowait() == ["c"]
            outbox.wake_writer()
            outbox.put_nowait("d")
            settling.unpark_all()
            await step()
            # "d" is taken with the rest of "c" still to write: both count.
            assert batches == [[], ["d"]] and len(outbox) == 2
            sending.unpark_all()
            await step()
            assert len(outbox) == 0
            outbox.close()
    assert batches == [[], ["d"], []]
    assert outbox.statistics().sent == 4


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0)


# -- a client that stops reading, in memory -------------------------------------------


def progress_router(count: int, sent: list[int], done: trio.Event) -> Router[Conn]:
    router: Router[Conn] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        for step in range(count):
            await ctx.progress(Pong(str(step)))
            sent.append(step)
        await ctx.reply(Pong("done"))
        done.set()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(ctx.payload.text))

    return router


async def drain(client: TestClient[Any]) -> list[Any]:
    """Read until the reply (a non-progress frame) arrives; the frames read."""
    frames = []
    while True:
        frame = await client.receive()
        frames.append(frame)
        if frame.type != "$ws:rpc-progress":
            return frames


async def test_wait_policy_back_pressures_the_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy="wait")
    probe = Probe()
    router = progress_router(100, sent, done).plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            slow = await app.connect(client_buffer=2)
            await slow.request(ECHO, Ping("x"))
            await trio.sleep(10)  # the client reads nothing for a while
            # The handler is parked: what it sent is in the client's buffer (2) or
            # held by the outbox (8, queued or taken by the writer).
            parked_at = len(sent)
            assert parked_at <= limits.outbound_queue + 2
            assert probe.statistics(slow).outbox.queued == limits.outbound_queue
            await trio.sleep(10)
            assert len(sent) == parked_at
            stats = probe.statistics(slow).outbox
            assert stats.capacity == limits.outbound_queue
            assert stats.high_water <= stats.capacity
            assert stats.dropped == 0
            assert not done.is_set()
            frames = await drain(slow)
            # Nothing lost, in order.
            assert [f.payload["reply"] for f in frames] == [str(i) for i in range(100)] + ["done"]
            stats = probe.statistics(slow).outbox
            assert stats.high_water <= stats.capacity
            assert stats.dropped == 0


async def test_drop_oldest_never_blocks_and_keeps_the_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy="drop_oldest")
    probe = Probe()
    router = progress_router(1000, sent, done).plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            slow = await app.connect(client_buffer=2)
            await slow.request(ECHO, Ping("x"))
            await done.wait()  # the handler finished without the client reading a frame
            stats = probe.statistics(slow).outbox
            assert stats.capacity == limits.outbound_queue
            assert stats.high_water <= stats.capacity + 1  # + the reply
            assert stats.queued <= stats.capacity + 1
            frames = await drain(slow)
            assert frames[-1].raw == {
                "type": "ECHOED",
                "meta": {"correlationId": "c-1"},
                "payload": {"reply": "done"},
            }
            progress = [int(f.payload["reply"]) for f in frames[:-1]]
            assert progress == sorted(progress)  # order kept among survivors
            assert progress[-1] == 999  # the newest progress survives, the oldest go
            assert probe.statistics(slow).outbox.dropped == 1000 - len(progress) > 900


async def test_close_policy_closes_the_slow_client_with_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy="close", close_timeout=5)
    probe = Probe()
    router = progress_router(1000, sent, done).plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            slow = await app.connect(client_buffer=2)
            fine = await app.connect()
            await slow.request(ECHO, Ping("x"))
            await trio.sleep(1)  # not reading: the queue overflows
            # Overflowed: reported, and the frames still queued were dropped (what the
            # writer holds is all that is left); every frame sent is accounted for.
            assert [e.code for e in app.errors] == [ErrorCode.RESOURCE_EXHAUSTED]
            stats = probe.statistics(slow).outbox
            assert stats.high_water <= 8
            assert stats.dropped > 0
            assert len(sent) == stats.sent + stats.queued + stats.dropped
            # The client reads again: what the writer held, then the 1008 close.
            assert await slow.wait_closed() == (1008, "slow consumer")
            progress = [int(f.payload["reply"]) for f in slow.received]
            assert progress == list(range(len(progress)))  # in order, no gaps
            assert 2 <= len(progress) <= 2 + limits.outbound_queue
            assert trio.current_time() < limits.close_timeout  # no need to wait it out
            await probe.wait_ended(slow)
            assert not done.is_set()  # the handler was cancelled with the connection
            assert probe.statistics(slow).rpcs_in_flight == 0
            assert slow.connection.closed == (1008, "slow consumer")
            # Only the slow client was closed.
            await fine.send(PING, Ping("still here"))
            assert (await fine.receive()).payload == {"reply": "still here"}


async def test_close_policy_cuts_off_a_dead_client_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy="close", close_timeout=5)
    probe = Probe()
    router = progress_router(1000, sent, done).plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            dead = await app.connect(client_buffer=2)
            await dead.request(ECHO, Ping("x"))
            await probe.wait_ended(dead)
            assert trio.current_time() == pytest.approx(limits.close_timeout)
            assert dead.connection.closed == (1008, "slow consumer")
            assert probe.statistics(dead).outbox.high_water <= 8
            assert app.server.connections == set()


@pytest.mark.parametrize("policy", ["wait", "drop_oldest"])
async def test_request_flood_without_reading_stays_bounded(
    autojump_clock: trio.testing.MockClock, policy: QueuePolicy
) -> None:
    """Replies are terminal (never dropped, never waiting), so a client that sends
    requests and never reads could grow the queue without end, were RPCs admitted
    regardless of it. They are admitted only while there is room."""
    router: Router[Conn] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        await ctx.reply(Pong(ctx.payload.text))

    limits = Limits(outbound_queue=4, outbound_policy=policy, max_in_flight_rpcs=3)
    probe = Probe()
    router.plugin(probe)
    bound = limits.outbound_queue + limits.max_in_flight_rpcs
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            flood = await app.connect(client_buffer=1)
            for i in range(500):
                await flood.request(ECHO, Ping(str(i)))
            await trio.sleep(5)
            assert probe.statistics(flood).outbox.high_water <= bound
            # Every request is answered, in order, once the client reads: none dropped.
            replies = [(await flood.receive()).payload["reply"] for _ in range(500)]
            assert replies == [str(i) for i in range(500)]
            stats = probe.statistics(flood).outbox
            assert stats.dropped == 0
            assert stats.high_water <= bound


async def test_deadline_error_is_queued_past_a_full_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under ``wait`` the handler is stuck on a full queue; its deadline still fires
    and the DEADLINE_EXCEEDED frame (terminal) is queued past capacity."""
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=4, outbound_policy="wait")
    probe = Probe()
    router = progress_router(100, sent, done).plugin(probe)
    with trio.fail_after(60):
        async with open_test_app(router, limits=limits) as app:
            slow = await app.connect(client_buffer=1)
            start = trio.current_time()
            await slow.request(ECHO, Ping("x"), timeout_ms=3000)
            await trio.sleep(5)
            stats = probe.statistics(slow)
            assert stats.rpcs_in_flight == 0
            assert stats.outbox.queued == stats.outbox.capacity + 1  # 4 progress + the error
            frames = await drain(slow)
            assert frames[-1].error_code == "DEADLINE_EXCEEDED"
            assert [f.payload["reply"] for f in frames[:-1]] == [str(i) for i in range(len(sent))]
            assert trio.current_time() - start == 5


async def test_a_slow_client_never_blocks_other_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=4, outbound_policy="wait")
    with trio.fail_after(60):
        async with open_test_app(progress_router(10_000, sent, done), limits=limits) as app:
            slow = await app.connect(client_buffer=1)
            await slow.request(ECHO, Ping("x"))
            await trio.testing.wait_all_tasks_blocked()
            stuck_at = len(sent)
            before = trio.current_time()
            others = [await app.connect() for _ in range(3)]
            for i, other in enumerate(others):
                await other.send(PING, Ping(str(i)))
            for i, other in enumerate(others):
                assert (await other.receive()).payload == {"reply": str(i)}
            assert trio.current_time() == before  # answered at once
            assert len(sent) == stuck_at  # the slow one is still parked


# -- a client that stops reading, over real sockets -----------------------------------

BIG = 64 * 1024  # large frames fill the kernel's socket buffers quickly


def big_router(count: int, sent: list[int], done: trio.Event) -> Router[None]:
    router: Router[None] = Router()
    blob = "x" * BIG

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, None]) -> None:
        for step in range(count):
            await ctx.progress(Pong(f"{step}:{blob}"))
            sent.append(step)
        await ctx.reply(Pong("done"))
        done.set()

    @router.on(PING)
    async def ping(ctx: Context[Ping, None]) -> None:
        await ctx.send(PONG, Pong(ctx.payload.text))

    return router


async def read_rpc(ws: trio_websocket.WebSocketConnection) -> list[str]:
    """Read until the reply; each frame's ``reply`` up to the first colon."""
    replies = []
    while True:
        frame = await recv_json(ws)
        replies.append(frame["payload"]["reply"].split(":")[0])
        if frame["type"] != "$ws:rpc-progress":
            return replies


async def request(ws: trio_websocket.WebSocketConnection, cid: str = "c-1") -> None:
    await send_json(ws, {"type": "ECHO", "meta": {"correlationId": cid}, "payload": {"text": "x"}})


@pytest.mark.parametrize("policy", ["wait", "drop_oldest", "close"])
async def test_net_client_that_stops_reading(
    net_clock: trio.testing.MockClock, policy: QueuePolicy
) -> None:
    count = 500  # 64 MB of frames: more than the kernel buffers hold
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy=policy, close_timeout=30)
    probe = Probe()
    router = big_router(count, sent, done).plugin(probe)
    with trio.fail_after(120):
        # message_queue_size=0: the client's reader stops reading the socket as soon
        # as one message is waiting for get_message().
        async with (
            running_server(router, limits=limits) as server,
            trio_websocket.open_websocket_url(
                server.url, message_queue_size=0, max_message_size=4 * BIG
            ) as slow,
            trio_websocket.open_websocket_url(server.url) as other,
        ):
            await send_json(other, {"type": "PING", "payload": {"text": "hello"}})
            assert (await recv_json(other))["payload"] == {"reply": "hello"}
            # The slow client's connection: the one nothing was sent to yet.
            (slow_id,) = (
                cid for cid, ctx in probe.contexts.items() if ctx.statistics().outbox.sent == 0
            )
            await request(slow)
            await trio.sleep(5)  # read nothing for 5 s
            # Memory stays bounded whatever the policy.
            assert probe.statistics(slow_id).outbox.high_water <= limits.outbound_queue + 1
            # Other connections are served meanwhile.
            await send_json(other, {"type": "PING", "payload": {"text": "still"}})
            assert (await recv_json(other))["payload"] == {"reply": "still"}

            if policy == "wait":
                assert len(sent) < count and not done.is_set()  # parked
                assert probe.statistics(slow_id).outbox.dropped == 0
                replies = await read_rpc(slow)
                assert replies == [str(i) for i in range(count)] + ["done"]
            elif policy == "drop_oldest":
                assert done.is_set()  # never blocked
                replies = await read_rpc(slow)
                assert replies[-1] == "done"
                progress = [int(r) for r in replies[:-1]]
                assert progress == sorted(progress) and progress[-1] == count - 1
                assert probe.statistics(slow_id).outbox.dropped == count - len(progress) > 0
            else:
                assert not done.is_set()
                # Overflowed: reported for the slow client only.
                assert [(cid, e.code) for cid, e in probe.errors] == [
                    (slow_id, ErrorCode.RESOURCE_EXHAUSTED)
                ]
                progress = []
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        frame = await recv_json(slow)
                        assert frame["type"] == "$ws:rpc-progress"
                        progress.append(int(frame["payload"]["reply"].split(":")[0]))
                assert close_of(closed.value)[0] == 1008
                assert close_of(closed.value)[1] == "slow consumer"
                assert progress == list(range(len(progress)))
                # The server ends the connection once the client's close reply is in,
                # a few scheduling rounds after the client saw the close.
                with trio.fail_after(5):
                    await probe.wait_ended(slow_id)
                await trio.testing.wait_all_tasks_blocked()
                assert server.statistics().connections == 1  # the other one
            stats = probe.statistics(slow_id).outbox
            assert stats.capacity == limits.outbound_queue
            assert stats.high_water <= stats.capacity + 1


async def test_net_close_policy_cuts_off_a_client_that_never_reads(
    net_clock: trio.testing.MockClock,
) -> None:
    """The writer is stuck part-way through a frame; after close_timeout the server
    drops the TCP connection rather than write a close frame into the middle of it.
    The client sees well-formed frames, then an abnormal close."""
    sent: list[int] = []
    done = trio.Event()
    limits = Limits(outbound_queue=8, outbound_policy="close", close_timeout=2)
    probe = Probe()
    router = big_router(1000, sent, done).plugin(probe)
    with trio.fail_after(120):
        async with (
            running_server(router, limits=limits) as server,
            trio_websocket.open_websocket_url(
                server.url, message_queue_size=0, max_message_size=4 * BIG
            ) as dead,
        ):
            await send_json(dead, {"type": "PING", "payload": {"text": "hello"}})
            await trio.sleep(1)
            start = trio.current_time()
            await request(dead)
            await probe.wait_ended()  # the only connection
            assert trio.current_time() - start <= limits.close_timeout
            stats = probe.statistics().outbox
            assert stats.high_water <= stats.capacity == limits.outbound_queue
            assert (await recv_json(dead))["type"] == "PONG"
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    frame = await recv_json(dead)
                    assert frame["type"] == "$ws:rpc-progress"
            assert close_of(closed.value)[0] in (1006, 1008)
