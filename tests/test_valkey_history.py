"""Topic history and positions in the Valkey backend (delivery.md §11), on a real
valkey-server.

The backends are driven directly: each ``ValkeyPubSub`` is attached to a
:class:`Recorder` (an async deliver that records what it is handed) and run in
the test's nursery, with no hub or server. Real I/O on the real clock, bounded by
``trio.fail_after``; waits are on events, never sleep-and-hope. Where a test
needs an instance to stay unsubscribed while others publish, it holds that
backend's subscription lock (its reconnect waits for it before re-subscribing).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio
from valkey_server import ValkeyServerProcess

from wskit_trio import ConfigurationError, ErrorCode, WsKitError
from wskit_trio._protocol.pubsub import Envelope, History, HistorySlice, Position
from wskit_trio.valkey import ValkeyConnection, ValkeyPubSub, ValkeySubscriber

IO_TIMEOUT = 5.0
HISTORY = History(size=10, ttl=60.0)


class Recorder:
    """A backend's attachment: the local topics, and every envelope it was handed,
    in order. ``block`` (if set) is awaited (bounded) before an envelope is taken."""

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.got: list[Envelope] = []
        self.block: trio.Event | None = None
        self.in_flight = self.max_in_flight = 0
        self._changed = trio.Event()

    async def deliver(self, envelope: Envelope) -> int:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.block is not None:
                # Bounded, as the hub bounds a slow subscriber (the backend finishes a
                # delivery it started, even when its session ends).
                with trio.move_on_after(IO_TIMEOUT):
                    await self.block.wait()
            await trio.lowlevel.checkpoint()
            self.got.append(envelope)
            self._changed.set()
            self._changed = trio.Event()
        finally:
            self.in_flight -= 1
        return 1

    def local_topics(self) -> set[str]:
        return self.topics

    def of(self, topic: str) -> list[Envelope]:
        return [e for e in self.got if e.topic == topic]

    async def wait_for(self, count: int, topic: str | None = None) -> None:
        while len(self.got if topic is None else self.of(topic)) < count:
            await self._changed.wait()


@attrs.frozen
class Node:
    backend: ValkeyPubSub
    recorder: Recorder

    async def subscribe(self, topic: str) -> None:
        self.recorder.topics.add(topic)
        await self.backend.subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        self.recorder.topics.discard(topic)
        await self.backend.unsubscribe(topic)

    async def publish(self, topic: str, seq: int, **fields: Any) -> Position:
        envelope = Envelope(topic, "NEWS", {"seq": seq}, None, self.name, **fields)
        result = await self.backend.publish(envelope)
        assert result.ok, result
        assert result.position is not None
        return result.position

    @property
    def name(self) -> str:
        return f"node-{id(self)}"


@asynccontextmanager
async def nodes(
    server: ValkeyServerProcess,
    count: int = 2,
    *,
    history: History | None = HISTORY,
    **options: Any,
) -> AsyncIterator[list[Node]]:
    """``count`` backends on ``server`` (one key and channel prefix per test), each
    attached to its own recorder with ``history``, running and healthy."""
    prefix = f"hist-{uuid.uuid4().hex[:8]}:"
    options.setdefault("backoff_max", 0.05)
    async with trio.open_nursery() as nursery:
        made = []
        for _ in range(count):
            backend = ValkeyPubSub.from_url(server.url, prefix=prefix, **options)
            recorder = Recorder()
            backend.attach(recorder.deliver, recorder.local_topics, history)
            await nursery.start(backend.run)
            made.append(Node(backend, recorder))
        for node in made:
            await node.backend.wait_healthy()
        yield made
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def admin(server: ValkeyServerProcess) -> AsyncIterator[ValkeyConnection]:
    conn = await ValkeyConnection.connect(server.host, server.port)
    try:
        yield conn
    finally:
        await conn.aclose()


@contextmanager
def held_unsubscribed(node: Node) -> Iterator[None]:
    """While inside, ``node`` cannot (re-)subscribe: its reconnect waits for the lock."""
    node.backend._sub_lock.acquire_nowait()
    try:
        yield
    finally:
        node.backend._sub_lock.release()


async def kill_subscriber(conn: ValkeyConnection, node: Node) -> None:
    """``CLIENT KILL TYPE pubsub``: only ``node`` has subscriptions, so only its
    subscriber connection goes; wait until it noticed."""
    assert await conn.execute("CLIENT", "KILL", "TYPE", "pubsub") == 1
    with trio.fail_after(IO_TIMEOUT):
        while node.backend.healthy:
            await node.backend._changed.wait()


def offsets(envelopes: list[Envelope]) -> list[int | None]:
    return [e.offset for e in envelopes]


# -- positions -------------------------------------------------------------------------


async def test_offsets_count_from_one_in_one_epoch_across_instances(
    valkey_server: ValkeyServerProcess,
) -> None:
    count = 40
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two):
            for node in (one, two):
                await node.subscribe("room")
            positions: dict[tuple[str, int], Position] = {}

            async def run(node: Node) -> None:
                for seq in range(count):
                    positions[node.name, seq] = await node.publish("room", seq)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, one)
                nursery.start_soon(run, two)
            for node in (one, two):
                await node.recorder.wait_for(2 * count)
            seen = [[(e.origin, e.payload["seq"]) for e in n.recorder.got] for n in (one, two)]
            # One order, on every instance, and offsets 1..n in that order.
            assert seen[0] == seen[1]
            for node in (one, two):
                got = node.recorder.got
                assert offsets(got) == list(range(1, 2 * count + 1))
                assert len({e.epoch for e in got}) == 1
                for publisher in (one, two):
                    # Each publisher's messages in the order it published them.
                    mine = [e.payload["seq"] for e in got if e.origin == publisher.name]
                    assert mine == list(range(count))
                # What publish reported is where the message was delivered.
                for e in got:
                    assert positions[e.origin, e.payload["seq"]] == e.position
            assert one.recorder.max_in_flight == two.recorder.max_in_flight == 1
            assert one.backend.statistics().duplicates == 0


async def test_published_json_carries_the_position_and_keys_expire(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, 1) as (one,), admin(valkey_server) as conn:
            prefix = one.backend.prefix
            raw = await ValkeySubscriber.connect(valkey_server.host, valkey_server.port)
            seen: list[bytes] = []
            arrived = trio.Event()

            def on_message(channel: bytes, data: bytes) -> None:
                seen.append(data)
                arrived.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(raw.listen, on_message)
                await raw.subscribe(prefix + "room")
                envelope = Envelope("room", "NEWS", {"t": "é"}, {"m": 1}, "me", "client-1")
                result = await one.backend.publish(envelope)
                await arrived.wait()
                nursery.cancel_scope.cancel()
            assert result.ok and result.position is not None
            assert result.position.offset == 1
            expected = attrs.evolve(envelope, offset=1, epoch=result.position.epoch).to_json()
            # Byte for byte what Envelope.to_json writes, position last.
            assert seen == [expected.encode()]
            assert Envelope.from_json(seen[0]).position == result.position
            entries = await conn.execute("XRANGE", f"{prefix}h:room", "-", "+")
            assert entries == [[b"1-0", [b"e", expected.encode()]]]
            meta = await conn.execute("HGETALL", f"{prefix}hm:room")
            assert dict(zip(meta[::2], meta[1::2], strict=True)) == {
                b"epoch": result.position.epoch.encode(),
                b"offset": b"1",
            }
            for key in (f"{prefix}h:room", f"{prefix}hm:room"):
                assert 0 < await conn.execute("PTTL", key) <= 60_000


async def test_read_history_slices_and_trimming(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two), admin(valkey_server) as conn:
            backend = one.backend
            # Read before the first publish: the epoch starts now, at offset 0, and the
            # publishes that follow continue it.
            empty = await backend.read_history("room", None)
            assert empty.latest == 0 and empty.epoch and empty.complete
            assert await backend.read_history("room", 0) == HistorySlice(empty.epoch, 0)
            await one.subscribe("room")
            for seq in range(25):
                assert await two.publish("room", seq) == Position(seq + 1, empty.epoch)
            await one.recorder.wait_for(25)
            delivered = one.recorder.got

            def check(after: int | None, first: int | None, complete: bool) -> None:
                expected = () if first is None else tuple(delivered[first - 1 :])
                assert got == HistorySlice(empty.epoch, 25, expected, complete), after

            got = await backend.read_history("room", None)
            check(None, None, True)
            got = await backend.read_history("room", 0)  # only the newest 10 are kept
            check(0, 16, False)
            got = await backend.read_history("room", 14)
            check(14, 16, False)
            got = await backend.read_history("room", 15)
            check(15, 16, True)
            got = await backend.read_history("room", 20)
            check(20, 21, True)
            got = await backend.read_history("room", 25)
            check(25, None, True)
            got = await backend.read_history("room", 99)
            check(99, None, True)
            # The same answer from the other instance.
            assert await two.backend.read_history("room", 20) == await backend.read_history(
                "room", 20
            )
            # The stream itself is trimmed to about the size (whole nodes at a time).
            for seq in range(25, 400):
                await two.publish("room", seq)
            length = await conn.execute("XLEN", f"{backend.prefix}h:room")
            assert 10 <= length < 300
            assert len((await backend.read_history("room", 0)).envelopes) == 10


async def test_lost_keys_start_a_new_epoch(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, 1) as (one,), admin(valkey_server) as conn:
            prefix = one.backend.prefix
            for seq in range(3):
                first = await one.publish("room", seq)
            assert first.offset == 3

            await conn.execute("FLUSHALL")
            await conn.execute("SCRIPT", "FLUSH")  # EVALSHA finds nothing: EVAL again
            second = await one.publish("room", 3)
            assert second.offset == 1 and second.epoch != first.epoch
            history = await one.backend.read_history("room", 0)
            assert (history.epoch, history.latest, history.complete) == (second.epoch, 1, True)
            assert [e.payload["seq"] for e in history.envelopes] == [3]

            # Only the position hash lost (evicted): a new epoch, and the old stream's
            # entries are dropped, not mixed into it.
            await one.publish("room", 4)
            await conn.execute("DEL", f"{prefix}hm:room")
            third = await one.publish("room", 5)
            assert third.offset == 1 and third.epoch not in (first.epoch, second.epoch)
            history = await one.backend.read_history("room", 0)
            assert [(e.offset, e.payload["seq"]) for e in history.envelopes] == [(1, 5)]

            # Only the stream lost: the epoch goes on, the history is incomplete.
            await conn.execute("DEL", f"{prefix}h:room")
            fourth = await one.publish("room", 6)
            assert fourth == Position(2, third.epoch)
            history = await one.backend.read_history("room", 0)
            assert [e.offset for e in history.envelopes] == [2]
            assert not history.complete
            assert (await one.backend.read_history("room", 1)).complete


async def test_topics_without_history_stay_plain(valkey_server: ValkeyServerProcess) -> None:
    history = History(size=10, ttl=60.0, topics=re.compile(r"h/.*"))
    with trio.fail_after(IO_TIMEOUT):
        async with (
            nodes(valkey_server, history=history) as (one, two),
            admin(valkey_server) as conn,
        ):
            await one.subscribe("plain")
            await one.subscribe("h/kept")
            result = await two.backend.publish(Envelope("plain", "NEWS", {"seq": 0}))
            assert result.ok and result.position is None
            assert await two.publish("h/kept", 1) == Position(
                1, (await two.backend.read_history("h/kept", None)).epoch
            )
            await one.recorder.wait_for(2)
            plain, kept = one.recorder.got
            assert plain == Envelope("plain", "NEWS", {"seq": 0})
            assert kept.offset == 1
            prefix = one.backend.prefix
            assert await conn.execute("EXISTS", f"{prefix}h:plain", f"{prefix}hm:plain") == 0
            assert await one.backend.read_history("plain", 0) == HistorySlice("", 0, complete=False)
    # No history configured at all: every topic is plain.
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, 1, history=None) as (one,):
            await one.subscribe("h/kept")
            result = await one.backend.publish(Envelope("h/kept", "NEWS", {"seq": 0}))
            assert result.ok and result.position is None
            await one.recorder.wait_for(1)
            assert one.recorder.got[0].offset is None


# -- catch-up after a lost subscriber connection ----------------------------------------


async def test_catch_up_after_client_kill(valkey_server: ValkeyServerProcess) -> None:
    """Acknowledged publishes made while an instance's subscriber connection is gone
    reach its subscribers once it is back: in order, each once, then live again."""
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two), admin(valkey_server) as conn:
            await one.subscribe("room")
            await one.subscribe("quiet")  # nothing delivered before the break
            for seq in range(5):
                await two.publish("room", seq)
            await one.recorder.wait_for(5)

            with held_unsubscribed(one):
                await kill_subscriber(conn, one)
                for seq in range(5, 15):
                    await two.publish("room", seq)
                for seq in range(2):
                    await two.publish("quiet", seq)
                assert not one.backend.healthy
            await one.recorder.wait_for(15, "room")
            await one.recorder.wait_for(2, "quiet")
            await two.publish("room", 15)  # live again
            await one.recorder.wait_for(16, "room")
            room = one.recorder.of("room")
            assert offsets(room) == list(range(1, 17))
            assert [e.payload["seq"] for e in room] == list(range(16))
            assert offsets(one.recorder.of("quiet")) == [1, 2]
            assert len(one.recorder.got) == 18
            stats = one.backend.statistics()
            assert (stats.connects, stats.caught_up) == (2, 12)


async def test_catch_up_while_publishes_go_on(valkey_server: ValkeyServerProcess) -> None:
    """The subscriber connection killed twice in the middle of a stream of publishes:
    whatever arrives live and whatever is read from history, every message exactly
    once, in order."""
    count = 300
    history = History(size=count, ttl=60.0)  # nothing trimmed, however long the break
    with trio.fail_after(3 * IO_TIMEOUT):
        async with (
            nodes(valkey_server, history=history) as (one, two),
            admin(valkey_server) as conn,
        ):
            await one.subscribe("room")
            async with trio.open_nursery() as nursery:

                async def publish_all() -> None:
                    for seq in range(count):
                        await two.publish("room", seq)

                nursery.start_soon(publish_all)
                for mark in (60, 180):
                    await one.recorder.wait_for(mark)
                    await kill_subscriber(conn, one)
                    await one.backend.wait_healthy()
            await one.recorder.wait_for(count)
            assert offsets(one.recorder.got) == list(range(1, count + 1))
            assert [e.payload["seq"] for e in one.recorder.got] == list(range(count))
            assert one.backend.statistics().connects == 3
            assert one.recorder.max_in_flight == 1


async def test_catch_up_past_a_trimmed_history_leaves_a_visible_gap(
    valkey_server: ValkeyServerProcess,
) -> None:
    """More was published during the break than the history keeps: what is kept is
    delivered, and the offsets show what was lost."""
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two), admin(valkey_server) as conn:
            await one.subscribe("room")
            for seq in range(5):
                await two.publish("room", seq)
            await one.recorder.wait_for(5)
            with held_unsubscribed(one):
                await kill_subscriber(conn, one)
                for seq in range(5, 20):
                    await two.publish("room", seq)
            await one.recorder.wait_for(15)
            await two.publish("room", 20)
            await one.recorder.wait_for(16)
            assert offsets(one.recorder.got) == [1, 2, 3, 4, 5, *range(11, 22)]


async def test_catch_up_starts_where_the_topic_was_subscribed_again(
    valkey_server: ValkeyServerProcess,
) -> None:
    """A topic unsubscribed and subscribed again catches up from its new
    subscription, not from what was delivered before it."""
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two), admin(valkey_server) as conn:
            await one.subscribe("room")
            await two.publish("room", 1)
            await one.recorder.wait_for(1)
            await one.unsubscribe("room")
            for seq in (2, 3, 4):
                await two.publish("room", seq)
            await one.subscribe("room")
            with held_unsubscribed(one):
                await kill_subscriber(conn, one)
                for seq in (5, 6):
                    await two.publish("room", seq)
            await one.recorder.wait_for(3)
            await two.publish("room", 7)
            await one.recorder.wait_for(4)
            assert [e.payload["seq"] for e in one.recorder.got] == [1, 5, 6, 7]
            assert offsets(one.recorder.got) == [1, 5, 6, 7]


async def test_valkey_restart_starts_a_new_epoch_and_catches_up(
    valkey_server: ValkeyServerProcess,
) -> None:
    """Valkey restarted without persistence: the history is gone, a new epoch starts
    at offset 1, and what was published in it before an instance re-subscribed
    still reaches that instance's subscribers."""
    with trio.fail_after(3 * IO_TIMEOUT):
        async with nodes(valkey_server) as (one, two):
            await one.subscribe("room")
            old = [await two.publish("room", seq) for seq in range(3)]
            await one.recorder.wait_for(3)

            with held_unsubscribed(one):
                valkey_server.kill()
                with pytest.raises(WsKitError) as caught:
                    await one.backend.read_history("room", 0)
                assert caught.value.code == ErrorCode.UNAVAILABLE
                await trio.to_thread.run_sync(valkey_server.restart)
                await two.backend.wait_healthy()
                new = [await two.publish("room", seq) for seq in (3, 4)]
            assert [p.offset for p in new] == [1, 2]
            assert new[0].epoch == new[1].epoch != old[0].epoch
            await one.recorder.wait_for(5)
            await two.publish("room", 5)
            await one.recorder.wait_for(6)
            got = one.recorder.got
            assert [e.payload["seq"] for e in got] == list(range(6))
            assert [e.position for e in got] == [*old, *new, Position(3, new[0].epoch)]
            assert one.backend.statistics().caught_up == 2


# -- failures and back-pressure ---------------------------------------------------------


async def test_history_reports_unavailable_promptly(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, 1) as (one,):
            await one.publish("room", 0)
            valkey_server.kill()
            started = trio.current_time()
            with pytest.raises(WsKitError) as caught:
                await one.backend.read_history("room", 0)
            assert caught.value.code == ErrorCode.UNAVAILABLE
            result = await one.backend.publish(Envelope("room", "NEWS", {"seq": 1}))
            assert (result.ok, result.error, result.retryable) == (False, "UNAVAILABLE", True)
            with pytest.raises(WsKitError) as caught:
                await one.backend.subscribe("room")
            assert caught.value.code == ErrorCode.UNAVAILABLE
            assert trio.current_time() - started < 0.5


async def test_a_slow_deliver_slows_reading_without_losing_the_session(
    valkey_server: ValkeyServerProcess,
) -> None:
    """Deliveries are awaited one at a time; while one waits (longer than
    ``command_timeout``), a subscription's confirmation waits for it instead of
    counting as a lost connection."""
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, command_timeout=0.1) as (one, two):
            await one.subscribe("slow")
            one.recorder.block = release = trio.Event()
            for seq in range(3):
                await two.publish("slow", seq)
            subscribed = trio.Event()

            async def subscribe_other() -> None:
                await one.subscribe("other")
                subscribed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscribe_other)
                await trio.sleep(0.3)  # three command timeouts, stuck in deliver
                assert not subscribed.is_set()
                assert one.recorder.got == []
                one.recorder.block = None
                release.set()
            await one.recorder.wait_for(3)
            assert [e.payload["seq"] for e in one.recorder.got] == [0, 1, 2]
            assert one.recorder.max_in_flight == 1
            assert one.backend.healthy
            assert one.backend.statistics().connects == 1
            await two.publish("other", 9)
            await one.recorder.wait_for(4)


async def test_attach_while_running_is_refused(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with nodes(valkey_server, 1) as (one,):
            with pytest.raises(ConfigurationError):
                one.backend.attach(one.recorder.deliver, one.recorder.local_topics, HISTORY)
