"""Pub/sub across instances through Valkey (docs/protocol.md §9).

Each instance holds two connections: one for commands (``PUBLISH``, health
pings) and one in subscriber mode. A publish is ``PUBLISH <prefix><topic>
<envelope JSON>``; every instance, the publisher included, hands what arrives on
its subscriber connection to its own local subscribers, so each subscriber gets
each message exactly once. An instance subscribes only to the channels of topics
it has local subscribers for.

Connection life (all of it inside :meth:`ValkeyPubSub.run`'s nursery)::

    connecting ──ok──▶ re-subscribe local topics ──▶ healthy ──lost──▶ connecting
        ▲  │failed                                                        (at once)
        └──┴── backoff: 0, initial, doubling up to backoff_max, with jitter

While it is not healthy, publishes report ``ok=False, error="UNAVAILABLE",
retryable=True`` at once (or after the connection attempt in progress, if there
is one, within ``command_timeout``) and subscriptions raise ``UNAVAILABLE``;
local serving goes on. Every command is bounded by ``command_timeout``; one that
times out is taken as a lost connection. Like Valkey pub/sub itself, delivery of
a topic without history is at most once: what is published while an instance is
disconnected does not reach that instance's subscribers.

Topics with history (delivery.md §11; keys and scripts in ``_history``) close
that window. One script gives each message its offset, appends it to the
topic's stream and publishes it, atomically. The instance remembers, per local
topic with history, the last position it delivered (or, before the first
message, the topic's position just before it subscribed). After the subscriber
connection breaks, the next session re-subscribes with incoming messages held
back, reads each topic's history after that position and delivers what was
missed, then the held-back messages, skipping any offset already delivered, and
only then goes live (catch-up; counted in ``caught_up``). If the topic's epoch
changed meanwhile, the old history is gone: the new epoch's kept messages are
all newer than anything delivered, so they are delivered from its first.

Received envelopes are handed to the hub one at a time, in channel order, and
each is awaited before the next is read: a slow local subscriber slows reading
(the hub bounds that by cutting it off after ``Limits.slow_consumer_timeout``).
A hand-over, once started, is finished even if the session ends meanwhile, so a
message is never delivered to some local subscribers and then again to all.
While the reader is busy handing over, the clock of a pending (un)subscribe
confirmation is stopped: a slow subscriber is not a lost connection.

An outage (from the first failed connection attempt, or the loss of a healthy
session, to the next healthy session) is logged once on ``wskit_trio.valkey``:
a WARNING when it begins, an INFO with its length when it ends (see ``_outage``).

On a Valkey Cluster (``valkey+cluster://``) the same code runs through the seam
of ``_commands``: commands go to the primary owning their key's slot, a topic's
channel and history keys share the topic as hash tag (so the publish script runs
on one shard and publishes with ``SPUBLISH``), and the subscriber connection is
one ``SSUBSCRIBE`` connection per shard. The session does not end when one shard
fails: that shard's publishes and new subscriptions fail promptly (``UNAVAILABLE``,
retryable; a publish is never retried by the client, to keep its order), and
the channels it loses (its connection died, or the promoted replica sent
``sunsubscribe``) are reported; the watcher subscribes them again as soon as a
primary serves them, each caught up from its last delivered position with the
other messages held back meanwhile, exactly as after a lost session. A failover
starts a new epoch for the shard's topics (see ``_history``), so nothing
published on the dead primary is skipped silently. ``healthy`` is false while
some channel waits to be subscribed again.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any, Final

import attrs
import trio

from .._errors import ConfigurationError, ValkeyError, ValkeyUnavailable, WsKitError
from .._options import options_as_keywords
from .._protocol.codes import ErrorCode
from .._protocol.pubsub import Envelope, History, HistorySlice, Position
from ..pubsub._backend import Capability, Deliver, PublishResult
from ._cluster import ClusterAddress, ValkeyCluster, is_cluster_url, parse_cluster_url
from ._commands import (
    ClusterCommands,
    ClusterSubscriptions,
    Commands,
    Layout,
    NodeCommands,
    Subscriptions,
)
from ._connection import (
    DEFAULT_PORT,
    TRANSIENT_ERRORS,
    ValkeyConnection,
    ValkeySubscriber,
    parse_url,
)
from ._history import (
    CLUSTER_PUBLISH_SCRIPT,
    CLUSTER_READ_SCRIPT,
    PUBLISH_SCRIPT,
    READ_SCRIPT,
    parse_publish_reply,
    parse_read_reply,
    publish_args,
    read_args,
    run_script,
)
from ._outage import Outage, redact_url, valkey_url

__all__ = ["ValkeyPubSub", "ValkeyPubSubOptions", "ValkeyPubSubStatistics"]


#: 2**64 times any sane ``backoff_initial`` is far beyond any ``backoff_max``.
_MAX_EXPONENT: Final = 64
#: Bytes of messages held back during a catch-up before the reader waits for it.
_BACKLOG_BYTES: Final = 8 * 1024 * 1024
#: Topics a cluster's lost shard is re-subscribed and caught up for at once.
_RESUBSCRIBE_AT_ONCE: Final = 32


async def _no_delivery(envelope: Envelope) -> int:
    return 0


def _no_topics() -> Collection[str]:
    return ()


@attrs.frozen(kw_only=True)
class ValkeyPubSubOptions:
    """How a :class:`ValkeyPubSub` talks to Valkey, declared here only:
    ``ValkeyPubSub.from_url(url, **options)`` takes these as keywords,
    ``ValkeyPubSub(host, port, options=...)`` the object."""

    #: Starts every channel name, so several apps can share one Valkey.
    prefix: str = "wskit:"
    #: Seconds a connection attempt may take.
    connect_timeout: float = 2.0
    #: Seconds any command may take; one that takes longer counts as a lost connection.
    command_timeout: float = 2.0
    #: Seconds between health checks (a PING, and the subscriptions compared with
    #: the local topics) of a healthy session.
    health_interval: float = 5.0
    #: Reconnect backoff, seconds: after a failed attempt, ``backoff_initial``
    #: doubling up to ``backoff_max``, with jitter.
    backoff_initial: float = 0.05
    backoff_max: float = 5.0


@attrs.frozen
class ValkeyPubSubStatistics:
    """A snapshot of a :class:`ValkeyPubSub`.

    ``connects`` counts sessions that became healthy (the first one included),
    ``connect_failures`` attempts that did not; ``channels`` is how many channels
    the current session has confirmed. ``received`` counts messages from Valkey,
    ``malformed`` those that were not an envelope for their channel. ``caught_up``
    counts envelopes delivered from history after a re-subscribe (§11.3), and
    ``duplicates`` received envelopes skipped because their offset was already
    delivered. On a cluster, ``resubscribed`` counts channels subscribed again
    (and caught up) after their shard lost them (a failover, a resharding).
    """

    healthy: bool
    connects: int
    connect_failures: int
    channels: int
    published: int
    publish_failures: int
    received: int
    malformed: int
    last_error: str | None
    caught_up: int = 0
    duplicates: int = 0
    resubscribed: int = 0


class ValkeyPubSub:
    """A :class:`~wskit_trio.pubsub.PubSubBackend` on a shared Valkey.

    ``router.plugin(with_pubsub(ValkeyPubSub.from_url("valkey://host:6379")))``;
    ``serve()`` (or the test harness) runs it. ``prefix`` namespaces the channels,
    so several apps can share one Valkey. On a Valkey Cluster:
    ``ValkeyPubSub.from_url("valkey+cluster://host1:6379,host2:6379")`` (or
    ``cluster=`` a :class:`~wskit_trio.valkey.ClusterAddress`; ``host`` and ``port``
    are then only the first seed's, for logs).
    """

    capability: Capability = "unknown"

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        *,
        password: str | None = None,
        db: int = 0,
        options: ValkeyPubSubOptions | None = None,
        cluster: ClusterAddress | None = None,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self._password = password
        self.options = options = options if options is not None else ValkeyPubSubOptions()
        self.prefix = options.prefix
        self.connect_timeout = options.connect_timeout
        self.command_timeout = options.command_timeout
        self.health_interval = options.health_interval
        self.backoff_initial = options.backoff_initial
        self.backoff_max = options.backoff_max
        self._cluster = cluster
        self._layout = Layout(self.prefix, cluster=cluster is not None)
        if cluster is None:
            self._publish_script, self._read_script = PUBLISH_SCRIPT, READ_SCRIPT
        else:
            self._publish_script = CLUSTER_PUBLISH_SCRIPT
            self._read_script = CLUSTER_READ_SCRIPT
            self._password = cluster.password

        self._deliver: Deliver = _no_delivery
        self._local_topics: Callable[[], Collection[str]] = _no_topics
        self._history: History | None = None
        #: Per subscribed topic with history: the last position delivered here (or
        #: the topic's position when it was subscribed). Catch-up starts after it.
        self._positions: dict[str, Position] = {}
        #: Messages received while a catch-up runs, delivered after it; None: live.
        self._backlog: _Backlog | None = None
        #: Pending confirmations' cancel scopes, with the time each had left when
        #: the reader became busy (their clock stops while it hands over).
        self._confirms: dict[trio.CancelScope, float] = {}
        #: How many readers hand over right now (a cluster has one per shard).
        self._readers_busy = 0
        self._running = False
        #: The current session's connections, set only while healthy.
        self._cmd: Commands | None = None
        self._sub: Subscriptions | None = None
        #: Cluster: channels a shard lost (failover, resharding, a dead connection),
        #: not subscribed again yet; ``_resync`` wakes the watcher to do that.
        self._lost_channels: set[bytes] = set()
        self._resync = trio.Event()
        self._connecting = False
        #: Set (and replaced) whenever healthy/connecting changes.
        self._changed = trio.Event()
        #: Set by whoever finds the current session broken.
        self._trouble = trio.Event()
        #: Serializes subscription changes, so Valkey's set follows the local one.
        self._sub_lock = trio.Lock()

        self._connects = self._connect_failures = 0
        self._published = self._publish_failures = 0
        self._received = self._malformed = 0
        self._caught_up = self._duplicates = self._resubscribed = 0
        self._last_error: str | None = None
        self._outage = Outage(
            "pub/sub", valkey_url(host, port, db, self._password), secret=self._password
        )

    @staticmethod
    @options_as_keywords(ValkeyPubSubOptions)
    def from_url(url: str, options: ValkeyPubSubOptions) -> ValkeyPubSub:
        """From ``valkey://[:password@]host[:port][/db]``, or
        ``valkey+cluster://[:password@]host1:port1,host2:port2`` (seed nodes of a Valkey
        Cluster); the keywords are :class:`ValkeyPubSubOptions`' fields."""
        if is_cluster_url(url):
            seeds = parse_cluster_url(url)
            first = seeds.seeds[0]
            backend = ValkeyPubSub(first.host, first.port, options=options, cluster=seeds)
        else:
            address = parse_url(url)
            backend = ValkeyPubSub(
                address.host,
                address.port,
                password=address.password,
                db=address.db,
                options=options,
            )
        backend._outage.where = redact_url(url)  # as configured (scheme, user, ?db=)
        return backend

    # -- state -------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Connected, with every local topic subscribed (on a cluster: no shard's
        channels waiting to be subscribed again)."""
        return self._cmd is not None and not self._lost_channels

    def statistics(self) -> ValkeyPubSubStatistics:
        sub = self._sub
        return ValkeyPubSubStatistics(
            healthy=self.healthy,
            connects=self._connects,
            connect_failures=self._connect_failures,
            channels=len(sub.channels) if sub is not None else 0,
            published=self._published,
            publish_failures=self._publish_failures,
            received=self._received,
            malformed=self._malformed,
            last_error=self._last_error,
            caught_up=self._caught_up,
            duplicates=self._duplicates,
            resubscribed=self._resubscribed,
        )

    async def wait_healthy(self) -> None:
        """Return once the backend is (again) healthy."""
        while not self.healthy:
            await self._changed.wait()

    def _set_state(
        self,
        *,
        connecting: bool,
        session: tuple[Commands, Subscriptions] | None = None,
    ) -> None:
        self._connecting = connecting
        if session is None:
            self._cmd = self._sub = None
            self._lost_channels.clear()
        else:
            self._cmd, self._sub = session
        self._notify()

    def _notify(self) -> None:
        """Wake whoever waits for the state to change (``wait_healthy``)."""
        self._changed.set()
        self._changed = trio.Event()

    async def _session_or_none(self) -> tuple[Commands, Subscriptions] | None:
        """The healthy session, waiting (bounded) for an attempt in progress."""
        if self._cmd is None and self._connecting:
            with trio.move_on_after(self.command_timeout):
                while self._cmd is None and self._connecting:
                    await self._changed.wait()
        if self._cmd is None or self._sub is None:
            return None
        return self._cmd, self._sub

    def _channel(self, topic: str) -> bytes:
        return self._layout.channel(topic).encode()

    def _keeps(self, topic: str) -> History | None:
        """The history config if ``topic`` keeps history, else None."""
        history = self._history
        return history if history is not None and history.covers(topic) else None

    # -- the PubSubBackend protocol ----------------------------------------------------

    def attach(
        self,
        deliver: Deliver,
        local_topics: Callable[[], Collection[str]],
        history: History | None = None,
    ) -> None:
        if self._running:
            raise ConfigurationError(
                "this ValkeyPubSub already serves a running server; give each server its own"
            )
        self._deliver = deliver
        self._local_topics = local_topics
        self._history = history
        self._positions.clear()

    def detach(self, deliver: Deliver) -> None:
        if self._deliver == deliver:
            self._deliver = _no_delivery
            self._local_topics = _no_topics
            self._history = None
            self._positions.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, keep connected and re-subscribed, until cancelled. Reports started
        at once: Valkey being down at startup does not hold up serving."""
        if self._running:
            raise RuntimeError("this ValkeyPubSub is already running")
        self._running = True
        try:
            task_status.started()
            failures = 0
            while True:
                if await self._session():
                    failures = 0
                if failures:
                    # The exponent is capped: an outage of ~1000 attempts would
                    # otherwise overflow the float and end this task.
                    exponent = min(failures - 1, _MAX_EXPONENT)
                    delay = min(self.backoff_initial * 2.0**exponent, self.backoff_max)
                    await trio.sleep(delay * (0.5 + random.random() / 2))
                failures += 1
        finally:
            self._running = False
            self._set_state(connecting=False)

    async def subscribe(self, topic: str) -> None:
        try:
            session = await self._session_or_none()
            if session is None:
                raise ValkeyUnavailable(self._last_error or "not connected to Valkey")
            cmd, sub = session
            with trio.fail_after(self.command_timeout):
                await self._sub_lock.acquire()
            try:
                if self._sub is not sub:
                    raise ValkeyUnavailable("the connection to Valkey was lost")
                await self._baseline(cmd, topic)
                await self._confirm(sub, sub.subscribe(self._channel(topic)))
            finally:
                self._sub_lock.release()
        except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
            raise WsKitError(
                ErrorCode.UNAVAILABLE,
                "Pub/sub is unavailable (Valkey cannot be reached)",
                {"topic": topic},
            ) from exc

    async def unsubscribe(self, topic: str) -> None:
        sub = self._sub
        if sub is None:
            return  # the next session subscribes only to local topics anyway
        with trio.move_on_after(self.command_timeout):
            async with self._sub_lock:
                # Subscribed again meanwhile (the lock is fair, so that SUBSCRIBE went
                # first): keep it.
                if topic in self._local_topics() or self._sub is not sub:
                    return
                with contextlib.suppress(ValkeyUnavailable, trio.TooSlowError):
                    await self._confirm(sub, sub.unsubscribe(self._channel(topic)))
                    self._positions.pop(topic, None)

    async def publish(self, envelope: Envelope) -> PublishResult:
        """``PUBLISH``; for a topic with history, the script that also gives the
        message its position and keeps it (see ``_history``)."""
        session = await self._session_or_none()
        if session is None:
            return self._unavailable()
        cmd = session[0]
        if envelope.offset is not None or envelope.epoch is not None:
            envelope = attrs.evolve(envelope, offset=None, epoch=None)  # ours to give
        history = self._keeps(envelope.topic)
        position: Position | None = None
        try:
            # On a cluster the channel routes the command: the keys share its slot.
            channel = self._channel(envelope.topic)
            with trio.move_on_after(self.command_timeout) as scope:
                if history is None:
                    command = "SPUBLISH" if self._cluster is not None else "PUBLISH"
                    data = envelope.to_json()
                    await cmd.execute(command, channel, data, key=channel, ordered=True)
                else:
                    args = publish_args(self._layout, history, envelope)
                    # Always EVAL: commands on one connection run in the order sent,
                    # and publish order is a promise (delivery.md §10.2); an EVALSHA
                    # retried after NOSCRIPT would lose it. Valkey caches the script.
                    # (``ordered``: a cluster does not retry it either, see _commands.)
                    source = self._publish_script.source
                    reply = await cmd.execute("EVAL", source, *args, key=channel, ordered=True)
                    position = parse_publish_reply(reply)
        except ValkeyUnavailable as exc:
            self._lost(str(exc), cmd)
            return self._unavailable()
        except ValkeyError as exc:
            self._publish_failures += 1
            self._last_error = exc.message
            if exc.kind in TRANSIENT_ERRORS:
                return PublishResult(
                    ok=False, capability="unknown", error="UNAVAILABLE", retryable=True
                )
            return PublishResult(ok=False, capability="unknown", error="INTERNAL")
        if scope.cancelled_caught:
            self._lost("PUBLISH timed out", cmd)
            return self._unavailable()
        self._published += 1
        return PublishResult(ok=True, matched=None, capability="unknown", position=position)

    async def read_history(self, topic: str, after: int | None) -> HistorySlice:
        """The topic's epoch and latest offset, and (``after`` an offset) its kept
        envelopes after it, in order, at most ``History.size`` of them; ``complete``
        is false when some of those were trimmed, expired or evicted. A topic with
        no history in Valkey gets its epoch now, at offset 0, which its next publish
        continues (see ``_history``). A topic without history configured answers
        ``HistorySlice("", 0, complete=False)`` (as the memory backend does).
        Raises ``WsKitError(UNAVAILABLE)`` promptly while Valkey cannot be reached."""
        history = self._keeps(topic)
        if history is None:
            await trio.lowlevel.checkpoint()
            return HistorySlice(epoch="", latest=0, complete=False)
        session = await self._session_or_none()
        try:
            if session is None:
                raise ValkeyUnavailable(self._last_error or "not connected to Valkey")
            cmd = session[0]
            try:
                with trio.fail_after(self.command_timeout):
                    return await self._read(cmd, history, topic, after)
            except (ValkeyUnavailable, trio.TooSlowError) as exc:
                self._lost(str(exc) or "reading the history timed out", cmd)
                raise
        except (ValkeyUnavailable, trio.TooSlowError) as exc:
            raise WsKitError(
                ErrorCode.UNAVAILABLE,
                "Pub/sub history is unavailable (Valkey cannot be reached)",
                {"topic": topic},
            ) from exc
        except ValkeyError as exc:
            self._last_error = exc.message
            if exc.kind in TRANSIENT_ERRORS:
                raise WsKitError(
                    ErrorCode.UNAVAILABLE, "Pub/sub history is unavailable", {"topic": topic}
                ) from exc
            raise WsKitError(
                ErrorCode.INTERNAL, "Reading the topic's history failed", {"topic": topic}
            ) from exc

    # -- internals ---------------------------------------------------------------------

    def _unavailable(self) -> PublishResult:
        self._publish_failures += 1
        return PublishResult(ok=False, capability="unknown", error="UNAVAILABLE", retryable=True)

    def _lost(self, reason: str, conn: Commands | Subscriptions) -> None:
        """``conn`` failed: end its session (unless that one is over already). A
        cluster's session does not end: its client reconnects each node by itself,
        and a shard's lost channels come back through ``_on_lost``."""
        self._last_error = reason
        if self._cluster is None and (conn is self._cmd or conn is self._sub):
            self._trouble.set()

    async def _read(
        self, cmd: Commands, history: History, topic: str, after: int | None
    ) -> HistorySlice:
        args = read_args(self._layout, history, topic, after)
        reply = await run_script(cmd, self._read_script, args)
        return parse_read_reply(reply, topic, after)

    async def _baseline(self, cmd: Commands, topic: str) -> None:
        """Before subscribing ``topic`` (with history, and not subscribed yet), note
        where it stands: a catch-up after a lost connection starts there, even if
        no message was delivered in between."""
        history = self._keeps(topic)
        if history is None or topic in self._positions:
            return
        try:
            with trio.fail_after(self.command_timeout):
                now = await self._read(cmd, history, topic, None)
        except (ValkeyUnavailable, trio.TooSlowError) as exc:
            self._lost(str(exc) or "reading the history timed out", cmd)
            raise
        self._positions.setdefault(topic, Position(now.latest, now.epoch))

    async def _confirm(self, sub: Subscriptions, request: Awaitable[None]) -> None:
        """Await a request made on ``sub``; a confirmation that does not come within
        ``command_timeout`` means the session is broken. That clock stops while the
        reader is busy handing messages to (slow) local subscribers: it reads the
        confirmation only after them."""
        scope = trio.CancelScope()
        if self._readers_busy:
            scope.deadline = math.inf
        else:
            scope.deadline = trio.current_time() + self.command_timeout
        self._confirms[scope] = self.command_timeout
        try:
            with scope:
                await request
        except ValkeyUnavailable as exc:
            self._lost(str(exc), sub)
            raise
        finally:
            del self._confirms[scope]
        if scope.cancelled_caught:
            self._lost("Valkey did not confirm in time", sub)
            raise trio.TooSlowError

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """A reader hands over (or waits for a catch-up): stop the confirmations'
        clock meanwhile (on a cluster, while any shard's reader is busy)."""
        if not self._readers_busy:
            now = trio.current_time()
            for scope in self._confirms:
                self._confirms[scope] = max(scope.deadline - now, 0.0)
                scope.deadline = math.inf
        self._readers_busy += 1
        try:
            yield
        finally:
            self._readers_busy -= 1
            if not self._readers_busy:
                now = trio.current_time()
                for scope, left in self._confirms.items():
                    scope.deadline = now + left

    async def _session(self) -> bool:
        """One connection's life; True if it became healthy."""
        self._set_state(connecting=True)
        try:
            return await self._connect_and_serve()
        finally:
            self._set_state(connecting=False)

    async def _connect_and_serve(self) -> bool:
        if self._cluster is not None:
            return await self._connect_and_serve_cluster(self._cluster)
        options: dict[str, Any] = {
            "password": self._password,
            "db": self.db,
            "connect_timeout": self.connect_timeout,
        }
        try:
            cmd = await ValkeyConnection.connect(self.host, self.port, **options)
        except (ValkeyUnavailable, ValkeyError) as exc:
            return self._failed(exc)
        try:
            try:
                sub = await ValkeySubscriber.connect(self.host, self.port, **options)
            except (ValkeyUnavailable, ValkeyError) as exc:
                return self._failed(exc)
            try:
                return await self._serve_session(NodeCommands(cmd), sub)
            finally:
                await sub.aclose()
        finally:
            await cmd.aclose()

    async def _connect_and_serve_cluster(self, address: ClusterAddress) -> bool:
        try:
            cluster = await ValkeyCluster.connect(
                address,
                connect_timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
        except (ValkeyUnavailable, ValkeyError) as exc:
            return self._failed(exc)
        try:
            sub = ClusterSubscriptions(cluster.sharded_subscriber(), self._on_lost)
            try:
                return await self._serve_session(ClusterCommands(cluster), sub)
            finally:
                await sub.aclose()
        finally:
            await cluster.aclose()

    def _failed(self, exc: Exception) -> bool:
        self._connect_failures += 1
        self._last_error = str(exc) or f"{type(exc).__name__} during connect"
        self._outage.failed(self._last_error)
        return False

    async def _check_and_reconcile(self, cmd: Commands, sub: Subscriptions) -> None:
        """Check the server answers (one that accepts connections but answers nothing
        is not healthy; a cluster client answered CLUSTER SHARDS already), then make
        the subscriptions match the local topics."""
        if self._cluster is None:
            with trio.fail_after(self.command_timeout):
                await cmd.execute("PING")
        async with self._sub_lock:
            await self._reconcile(cmd, sub)

    async def _serve_session(self, cmd: Commands, sub: Subscriptions) -> bool:
        self._trouble = trouble = trio.Event()
        # Held back from the first SUBSCRIBE until the catch-up is done.
        self._backlog = backlog = _Backlog()
        healthy = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen, sub, trouble)
                try:
                    await self._check_and_reconcile(cmd, sub)
                except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
                    self._failed(exc)
                else:
                    healthy = True
                    self._connects += 1
                    self._set_state(connecting=False, session=(cmd, sub))
                    self._outage.ok()
                    nursery.start_soon(self._catch_up, cmd, sub, backlog)
                    await self._watch(cmd, sub, trouble)
                    # Only trouble ends the watch (cancellation raises): the session is lost.
                    self._outage.failed(self._last_error or "the connection to Valkey was lost")
                nursery.cancel_scope.cancel()
        finally:
            if self._backlog is backlog:
                self._backlog = None
            backlog.done.set()
        return healthy

    async def _catch_up(self, cmd: Commands, sub: Subscriptions, backlog: _Backlog) -> None:
        """Deliver what each local topic with history missed while this instance was
        not subscribed, then the messages held back meanwhile, then go live
        (delivery.md §11.3). No offset is delivered twice (``_hand_over``)."""
        for topic in list(self._positions):
            try:
                await self._catch_up_topic(cmd, topic)
            except (ValkeyUnavailable, trio.TooSlowError) as exc:
                self._lost(str(exc) or "reading the history timed out", cmd)
                if self._cluster is None:
                    return  # the next session catches up from where this one got
                # A cluster's session goes on: this topic is subscribed again, and
                # caught up then, by the watcher.
                async with self._sub_lock:
                    await self._abandon(sub, backlog, topic)
        await self._drain(backlog)

    async def _drain(self, backlog: _Backlog) -> None:
        """Deliver the messages held back, then go live."""
        while backlog.messages:
            envelope, size = backlog.messages.popleft()
            backlog.size -= size
            await self._hand_over(envelope)
        # Nothing awaited since the backlog was found empty: the reader goes live.
        if self._backlog is backlog:
            self._backlog = None
        backlog.done.set()

    async def _abandon(self, sub: Subscriptions, backlog: _Backlog, topic: str) -> None:
        """Cluster: ``topic`` could not be subscribed again or caught up (caller holds
        ``_sub_lock``). What was held back for it is dropped and its channel
        unsubscribed, as if its shard had lost it: the watcher subscribes it again
        and catches it up from its last position (re-reading those messages from the
        history). Should the unsubscribe fail too, a gap stays visible: the hub cuts
        plain subscribers off at the next offset, positions show it."""
        kept = deque(item for item in backlog.messages if item[0].topic != topic)
        backlog.messages, backlog.size = kept, sum(size for _, size in kept)
        channel = self._channel(topic)
        with contextlib.suppress(ValkeyUnavailable, ValkeyError, trio.TooSlowError):
            await self._confirm(sub, sub.unsubscribe(channel))
        self._on_lost(frozenset({channel}))

    async def _catch_up_topic(self, cmd: Commands, topic: str) -> None:
        last, history = self._positions.get(topic), self._keeps(topic)
        if last is None or history is None:
            return
        try:
            with trio.fail_after(self.command_timeout):
                missed = await self._read(cmd, history, topic, last.offset)
                if missed.epoch != last.epoch:
                    # The history was lost (and maybe started again): everything in
                    # the new epoch came after what was delivered here.
                    missed = await self._read(cmd, history, topic, 0)
        except ValkeyError as exc:
            self._last_error = exc.message
            if exc.kind in TRANSIENT_ERRORS:
                # Not now (a cluster's CLUSTERDOWN, a LOADING...): later, not never.
                raise ValkeyUnavailable(exc.message) from exc
            return  # this topic cannot catch up; the others can
        for envelope in missed.envelopes:
            if await self._hand_over(envelope):
                self._caught_up += 1

    async def _listen(self, sub: Subscriptions, trouble: trio.Event) -> None:
        try:
            await sub.listen(self._on_message)
        except ValkeyUnavailable as exc:
            self._last_error = str(exc)
        finally:
            trouble.set()

    def _on_lost(self, channels: frozenset[bytes]) -> None:
        """Cluster: a shard no longer delivers ``channels`` (its primary failed over,
        its slots moved, or its connection died). Note it; the watcher subscribes
        them again and catches their topics up."""
        if not channels:
            return
        self._last_error = "a Valkey Cluster shard lost its subscriptions"
        self._outage.failed(self._last_error)  # logged once, until all are back
        self._lost_channels |= channels
        self._resync.set()
        self._notify()

    def _found(self, channels: Collection[bytes]) -> None:
        """``channels`` are subscribed again (or no longer wanted): not lost any more.
        Wakes ``wait_healthy`` when that was the last of them."""
        if channels and self._lost_channels:
            self._lost_channels.difference_update(channels)
            if not self._lost_channels:
                self._notify()

    async def _watch(self, cmd: Commands, sub: Subscriptions, trouble: trio.Event) -> None:
        """Until the session breaks: every ``health_interval`` a PING, and a check that
        Valkey's subscriptions still match the local topics. On a cluster, also at
        once when a shard lost channels, and again after a backoff while that fails
        (a failover takes a second or two); a cluster's session never breaks."""
        failures = 0
        while True:
            wait, events = self.health_interval, [trouble, self._resync]
            if failures:  # retry after a backoff, whatever was lost meanwhile
                exponent = min(failures - 1, _MAX_EXPONENT)
                wait = min(self.backoff_initial * 2.0**exponent, self.backoff_max)
                wait *= 0.5 + random.random() / 2
                events = [trouble]
            with trio.move_on_after(wait):
                async with trio.open_nursery() as waiting:
                    for event in events:
                        waiting.start_soon(_set_then_cancel, event, waiting.cancel_scope)
            if trouble.is_set():
                return
            self._resync = trio.Event()
            backlog = self._backlog
            if self._cluster is not None and backlog is not None:
                await backlog.done.wait()  # the session's catch-up first
            try:
                await self._check_and_reconcile(cmd, sub)
            except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
                self._last_error = str(exc) or "health check timed out"
                if self._cluster is None:
                    return
                failures += 1
            else:
                failures = 0

    async def _reconcile(self, cmd: Commands, sub: Subscriptions) -> None:
        """Subscribe every local topic and nothing else (caller holds ``_sub_lock``);
        forget the positions of topics no longer subscribed. Topics that were
        subscribed and lost their channel (a cluster's shard failed over) are caught
        up, as after a lost session (``_resubscribe``)."""
        while True:
            local = set(self._local_topics())
            for topic in [t for t in self._positions if t not in local]:
                del self._positions[topic]
            want = {self._channel(topic): topic for topic in local}
            have = sub.channels
            missing, extra = want.keys() - have, have - want.keys()
            if not missing and not extra:
                if self._cluster is not None and self._cmd is not None:
                    self._outage.ok()  # every shard's channels are back
                self._found(self._lost_channels)
                return
            if missing:
                resumed = [want[c] for c in missing if want[c] in self._positions]
                if resumed and self._backlog is None:
                    await self._resubscribe(cmd, sub, resumed)
                    missing -= {self._channel(topic) for topic in resumed}
                for channel in missing:
                    await self._baseline(cmd, want[channel])
                if missing:
                    await self._confirm(sub, sub.subscribe(*missing))
            if extra:
                await self._confirm(sub, sub.unsubscribe(*extra))
            self._found(self._lost_channels - (want.keys() - sub.channels))

    async def _resubscribe(self, cmd: Commands, sub: Subscriptions, topics: list[str]) -> None:
        """Subscribe ``topics`` again, each then caught up from the last position
        delivered here, with its incoming messages held back until then (the
        session's catch-up, per topic: delivery.md §11.3); each goes live as soon as
        it is caught up, the other topics' messages never wait. Up to
        ``_RESUBSCRIBE_AT_ONCE`` topics at a time. The first topic that cannot be
        subscribed or caught up (its shard is still failing over) ends the try: it
        and those not done are left for the next one, after a backoff (raises)."""
        self._backlog = backlog = _Backlog(set(topics))
        failures: list[Exception] = []
        try:
            async with trio.open_nursery() as nursery:
                gate = trio.Semaphore(_RESUBSCRIBE_AT_ONCE)
                for topic in topics:
                    await gate.acquire()
                    if failures:
                        gate.release()
                        break
                    nursery.start_soon(
                        self._resubscribe_topic, cmd, sub, backlog, topic, gate, failures
                    )
        finally:
            # Every topic went live, or was abandoned (its messages dropped, to be
            # read again from the history by the next try), or never started. What
            # is held now came for an abandoned topic whose SUNSUBSCRIBE failed:
            # dropped too (its gap stays visible, see ``_abandon``).
            backlog.messages.clear()
            backlog.size = 0
            if self._backlog is backlog:
                self._backlog = None
            backlog.done.set()
        if failures:
            raise failures[0]

    async def _resubscribe_topic(
        self,
        cmd: Commands,
        sub: Subscriptions,
        backlog: _Backlog,
        topic: str,
        gate: trio.Semaphore,
        failures: list[Exception],
    ) -> None:
        channel = self._channel(topic)
        try:
            try:
                await self._confirm(sub, sub.subscribe(channel))
                await self._catch_up_topic(cmd, topic)
            except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
                failures.append(exc)
                await self._abandon(sub, backlog, topic)
                return
            await self._go_live(backlog, topic)
            self._found({channel})
            self._resubscribed += 1
        finally:
            gate.release()

    async def _go_live(self, backlog: _Backlog, topic: str) -> None:
        """Hand over what was held back of ``topic``, in order, then let its messages
        through: ``topic`` is caught up."""
        assert backlog.topics is not None
        while True:
            held = [item for item in backlog.messages if item[0].topic == topic]
            if not held:
                # Nothing awaited since: the next message of the topic goes live.
                backlog.topics.discard(topic)
                return
            backlog.messages = deque(item for item in backlog.messages if item[0].topic != topic)
            for envelope, size in held:
                backlog.size -= size
                await self._hand_over(envelope)

    async def _on_message(self, channel: bytes, data: bytes) -> None:
        self._received += 1
        try:
            envelope = Envelope.from_json(data)
        except ValueError:
            self._malformed += 1
            return
        if self._channel(envelope.topic) != channel:
            self._malformed += 1
            return
        backlog = self._backlog
        with self._busy():
            if backlog is not None and (backlog.topics is None or envelope.topic in backlog.topics):
                backlog.messages.append((envelope, len(data)))
                backlog.size += len(data)
                if backlog.size > _BACKLOG_BYTES:
                    await backlog.done.wait()  # leave the rest in Valkey's buffer
                return
            await self._hand_over(envelope)

    async def _hand_over(self, envelope: Envelope) -> bool:
        """Deliver ``envelope`` locally unless its offset was delivered already; True
        if it was. Once started, a delivery is finished (the hub bounds it), so it is
        never half done and then done again by a catch-up."""
        topic, offset, epoch = envelope.topic, envelope.offset, envelope.epoch
        last = self._positions.get(topic)
        if last is not None and offset is not None and epoch is not None:
            if epoch == last.epoch and offset <= last.offset:
                self._duplicates += 1
                return False
            self._positions[topic] = Position(offset, epoch)
        with trio.CancelScope(shield=True):
            await self._deliver(envelope)
        return True


class _Backlog:
    """Messages received during a catch-up, in order, and their size in bytes; of
    every topic, or only of ``topics`` (a cluster's shard re-subscribed)."""

    __slots__ = ("done", "messages", "size", "topics")

    def __init__(self, topics: set[str] | None = None) -> None:
        self.topics = topics
        self.messages: deque[tuple[Envelope, int]] = deque()
        self.size = 0
        #: Set when the catch-up is over (or the session is).
        self.done = trio.Event()


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
