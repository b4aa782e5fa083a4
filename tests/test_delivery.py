"""Delivery guarantees (delivery.md §10 to §12): arrival order, publish order, no
silent gaps (back-pressure, then a visible 1013), history with positions, and
recovery with no gap and no duplicate.

Tests that take a ``backend`` run twice: on the memory backend and on
``ValkeyPubSub`` over a real valkey-server (real time there). Those that need
virtual time or only make sense in one process run on the memory backend; the
Valkey-only ones (a burst to many subscribers and a 1013 in real time, recovery
on another instance, an instance killed mid-stream, Valkey restarted) are in
``test_delivery_valkey.py``."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from _net import net_clock, running_server
from _raw import RawSocket
from valkey_server import ValkeyServerProcess

from wskit_trio import (
    ConfigurationError,
    Context,
    History,
    Limits,
    Position,
    Router,
    RpcContext,
    message,
    rpc,
    with_pubsub,
)
from wskit_trio._protocol.pubsub import Envelope
from wskit_trio.pubsub import MemoryPubSub, PubSubBackend, TopicPolicy
from wskit_trio.pubsub._backend import Deliver
from wskit_trio.testing import TestApp, TestClient, open_test_app
from wskit_trio.valkey import ValkeyPubSub

__all__ = ["net_clock"]


@attrs.frozen
class Backends:
    """Makes fresh backends of one kind: ``memory``, or ``valkey`` (on one real
    valkey-server with one fresh prefix, so they act as the instances of one
    deployment; each serves one app at a time)."""

    kind: str
    make: Callable[[], PubSubBackend]

    @property
    def valkey(self) -> bool:
        return self.kind == "valkey"


def valkey_backends(server: ValkeyServerProcess) -> Backends:
    prefix = f"delivery-{uuid.uuid4().hex[:8]}:"
    return Backends(
        "valkey", lambda: ValkeyPubSub.from_url(server.url, prefix=prefix, backoff_max=0.05)
    )


@pytest.fixture(params=["memory", "valkey"])
def backend(request: pytest.FixtureRequest) -> Backends:
    """Backends of the parametrized kind (a test taking it runs once on each)."""
    if request.param == "memory":
        return Backends("memory", MemoryPubSub)
    return valkey_backends(request.getfixturevalue("valkey_server"))


def reseed_scheduler(seed: int) -> None:
    """Make trio's randomized scheduling (which task of a batch runs first) follow
    ``seed``, so an ordering test runs under several known interleavings."""
    trio._core._run._r.seed(seed)


@attrs.frozen
class Join:
    topic: str
    positions: bool = False
    since: Position | None = None
    drop_oldest: bool = False


@attrs.frozen
class Joined:
    recovered: bool
    position: Position
    replayed: int


@attrs.frozen
class Say:
    topic: str
    seq: int


@attrs.frozen
class Burst:
    topic: str
    count: int
    pad: int = 0


@attrs.frozen
class Said:
    seq: int
    pad: str = ""


JOIN = message("JOIN", Join)
JOINED = message("JOINED", Joined)
SUBSCRIBED = message("SUBSCRIBED")
SAY = message("SAY", Say)
BURST = message("BURST", Burst)
PUB = rpc("PUB", Say, "PUB_OK", Said)
NEWS = message("NEWS", Said)


#: Every topic keeps history, the defaults.
ALL_TOPICS = History()


def make_router(
    history: History | None = ALL_TOPICS,
    policy: TopicPolicy | None = None,
    backend: PubSubBackend | None = None,
) -> Router[Any]:
    """The app, on ``backend`` (a fresh memory one if ``None``)."""
    router: Router[Any] = Router()
    router.plugin(with_pubsub(backend, history=history, policy=policy))

    @router.on(JOIN)
    async def join(ctx: Context[Join, Any]) -> None:
        p = ctx.payload
        if not p.positions and p.since is None:
            await ctx.topics.subscribe(p.topic, drop_oldest=p.drop_oldest)
            await ctx.send(SUBSCRIBED)
            return
        recovery = await ctx.topics.subscribe(
            p.topic, positions=True, since=p.since, drop_oldest=p.drop_oldest
        )
        await ctx.send(JOINED, Joined(recovery.recovered, recovery.position, recovery.replayed))

    @router.on(SAY)
    async def say(ctx: Context[Say, Any]) -> None:
        await ctx.publish(ctx.payload.topic, NEWS, Said(ctx.payload.seq))

    @router.on(BURST)
    async def burst(ctx: Context[Burst, Any]) -> None:
        pad = "x" * ctx.payload.pad
        for seq in range(ctx.payload.count):
            result = await ctx.publish(ctx.payload.topic, NEWS, Said(seq, pad))
            assert result.ok

    @router.rpc(PUB)
    async def pub(ctx: RpcContext[Say, Said, Any]) -> None:
        await ctx.publish(ctx.payload.topic, NEWS, Said(ctx.payload.seq))
        await ctx.reply(Said(ctx.payload.seq))

    return router


@asynccontextmanager
async def app_of(router: Router[Any], **options: Any) -> AsyncIterator[TestApp[Any]]:
    """The app in memory, bounded: a test that hangs fails (in virtual time too). On
    a Valkey backend it is connected (and subscribed) before the block starts."""
    _early.clear()
    with trio.fail_after(120):
        async with open_test_app(router, heartbeat=None, **options) as app:
            if isinstance(router.pubsub.backend, ValkeyPubSub):
                with trio.fail_after(5):
                    await router.pubsub.backend.wait_healthy()
            yield app


#: NEWS frames that arrived before a JOINED answer (a recovery's replay comes
#: first), by client, for :func:`news` to hand out first.
_early: dict[int, list[dict[str, Any]]] = {}


async def join(client: TestClient[Any], topic: str, **options: Any) -> Joined:
    """Join ``topic`` (with ``positions`` / ``since``: the Recovery, else a dummy)."""
    await client.send(JOIN, Join(topic, **options))
    frame = await client.receive()
    while frame.type == NEWS.type:
        _early.setdefault(id(client), []).append(frame.raw)
        frame = await client.receive()
    if frame.type == SUBSCRIBED.type:
        return Joined(False, Position(0, ""), 0)
    assert frame.type == JOINED.type, frame.raw
    position = frame.payload["position"]
    return Joined(
        frame.payload["recovered"],
        Position(position["offset"], position["epoch"]),
        frame.payload["replayed"],
    )


async def news(client: TestClient[Any], count: int) -> list[Any]:
    """The next ``count`` NEWS frames' raw dicts."""
    early = _early.pop(id(client), [])
    got, rest = early[:count], early[count:]
    if rest:
        _early[id(client)] = rest
    for _ in range(count - len(got)):
        frame = await client.receive()
        assert frame.type == NEWS.type, frame.raw
        got.append(frame.raw)
    return got


# -- §10: order and back-pressure ---------------------------------------------------------


async def test_a_burst_reaches_every_subscriber_whole_and_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    count, subscribers = 2_000, 200
    async with app_of(make_router(history=None)) as app:
        clients = [await app.connect() for _ in range(subscribers)]
        for client in clients:
            await join(client, "room")
        seen: list[list[int]] = [[] for _ in clients]

        async def read(i: int, client: TestClient[Any]) -> None:
            for raw in await news(client, count):
                seen[i].append(raw["payload"]["seq"])

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(read, i, client)
            await clients[0].send(BURST, Burst("room", count))
        assert all(s == list(range(count)) for s in seen)
        # Readers that keep up never make the publisher wait for the slow-consumer bound.
        assert trio.current_time() == start
        assert app.server.pubsub.statistics().cut_off == 0


@pytest.mark.parametrize("history", [None, ALL_TOPICS], ids=["plain", "history"])
async def test_a_flood_of_publishing_events_reaches_a_reader_in_order(
    backend: Backends, history: History | None
) -> None:
    count = 4_000 if backend.valkey else 20_000  # a Valkey round trip per message
    with trio.fail_after(60):
        async with app_of(make_router(history, backend=backend.make())) as app:
            reader, flooder = await app.connect(), await app.connect()
            await join(reader, "room")

            async def flood() -> None:
                for seq in range(count):
                    await flooder.send(SAY, Say("room", seq))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                assert [raw["payload"]["seq"] for raw in await news(reader, count)] == list(
                    range(count)
                )


@pytest.mark.parametrize("history", [None, ALL_TOPICS], ids=["plain", "history"])
@pytest.mark.parametrize(
    ("backend", "seed"),
    [*(("memory", seed) for seed in range(10)), *(("valkey", seed) for seed in range(4))],
    indirect=["backend"],
)
async def test_pipelined_rpcs_publish_in_arrival_order(
    backend: Backends, history: History | None, seed: int
) -> None:
    reseed_scheduler(seed)
    count, window = 1_000, 256
    with trio.fail_after(60):
        async with app_of(make_router(history, backend=backend.make())) as app:
            reader, publisher = await app.connect(), await app.connect()
            await join(reader, "room")

            async def pipeline() -> None:
                # Keep ``window`` requests in flight, never waiting for each answer.
                sent = answered = 0
                while answered < count:
                    while sent < count and sent - answered < window:
                        await publisher.request(PUB, Say("room", sent))
                        sent += 1
                    frame = await publisher.receive()
                    assert frame.type == "PUB_OK", frame.raw
                    answered += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline)
                seqs = [raw["payload"]["seq"] for raw in await news(reader, count)]
            assert seqs == list(range(count))


async def test_a_subscription_without_positions_gets_the_plain_frame(backend: Backends) -> None:
    async with app_of(make_router(backend=backend.make())) as app:
        plain, positioned = await app.connect(), await app.connect()
        await join(plain, "room")
        await join(positioned, "room", positions=True)
        await plain.send(SAY, Say("room", 7))
        assert (await news(plain, 1))[0] == {"type": "NEWS", "payload": {"seq": 7, "pad": ""}}
        (frame,) = await news(positioned, 1)
        assert frame["payload"] == {"seq": 7, "pad": ""}
        assert frame["meta"]["topic"] == "room" and frame["meta"]["offset"] == 1
        assert isinstance(frame["meta"]["epoch"], str) and frame["meta"]["epoch"]


async def test_drop_oldest_topics_never_slow_the_publisher_and_gaps_show_in_offsets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = TopicPolicy(drop_oldest=re.compile(r"cursor:.*"))
    limits = Limits(outbound_queue=4)
    async with app_of(make_router(policy=policy), limits=limits) as app:
        stalled = await app.connect(client_buffer=0)  # reads nothing for now
        await join(stalled, "cursor:1", positions=True)
        publisher = await app.connect()
        start = trio.current_time()
        for seq in range(50):
            await publisher.send(SAY, Say("cursor:1", seq))
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == start  # nobody waited
        assert stalled.closed is None  # superseded frames dropped, no cut-off
        # The writer's frame and the newest three the queue kept: the gap shows.
        with trio.fail_after(10):
            offsets = [raw["meta"]["offset"] for raw in await news(stalled, 4)]
        # (Which older ones survive depends on how the writer batched them.)
        assert offsets == sorted(set(offsets)) and offsets[0] == 1 and offsets[-1] == 50


async def test_a_drop_oldest_topic_never_costs_another_topic_a_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = TopicPolicy(drop_oldest=re.compile(r"cursor:.*"))
    limits = Limits(outbound_queue=8)
    async with app_of(make_router(policy=policy), limits=limits) as app:
        watcher = await app.connect(client_buffer=0)  # reads nothing for now
        await join(watcher, "cursor:1", positions=True)
        await join(watcher, "room", positions=True)
        publisher = await app.connect()
        # Interleaved: chat the watcher must get whole, cursors it may skip.
        for seq in range(6):
            await publisher.send(SAY, Say("room", seq))
            for _ in range(5):
                await publisher.send(SAY, Say("cursor:1", seq))
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.closed is None
        kept: dict[str, list[int]] = {"room": [], "cursor:1": []}
        with trio.fail_after(10):
            while len(kept["room"]) < 6 or kept["cursor:1"][-1:] != [30]:
                raw = (await news(watcher, 1))[0]
                kept[raw["meta"]["topic"]].append(raw["meta"]["offset"])
        assert kept["room"] == [1, 2, 3, 4, 5, 6]  # every chat frame, in order
        cursors = kept["cursor:1"]
        assert cursors == sorted(set(cursors)) and len(cursors) < 30  # superseded ones went
        assert watcher.connection.statistics().outbox.dropped == 30 - len(cursors)


async def test_a_connection_opts_into_drop_oldest_for_its_own_subscription(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(outbound_queue=4)
    async with app_of(make_router(), limits=limits) as app:
        lossy = await app.connect(client_buffer=0)  # reads nothing for now
        await join(lossy, "game", positions=True, drop_oldest=True)
        strict = await app.connect()
        await join(strict, "game", positions=True)
        publisher = await app.connect()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:
                assert offsets_of(await news(strict, 50)) == list(range(1, 51))

            nursery.start_soon(read_all)
            for seq in range(50):
                await publisher.send(SAY, Say("game", seq))
        assert trio.current_time() == start  # nobody waited for the lossy one
        assert lossy.closed is None
        with trio.fail_after(10):
            kept = offsets_of(await news(lossy, 4))
        assert kept == sorted(set(kept)) and kept[-1] == 50 and len(kept) < 50


async def test_a_recovery_into_a_queue_that_stays_full_is_cut_off_within_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bound = 5.0
    limits = Limits(outbound_queue=8, slow_consumer_timeout=bound)
    async with app_of(make_router(), limits=limits) as app:
        publisher = await app.connect()
        epoch = (await join(publisher, "room", positions=True)).position.epoch
        for seq in range(100):
            await publisher.send(SAY, Say("room", seq))
        assert len(await news(publisher, 100)) == 100
        stalled = await app.connect(client_buffer=0)  # reads nothing for now
        await stalled.send(JOIN, Join("room", since=Position(0, epoch)))
        # The replay waits for room like a live delivery: for the bound, then 1013.
        await trio.sleep(bound - 0.01)
        assert app.server.pubsub.statistics().cut_off == 0
        await trio.sleep(0.02)
        assert app.server.pubsub.statistics().cut_off == 1
        assert await stalled.wait_closed() == (1013, "slow consumer")
        # The others are not held up by it any longer.
        await publisher.send(SAY, Say("room", 100))
        assert offsets_of(await news(publisher, 1)) == [101]


async def test_a_recovery_outrun_by_the_topic_is_cut_off_when_its_buffer_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(outbound_queue=8)
    async with app_of(make_router(history=History(size=20)), limits=limits) as app:
        publisher = await app.connect()
        epoch = (await join(publisher, "room", positions=True)).position.epoch
        for seq in range(10):
            await publisher.send(SAY, Say("room", seq))
        stalled = await app.connect(client_buffer=0)  # reads nothing for now
        await stalled.send(JOIN, Join("room", since=Position(0, epoch)))
        await trio.testing.wait_all_tasks_blocked()  # its replay waits for room
        start = trio.current_time()
        # Live messages wait for the replay, up to the history's size, not for ever.
        for seq in range(10, 40):
            await publisher.send(SAY, Say("room", seq))
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == start  # nobody waited for it
        assert app.server.pubsub.statistics().cut_off == 1
        assert await stalled.wait_closed() == (1013, "slow consumer")
        assert offsets_of(await news(publisher, 40)) == list(range(1, 41))


def offsets_of(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["meta"]["offset"] for frame in frames]


# -- §11, §12: positions and recovery --------------------------------------------------


async def test_recovery_replays_what_was_missed_then_goes_live(backend: Backends) -> None:
    async with app_of(make_router(backend=backend.make())) as app:
        publisher = await app.connect()
        first = await app.connect()
        joined = await join(first, "room", positions=True)
        assert joined == Joined(False, Position(0, joined.position.epoch), 0)
        epoch = joined.position.epoch
        for seq in range(5):
            await publisher.send(SAY, Say("room", seq))
        assert [raw["meta"]["offset"] for raw in await news(first, 5)] == [1, 2, 3, 4, 5]
        first.drop()
        for seq in range(5, 10):  # acknowledged: all in the history before the re-join
            await publisher.request(PUB, Say("room", seq))
            assert (await publisher.receive()).type == "PUB_OK"
        again = await app.connect()
        assert await join(again, "room", since=Position(5, epoch)) == Joined(
            True, Position(10, epoch), 5
        )
        await publisher.send(SAY, Say("room", 10))
        got = await news(again, 6)
        assert [raw["payload"]["seq"] for raw in got] == list(range(5, 11))
        assert [raw["meta"]["offset"] for raw in got] == list(range(6, 12))


async def test_recovery_while_publishing_has_no_gap_and_no_duplicate(
    backend: Backends,
) -> None:
    with trio.fail_after(30):
        router = make_router(history=History(size=10_000), backend=backend.make())
        async with app_of(router) as app:
            publisher = await app.connect()
            watcher = await app.connect()
            epoch = (await join(watcher, "room", positions=True)).position.epoch
            total = 3_000

            async def publish_all() -> None:
                for seq in range(total):
                    await publisher.send(SAY, Say("room", seq))
                    if seq % 100 == 0:
                        await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_all)
                # Join half-way, from offset 100: replay and live meet somewhere.
                await news(watcher, 500)
                late = await app.connect()
                assert (await join(late, "room", since=Position(100, epoch))).recovered
                offsets = [raw["meta"]["offset"] for raw in await news(late, total - 100)]
            assert offsets == list(range(101, total + 1))


async def test_a_wrong_epoch_or_a_position_older_than_the_history_recovers_nothing(
    backend: Backends,
) -> None:
    async with app_of(make_router(history=History(size=3), backend=backend.make())) as app:
        publisher, first = await app.connect(), await app.connect()
        epoch = (await join(first, "room", positions=True)).position.epoch
        for seq in range(10):
            await publisher.send(SAY, Say("room", seq))
        await news(first, 10)
        wrong = await app.connect()
        assert await join(wrong, "room", since=Position(5, "not-the-epoch")) == Joined(
            False, Position(10, epoch), 0
        )
        too_old = await app.connect()
        assert await join(too_old, "room", since=Position(2, epoch)) == Joined(
            False, Position(10, epoch), 0
        )
        # Within the last three: recovered.
        fine = await app.connect()
        assert await join(fine, "room", since=Position(7, epoch)) == Joined(
            True, Position(10, epoch), 3
        )
        for client in (wrong, too_old):
            assert id(client) not in _early and client.receive_nowait() is None  # no replay


async def test_history_that_expired_starts_a_new_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with app_of(make_router(history=History(ttl=60))) as app:
        publisher, watcher = await app.connect(), await app.connect()
        before = (await join(watcher, "room", positions=True)).position.epoch
        await publisher.send(SAY, Say("room", 1))
        await news(watcher, 1)
        await trio.sleep(61)
        await publisher.send(SAY, Say("room", 2))
        (frame,) = await news(watcher, 1)
        assert frame["meta"]["offset"] == 1 and frame["meta"]["epoch"] != before


async def test_positions_need_a_topic_with_history(backend: Backends) -> None:
    router = make_router(history=History(topics=re.compile(r"kept:.*")), backend=backend.make())
    async with app_of(router) as app:
        client = await app.connect()
        await client.send(JOIN, Join("room", positions=True))
        assert (await client.receive()).error_code == "FAILED_PRECONDITION"
        assert (await join(client, "kept:room", positions=True)).position.epoch


async def test_position_meta_keys_are_reserved() -> None:
    seen: list[dict[str, Any]] = []
    router = make_router()

    @router.on(message("PEEK"))
    async def peek(ctx: Context[None, Any]) -> None:
        seen.append(dict(ctx.meta))

    async with app_of(router) as app:
        client = await app.connect()
        await client.send_json({"type": "PEEK", "meta": {"topic": "x", "offset": 1, "epoch": "e"}})
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [{}]

    @attrs.frozen
    class WithTopic:
        topic: str

    with pytest.raises(ConfigurationError):
        message("BAD", None, meta=WithTopic)


# -- over real sockets -----------------------------------------------------------------


async def test_over_sockets_a_burst_reaches_everyone_and_a_stalled_reader_gets_1013(
    net_clock: trio.testing.MockClock,
) -> None:
    # 8 MiB to each: more than the kernel buffers a never-reading peer can absorb.
    count, pad = 2_000, 4096
    limits = Limits(outbound_queue=16, slow_consumer_timeout=2.0)
    async with running_server(make_router(history=None), limits=limits) as server:
        readers = [await RawSocket.connect(server.port) for _ in range(4)]
        stalled = await RawSocket.connect(server.port)
        for client in (*readers, stalled):
            await client.send_json({"type": "JOIN", "payload": {"topic": "room"}})
            assert (await client.receive_json())["type"] == "SUBSCRIBED"
        # The stalled one stops reading now: its kernel buffers fill, then its queue.
        seen: list[list[int]] = [[] for _ in readers]

        async def read(i: int, client: RawSocket) -> None:
            while len(seen[i]) < count:
                frame = await client.receive_json()
                seen[i].append(frame["payload"]["seq"])

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for i, client in enumerate(readers):
                    nursery.start_soon(read, i, client)
                await readers[0].send_json(
                    {"type": "BURST", "payload": {"topic": "room", "count": count, "pad": pad}}
                )
            assert all(s == list(range(count)) for s in seen)
            # The stalled reader was cut off visibly: 1013 after what it had queued.
            codes: list[int] = []
            with contextlib.suppress(EOFError, trio.BrokenResourceError):
                codes.append(await stalled.close_code())
            assert codes in ([1013], [])  # a reset is all a never-reading peer may get
            assert server.pubsub.statistics().cut_off == 1


class LaggingPubSub(MemoryPubSub):
    """Memory pub/sub whose live delivery lags its history until :meth:`release`, as
    with Valkey: the script appends and publishes atomically, but this instance's
    subscriber connection hands the message to the hub a little later."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Envelope] = []
        self._real: Deliver | None = None

    def attach(
        self,
        deliver: Deliver,
        local_topics: Callable[[], Collection[str]],
        history: History | None = None,
    ) -> None:
        self._real = deliver
        super().attach(self._hold, local_topics, history)

    async def _hold(self, envelope: Envelope) -> int:
        await trio.lowlevel.checkpoint()
        self.held.append(envelope)
        return 0

    async def release(self) -> None:
        assert self._real is not None
        while self.held:
            await self._real(self.held.pop(0))


async def test_a_recovery_ahead_of_the_live_stream_costs_nobody_a_message() -> None:
    backend = LaggingPubSub()
    async with app_of(make_router(backend=backend)) as app:
        publisher, bystander = await app.connect(), await app.connect()
        epoch = (await join(bystander, "room", positions=True)).position.epoch
        for seq in range(3):
            await publisher.send(SAY, Say("room", seq))
        await trio.testing.wait_all_tasks_blocked()
        await backend.release()
        assert [raw["meta"]["offset"] for raw in await news(bystander, 3)] == [1, 2, 3]
        # Offsets 4 and 5: in the history, not yet delivered on this instance.
        for seq in range(3, 5):
            await publisher.send(SAY, Say("room", seq))
        await trio.testing.wait_all_tasks_blocked()
        fresh, late = await app.connect(), await app.connect()
        assert (await join(fresh, "room", positions=True)).position == Position(5, epoch)
        assert await join(late, "room", since=Position(3, epoch)) == Joined(
            True, Position(5, epoch), 2
        )
        await backend.release()  # ... now they arrive live
        await trio.testing.wait_all_tasks_blocked()
        assert [raw["meta"]["offset"] for raw in await news(late, 2)] == [4, 5]
        assert late.receive_nowait() is None  # replayed once, not again live
        assert fresh.receive_nowait() is None  # joined at 5: nothing older
        assert [raw["meta"]["offset"] for raw in await news(bystander, 2)] == [4, 5]
