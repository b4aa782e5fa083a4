"""A small pub/sub app the pub/sub tests drive, in memory or over real sockets.

Clients ask for everything with messages, so the same app serves the harness,
``serve()`` and the two-process test (``valkey_instance.py``):

* ``SUBSCRIBE {topic}`` / ``UNSUBSCRIBE {topic}`` → ``TOPICS {topics, has}``
  (the connection's topics after the change, and whether it has ``topic``);
  a refused topic gets the ``ERROR`` frame instead.
* ``PUBLISH {topic, text, seq, excludeSelf, meta}`` publishes ``NEWS {text, seq}``
  and answers ``PUBLISHED`` with the :class:`PublishResult`'s fields.
* ``PUBLISH_INVALID {topic}`` tries to publish a ``NEWS`` whose payload does not
  match its schema and answers ``REFUSED`` if that raised
  ``OutboundValidationError``.
"""

from __future__ import annotations

from typing import Any, cast

import attrs

from wskit_trio import Context, OutboundValidationError, Router, message
from wskit_trio.pubsub import PubSubBackend, TopicPolicy, with_pubsub

__all__ = [
    "NEWS",
    "PUBLISH",
    "PUBLISHED",
    "PUBLISH_INVALID",
    "REFUSED",
    "SUBSCRIBE",
    "TOPICS",
    "UNSUBSCRIBE",
    "News",
    "Publish",
    "Published",
    "Topic",
    "TopicsState",
    "make_router",
]


@attrs.frozen
class Topic:
    topic: str


@attrs.frozen
class TopicsState:
    topics: list[str]
    has: bool


@attrs.frozen
class Publish:
    topic: str
    text: str = ""
    seq: int = 0
    exclude_self: bool = False
    meta: dict[str, str] | None = None


@attrs.frozen
class Published:
    ok: bool
    capability: str
    retryable: bool
    matched: int | None = None
    error: str | None = None


@attrs.frozen
class News:
    text: str
    seq: int = 0


SUBSCRIBE = message("SUBSCRIBE", Topic)
UNSUBSCRIBE = message("UNSUBSCRIBE", Topic)
TOPICS = message("TOPICS", TopicsState)
PUBLISH = message("PUBLISH", Publish)
PUBLISHED = message("PUBLISHED", Published)
PUBLISH_INVALID = message("PUBLISH_INVALID", Topic)
REFUSED = message("REFUSED", Topic)
NEWS = message("NEWS", News)


def make_router(
    backend: PubSubBackend | None = None, *, policy: TopicPolicy | None = None
) -> Router[Any]:
    """The app, on ``backend`` (memory if ``None``) with ``policy``."""
    router: Router[Any] = Router()
    router.plugin(with_pubsub(backend, policy=policy))

    async def state(ctx: Context[Topic, Any]) -> None:
        has = await ctx.topics.has(ctx.payload.topic)
        await ctx.send(TOPICS, TopicsState(topics=await ctx.topics.list(), has=has))

    @router.on(SUBSCRIBE)
    async def subscribe(ctx: Context[Topic, Any]) -> None:
        await ctx.topics.subscribe(ctx.payload.topic)
        await state(ctx)

    @router.on(UNSUBSCRIBE)
    async def unsubscribe(ctx: Context[Topic, Any]) -> None:
        await ctx.topics.unsubscribe(ctx.payload.topic)
        await state(ctx)

    @router.on(PUBLISH)
    async def publish(ctx: Context[Publish, Any]) -> None:
        p = ctx.payload
        result = await ctx.publish(
            p.topic,
            NEWS,
            News(text=p.text, seq=p.seq),
            exclude_self=p.exclude_self,
            meta=dict(p.meta) if p.meta is not None else None,
        )
        await ctx.send(
            PUBLISHED,
            Published(
                ok=result.ok,
                capability=result.capability,
                retryable=result.retryable,
                matched=result.matched,
                error=result.error,
            ),
        )

    @router.on(PUBLISH_INVALID)
    async def publish_invalid(ctx: Context[Topic, Any]) -> None:
        try:
            await ctx.publish(ctx.payload.topic, NEWS, News(text=cast(str, 42)))
        except OutboundValidationError:
            await ctx.send(REFUSED, Topic(topic=ctx.payload.topic))

    return router
