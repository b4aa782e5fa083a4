"""The benchmark app: what every measured wskit_trio server runs (and, in TypeScript,
``bun/server.ts`` on WS-Kit, which has the first four).

* ``ECHO {text, n}`` → ``ECHOED {text, n}``: an event through the router and strict
  validation both ways (the reply is validated against its schema before it goes).
* ``GET_ITEM {id}`` → ``ITEM {id, n}``: an RPC (its own task and cancel scope).
* ``SUBSCRIBE {topic}`` → ``SUBSCRIBED {topic}`` once the subscription is confirmed;
  ``PUBLISH {topic, seq}`` publishes ``NEWS {seq}`` to the topic's subscribers.
* ``JOIN`` and ``BURST`` (:mod:`benchmarks.app_delivery`): a subscription with
  positions and recovery, and a handler publishing in a loop. They need the
  delivery guarantees; ``make_router(delivery=False)`` leaves them out, so the same
  app runs on a wskit_trio from before them (``python -m benchmarks --baseline-ref``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from wskit_trio import Context, Router, RpcContext, message, rpc
from wskit_trio.pubsub import PubSubBackend, with_pubsub

if TYPE_CHECKING:
    from wskit_trio import History

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


def make_router(
    backend: PubSubBackend | None = None,
    *,
    history: History | None = None,
    delivery: bool = True,
) -> Router[None]:
    """The app; ``history`` turns on history for every topic (``JOIN`` needs it);
    ``delivery=False`` leaves out ``JOIN`` and ``BURST`` (for an older wskit_trio)."""
    router: Router[None] = Router()
    if history is not None:
        router.plugin(with_pubsub(backend, history=history))
    elif backend is not None:
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

    if delivery:
        from .app_delivery import add_delivery_handlers

        add_delivery_handlers(router)

    return router
