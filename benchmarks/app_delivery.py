"""The benchmark app's messages that need the delivery guarantees (positions,
history, publish results with offsets), kept apart from :mod:`benchmarks.app` so
that the rest of the app also runs on a wskit_trio from before them.

* ``JOIN {topic, since}`` → ``JOINED {topic, recovered, position, replayed}``: a
  subscription with positions (``meta.topic/offset/epoch`` on each frame), recovering
  what was missed after ``since`` when given (the replayed frames come before the
  answer). Needs history: a router made with ``make_router(history=History())``.
* ``BURST {topic, count}``: the handler publishes ``NEWS {seq}`` for seq 0 .. count-1
  in a loop, then answers ``BURST_DONE {topic, count, ok, offset}`` (how many
  publishes reported ``ok``, and the last one's offset when the topic keeps history).
"""

from __future__ import annotations

import attrs

from wskit_trio import Context, Position, Router, message

from .app import NEWS, News

__all__ = ["BURST", "BURST_DONE", "JOIN", "JOINED", "add_delivery_handlers"]


@attrs.frozen
class Join:
    topic: str
    since: Position | None = None


@attrs.frozen
class Joined:
    topic: str
    recovered: bool
    position: Position
    replayed: int


@attrs.frozen
class Burst:
    topic: str
    count: int


@attrs.frozen
class BurstDone:
    topic: str
    count: int
    #: Publishes that reported ``ok``.
    ok: int
    #: The last publish's offset (0 for a topic without history).
    offset: int


JOIN = message("JOIN", Join)
JOINED = message("JOINED", Joined)
BURST = message("BURST", Burst)
BURST_DONE = message("BURST_DONE", BurstDone)


def add_delivery_handlers(router: Router[None]) -> None:
    """Register ``JOIN`` and ``BURST`` on the benchmark app's router."""

    @router.on(JOIN)
    async def join(ctx: Context[Join, None]) -> None:
        topic, since = ctx.payload.topic, ctx.payload.since
        recovery = await ctx.topics.subscribe(topic, positions=True, since=since)
        await ctx.send(
            JOINED, Joined(topic, recovery.recovered, recovery.position, recovery.replayed)
        )

    @router.on(BURST)
    async def burst(ctx: Context[Burst, None]) -> None:
        topic, count = ctx.payload.topic, ctx.payload.count
        ok = offset = 0
        for seq in range(count):
            result = await ctx.publish(topic, NEWS, News(seq=seq))
            if result.ok:
                ok += 1
            if result.position is not None:
                offset = result.position.offset
        await ctx.send(BURST_DONE, BurstDone(topic, count, ok, offset))
