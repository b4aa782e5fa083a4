"""The benchmark app: what every measured wskit_trio server runs (and, in TypeScript,
``bun/server.ts`` on WS-Kit, which has the first four).

* ``ECHO {text, n}`` → ``ECHOED {text, n}``: an event through the router and strict
  validation both ways (the reply is validated against its schema before it goes).
* ``GET_ITEM {id}`` → ``ITEM {id, n}``: an RPC (its own task and cancel scope).
* ``SUBSCRIBE {topic}`` → ``SUBSCRIBED {topic}`` once the subscription is confirmed;
  ``PUBLISH {topic, seq}`` publishes ``NEWS {seq}`` to the topic's subscribers.
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

from wskit_trio import Context, History, Position, Router, RpcContext, message, rpc
from wskit_trio.pubsub import PubSubBackend, with_pubsub

__all__ = [
    "BURST",
    "BURST_DONE",
    "ECHO",
    "ECHOED",
    "GET_ITEM",
    "JOIN",
    "JOINED",
    "NEWS",
    "PUBLISH",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "make_router",
]


@attrs.frozen
class Echo:
    text: str
    n: int


@attrs.frozen
class GetItem:
    id: str


@attrs.frozen
class Item:
    id: str
    n: int


@attrs.frozen
class Topic:
    topic: str


@attrs.frozen
class Publish:
    topic: str
    seq: int


@attrs.frozen
class News:
    seq: int


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


ECHO = message("ECHO", Echo)
ECHOED = message("ECHOED", Echo)
GET_ITEM = rpc("GET_ITEM", GetItem, "ITEM", Item)
SUBSCRIBE = message("SUBSCRIBE", Topic)
SUBSCRIBED = message("SUBSCRIBED", Topic)
PUBLISH = message("PUBLISH", Publish)
NEWS = message("NEWS", News)
JOIN = message("JOIN", Join)
JOINED = message("JOINED", Joined)
BURST = message("BURST", Burst)
BURST_DONE = message("BURST_DONE", BurstDone)


def make_router(
    backend: PubSubBackend | None = None, *, history: History | None = None
) -> Router[None]:
    """The app; ``history`` turns on history for every topic (``JOIN`` needs it)."""
    router: Router[None] = Router()
    if backend is not None or history is not None:
        router.plugin(with_pubsub(backend, history=history))

    @router.on(ECHO)
    async def echo(ctx: Context[Echo, None]) -> None:
        await ctx.send(ECHOED, ctx.payload)

    @router.rpc(GET_ITEM)
    async def get_item(ctx: RpcContext[GetItem, Item, None]) -> None:
        await ctx.reply(Item(id=ctx.payload.id, n=1))

    @router.on(SUBSCRIBE)
    async def subscribe(ctx: Context[Topic, None]) -> None:
        await ctx.topics.subscribe(ctx.payload.topic)
        await ctx.send(SUBSCRIBED, ctx.payload)

    @router.on(PUBLISH)
    async def publish(ctx: Context[Publish, None]) -> None:
        await ctx.publish(ctx.payload.topic, NEWS, News(seq=ctx.payload.seq))

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

    return router
