"""examples/flow_control: a producer faster than its consumer, over real sockets.

The consumer stops reading (``pause()``) until the test lets it go on, so its
socket, then the server's outbound queue for it, fill up deterministically; the
clock is virtual (``net_clock``), so the bounded wait and the retry hints cost no
real time. Each policy's promise is checked against the server's own statistics
(the consumer connection's outbound queue) and what the consumer received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from _example_cmd import example_server
from _net import net_clock

from examples.flow_control.client import RETRY, Consumer, Produced, produce
from examples.flow_control.server import (
    QUEUE,
    RETRY_AFTER_MS,
    Feed,
    Item,
    build_app,
    limits,
)
from wskit_trio import OutboxStatistics, QueuePolicy, Router, Server, serve
from wskit_trio.client import Client, open_client

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here


def queue_stats(server: Server[None], client_id: str) -> OutboxStatistics:
    """The server-side statistics of one client's outbound queue."""
    for conn in server.connections:
        if conn.client_id == client_id:
            return conn.statistics().outbox
    raise LookupError(client_id)


def item(seq: int) -> Item:
    return Item(seq, "x" * 256)


async def test_drop_oldest_counts_every_drop(net_clock: trio.testing.MockClock) -> None:
    """The producer never waits; the server drops the oldest queued items, and the
    consumer misses exactly those (gaps in the sequence), never the newest one."""
    router, feed = build_app("drop_oldest")
    with trio.fail_after(30):
        async with _running(router, "drop_oldest") as (server, consumer, producer):
            watching = await consumer.watch()
            assert watching.policy == "drop_oldest"

            def items() -> Iterator[Item]:
                seq = 0
                # Keep producing until the server has dropped a good number of items.
                while queue_stats(server, watching.client_id).dropped < 200:
                    yield item(seq)
                    seq += 1

            produced = await produce(producer, items())
            consumer.resume()
            await consumer.finished.wait()
            stats = queue_stats(server, watching.client_id)

    sent = produced.items
    assert not feed.stats.refusals  # nobody was told to wait
    assert [seq for seq, _ in feed.stats.forwarded] == list(range(sent))
    assert produced.end.forwarded == sent and produced.end.last_seq == sent - 1

    # Every item is either received or counted as dropped by the server, exactly.
    assert stats.dropped >= 200
    assert stats.dropped == sent - len(consumer.received) == consumer.missed
    # The oldest went: what arrived is in order, and ends with the newest item.
    assert consumer.out_of_order == 0
    assert consumer.received == sorted(set(consumer.received))
    assert consumer.received[-1] == sent - 1
    assert stats.high_water <= QUEUE


async def test_wait_is_bounded_then_refuses_with_a_hint(net_clock: trio.testing.MockClock) -> None:
    """Nothing is dropped from the queue; forwarding waits at most MAX_WAIT, then the
    newest item is refused with RESOURCE_EXHAUSTED + retryAfterMs. The producer waits
    at least that long before each retry, and every item gets through, in order."""
    router, feed = build_app("wait")
    resumed = False
    with trio.fail_after(30):
        async with _running(router, "wait") as (server, consumer, producer):
            watching = await consumer.watch()

            def items() -> Iterator[Item]:
                seq = after = 0
                while after < 100:  # 100 more once the consumer reads again
                    yield item(seq)
                    seq += 1
                    if resumed:
                        after += 1

            async with trio.open_nursery() as nursery:
                result: list[Produced] = []

                async def run_producer() -> None:
                    result.append(await produce(producer, items()))

                nursery.start_soon(run_producer)
                # Refused three times while the consumer reads nothing; then let it
                # read while the fourth attempt is in its bounded wait.
                await feed.stats.wait_until(lambda s: len(s.refusals) >= 3 and s.waiting > 0)
                waiting_seq, waiting_since = feed.stats.attempts[-1]
                resumed = True
                consumer.resume()
            await consumer.finished.wait()
            stats = queue_stats(server, watching.client_id)

    [produced] = result
    sent = produced.items
    assert consumer.end == produced.end
    assert produced.end.refused == len(feed.stats.refusals)
    # Bounded: the queue never held more than its capacity, and dropped nothing.
    assert stats.dropped == 0
    assert stats.high_water <= QUEUE
    # Every item arrived once, in order (refused ones included).
    assert consumer.received == list(range(sent))
    assert [seq for seq, _ in feed.stats.forwarded] == list(range(sent))
    # The attempt that was waiting for room when the consumer resumed got in.
    assert not [r for r in feed.stats.refusals if r.seq == waiting_seq and r.at >= waiting_since]

    _check_hints_obeyed(feed)


async def test_runs_with_its_one_command() -> None:
    """``python -m examples.flow_control.server`` serves; Ctrl-C stops it cleanly."""
    async with example_server("examples.flow_control.server", "flow-control") as url:
        with trio.fail_after(20):
            async with open_client(url) as consumer_client, open_client(url) as producer:
                consumer = Consumer(consumer_client)
                watching = await consumer.watch()
                assert (watching.policy, watching.queue) == ("wait", QUEUE)
                produced = await produce(producer, (item(seq) for seq in range(3)))
                await consumer.finished.wait()
    assert produced.items == 3 and consumer.received == [0, 1, 2]


def _check_hints_obeyed(feed: Feed) -> None:
    refusals = feed.stats.refusals
    assert len(refusals) >= 3
    for refusal in refusals:
        assert refusal.retry_after_ms == RETRY_AFTER_MS
        retries = [at for seq, at in feed.stats.attempts if seq == refusal.seq and at > refusal.at]
        assert retries, f"item {refusal.seq} was refused and never sent again"
        # The producer waited at least retryAfterMs before sending it again (to within
        # float rounding of the clock's readings).
        assert retries[0] - refusal.at >= refusal.retry_after_ms / 1000 - 1e-9


@asynccontextmanager
async def _running(
    router: Router[None], policy: QueuePolicy
) -> AsyncIterator[tuple[Server[None], Consumer, Client]]:
    """The server (with ``policy``), a paused consumer and a producer, for the block."""
    async with trio.open_nursery() as nursery:
        server: Server[None] = await nursery.start(
            serve(router, host="127.0.0.1", port=0, handle_signals=False, limits=limits(policy))
        )
        async with open_client(server.url) as consumer_client:
            consumer = Consumer(consumer_client)
            consumer.pause()
            async with open_client(server.url, retry=RETRY) as producer:
                yield server, consumer, producer
        await server.aclose()
