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
times out is taken as a lost connection. Like Valkey pub/sub itself, delivery is
at most once: what is published while an instance is disconnected does not reach
that instance's subscribers.

An outage (from the first failed connection attempt, or the loss of a healthy
session, to the next healthy session) is logged once on ``wskit_trio.valkey``:
a WARNING when it begins, an INFO with its length when it ends (see ``_outage``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import attrs
import trio

from .._errors import ConfigurationError, ValkeyError, ValkeyUnavailable, WsKitError
from .._options import options_as_keywords
from .._protocol.codes import ErrorCode
from .._protocol.pubsub import Envelope
from ..pubsub._backend import Capability, Deliver, PublishResult
from ._connection import (
    DEFAULT_PORT,
    TRANSIENT_ERRORS,
    ValkeyConnection,
    ValkeySubscriber,
    parse_url,
)
from ._outage import Outage, redact_url, valkey_url

__all__ = ["ValkeyPubSub", "ValkeyPubSubOptions", "ValkeyPubSubStatistics"]


#: 2**64 times any sane ``backoff_initial`` is far beyond any ``backoff_max``.
_MAX_EXPONENT: Final = 64


def _no_delivery(envelope: Envelope) -> int:
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
    ``malformed`` those that were not an envelope for their channel.
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


class ValkeyPubSub:
    """A :class:`~wskit_trio.pubsub.PubSubBackend` on a shared Valkey.

    ``router.plugin(with_pubsub(ValkeyPubSub.from_url("valkey://host:6379")))``;
    ``serve()`` (or the test harness) runs it. ``prefix`` namespaces the channels,
    so several apps can share one Valkey.
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

        self._deliver: Deliver = _no_delivery
        self._local_topics: Callable[[], Collection[str]] = _no_topics
        self._running = False
        #: The current session's connections, set only while healthy.
        self._cmd: ValkeyConnection | None = None
        self._sub: ValkeySubscriber | None = None
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
        self._last_error: str | None = None
        self._outage = Outage("pub/sub", valkey_url(host, port, db, password), secret=password)

    @staticmethod
    @options_as_keywords(ValkeyPubSubOptions)
    def from_url(url: str, options: ValkeyPubSubOptions) -> ValkeyPubSub:
        """From ``valkey://[:password@]host[:port][/db]``; the keywords are
        :class:`ValkeyPubSubOptions`' fields."""
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
        """Connected, with every local topic subscribed."""
        return self._cmd is not None

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
        )

    async def wait_healthy(self) -> None:
        """Return once the backend is (again) healthy."""
        while not self.healthy:
            await self._changed.wait()

    def _set_state(
        self,
        *,
        connecting: bool,
        session: tuple[ValkeyConnection, ValkeySubscriber] | None = None,
    ) -> None:
        self._connecting = connecting
        if session is None:
            self._cmd = self._sub = None
        else:
            self._cmd, self._sub = session
        self._changed.set()
        self._changed = trio.Event()

    async def _session_or_none(self) -> tuple[ValkeyConnection, ValkeySubscriber] | None:
        """The healthy session, waiting (bounded) for an attempt in progress."""
        if self._cmd is None and self._connecting:
            with trio.move_on_after(self.command_timeout):
                while self._cmd is None and self._connecting:
                    await self._changed.wait()
        if self._cmd is None or self._sub is None:
            return None
        return self._cmd, self._sub

    def _channel(self, topic: str) -> bytes:
        return (self.prefix + topic).encode()

    # -- the PubSubBackend protocol ----------------------------------------------------

    def attach(self, deliver: Deliver, local_topics: Callable[[], Collection[str]]) -> None:
        if self._running:
            raise ConfigurationError(
                "this ValkeyPubSub already serves a running server; give each server its own"
            )
        self._deliver = deliver
        self._local_topics = local_topics

    def detach(self, deliver: Deliver) -> None:
        if self._deliver == deliver:
            self._deliver = _no_delivery
            self._local_topics = _no_topics

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
            sub = session[1]
            with trio.fail_after(self.command_timeout):
                await self._sub_lock.acquire()
            try:
                if self._sub is not sub:
                    raise ValkeyUnavailable("the connection to Valkey was lost")
                await self._confirm(sub, sub.subscribe(self._channel(topic)))
            finally:
                self._sub_lock.release()
        except (ValkeyUnavailable, trio.TooSlowError) as exc:
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

    async def publish(self, envelope: Envelope) -> PublishResult:
        session = await self._session_or_none()
        if session is None:
            return self._unavailable()
        cmd = session[0]
        data = envelope.to_json()
        try:
            with trio.move_on_after(self.command_timeout) as scope:
                await cmd.execute("PUBLISH", self._channel(envelope.topic), data)
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
        return PublishResult(ok=True, matched=None, capability="unknown")

    # -- internals ---------------------------------------------------------------------

    def _unavailable(self) -> PublishResult:
        self._publish_failures += 1
        return PublishResult(ok=False, capability="unknown", error="UNAVAILABLE", retryable=True)

    def _lost(self, reason: str, conn: ValkeyConnection | ValkeySubscriber) -> None:
        """``conn`` failed: end its session (unless that one is over already)."""
        self._last_error = reason
        if conn is self._cmd or conn is self._sub:
            self._trouble.set()

    async def _confirm(self, sub: ValkeySubscriber, request: Awaitable[None]) -> None:
        """Await a request made on ``sub``; a confirmation that does not come in
        time means the session is broken."""
        try:
            with trio.fail_after(self.command_timeout):
                await request
        except (ValkeyUnavailable, trio.TooSlowError) as exc:
            self._lost(str(exc) or "Valkey did not confirm in time", sub)
            raise

    async def _session(self) -> bool:
        """One connection's life; True if it became healthy."""
        self._set_state(connecting=True)
        try:
            return await self._connect_and_serve()
        finally:
            self._set_state(connecting=False)

    async def _connect_and_serve(self) -> bool:
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
                return await self._serve_session(cmd, sub)
            finally:
                await sub.aclose()
        finally:
            await cmd.aclose()

    def _failed(self, exc: Exception) -> bool:
        self._connect_failures += 1
        self._last_error = str(exc) or f"{type(exc).__name__} during connect"
        self._outage.failed(self._last_error)
        return False

    async def _serve_session(self, cmd: ValkeyConnection, sub: ValkeySubscriber) -> bool:
        self._trouble = trouble = trio.Event()
        healthy = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, sub, trouble)
            try:
                # A server that accepts connections but answers nothing is not healthy.
                with trio.fail_after(self.command_timeout):
                    await cmd.execute("PING")
                async with self._sub_lock:
                    await self._reconcile(sub)
            except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
                self._failed(exc)
            else:
                healthy = True
                self._connects += 1
                self._set_state(connecting=False, session=(cmd, sub))
                self._outage.ok()
                await self._watch(cmd, sub, trouble)
                # Only trouble ends the watch (cancellation raises): the session is lost.
                self._outage.failed(self._last_error or "the connection to Valkey was lost")
            nursery.cancel_scope.cancel()
        return healthy

    async def _listen(self, sub: ValkeySubscriber, trouble: trio.Event) -> None:
        try:
            await sub.listen(self._on_message)
        except ValkeyUnavailable as exc:
            self._last_error = str(exc)
        finally:
            trouble.set()

    async def _watch(
        self, cmd: ValkeyConnection, sub: ValkeySubscriber, trouble: trio.Event
    ) -> None:
        """Until the session breaks: every ``health_interval`` a PING, and a check that
        Valkey's subscriptions still match the local topics."""
        while True:
            with trio.move_on_after(self.health_interval):
                await trouble.wait()
            if trouble.is_set():
                return
            try:
                with trio.fail_after(self.command_timeout):
                    await cmd.execute("PING")
                async with self._sub_lock:
                    await self._reconcile(sub)
            except (ValkeyUnavailable, ValkeyError, trio.TooSlowError) as exc:
                self._last_error = str(exc) or "health check timed out"
                return

    async def _reconcile(self, sub: ValkeySubscriber) -> None:
        """Subscribe every local topic and nothing else (caller holds ``_sub_lock``)."""
        while True:
            want = {self._channel(topic) for topic in self._local_topics()}
            have = sub.channels
            missing, extra = want - have, have - want
            if not missing and not extra:
                return
            if missing:
                await self._confirm(sub, sub.subscribe(*missing))
            if extra:
                await self._confirm(sub, sub.unsubscribe(*extra))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        self._received += 1
        try:
            envelope = Envelope.from_json(data)
        except ValueError:
            self._malformed += 1
            return
        if self._channel(envelope.topic) != channel:
            self._malformed += 1
            return
        self._deliver(envelope)
