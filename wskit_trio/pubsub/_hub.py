"""Local fan-out and topic policy, in front of a backend.

The hub keeps which local connections subscribe to which topic. Publishing
goes through the backend; whatever the backend brings back (for the memory
backend, immediately) is encoded once and queued for each local subscriber, in
the topic's order. A subscriber whose queue is full slows the delivery for at
most ``slow_consumer_timeout``, then is cut off with 1013: nothing is dropped
quietly (delivery.md §10.3). Subscriptions with positions can recover what they
missed from the backend's history (§12).

A delivery queues its frames without waking the subscribers' writers: the hub
notes the connections it touched, and once the delivering task is done with its
burst (it yields to the scheduler: the publisher's reader reads its socket
again, the Valkey reader reads the next replies, a handler waits for something),
the hub's flusher writes each one's queued frames with one non-blocking write
(``ConnectionHandle.flush_nowait``), or wakes that writer if it is busy or the
socket is full. So a burst of messages costs each subscriber one write and no
task switch, instead of one task switch and one write per message (with many
subscribers, that switch is most of the cost of a delivery). Whoever publishes,
from whatever task, the flusher runs as soon as that task lets anything else
run, and before a delivery waits for a full queue it flushes what it has
queued: no frame stays queued with its writer asleep.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import attrs
import trio

from .._context import ConnectionContext
from .._errors import WsKitError
from .._handle import ConnectionHandle
from .._protocol.codes import ErrorCode
from .._protocol.pubsub import (
    DEFAULT_TOPIC_PATTERN,
    Envelope,
    History,
    Position,
    PublishResult,
    Recovery,
    check_topic,
)
from .._schema import MessageSchema
from ._backend import PubSubBackend
from ._memory import MemoryPubSub

if TYPE_CHECKING:
    from .._observer import Observer

__all__ = [
    "PubSubConfig",
    "PubSubHub",
    "PubSubStatistics",
    "TopicAction",
    "TopicPolicy",
    "admit_topic",
    "prepare_publish",
    "with_pubsub",
]

log = logging.getLogger("wskit_trio")

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
    #: Topics whose messages supersede each other (cursor positions, game state): a
    #: subscriber's full queue drops its oldest frames of that topic instead of
    #: slowing the publisher (delivery.md §10.3); other topics' frames are never
    #: dropped for it. A predicate or a regex to match.
    drop_oldest: Callable[[str], bool] | re.Pattern[str] | None = None

    def replaces(self, topic: str) -> bool:
        """Whether ``topic`` is under the ``drop_oldest`` opt-in."""
        if self.drop_oldest is None:
            return False
        if isinstance(self.drop_oldest, re.Pattern):
            return self.drop_oldest.fullmatch(topic) is not None
        return bool(self.drop_oldest(topic))


@attrs.frozen
class PubSubStatistics:
    topics: int
    subscriptions: int
    published: int
    delivered: int
    #: Subscribers closed with 1013 (a queue that stayed full, or messages lost).
    #: Nothing is dropped here; frames a ``drop_oldest`` queue evicts are counted by
    #: that connection (``ctx.statistics().outbox.dropped``).
    cut_off: int = 0


class _Subscription:
    """One connection's subscription to one topic."""

    __slots__ = ("buffer", "conn", "cut", "floor", "positions", "replaces")

    def __init__(self, conn: ConnectionHandle, positions: bool) -> None:
        self.conn = conn
        #: Cut off as a slow consumer: closing, delivered nothing more.
        self.cut = False
        #: Frames carry ``topic``/``offset``/``epoch`` meta (delivery.md §11.4).
        self.positions = positions
        #: While a recovery replays history: live envelopes wait here, in order.
        self.buffer: deque[Envelope] | None = None
        #: After a recovery: what it sent up to (live envelopes up to it are skipped).
        self.floor: Position | None = None
        #: Its messages supersede each other (``subscribe(drop_oldest=True)``).
        self.replaces = False


class _Topic:
    __slots__ = ("epoch", "failed", "gate", "lock", "offset", "ready", "stalled", "subscribers")

    def __init__(self) -> None:
        self.subscribers: dict[str, _Subscription] = {}
        #: Set once the backend confirmed (or refused) the subscription.
        self.ready = trio.Event()
        self.failed: WsKitError | None = None
        #: One delivery at a time per topic, in arrival order (trio's Lock is fair),
        #: so every subscriber sees one order (delivery.md §10.2).
        self.lock = trio.Lock()
        #: Set while a delivery waits for a full subscriber queue: this instance's
        #: publishers to the topic wait too, whichever backend carries the message.
        self.stalled: trio.Event | None = None
        #: Where those publishers wait their turn (fair), so they keep their order.
        self.gate = trio.Lock()
        #: The position of the last envelope delivered (topics with history).
        self.epoch: str | None = None
        self.offset = 0


@attrs.frozen
class PubSubConfig:
    """What a router says about pub/sub: the backend, the topic policy and which
    topics keep history. Each server that runs the router builds its own
    :class:`PubSubHub` from it."""

    backend: PubSubBackend = attrs.field(factory=MemoryPubSub)
    policy: TopicPolicy = attrs.field(factory=TopicPolicy)
    history: History | None = None
    #: The ``origin`` of what is published from outside any connection.
    origin: str = attrs.field(factory=lambda: str(uuid.uuid4()))


async def admit_topic(
    policy: TopicPolicy, action: TopicAction, topic: str, ctx: ConnectionContext[Any] | None
) -> str:
    """The topic, normalized, if ``policy`` lets ``ctx`` (``None``: the server itself)
    do ``action`` on it; else ``WsKitError``."""
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


async def prepare_publish(
    config: PubSubConfig,
    origin: str,
    topic: str,
    schema: MessageSchema[Any],
    payload: Any,
    *,
    meta: dict[str, Any] | None = None,
    exclude: str | None = None,
    ctx: ConnectionContext[Any] | None = None,
) -> Envelope | PublishResult:
    """Validate and admit one publish: the envelope to hand to the backend, or the
    failed result. Every publish (``ctx.publish``, ``server.publish``,
    ``router.publish``) goes through it; an invalid payload raises
    ``OutboundValidationError``."""
    wire_payload = schema.wire_payload(payload)  # validates, even a payload-less message
    try:
        topic = await admit_topic(config.policy, "publish", topic, ctx)
    except WsKitError as err:
        return PublishResult(
            ok=False, capability=config.backend.capability, error=str(err.code), retryable=False
        )
    return Envelope(topic, schema.type, wire_payload, meta, origin, exclude)


class PubSubHub:
    """One server's subscriptions, in front of the router's backend.

    Built by the server when it starts; :meth:`run` attaches it to the backend and
    runs the backend for the server's life. Deliveries of one topic go out one at
    a time, in order; a subscriber whose queue is full slows the delivery (and so
    the publisher) for at most ``slow_consumer_timeout``, then is cut off with
    1013 (delivery.md §10.3)."""

    def __init__(
        self,
        config: PubSubConfig,
        observer: Observer | None = None,
        *,
        slow_consumer_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.backend = config.backend
        self.policy = config.policy
        self.history = config.history
        self.slow_consumer_timeout = slow_consumer_timeout
        #: This instance's id: the ``origin`` of what it publishes.
        self.instance_id = str(uuid.uuid4())
        self.observer = observer
        self._topics: dict[str, _Topic] = {}
        #: Each connection's topics, by client id.
        self._subscribed: dict[str, set[str]] = {}
        self._published = self._delivered = self._cut_off = 0
        #: Live envelopes one recovering subscription may hold back (the history's
        #: size: a recovery that cannot keep up with that is cut off, and recovers).
        self._buffer_limit = config.history.size if config.history is not None else 1000
        #: The connections deliveries queued frames for without waking their writers,
        #: in the order first touched: ``flush`` writes them.
        self._touched: dict[ConnectionHandle, None] = {}
        #: Where the flusher task waits for a burst to end (``None`` while the hub
        #: does not run: each delivery then flushes at its end).
        self._flusher: trio.lowlevel.ParkingLot | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Attach to the backend and run it until cancelled."""
        self.backend.attach(self.deliver, self._topics.keys, self.history)
        if self.observer is not None:
            self.observer.pubsub_started(self)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._flush_loop)
                await self.backend.run(task_status=task_status)
                await trio.sleep_forever()  # a backend with no work of its own returns at once
        finally:
            self.backend.detach(self.deliver)
            if self.observer is not None:
                self.observer.pubsub_stopped(self)

    async def _flush_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Write what deliveries queued, each time the task that delivered yields."""
        self._flusher = flusher = trio.lowlevel.ParkingLot()
        try:
            task_status.started()
            while True:
                if not self._touched:  # (deliveries before it first parked find it awake)
                    await flusher.park()
                self.flush()
        finally:
            self._flusher = None
            self.flush()  # (the connections are closing too: their writers drain)

    def flush(self) -> None:
        """Write the frames deliveries queued, for every connection touched since the
        last flush (``ConnectionHandle.flush_nowait``: at once if its writer is idle
        and its socket takes them, else by its writer, woken). Never waits."""
        touched = self._touched
        if touched:
            self._touched = {}
            for conn in touched:
                try:
                    conn.flush_nowait()
                except Exception:
                    # (An observer's ``frames_out`` hook, say, called once the frames
                    # are out or the writer woken.) The others still get theirs.
                    log.exception("writing deliveries to %s failed", conn.client_id)

    def _flush_soon(self) -> None:
        """A delivery queued frames: have them written once the delivering task
        yields (or now, if the hub does not run)."""
        if self._touched:
            flusher = self._flusher
            if flusher is None:
                self.flush()
            elif flusher:  # parked: wake it (else it is woken already)
                flusher.unpark()

    def statistics(self) -> PubSubStatistics:
        return PubSubStatistics(
            topics=len(self._topics),
            subscriptions=sum(len(t.subscribers) for t in self._topics.values()),
            published=self._published,
            delivered=self._delivered,
            cut_off=self._cut_off,
        )

    def subscribers(self, topic: str) -> int:
        """How many local connections subscribe to ``topic``."""
        entry = self._topics.get(topic)
        return len(entry.subscribers) if entry is not None else 0

    def topics_of(self, conn: ConnectionHandle) -> frozenset[str]:
        """The topics ``conn`` subscribes to."""
        return frozenset(self._subscribed.get(conn.client_id, ()))

    # -- subscriptions ----------------------------------------------------------------

    async def subscribe(
        self,
        conn: ConnectionHandle,
        topic: str,
        ctx: object,
        *,
        positions: bool = False,
        since: Position | None = None,
        drop_oldest: bool = False,
    ) -> Recovery | None:
        """Subscribe ``conn``; return once the backend confirmed the topic. With
        ``positions`` or ``since`` the subscription gets positions on the wire and
        the answer is a :class:`Recovery` (delivery.md §12). ``drop_oldest``: this
        subscription opts into the topic policy's ``drop_oldest`` (§10.3)."""
        topic = await admit_topic(self.policy, "subscribe", topic, _context(ctx))
        wants_positions = positions or since is not None
        if wants_positions and (self.history is None or not self.history.covers(topic)):
            raise WsKitError(
                ErrorCode.FAILED_PRECONDITION,
                f"Topic {topic!r} keeps no history: no positions, no recovery",
                {"topic": topic},
            )
        mine = self._subscribed.setdefault(conn.client_id, set())
        entry = self._topics.get(topic)
        if topic in mine:
            assert entry is not None
            subscription = entry.subscribers[conn.client_id]
            subscription.replaces = drop_oldest
            if not wants_positions:
                return None
            # Asking again with positions: recover on the existing subscription.
            subscription.positions = True
            return await self._recover_or_forget(topic, subscription, since)
        if len(mine) >= self.policy.max_topics_per_connection:
            raise WsKitError(
                ErrorCode.RESOURCE_EXHAUSTED,
                "Too many topics for this connection",
                {"limit": self.policy.max_topics_per_connection},
            )
        first = entry is None
        if entry is None:
            entry = self._topics[topic] = _Topic()
        subscription = _Subscription(conn, wants_positions)
        subscription.replaces = drop_oldest
        if wants_positions:
            subscription.buffer = deque()  # live first, buffered until the history is read
        entry.subscribers[conn.client_id] = subscription
        mine.add(topic)
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
            # docs/protocol.md §9: return only once the backend confirmed the topic.
            await entry.ready.wait()
            if entry.failed is not None:
                self._forget(conn.client_id, topic)
                raise entry.failed
        if not wants_positions:
            return None
        return await self._recover_or_forget(topic, subscription, since)

    async def _recover_or_forget(
        self, topic: str, subscription: _Subscription, since: Position | None
    ) -> Recovery:
        """:meth:`_recover`; if it fails (the backend is unreachable, the client cut
        off or gone), the subscription is dropped, not left buffering forever."""
        conn = subscription.conn
        try:
            return await self._recover(topic, subscription, since)
        except BaseException:
            if self._forget(conn.client_id, topic):
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.backend.unsubscribe(topic)
            raise

    async def _replay(self, subscription: _Subscription, envelope: Envelope) -> None:
        """Queue one recovered frame; a subscriber whose queue stays full is cut off,
        as in a live delivery."""
        frame = envelope.frame_with_position()
        if not await subscription.conn.send_within(frame, self.slow_consumer_timeout):
            self._cut_slow(subscription.conn.client_id, subscription)
            raise WsKitError(ErrorCode.RESOURCE_EXHAUSTED, "Cut off while recovering")

    async def _recover(
        self, topic: str, subscription: _Subscription, since: Position | None
    ) -> Recovery:
        """Replay what ``subscription`` missed since ``since`` (if the history still
        holds all of it), then what arrived live meanwhile, de-duplicated by offset,
        then go live: no gap, no duplicate (delivery.md §12.2)."""
        if subscription.buffer is None:
            subscription.buffer = deque()
        after = since.offset if since is not None else None
        history = await self.backend.read_history(topic, after)
        recovered = (
            since is not None
            and since.epoch == history.epoch
            and since.offset <= history.latest
            and history.complete
        )
        last = history.latest
        replayed = 0
        if recovered:
            assert since is not None
            last = since.offset
            for envelope in history.envelopes:
                if envelope.offset is not None and envelope.offset > last:
                    await self._replay(subscription, envelope)
                    last = envelope.offset
                    replayed += 1
        epoch = history.epoch
        buffer = subscription.buffer
        while buffer:
            envelope = buffer.popleft()
            if envelope.epoch != epoch or envelope.offset is None or envelope.offset > last:
                await self._replay(subscription, envelope)
                if envelope.offset is not None:
                    epoch, last = envelope.epoch or epoch, envelope.offset
        subscription.buffer = None  # live from here: nothing awaited since the last check
        # Live envelopes this instance has yet to receive may be among those just
        # replayed (the history read can be ahead of the live stream): this
        # subscription skips them; the topic's other subscribers still need them.
        subscription.floor = Position(last, epoch)
        return Recovery(bool(recovered), Position(last, epoch), replayed)

    def _drop_entry(self, topic: str, entry: _Topic) -> None:
        for client_id in entry.subscribers:
            self._discard(client_id, topic)
        if self._topics.get(topic) is entry:
            del self._topics[topic]

    def _discard(self, client_id: str, topic: str) -> None:
        mine = self._subscribed.get(client_id)
        if mine is not None:
            mine.discard(topic)
            if not mine:
                del self._subscribed[client_id]

    def _forget(self, client_id: str, topic: str) -> bool:
        """Remove one subscription; True if the topic has no local subscriber left."""
        self._discard(client_id, topic)
        entry = self._topics.get(topic)
        if entry is None:
            return False
        entry.subscribers.pop(client_id, None)
        if entry.subscribers:
            return False
        del self._topics[topic]
        return True

    async def unsubscribe(self, conn: ConnectionHandle, topic: str, ctx: object) -> None:
        topic = await admit_topic(self.policy, "unsubscribe", topic, _context(ctx))
        if topic in self._subscribed.get(conn.client_id, ()) and self._forget(
            conn.client_id, topic
        ):
            await self.backend.unsubscribe(topic)

    async def remove(self, conn: ConnectionHandle) -> None:
        """Drop every subscription of a closed connection."""
        mine = self._subscribed.pop(conn.client_id, set())
        emptied = [topic for topic in mine if self._forget(conn.client_id, topic)]
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
        ctx: object = None,
    ) -> PublishResult:
        prepared = await prepare_publish(
            self.config,
            self.instance_id,
            topic,
            schema,
            payload,
            meta=meta,
            exclude=exclude,
            ctx=_context(ctx),
        )
        if isinstance(prepared, Envelope):
            entry = self._topics.get(prepared.topic)
            if entry is not None and (entry.stalled is not None or entry.gate.locked()):
                await _wait_unstalled(entry)
            self._published += 1
            result = await self.backend.publish(prepared)
        else:
            result = prepared
        if self.observer is not None:
            self.observer.published(result)
        return result

    async def deliver(self, envelope: Envelope) -> int:
        """Queue ``envelope`` for every local subscriber of its topic (each frame
        encoded once), after the topic's earlier envelopes."""
        entry = self._topics.get(envelope.topic)
        if entry is None:
            return 0
        lock = entry.lock
        try:
            # Not ``async with``: taking a free lock must not yield, or every publish
            # would wake every subscriber's writer for one frame (no batching).
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            return await self._deliver_locked(entry, envelope)
        finally:
            self._flush_soon()
            stalled, entry.stalled = entry.stalled, None
            if stalled is not None:
                stalled.set()
            lock.release()

    async def _deliver_locked(self, entry: _Topic, envelope: Envelope) -> int:
        if envelope.offset is not None:
            if envelope.epoch == entry.epoch:
                if envelope.offset <= entry.offset:
                    return 0  # delivered already (a backend's catch-up overlapping)
                if envelope.offset > entry.offset + 1:
                    # Messages never reached this instance (an outage longer than the
                    # history): subscribers without positions cannot see the gap, so
                    # they are cut off visibly instead of robbed quietly (§10.3).
                    self._cut_plain(entry)
            entry.epoch, entry.offset = envelope.epoch, envelope.offset
        plain: str | None = None
        positioned: str | None = None
        replaces = self.policy.replaces(envelope.topic)
        deadline: float | None = None
        matched = 0
        # A copy: subscriptions may come and go while a slow one is waited for.
        for client_id, subscription in list(entry.subscribers.items()):
            if client_id == envelope.exclude or subscription.cut:
                continue
            matched += 1
            if subscription.buffer is not None:
                if len(subscription.buffer) >= self._buffer_limit:
                    # Recovering slower than the topic moves: cut off, it will recover.
                    self._cut_slow(client_id, subscription)
                    continue
                subscription.buffer.append(envelope)
                continue
            floor = subscription.floor
            if floor is not None:
                if (
                    envelope.offset is not None
                    and envelope.epoch == floor.epoch
                    and envelope.offset <= floor.offset
                ):
                    continue  # its recovery replayed this one already
                subscription.floor = None
            if subscription.positions:
                if positioned is None:
                    positioned = envelope.frame_with_position()
                frame = positioned
            else:
                if plain is None:
                    plain = envelope.frame()
                frame = plain
            conn = subscription.conn
            if replaces or subscription.replaces:
                queued = conn.send_replacing(frame, envelope.topic)
            else:
                # The writer is not woken: ``flush`` writes the burst's frames.
                queued = conn.offer(frame, wake=False)
                if queued:
                    self._touched[conn] = None
            if queued:
                self._delivered += 1
            else:
                # Before waiting, what is queued goes out (this subscriber's queue
                # drains only if its writer writes it; the others' need not wait).
                self.flush()
                # One bound per delivery, however many subscribers are stalled: they
                # drain (or not) meanwhile, so each waits only for what is left of it.
                now = trio.current_time()
                if deadline is None:
                    deadline = now + self.slow_consumer_timeout
                    entry.stalled = trio.Event()
                if await conn.send_within(frame, max(deadline - now, 0.0)):
                    self._delivered += 1
                elif entry.subscribers.get(client_id) is subscription:
                    # Its queue stayed full (or it closed meanwhile): cut it off visibly.
                    self._cut_slow(client_id, subscription)
        return matched

    def _cut_slow(self, client_id: str, subscription: _Subscription) -> None:
        if not subscription.cut:
            self._cut(client_id)
            if subscription.conn.cut_off(1013, "slow consumer"):
                self._cut_off += 1  # (not one that was closing anyway)

    def _cut_plain(self, entry: _Topic) -> None:
        for client_id, subscription in list(entry.subscribers.items()):
            if not subscription.positions and not subscription.cut:
                self._cut_off += 1
                self._cut(client_id)
                # What it has queued is sound: it goes out, then the close.
                subscription.conn.close_soon(1013, "messages lost")

    def _cut(self, client_id: str) -> None:
        """Deliver nothing more to a connection being cut off (its subscriptions go
        when it has closed: ``remove``)."""
        for topic in self._subscribed.get(client_id, ()):
            entry = self._topics.get(topic)
            subscription = entry.subscribers.get(client_id) if entry is not None else None
            if subscription is not None:
                subscription.cut = True


async def _wait_unstalled(entry: _Topic) -> None:
    """Wait while a delivery of the topic waits for a full local queue: back-pressure
    reaches this instance's publishers even when the backend hands the message back
    from elsewhere (Valkey), for at most ``slow_consumer_timeout`` per stalled
    delivery (delivery.md §10.3). In line behind the publishers already waiting, so
    pipelined publishes keep their order (§10.1)."""
    async with entry.gate:
        while entry.stalled is not None:
            await entry.stalled.wait()


def _context(ctx: object) -> ConnectionContext[Any] | None:
    return ctx if isinstance(ctx, ConnectionContext) else None


class _Configurable(Protocol):
    pubsub: PubSubConfig


def with_pubsub(
    backend: PubSubBackend | None = None,
    *,
    policy: TopicPolicy | None = None,
    history: History | None = None,
) -> Callable[[_Configurable], None]:
    """A router plugin choosing the pub/sub backend, the topic policy and history:
    ``router.plugin(with_pubsub(ValkeyPubSub.from_url(url), history=History()))``.
    It only configures: each server running the router builds its own hub on this
    backend."""

    def plugin(router: _Configurable) -> None:
        router.pubsub = PubSubConfig(backend or MemoryPubSub(), policy or TopicPolicy(), history)

    return plugin
