"""The benchmark app: what every measured wskit_trio server runs (and, in TypeScript,
``bun/server.ts`` on WS-Kit).

* ``ECHO {text, n}`` → ``ECHOED {text, n}``: an event through the router and strict
  validation both ways (the reply is validated against its schema before it goes).
* ``GET_ITEM {id}`` → ``ITEM {id, n}``: an RPC (its own task and cancel scope).
* ``SUBSCRIBE {topic}`` → ``SUBSCRIBED {topic}`` once the subscription is confirmed;
  ``PUBLISH {topic, seq}`` publishes ``NEWS {seq}`` to the topic's subscribers.
"""

from __future__ import annotations

import attrs

from wskit_trio import Context, Router, RpcContext, message, rpc
from wskit_trio.pubsub import PubSubBackend, with_pubsub

__all__ = [
    "ECHO",
    "ECHOED",
    "GET_ITEM",
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


ECHO = message("ECHO", Echo)
ECHOED = message("ECHOED", Echo)
GET_ITEM = rpc("GET_ITEM", GetItem, "ITEM", Item)
SUBSCRIBE = message("SUBSCRIBE", Topic)
SUBSCRIBED = message("SUBSCRIBED", Topic)
PUBLISH = message("PUBLISH", Publish)
NEWS = message("NEWS", News)


def make_router(backend: PubSubBackend | None = None) -> Router[None]:
    router: Router[None] = Router()
    if backend is not None:
        router.plugin(with_pubsub(backend))

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

    return router
