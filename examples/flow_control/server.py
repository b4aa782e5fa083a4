"""Flow control: a producer faster than its consumer, and what the server does about it.

The producer sends items (``PUBLISH`` requests, one at a time, in order); the
server forwards each one to the consumer through the consumer's bounded outbound
queue (``Limits.outbound_queue`` frames). When the consumer reads slower than
the producer writes, that queue fills up, and the server's queue policy decides:

* ``Limits(outbound_policy="drop_oldest")``: the producer never waits; the
  oldest queued items are dropped to make room, so the consumer always gets the
  newest ones and sees the dropped ones as gaps in the sequence numbers. Right
  for feeds where only the latest value matters (prices, positions).
* ``Limits(outbound_policy="wait")``: nothing is dropped from the queue;
  forwarding waits for room, but only for :data:`MAX_WAIT` (a bounded wait).
  When the wait runs out, the newest item is dropped: refused with
  ``RESOURCE_EXHAUSTED`` and ``retryAfterMs``, and the producer keeps it and
  sends it again after that long. Right for streams where every item matters.

Run it:   python -m examples.flow_control.server          (PORT=3040, POLICY=wait)
Then:     python -m examples.flow_control.client
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import attrs
import trio

from wskit_trio import (
    ConnectionContext,
    Limits,
    QueuePolicy,
    Router,
    RpcContext,
    WsKitError,
    message,
    rpc,
    serve,
)

#: Frames the server queues for one client before the policy applies.
QUEUE = 32
#: The bounded wait: how long forwarding an item may wait for room in the queue.
MAX_WAIT = 0.05
#: What a refused producer is told to wait before sending the item again.
RETRY_AFTER_MS = 50


@attrs.frozen
class Item:
    seq: int  # the producer's sequence number: 0, 1, 2, ...
    data: str


@attrs.frozen
class Accepted:
    seq: int


@attrs.frozen
class Watching:
    client_id: str
    policy: str
    queue: int


@attrs.frozen
class FeedEnd:
    last_seq: int  # the last item the producer sent (-1: none)
    forwarded: int  # items the server queued for the consumer
    refused: int  # times the producer was told RESOURCE_EXHAUSTED


ITEM = message("ITEM", Item)
FEED_END = message("FEED_END", FeedEnd)
#: Consumer: "send me the feed" (one consumer at a time).
WATCH = rpc("WATCH", None, "WATCHING", Watching)
#: Producer: one item. Answered once the item is in the consumer's queue, or refused
#: with RESOURCE_EXHAUSTED + retryAfterMs when there was no room within MAX_WAIT.
PUBLISH = rpc("PUBLISH", Item, "ACCEPTED", Accepted)
#: Producer: no more items; the consumer gets FEED_END (queued like an item).
FINISH = rpc("FINISH", None, "FINISHED", FeedEnd)


@attrs.frozen
class Refusal:
    seq: int | None  # the item refused (None: FEED_END)
    at: float  # trio.current_time() when the refusal was sent
    retry_after_ms: int


@attrs.define
class FeedStats:
    """What the server did, for the demo's output and the test's checks."""

    #: Every PUBLISH attempt: (seq, trio.current_time() on arrival).
    attempts: list[tuple[int, float]] = attrs.Factory(list)
    #: Items queued for the consumer, in order: (seq, seconds spent waiting for room).
    forwarded: list[tuple[int, float]] = attrs.Factory(list)
    refusals: list[Refusal] = attrs.Factory(list)
    #: PUBLISH handlers waiting for room in the consumer's queue right now.
    waiting: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[FeedStats], bool]) -> None:
        """Wait until ``condition(self)`` holds (checked after every change)."""
        while not condition(self):
            await self._changed.wait()


@attrs.define
class Feed:
    """The app state: the consumer's connection and the statistics."""

    policy: QueuePolicy
    consumer: ConnectionContext[None] | None = None
    stats: FeedStats = attrs.Factory(FeedStats)

    async def forward(
        self, seq: int | None, send: Callable[[ConnectionContext[None]], Awaitable[None]]
    ) -> float:
        """Queue one frame for the consumer (item ``seq``, or ``None`` for FEED_END);
        refuse with a retry hint if there is no room within MAX_WAIT (under
        "drop_oldest" there always is). Returns the seconds it waited for room."""
        consumer = self.consumer
        if consumer is None:
            raise WsKitError("FAILED_PRECONDITION", "No consumer is watching the feed")
        stats = self.stats
        started = trio.current_time()
        stats.waiting += 1
        stats.changed()
        try:
            with trio.move_on_after(MAX_WAIT) as bounded:
                await send(consumer)  # under "wait": waits while the queue is full
        finally:
            stats.waiting -= 1
        if bounded.cancelled_caught:  # no room: drop the newest, with a hint
            stats.refusals.append(Refusal(seq, trio.current_time(), RETRY_AFTER_MS))
            stats.changed()
            raise WsKitError(
                "RESOURCE_EXHAUSTED",
                "The consumer is behind; send this item again later",
                {"queue": QUEUE} if seq is None else {"seq": seq, "queue": QUEUE},
                retry_after_ms=RETRY_AFTER_MS,
            )
        return trio.current_time() - started


def limits(policy: QueuePolicy) -> Limits:
    return Limits(outbound_queue=QUEUE, outbound_policy=policy)


def build_app(policy: QueuePolicy = "wait") -> tuple[Router[None], Feed]:
    """The router and its state. Serve it with ``limits=limits(policy)``."""
    router: Router[None] = Router()
    feed = Feed(policy)

    @router.rpc(WATCH)
    async def watch(ctx: RpcContext[None, Watching, None]) -> None:
        if feed.consumer is not None:
            raise WsKitError("ALREADY_EXISTS", "The feed already has a consumer")
        feed.consumer = ctx
        await ctx.reply(Watching(ctx.client_id, feed.policy, QUEUE))

    @router.rpc(PUBLISH)
    async def publish(ctx: RpcContext[Item, Accepted, None]) -> None:
        item = ctx.payload
        feed.stats.attempts.append((item.seq, trio.current_time()))
        waited = await feed.forward(item.seq, lambda consumer: consumer.send(ITEM, item))
        feed.stats.forwarded.append((item.seq, waited))
        feed.stats.changed()
        await ctx.reply(Accepted(item.seq))

    @router.rpc(FINISH)
    async def finish(ctx: RpcContext[None, FeedEnd, None]) -> None:
        forwarded = feed.stats.forwarded
        end = FeedEnd(
            forwarded[-1][0] if forwarded else -1, len(forwarded), len(feed.stats.refusals)
        )
        await feed.forward(None, lambda consumer: consumer.send(FEED_END, end))
        await ctx.reply(end)

    @router.on_close
    async def on_close(ctx: ConnectionContext[None]) -> None:
        if feed.consumer is not None and feed.consumer.client_id == ctx.client_id:
            feed.consumer = None

    return router, feed


#: The policies this example shows (the third, "close", disconnects a slow consumer).
POLICIES: dict[str, QueuePolicy] = {"wait": "wait", "drop_oldest": "drop_oldest"}


async def main(port: int) -> None:
    name = os.environ.get("POLICY", "wait")
    if name not in POLICIES:
        raise SystemExit(f"POLICY must be one of {sorted(POLICIES)}, not {name!r}")
    policy = POLICIES[name]
    router, _ = build_app(policy)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(router, host="127.0.0.1", port=port, limits=limits(policy))
        )
        print(f"flow-control server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", "3040")))
