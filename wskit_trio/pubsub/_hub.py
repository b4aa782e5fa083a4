"""Local fan-out and topic policy, in front of a backend.

The hub keeps which local connections subscribe to which topic. Publishing
goes through the backend; whatever the backend brings back (for the memory
backend, immediately) is encoded once and queued for each local subscriber
without waiting, so a slow subscriber never holds up a publisher or the other
subscribers: it meets its own queue's policy and the drop is counted.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs
import trio

from .._errors import WsKitError
from .._protocol.codes import ErrorCode
from .._protocol.pubsub import DEFAULT_TOPIC_PATTERN, Envelope, check_topic
from .._schema import MessageSchema
from ._backend import PublishResult, PubSubBackend
from ._memory import MemoryPubSub

if TYPE_CHECKING:
    from .._connection import Connection
    from .._context import ConnectionContext
    from .._observer import Observer
    from .._router import Router

__all__ = ["PubSubHub", "PubSubStatistics", "TopicAction", "TopicPolicy", "with_pubsub"]

TopicAction: TypeAlias = Literal["subscribe", "unsubscribe", "publish"]
Authorize: TypeAlias = Callable[
    [TopicAction, str, "ConnectionContext[Any]"], bool | Awaitable[bool]
]


@attrs.frozen(kw_only=True)
class TopicPolicy:
    """Rules every topic name and every subscription must pass.

    ``normalize(topic)`` runs first (e.g. lower-casing); then the pattern (a bad
    name is ``INVALID_ARGUMENT``), then ``authorize(action, topic, ctx)`` (false is
    ``PERMISSION_DENIED``), and for subscriptions the per-connection limit
    (``RESOURCE_EXHAUSTED``).
    """

    pattern: re.Pattern[str] = DEFAULT_TOPIC_PATTERN
    max_topics_per_connection: int = 1000
    normalize: Callable[[str], str] | None = None
    authorize: Authorize | None = None


@attrs.frozen
class PubSubStatistics:
    topics: int
    subscriptions: int
    published: int
    delivered: int
    dropped: int


class _Topic:
    __slots__ = ("failed", "ready", "subscribers")

    def __init__(self) -> None:
        self.subscribers: dict[str, Connection[Any]] = {}
        #: Set once the backend confirmed (or refused) the subscription.
        self.ready = trio.Event()
        self.failed: WsKitError | None = None


class PubSubHub:
    """One instance's subscriptions and its backend."""

    def __init__(self, backend: PubSubBackend, policy: TopicPolicy | None = None) -> None:
        self.backend = backend
        self.policy = policy or TopicPolicy()
        #: This instance's id: the ``origin`` of what it publishes.
        self.instance_id = str(uuid.uuid4())
        self._topics: dict[str, _Topic] = {}
        self._published = self._delivered = self._dropped = 0
        #: Told every publish's outcome (set by ``Router.compile`` from ``Router.observer``).
        self.observer: Observer | None = None
        backend.attach(self.deliver, self._topics.keys)

    def statistics(self) -> PubSubStatistics:
        return PubSubStatistics(
            topics=len(self._topics),
            subscriptions=sum(len(t.subscribers) for t in self._topics.values()),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
        )

    def subscribers(self, topic: str) -> int:
        """How many local connections subscribe to ``topic``."""
        entry = self._topics.get(topic)
        return len(entry.subscribers) if entry is not None else 0

    # -- policy ---------------------------------------------------------------------

    async def _admit(
        self, action: TopicAction, topic: str, ctx: ConnectionContext[Any] | None
    ) -> str:
        policy = self.policy
        if policy.normalize is not None and isinstance(topic, str):
            topic = policy.normalize(topic)
        problem = check_topic(topic, policy.pattern)
        if problem is not None:
            raise WsKitError(ErrorCode.INVALID_ARGUMENT, problem, {"topic": str(topic)[:140]})
        if policy.authorize is not None and ctx is not None:
            allowed = policy.authorize(action, topic, ctx)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                raise WsKitError(
                    ErrorCode.PERMISSION_DENIED,
                    f"Not allowed to {action} {topic!r}",
                    {"topic": topic},
                )
        return topic

    # -- subscriptions ----------------------------------------------------------------

    async def subscribe(self, conn: Connection[Any], topic: str) -> None:
        topic = await self._admit("subscribe", topic, conn.context)
        if topic in conn.topics:
            return
        if len(conn.topics) >= self.policy.max_topics_per_connection:
            raise WsKitError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "Too many topics for this connection",
                {"limit": self.policy.max_topics_per_connection},
            )
        entry = self._topics.get(topic)
        first = entry is None
        if entry is None:
            entry = self._topics[topic] = _Topic()
        entry.subscribers[conn.client_id] = conn
        conn.topics.add(topic)
        if first:
            try:
                await self.backend.subscribe(topic)
            except BaseException as exc:
                entry.failed = (
                    exc
                    if isinstance(exc, WsKitError)
                    else WsKitError(ErrorCode.UNAVAILABLE, "Subscription not confirmed")
                )
                entry.ready.set()
                self._drop_entry(topic, entry)
                raise
            entry.ready.set()
        else:
            # protocol.md §9: return only once the backend confirmed the topic.
            await entry.ready.wait()
            if entry.failed is not None:
                self._forget(conn, topic)
                raise entry.failed

    def _drop_entry(self, topic: str, entry: _Topic) -> None:
        for conn in entry.subscribers.values():
            conn.topics.discard(topic)
        if self._topics.get(topic) is entry:
            del self._topics[topic]

    def _forget(self, conn: Connection[Any], topic: str) -> bool:
        """Remove one subscription; True if the topic has no local subscriber left."""
        conn.topics.discard(topic)
        entry = self._topics.get(topic)
        if entry is None:
            return False
        entry.subscribers.pop(conn.client_id, None)
        if entry.subscribers:
            return False
        del self._topics[topic]
        return True

    async def unsubscribe(self, conn: Connection[Any], topic: str) -> None:
        topic = await self._admit("unsubscribe", topic, conn.context)
        if topic in conn.topics and self._forget(conn, topic):
            await self.backend.unsubscribe(topic)

    async def remove_connection(self, conn: Connection[Any]) -> None:
        """Drop every subscription of a closed connection."""
        emptied = [topic for topic in list(conn.topics) if self._forget(conn, topic)]
        for topic in emptied:
            await self.backend.unsubscribe(topic)

    # -- publishing -------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        schema: MessageSchema[Any],
        payload: Any,
        *,
        meta: dict[str, Any] | None = None,
        exclude: str | None = None,
        ctx: ConnectionContext[Any] | None = None,
    ) -> PublishResult:
        wire_payload = schema.wire_payload(payload)  # validates, even a payload-less message
        try:
            topic = await self._admit("publish", topic, ctx)
        except WsKitError as err:
            result = PublishResult(
                ok=False, capability=self.backend.capability, error=str(err.code), retryable=False
            )
        else:
            self._published += 1
            envelope = Envelope(topic, schema.type, wire_payload, meta, self.instance_id, exclude)
            result = await self.backend.publish(envelope)
        if self.observer is not None:
            self.observer.published(result)
        return result

    def deliver(self, envelope: Envelope) -> int:
        """Queue ``envelope`` for every local subscriber of its topic (encoded once)."""
        entry = self._topics.get(envelope.topic)
        if entry is None:
            return 0
        frame = envelope.frame()
        matched = 0
        for client_id, conn in entry.subscribers.items():
            if client_id == envelope.exclude:
                continue
            matched += 1
            if conn.outbox.put_nowait(frame):
                self._delivered += 1
            else:
                self._dropped += 1
        return matched


def with_pubsub(
    backend: PubSubBackend | None = None, *, policy: TopicPolicy | None = None
) -> Callable[[Router[Any]], None]:
    """A router plugin choosing the pub/sub backend and topic policy:
    ``router.plugin(with_pubsub(ValkeyPubSub.from_url(url)))``."""

    def plugin(router: Router[Any]) -> None:
        router.pubsub = PubSubHub(backend or MemoryPubSub(), policy)

    return plugin
