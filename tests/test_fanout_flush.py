"""Deliveries are written by the hub at the end of a burst, not by waking each
subscriber's writer (``PubSubHub.flush``): one write per subscriber per burst,
and no frame left queued with its writer asleep, whichever task publishes and
whatever it does next (blocks in an event handler or an RPC, runs in the
background, reads Valkey, replays a recovery)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from _net import net_clock, running_server
from _raw import RawSocket
from valkey_server import ValkeyServerProcess

from wskit_trio import (
    Context,
    History,
    Position,
    Router,
    RpcContext,
    message,
    rpc,
    with_pubsub,
)
from wskit_trio._outbound import FrameKind, Outbox
from wskit_trio._protocol.pubsub import Envelope
from wskit_trio.pubsub import MemoryPubSub, PubSubBackend
from wskit_trio.pubsub._hub import PubSubConfig, PubSubHub
from wskit_trio.valkey import ValkeyPubSub

__all__ = ["net_clock"]


@attrs.frozen
class Join:
    topic: str
    since: Position | None = None


@attrs.frozen
class Say:
    topic: str
    seq: int


@attrs.frozen
class Said:
    seq: int


JOIN = message("JOIN", Join)
JOINED = message("JOINED")
HOLD = message("HOLD", Say)
HOLD_RPC = rpc("HOLD_RPC", Say, "HELD", Said)
NEWS = message("NEWS", Said)


@attrs.define
class Gate:
    """What the handlers wait for after publishing: the test opens it only once the
    subscriber has the message, so the publisher is blocked while it is delivered."""

    opened: trio.Event = attrs.field(factory=trio.Event)


def make_router(gate: Gate, backend: PubSubBackend | None = None) -> Router[Any]:
    router: Router[Any] = Router()
    router.plugin(with_pubsub(backend, history=History()))

    @router.on(JOIN)
    async def join(ctx: Context[Join, Any]) -> None:
        if ctx.payload.since is None:
            await ctx.topics.subscribe(ctx.payload.topic)
        else:
            await ctx.topics.subscribe(ctx.payload.topic, since=ctx.payload.since)
        await ctx.send(JOINED)

    @router.on(HOLD)
    async def hold(ctx: Context[Say, Any]) -> None:
        await ctx.publish(ctx.payload.topic, NEWS, Said(ctx.payload.seq))
        await gate.opened.wait()

    @router.rpc(HOLD_RPC)
    async def hold_rpc(ctx: RpcContext[Say, Said, Any]) -> None:
        await ctx.publish(ctx.payload.topic, NEWS, Said(ctx.payload.seq))
        await gate.opened.wait()
        await ctx.reply(Said(ctx.payload.seq))

    return router


async def joined(port: int, topic: str, since: Position | None = None) -> RawSocket:
    client = await RawSocket.connect(port)
    payload: dict[str, Any] = {"topic": topic}
    if since is not None:
        payload["since"] = {"offset": since.offset, "epoch": since.epoch}
    await client.send_json({"type": "JOIN", "payload": payload})
    return client


async def news_until_joined(client: RawSocket) -> list[int]:
    """The NEWS seqs a JOIN's recovery replays, up to its JOINED answer."""
    seqs: list[int] = []
    while (frame := await client.receive_json())["type"] != "JOINED":
        assert frame["type"] == "NEWS", frame
        seqs.append(frame["payload"]["seq"])
    return seqs


async def news(client: RawSocket) -> int:
    frame = await client.receive_json()
    assert frame["type"] == "NEWS", frame
    seq: int = frame["payload"]["seq"]
    return seq


# -- the hub's side, with recording connections ---------------------------------------


class Recorder:
    """A connection as the hub sees it, recording what the hub asks of it."""

    def __init__(self) -> None:
        self.client_id = str(uuid.uuid4())
        self.data = None
        self.outbox = Outbox(8)
        self.calls: list[str] = []

    def offer(self, frame: str, *, wake: bool = True) -> bool:
        self.calls.append(f"offer(wake={wake})")
        return self.outbox.offer(frame, wake=wake)

    def flush_nowait(self) -> None:
        self.calls.append("flush")
        batch = self.outbox.take_nowait()
        if batch is not None:
            self.outbox.written()

    async def send_within(self, frame: str, patience: float) -> bool:
        self.calls.append("send_within")
        return await self.outbox.put_within(frame, patience)

    def send_replacing(self, frame: str, group: str) -> bool:
        return self.outbox.put_replacing(frame, group)

    def cut_off(self, code: int, reason: str) -> bool:
        self.calls.append(f"cut_off({code})")
        self.outbox.close(discard=True)
        return True

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        self.outbox.close()

    async def send(self, frame: str, kind: FrameKind) -> bool:
        raise AssertionError("the hub does not send")


def envelope(seq: int) -> Envelope:
    return Envelope("room", "NEWS", {"seq": seq}, None, "test")


@asynccontextmanager
async def running_hub(
    *, slow_consumer_timeout: float = 5.0
) -> AsyncIterator[tuple[PubSubHub, list[Recorder]]]:
    hub = PubSubHub(PubSubConfig(MemoryPubSub()), slow_consumer_timeout=slow_consumer_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        conns = [Recorder() for _ in range(3)]
        for conn in conns:
            await hub.subscribe(conn, "room", None)  # type: ignore[arg-type]
        yield hub, conns
        nursery.cancel_scope.cancel()


async def test_a_burst_costs_each_subscriber_one_flush_once_the_publisher_yields() -> None:
    with trio.fail_after(5):
        async with running_hub() as (hub, conns):
            for seq in range(3):  # no schedule point in between: one burst
                assert await hub.deliver(envelope(seq)) == 3
            for conn in conns:
                assert conn.calls == ["offer(wake=False)"] * 3
                assert len(conn.outbox) == 3  # queued, the writer not woken
            await trio.testing.wait_all_tasks_blocked()
            for conn in conns:
                assert conn.calls == ["offer(wake=False)"] * 3 + ["flush"]
                assert conn.outbox.statistics().sent == 3


async def test_a_delivery_flushes_what_it_queued_before_it_waits_for_a_full_queue() -> None:
    # The second subscriber's queue fills with frames nobody woke its writer for: the
    # delivery that finds it full writes them (and everyone's) before it waits for
    # room, which would never come otherwise.
    with trio.fail_after(5):
        async with running_hub() as (hub, conns):
            full = conns[1]
            full.outbox = Outbox(2)
            for seq in range(3):
                assert await hub.deliver(envelope(seq)) == 3
            offered = ["offer(wake=False)"] * 3
            assert conns[0].calls == [*offered, "flush"]
            assert full.calls == [*offered, "flush", "send_within"]
            assert conns[2].calls == [*offered[:2], "flush", offered[2]]
            await trio.testing.wait_all_tasks_blocked()
            assert conns[2].calls == [*offered[:2], "flush", offered[2], "flush"]
            assert hub.statistics().delivered == 9
            assert hub.statistics().cut_off == 0


async def test_a_connection_whose_flush_fails_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    with trio.fail_after(5):
        async with running_hub() as (hub, conns):
            conns[0].flush_nowait = fail  # type: ignore[method-assign]
            for burst in range(2):  # the flusher goes on after a failure
                await hub.deliver(envelope(burst))
                await trio.testing.wait_all_tasks_blocked()
                for conn in conns[1:]:
                    assert conn.outbox.statistics().sent == burst + 1
    assert "writing deliveries to" in caplog.text


async def test_a_hub_that_does_not_run_flushes_at_the_end_of_each_delivery() -> None:
    hub = PubSubHub(PubSubConfig(MemoryPubSub()))
    conn = Recorder()
    with trio.fail_after(5):
        await hub.subscribe(conn, "room", None)  # type: ignore[arg-type]
        await hub.deliver(envelope(0))
    assert conn.calls == ["offer(wake=False)", "flush"]


# -- every publish path, over real sockets -----------------------------------------------


async def test_an_event_handler_that_blocks_after_publishing_holds_back_no_delivery(
    net_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    async with running_server(make_router(gate)) as server:
        subscribers = [await joined(server.port, "room") for _ in range(3)]
        for client in subscribers:
            assert await news_until_joined(client) == []
        publisher = await RawSocket.connect(server.port)
        with trio.fail_after(5):
            for seq in range(2):
                await publisher.send_json(
                    {"type": "HOLD", "payload": {"topic": "room", "seq": seq}}
                )
            # The handler waits for the gate: the first message reached everyone.
            for client in subscribers:
                assert await news(client) == 0
            gate.opened.set()
            for client in subscribers:
                assert await news(client) == 1


async def test_an_rpc_that_blocks_after_publishing_holds_back_no_delivery(
    net_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    async with running_server(make_router(gate)) as server:
        subscriber = await joined(server.port, "room")
        assert await news_until_joined(subscriber) == []
        publisher = await RawSocket.connect(server.port)
        with trio.fail_after(5):
            await publisher.send_json(
                {
                    "type": "HOLD_RPC",
                    "meta": {"correlationId": "r1"},
                    "payload": {"topic": "room", "seq": 7},
                }
            )
            assert await news(subscriber) == 7
            gate.opened.set()
            reply = await publisher.receive_json()
            assert (reply["type"], reply["payload"]) == ("HELD", {"seq": 7})


async def test_server_publish_from_a_background_task_that_then_blocks_is_delivered(
    net_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    async with running_server(make_router(gate)) as server:
        subscriber = await joined(server.port, "room")
        assert await news_until_joined(subscriber) == []

        async def background() -> None:
            for seq in range(3):
                assert (await server.publish("room", NEWS, Said(seq))).ok
            await gate.opened.wait()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(background)
                assert [await news(subscriber) for _ in range(3)] == [0, 1, 2]
                gate.opened.set()


async def test_a_recovery_replays_and_then_goes_live(net_clock: trio.testing.MockClock) -> None:
    gate = Gate()
    gate.opened.set()
    async with running_server(make_router(gate)) as server:
        with trio.fail_after(5):
            for seq in range(3):
                assert (await server.publish("room", NEWS, Said(seq))).ok
            epoch = (await server.pubsub.backend.read_history("room", None)).epoch
            late = await joined(server.port, "room", since=Position(1, epoch))
            assert await news_until_joined(late) == [1, 2]
            assert (await server.publish("room", NEWS, Said(3))).ok
            assert await news(late) == 3


@pytest.mark.parametrize("count", [1, 50])
async def test_through_valkey_every_message_the_reader_hands_over_is_written(
    valkey_server: ValkeyServerProcess, count: int
) -> None:
    # Two instances on one Valkey: what B's subscriber gets comes from B's Valkey
    # reader (one read may hold many messages: ``count``); A's handler is blocked.
    gate = Gate()
    prefix = f"flush-{uuid.uuid4().hex[:8]}:"

    def backend() -> ValkeyPubSub:
        return ValkeyPubSub.from_url(valkey_server.url, prefix=prefix, backoff_max=0.05)

    with trio.fail_after(20):
        async with (
            running_server(make_router(gate, backend()), transport="wsproto") as a,
            running_server(make_router(gate, backend()), transport="wsproto") as b,
        ):
            for server in (a, b):
                assert isinstance(server.pubsub.backend, ValkeyPubSub)
                await server.pubsub.backend.wait_healthy()
            subscribers = [await joined(b.port, "room") for _ in range(3)]
            for client in subscribers:
                assert await news_until_joined(client) == []
            publisher = await RawSocket.connect(a.port)
            for seq in range(count - 1):
                assert (await a.publish("room", NEWS, Said(seq))).ok
            await publisher.send_json(
                {"type": "HOLD", "payload": {"topic": "room", "seq": count - 1}}
            )
            for client in subscribers:
                assert [await news(client) for _ in range(count)] == list(range(count))
            gate.opened.set()
            assert b.pubsub.statistics().cut_off == 0
