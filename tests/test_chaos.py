"""Chaos: three app processes on one Valkey, about a hundred typed clients with
positions, and everything going wrong at once (delivery.md §10 to §12).

* Three instances of ``chaos_app`` (its own OS process each) share one Valkey;
  every topic keeps its history there.
* 91 subscribers (typed ``wskit_trio.client`` clients, all in this process)
  join two of four topics each with positions (two of them the ``bulk`` topic
  too), through a :class:`Balancer`: a TCP proxy that sends each new connection
  to an instance (a seeded choice per client and connection number, among the
  instances that are up), so reconnects spread over the instances. Their
  ``on_connect`` hook re-joins every topic with ``since=client.position(topic)``
  (or the position of their first join).
* Two publishers per instance publish to the four topics (``PUB``, an RPC: a
  message counts as acknowledged only when the answer says ``ok``, with the
  position it got); with the slow consumer and the bulk publisher, 99 clients.
* Chaos, on a seeded schedule: the balancer drops a random subscriber's
  connection every ~0.2 s (a TCP reset both ways, no close frame); one slow
  consumer's handler blocks until a bulk publisher has filled everything
  between them and its instance cuts it off with 1013 (``--slow-consumer-timeout``
  is small), then it catches up, reconnects and recovers; one instance is
  SIGKILLed mid-run and restarted on the same port.
* Then the publishers stop, every client catches up (bounded), and each must hold
  every message of its topics since its first join, exactly once, in offset
  order, consecutive, in one epoch (Valkey itself is not restarted), with every
  acknowledged message at the offset its publisher was told. Every re-join must
  have recovered.

The figures are printed (``pytest -s`` shows them) and attached to any failure.
``WSKIT_CHAOS_SEED`` picks another seed.
"""

from __future__ import annotations

import math
import os
import random
import re
import resource
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

import attrs
import trio
from chaos_app import HOLD, JOIN, NEWS, PUB, STATS, Join, Joined, News, Pub, Stats
from valkey_server import ValkeyServerProcess

from wskit_trio import Position
from wskit_trio.client import (
    Backoff,
    Client,
    ClientState,
    ConnectError,
    ConnectionClosed,
    FrameDropped,
    InboundMessage,
    Reconnect,
    RequestTimeout,
    RpcError,
    open_client,
)

SEED = int(os.environ.get("WSKIT_CHAOS_SEED", "20241206"))
APP = Path(__file__).with_name("chaos_app.py")

INSTANCES = 3
TOPICS = tuple(f"news:{n}" for n in range(4))
#: The slow consumer's topic: large messages, published fast while it stalls.
BULK = "bulk"
#: Subscribers through the balancer; the first BULK_SUBSCRIBERS also join BULK.
SUBSCRIBERS = 91
BULK_SUBSCRIBERS = 2
TOPICS_PER_SUBSCRIBER = 2
PUBLISHERS_PER_INSTANCE = 2
#: Seconds between two publishes of one publisher (jittered).
PUBLISH_EVERY = 0.1
#: Seconds of chaos (publishing, drops, the slow consumer, the kill).
CHAOS = 16.0
#: Mean seconds between two random drops.
DROP_EVERY = 0.2
#: When (seconds into the chaos) the slow consumer stops reading, and where it is.
STALL_AT = 1.0
SLOW_HOME = 0
#: The bulk publisher's instance, its message size, rate and bound.
BULK_HOME = 1
BULK_PAD = 6000
#: Publishing BULK with this many requests in flight (as fast as they go).
BULK_WORKERS = 8
BULK_CAP = 6000
#: Which instance is SIGKILLed, when, and when it is started again.
KILLED = 2
KILL_AT = 4.0
RESTART_AT = 6.5
#: The app processes' limits: a subscriber whose queue stays full this long is cut.
SLOW_CONSUMER_TIMEOUT = 0.5
OUTBOUND_QUEUE = 64
OUTBOUND_QUEUE_BYTES = 256 * 1024
#: Bounds: the whole scenario, an app's start, the catching up at the end.
BUDGET = 55.0
START_TIMEOUT = 15.0
SETTLE_TIMEOUT = 20.0
REQUEST_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``nan`` of nothing)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _cpu() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


# -- the app processes ------------------------------------------------------------------


class AppProcess:
    """One ``chaos_app`` instance in its own OS process; restarts on the same port."""

    def __init__(self, index: int, valkey_url: str, prefix: str) -> None:
        self.index = index
        self.valkey_url = valkey_url
        self.prefix = prefix
        self.port = 0
        self.process: trio.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Start it and return once it says ``READY <port>`` (listening, Valkey healthy)."""
        command = [
            sys.executable,
            str(APP),
            self.valkey_url,
            self.prefix,
            "--port",
            str(self.port),
            "--slow-consumer-timeout",
            str(SLOW_CONSUMER_TIMEOUT),
            "--outbound-queue",
            str(OUTBOUND_QUEUE),
            "--outbound-queue-bytes",
            str(OUTBOUND_QUEUE_BYTES),
        ]
        self.process = process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        self.starts += 1
        assert process.stdout is not None
        output = b""
        with trio.fail_after(START_TIMEOUT):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"instance {self.index} exited before it was ready: {output!r}"
                output += chunk
        line = output.split(b"\n", 1)[0].decode()
        match = re.fullmatch(r"READY (\d+)", line)
        assert match, f"instance {self.index} said {line!r}"
        self.port = int(match[1])

    def kill(self) -> None:
        """SIGKILL (no goodbye to anyone); :meth:`reap` waits for it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def reap(self) -> None:
        if self.process is not None:
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL if it takes more than 5 s."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        self.kill()
        await self.reap()


# -- the balancer -------------------------------------------------------------------------


_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_CID = re.compile(rb"^GET [^ ]*[?&]cid=([\w.:-]+)")


def _reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing ``stream`` send a TCP reset (SO_LINGER 0): the peer gets no FIN,
    no close frame, and loses whatever was still on its way."""
    with suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@attrs.define(eq=False)
class Link:
    """One client connection through the balancer, to one instance."""

    cid: str
    instance: int
    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope


class Balancer:
    """A TCP proxy in front of the instances, like a load balancer with a switch.

    A client's URL names it (``?cid=...``); its ``n``-th connection goes to the
    instance a ``Random((seed, cid, n))`` picks among those that are up (the next
    up one if that fails), so where each connection goes does not depend on
    scheduling. :meth:`drop` resets a client's connection both ways (RST),
    :meth:`down` / :meth:`up` take an instance out of rotation and back.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.port = 0
        #: Instance index -> its port, while it is up.
        self.backends: dict[int, int] = {}
        self.links: dict[str, Link] = {}
        self._attempts: Counter[str] = Counter()
        #: Connections forwarded, per instance; and how many before the first kill.
        self.routed: Counter[int] = Counter()
        #: (client, its connection number, instance) of every connection forwarded.
        self.history: list[tuple[str, int, int]] = []
        self.refused = 0
        self.drops = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def up(self, instance: int, port: int) -> None:
        self.backends[instance] = port

    def down(self, instance: int) -> list[str]:
        """Route nothing more to ``instance``; the clients linked to it now."""
        self.backends.pop(instance, None)
        return sorted(link.cid for link in self.links.values() if link.instance == instance)

    def drop(self, cid: str) -> bool:
        """Reset ``cid``'s connection, both ways; False if it has none now."""
        link = self.links.get(cid)
        if link is None:
            return False
        _reset_on_close(link.client)
        _reset_on_close(link.server)
        link.scope.cancel()
        self.drops += 1
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def _choices(self, cid: str, number: int) -> list[int]:
        up = sorted(self.backends)
        if not up:
            return []
        first = random.Random(f"{self.seed}/{cid}/{number}").randrange(INSTANCES)
        return sorted(up, key=lambda i: (i - first) % INSTANCES)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            head = b""
            with trio.move_on_after(5), suppress(trio.BrokenResourceError):
                while b"\r\n\r\n" not in head:
                    chunk = await client.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
            match = _CID.match(head)
            cid = match[1].decode() if match else "?"
            self._attempts[cid] += 1
            server: trio.SocketStream | None = None
            for instance in self._choices(cid, self._attempts[cid]):
                with suppress(OSError):
                    server = await trio.open_tcp_stream("127.0.0.1", self.backends[instance])
                    break
            if server is None or b"\r\n\r\n" not in head:
                # What a load balancer with no backend answers: the client backs off.
                self.refused += 1
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.send_all(_UNAVAILABLE)
                return
            self.routed[instance] += 1
            self.history.append((cid, self._attempts[cid], instance))
            async with server:
                with trio.CancelScope() as scope:
                    link = Link(cid, instance, client, server, scope)
                    self.links[cid] = link
                    try:
                        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                            await server.send_all(head)
                            async with trio.open_nursery() as nursery:
                                nursery.start_soon(self._pump, client, server, scope)
                                nursery.start_soon(self._pump, server, client, scope)
                    finally:
                        if self.links.get(cid) is link:
                            del self.links[cid]

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        scope.cancel()  # one side is gone: so is the other


# -- the clients --------------------------------------------------------------------------


class Progress:
    """Wakes whoever waits for the clients to get somewhere."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


@attrs.frozen
class Got:
    """One NEWS a subscriber's handler got."""

    offset: int
    epoch: str
    publisher: str
    seq: int
    #: When the handler got it, and the client's connection count then.
    at: float = 0.0
    connection: int = 0


@attrs.frozen
class Rejoin:
    """One run of a subscriber's ``on_connect`` that joined all its topics."""

    connection: int
    #: When the connection before it was lost (None for the first).
    lost_at: float | None
    started: float
    done: float
    joins: dict[str, tuple[Position | None, Joined]]


def backoff(seed: str) -> Reconnect:
    """Quick reconnects with full jitter, from a seeded generator."""
    rng = random.Random(f"{SEED}/backoff/{seed}")
    return Reconnect(backoff=Backoff(initial=0.05, max=0.5, random=rng.random))


class Subscriber:
    """A client app that follows some topics with positions and keeps every NEWS."""

    def __init__(
        self,
        name: str,
        url: str,
        topics: Sequence[str],
        progress: Progress,
        finished: trio.Event,
        *,
        balancer: Balancer | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.topics = tuple(topics)
        self.progress = progress
        self.finished = finished
        self.balancer = balancer
        self.client: Client | None = None
        self.received: dict[str, list[Got]] = {topic: [] for topic in self.topics}
        #: Where each topic stood at this subscriber's first join of it.
        self.start: dict[str, Position] = {}
        self.rejoins: list[Rejoin] = []
        self.connections = 0
        #: The connection whose on_connect completed last.
        self.joined_on = 0
        self.lost_at: float | None = None
        self.losses = 0
        self.refused_attempts = 0
        self.problems: list[str] = []
        self.join_errors: list[str] = []
        self.first_join = trio.Event()
        #: The slow consumer's switch: once set, its handler blocks until ``release``.
        self.stalling = False
        self.release = trio.Event()
        #: How the HOLD request (in flight while stalled) ended.
        self.hold_ended: str | None = None
        self.hold_code: int | None = None

    async def live(self) -> None:
        """Connected (and reconnected) until ``finished``."""
        async with open_client(
            self.url,
            reconnect=backoff(self.name),
            on_connect=self.rejoin,
            on_state=self.on_state,
            on_error=self.on_error,
            wait_open=False,
            connect_timeout=5.0,
            close_timeout=2.0,
        ) as client:
            self.client = client
            client.on(NEWS, self.on_news)
            await self.finished.wait()

    @property
    def settled(self) -> bool:
        """Open, and joined on this connection."""
        client = self.client
        return (
            client is not None
            and client.state is ClientState.OPEN
            and self.joined_on == self.connections
        )

    def last_offset(self, topic: str) -> int:
        got = self.received[topic]
        if got:
            return got[-1].offset
        start = self.start.get(topic)
        return start.offset if start is not None else -1

    async def rejoin(self, client: Client) -> None:
        """``on_connect``: join every topic from where this client left off."""
        self.connections += 1
        number = self.connections
        started = trio.current_time()
        joins: dict[str, tuple[Position | None, Joined]] = {}
        try:
            for topic in self.topics:
                since = client.position(topic) or self.start.get(topic)
                joined = await self._join(client, topic, since)
                self.start.setdefault(topic, joined.position)
                joins[topic] = (since, joined)
        except ConnectionClosed:
            raise  # lost meanwhile: the hook runs again on the next connection
        except Exception as exc:
            # Not joined (say, cut off while recovering): make it reconnect and join
            # again rather than go on deaf. Only a client that stays deaf misses
            # messages, and that the final check sees.
            self.join_errors.append(f"connection {number}: {exc!r}")
            if self.balancer is None or not self.balancer.drop(self.name):
                self.problems.append(f"connection {number} stays unjoined: {exc!r}")
            return
        self.rejoins.append(Rejoin(number, self.lost_at, started, trio.current_time(), joins))
        self.lost_at = None
        self.joined_on = number
        self.first_join.set()
        self.progress.notify()

    async def _join(self, client: Client, topic: str, since: Position | None) -> Joined:
        attempt = 1
        while True:
            try:
                return await client.request(JOIN, Join(topic, since), timeout=JOIN_TIMEOUT)
            except RpcError as err:
                if not err.retryable or attempt >= 5:
                    raise
            await trio.sleep(0.1 * attempt)
            attempt += 1

    def on_state(self, state: ClientState) -> None:
        lost = self.joined_on == self.connections and self.lost_at is None
        if state is ClientState.RECONNECTING and lost:
            self.losses += 1
            self.lost_at = trio.current_time()
        self.progress.notify()

    def on_error(self, exc: Exception) -> None:
        if isinstance(exc, ConnectError):
            self.refused_attempts += 1  # a reconnect attempt found no instance
        else:
            self.problems.append(f"on_error: {exc!r}")

    async def on_news(self, msg: InboundMessage[News]) -> None:
        if self.stalling:
            await self.release.wait()
        position, topic = msg.position, msg.topic
        if position is None or topic not in self.received:
            self.problems.append(f"NEWS without a position of a joined topic: {msg!r}")
            return
        news = msg.payload
        connection = self.client.statistics().connects if self.client is not None else 0
        self.received[topic].append(
            Got(
                position.offset,
                position.epoch,
                news.publisher,
                news.seq,
                trio.current_time(),
                connection,
            )
        )
        self.progress.notify()

    async def hold(self) -> None:
        """A request the server never answers: its failure tells how the connection
        it went out on ended (the close code)."""
        assert self.client is not None
        try:
            await self.client.request(HOLD, timeout=30)
            self.hold_ended = "answered"
        except ConnectionClosed as exc:
            self.hold_code = exc.code
            self.hold_ended = f"connection closed {exc.code} {exc.reason!r}"
        except Exception as exc:
            self.hold_ended = repr(exc)


@attrs.frozen
class Ack:
    topic: str
    publisher: str
    seq: int
    position: Position


class Publisher:
    """Publishes NEWS through one instance; keeps what was acknowledged ``ok``."""

    def __init__(self, name: str, url: str, topics: Sequence[str], pad: int = 0) -> None:
        self.name = name
        self.url = url
        self.topics = tuple(topics)
        self.pad = pad
        self.rng = random.Random(f"{SEED}/publisher/{name}")
        self.client: Client | None = None
        self.ready = trio.Event()
        self.acked: list[Ack] = []
        self.attempted = 0
        self.failed: Counter[str] = Counter()
        self.refused_attempts = 0
        self.problems: list[str] = []
        self._seq = 0

    async def live(self, finished: trio.Event) -> None:
        async with open_client(
            self.url,
            reconnect=backoff(self.name),
            on_error=self.on_error,
            connect_timeout=5.0,
            close_timeout=2.0,
        ) as client:
            self.client = client
            self.ready.set()
            await finished.wait()

    def on_error(self, exc: Exception) -> None:
        if isinstance(exc, ConnectError):
            self.refused_attempts += 1  # its instance is down
        else:
            self.problems.append(f"on_error: {exc!r}")

    async def publish_one(self, topic: str) -> None:
        assert self.client is not None
        self._seq += 1
        self.attempted += 1
        pub = Pub(topic, self.name, self._seq, self.pad)
        try:
            result = await self.client.request(PUB, pub, timeout=REQUEST_TIMEOUT)
        except (ConnectionClosed, RequestTimeout, FrameDropped) as exc:
            self.failed[type(exc).__name__] += 1
            return
        except RpcError as err:
            self.failed[str(err.code)] += 1
            return
        if result.ok and result.position is not None:
            self.acked.append(Ack(topic, self.name, pub.seq, result.position))
        else:
            self.failed[f"ok=False {result.error}"] += 1

    async def run(self, stop: trio.Event, every: float) -> None:
        """Publish to a random topic every ``every`` seconds (jittered) until ``stop``."""
        while not stop.is_set():
            await self.publish_one(self.rng.choice(self.topics))
            with trio.move_on_after(every * self.rng.uniform(0.5, 1.5)):
                await stop.wait()


# -- the scenario -------------------------------------------------------------------------


class Chaos:
    def __init__(self, valkey_url: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}:"
        self.apps = [AppProcess(i, valkey_url, self.prefix) for i in range(INSTANCES)]
        self.balancer = Balancer(seed)
        self.progress = Progress()
        self.finished = trio.Event()
        self.log: list[str] = []
        self.t0 = time.monotonic()
        self.subscribers: list[Subscriber] = []
        self.publishers: list[Publisher] = []
        self.slow: Subscriber | None = None
        self.bulk: Publisher | None = None
        self.latest: dict[str, Position] = {}
        self.stats: dict[int, Stats] = {}
        self.killed_clients: list[str] = []
        self.drop_misses = 0
        self.cut_detected_at: float | None = None
        self.bulk_until_cut = 0
        self.phases: dict[str, float] = {}
        self.cpu_at_start = _cpu()
        self.routed_at_restart = 0
        self.routed_before_kill = 0

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:6.2f}s {text}")

    def phase(self, name: str) -> None:
        self.phases[name] = time.monotonic() - self.t0
        self.note(name)

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as starting:
            for app in self.apps:
                starting.start_soon(app.start)
        for app in self.apps:
            self.balancer.up(app.index, app.port)
        self.phase("apps ready")
        async with trio.open_nursery() as network:
            await network.start(self.balancer.run)
            async with trio.open_nursery() as clients:
                await self._scenario(clients)
                self.finished.set()  # the clients close
            network.cancel_scope.cancel()
        for app in self.apps:
            await app.stop()
        self.phase("stopped")

    async def _scenario(self, clients: trio.Nursery) -> None:
        self._make_clients()
        for sub in self.all_subscribers:
            clients.start_soon(sub.live)
        for pub in self.all_publishers:
            clients.start_soon(pub.live, self.finished)
        with trio.fail_after(15):
            for sub in self.all_subscribers:
                await sub.first_join.wait()
            for pub in self.all_publishers:
                await pub.ready.wait()
        self.phase("clients joined")

        stop = trio.Event()
        go = trio.current_time()
        async with trio.open_nursery() as chaos:
            for pub in self.publishers:
                chaos.start_soon(pub.run, stop, PUBLISH_EVERY)
            chaos.start_soon(self._drops, go)
            chaos.start_soon(self._slow_consumer, go)
            chaos.start_soon(self._kill_and_restart, go)
            await trio.sleep_until(go + CHAOS)
            stop.set()
        self.phase("publishers stopped")

        await self._settle()
        self.phase("settled")
        for app in self.apps:
            self.stats[app.index] = await self._stats(app)

    @property
    def all_subscribers(self) -> list[Subscriber]:
        return self.subscribers + ([self.slow] if self.slow is not None else [])

    @property
    def all_publishers(self) -> list[Publisher]:
        return self.publishers + ([self.bulk] if self.bulk is not None else [])

    def _make_clients(self) -> None:
        for n in range(SUBSCRIBERS):
            name = f"sub-{n}"
            topics = sorted(self.rng.sample(TOPICS, TOPICS_PER_SUBSCRIBER))
            if n < BULK_SUBSCRIBERS:
                topics.append(BULK)
            url = f"{self.balancer.url}?cid={name}"
            self.subscribers.append(
                Subscriber(name, url, topics, self.progress, self.finished, balancer=self.balancer)
            )
        # The slow consumer talks to its instance directly: no proxy buffers between.
        slow_url = f"{self.apps[SLOW_HOME].url}?cid=slow"
        self.slow = Subscriber("slow", slow_url, [BULK, TOPICS[0]], self.progress, self.finished)
        for app in self.apps:
            for n in range(PUBLISHERS_PER_INSTANCE):
                self.publishers.append(Publisher(f"pub-{app.index}.{n}", app.url, TOPICS))
        self.bulk = Publisher("bulk", self.apps[BULK_HOME].url, [BULK], pad=BULK_PAD)

    async def _drops(self, go: float) -> None:
        """Reset a random subscriber's connection every DROP_EVERY seconds or so."""
        names = [sub.name for sub in self.subscribers]
        at = go
        while True:
            at += DROP_EVERY * self.rng.uniform(0.5, 1.5)
            if at >= go + CHAOS:
                return
            name = self.rng.choice(names)
            await trio.sleep_until(at)
            if not self.balancer.drop(name):
                self.drop_misses += 1  # between two connections: nothing to drop

    async def _slow_consumer(self, go: float) -> None:
        """Stall the slow consumer's handler; publish bulk until its instance cuts it
        off (1013); let it go on; it reconnects and recovers by itself."""
        slow, bulk = self.slow, self.bulk
        assert slow is not None and bulk is not None and bulk.client is not None
        await trio.sleep_until(go + STALL_AT)
        slow.stalling = True
        async with (
            open_client(self.apps[SLOW_HOME].url, reconnect=False) as control,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(slow.hold)
            # The HOLD request in flight is cancelled when (and only when) its
            # connection is cut off: that tells the slow consumer's cut from others.
            limit = BULK_CAP

            async def worker() -> None:
                while bulk.attempted < limit:
                    await bulk.publish_one(BULK)

            async with trio.open_nursery() as workers:
                for _ in range(BULK_WORKERS):
                    workers.start_soon(worker)
                self.note("slow consumer stalled; bulk publishing")
                with trio.move_on_after(20):
                    while bulk.attempted < limit:
                        stats = await control.request(STATS, timeout=REQUEST_TIMEOUT)
                        if stats.holds_cancelled:
                            self.cut_detected_at = trio.current_time()
                            self.bulk_until_cut = bulk.attempted
                            self.note(f"cut-off seen after {bulk.attempted} bulk messages")
                            # A few more, so there is something to recover after the cut.
                            limit = bulk.attempted + 50
                            break
                        await trio.sleep(0.05)
                limit = min(limit, bulk.attempted + 50)
            slow.release.set()
            self.note(
                f"slow consumer released (cut off detected: {self.cut_detected_at is not None},"
                f" after {self.bulk_until_cut} bulk messages)"
            )

    async def _kill_and_restart(self, go: float) -> None:
        app = self.apps[KILLED]
        await trio.sleep_until(go + KILL_AT)
        self.killed_clients = self.balancer.down(KILLED)
        self.routed_before_kill = len(self.balancer.history)
        app.kill()
        await app.reap()
        self.note(f"instance {KILLED} SIGKILLed ({len(self.killed_clients)} subscribers on it)")
        await trio.sleep_until(go + RESTART_AT)
        await app.start()
        self.balancer.up(KILLED, app.port)
        self.routed_at_restart = self.balancer.routed[KILLED]
        self.note(f"instance {KILLED} restarted on port {app.port}")

    async def _probe(self) -> dict[str, Position]:
        """Every topic's latest position, as a fresh join (without recovery) says."""
        latest: dict[str, Position] = {}
        async with open_client(self.apps[SLOW_HOME].url, reconnect=False) as probe:
            for topic in (*TOPICS, BULK):
                joined = await probe.request(JOIN, Join(topic), timeout=JOIN_TIMEOUT)
                latest[topic] = joined.position
        return latest

    async def _settle(self) -> None:
        """Wait (bounded) until every subscriber is joined and has every message
        published so far, then check that nothing more came in meanwhile."""
        with trio.fail_after(SETTLE_TIMEOUT):
            while True:
                self.latest = await self._probe()
                await self.progress.wait_until(self._caught_up)
                if await self._probe() == self.latest:
                    return

    def _caught_up(self) -> bool:
        return all(
            sub.settled and all(sub.last_offset(t) >= self.latest[t].offset for t in sub.topics)
            for sub in self.all_subscribers
        )

    async def _stats(self, app: AppProcess) -> Stats:
        async with open_client(app.url, reconnect=False) as control:
            return await control.request(STATS, timeout=REQUEST_TIMEOUT)

    # -- the verdict ------------------------------------------------------------------

    def acks(self) -> list[Ack]:
        return [ack for pub in self.all_publishers for ack in pub.acked]

    def violations(self) -> list[str]:
        """Every broken promise, one line each."""
        found: list[str] = []
        acks_by_topic: dict[str, list[Ack]] = {}
        for ack in self.acks():
            acks_by_topic.setdefault(ack.topic, []).append(ack)
        for topic, acks in acks_by_topic.items():
            offsets = Counter(ack.position.offset for ack in acks)
            twice = sorted(o for o, n in offsets.items() if n > 1)
            if twice:
                found.append(f"{topic}: offsets acknowledged to two publishes: {twice[:10]}")
        for pub in self.all_publishers:
            found.extend(f"{pub.name}: {problem}" for problem in pub.problems)
        for sub in self.all_subscribers:
            found.extend(f"{sub.name}: {problem}" for problem in sub.problems)
            for topic in sub.topics:
                found.extend(self._check_topic(sub, topic, acks_by_topic.get(topic, [])))
            for rejoin in sub.rejoins[1:]:
                for topic, (since, joined) in rejoin.joins.items():
                    if not joined.recovered:
                        found.append(
                            f"{sub.name}: connection {rejoin.connection} re-joined {topic} "
                            f"since {since} and did not recover ({joined})"
                        )
        return found

    def _check_topic(self, sub: Subscriber, topic: str, acks: list[Ack]) -> list[str]:
        """What ``sub`` got of ``topic`` against what it should hold: every offset
        after its first join, up to the latest, once each, in order, in the one
        epoch; every acknowledged message at the offset its publisher was told."""
        start, latest = sub.start.get(topic), self.latest.get(topic)
        if start is None or latest is None:
            return [f"{sub.name}: {topic} never joined (start {start}, latest {latest})"]
        got = sub.received[topic]
        where = f"{sub.name} {topic} (first joined at {start.offset})"
        found: list[str] = []
        epochs = {g.epoch for g in got} | {start.epoch}
        if epochs != {latest.epoch}:
            found.append(f"{where}: epochs {sorted(epochs)}, expected only {latest.epoch}")
        offsets = [g.offset for g in got]
        expected = list(range(start.offset + 1, latest.offset + 1))
        if offsets != expected:
            found.append(f"{where}: {self._difference(sub, topic, offsets, expected)}")
        by_offset = {g.offset: g for g in got}
        for ack in acks:
            if ack.position.offset <= start.offset:
                continue
            g = by_offset.get(ack.position.offset)
            if g is None or (g.epoch, g.publisher, g.seq) != (
                ack.position.epoch,
                ack.publisher,
                ack.seq,
            ):
                found.append(f"{where}: acknowledged {ack} but received {g}")
                break
        return found

    @staticmethod
    def _difference(sub: Subscriber, topic: str, offsets: list[int], expected: list[int]) -> str:
        """How ``offsets`` differs from ``expected``, with what explains it: the
        subscriber's re-joins of the topic and what it got around the first repeat."""
        counts = Counter(offsets)
        twice = sorted(o for o, n in counts.items() if n > 1)
        missing = sorted(set(expected) - set(offsets))
        # The first place where the next offset is not the one after: a repeat or a gap.
        odd = next((i for i in range(1, len(offsets)) if offsets[i] != offsets[i - 1] + 1), 0)
        joins = []
        for r in sub.rejoins:
            if topic in r.joins:
                since, joined = r.joins[topic]
                joins.append(
                    f"#{r.connection} {r.started:.3f}..{r.done:.3f} since "
                    f"{since.offset if since is not None else None}: recovered="
                    f"{joined.recovered} position={joined.position.offset} "
                    f"replayed={joined.replayed}"
                )
        around = [
            f"{g.offset}@{g.at:.3f}/c{g.connection}"
            for g in sub.received[topic][max(0, odd - 8) : odd + 8]
        ]
        return (
            f"{len(offsets)} received, {len(expected)} expected; missing {missing[:10]} "
            f"({len(missing)} in all), more than once {twice[:10]} ({len(twice)} in all); "
            f"re-joins: {'; '.join(joins)}; got (offset@time/connection) around the first "
            f"repeat or gap: {', '.join(around)}"
        )

    def figures(self) -> str:
        """The run in numbers (and its log), for the output and for any failure."""
        subs, pubs, slow, balancer = (
            self.all_subscribers,
            self.all_publishers,
            self.slow,
            self.balancer,
        )
        rejoins = [r for sub in subs for r in sub.rejoins[1:]]
        topic_joins = [joined for r in rejoins for _, joined in r.joins.values()]
        connect_to_done = [r.done - r.started for r in rejoins]
        lost_to_done = [r.done - r.lost_at for r in rejoins if r.lost_at is not None]
        failed: Counter[str] = Counter()
        for pub in pubs:
            failed.update(pub.failed)
        regular_acked = sum(len(p.acked) for p in self.publishers)
        bulk_acked = len(self.bulk.acked) if self.bulk else 0
        deliveries = sum(len(got) for sub in subs for got in sub.received.values())
        first = Counter(instance for _, n, instance in balancer.history if n == 1)
        later = Counter(instance for _, n, instance in balancer.history if n > 1)
        # Where the subscribers of the killed instance went next.
        killed = set(self.killed_clients)
        moved: dict[str, int] = {}
        for cid, _, instance in balancer.history[self.routed_before_kill :]:
            if cid in killed:
                moved.setdefault(cid, instance)
        slow_joins = "; ".join(
            f"{t}: since {s.offset if s else None} recovered={j.recovered} replayed={j.replayed}"
            for r in (slow.rejoins[1:] if slow else [])
            for t, (s, j) in r.joins.items()
        )
        lines = [
            f"chaos seed {SEED}: {len(subs)} subscribers, {len(pubs)} publishers, "
            f"{INSTANCES} instances; wall {time.monotonic() - self.t0:.1f} s, "
            f"CPU of this process {_cpu() - self.cpu_at_start:.1f} s",
            "phases: " + ", ".join(f"{name} {at:.1f}s" for name, at in self.phases.items()),
            f"published: {sum(p.attempted for p in pubs)} attempted, "
            f"{regular_acked + bulk_acked} acknowledged ok ({regular_acked} on {len(TOPICS)} "
            f"topics, {bulk_acked} bulk of {BULK_PAD} B); not acknowledged: {dict(failed)}",
            "latest offsets: "
            + ", ".join(f"{t}={p.offset}" for t, p in sorted(self.latest.items())),
            f"deliveries: {deliveries} NEWS handled, "
            f"{sum(j.replayed for j in topic_joins)} of them replayed by recoveries",
            f"client drops: {balancer.drops} by the balancer ({self.drop_misses} picks found "
            f"no connection); {sum(s.losses for s in subs)} subscriber connections lost in "
            f"all; {len(rejoins)} reconnects (re-joined); reconnect attempts refused: "
            f"{sum(s.refused_attempts for s in subs)} subscribers', "
            f"{sum(p.refused_attempts for p in pubs)} publishers'; join errors: "
            f"{sum(len(s.join_errors) for s in subs)}",
            f"recoveries: {sum(j.recovered for j in topic_joins)} topic re-joins recovered, "
            f"{sum(not j.recovered for j in topic_joins)} not",
            f"recovery latency, connected -> replay done: p50 {ms(percentile(connect_to_done, 50))}"
            f", p99 {ms(percentile(connect_to_done, 99))}, max "
            f"{ms(max(connect_to_done, default=math.nan))}; connection lost -> replay done: "
            f"p50 {ms(percentile(lost_to_done, 50))}, p99 {ms(percentile(lost_to_done, 99))}",
            f"balancer: first connections per instance {dict(sorted(first.items()))}, "
            f"reconnects {dict(sorted(later.items()))} ({balancer.refused} refused, "
            f"{balancer.routed[KILLED] - self.routed_at_restart} to #{KILLED} after its restart)",
            f"kill: instance {KILLED} SIGKILLed with {len(killed)} subscribers (and "
            f"{PUBLISHERS_PER_INSTANCE} publishers) on it; they reconnected to "
            f"{dict(sorted(Counter(moved.values()).items()))}; started {self.apps[KILLED].starts}x",
            f"slow consumer: cut off after {self.bulk_until_cut} bulk messages (its HOLD "
            f"cancelled: {self.cut_detected_at is not None}); its HOLD request ended: "
            f"{slow.hold_ended if slow else None}; re-joins: {slow_joins}",
            f"instances at the end (#{KILLED}: since its restart): "
            + "; ".join(
                f"#{i}: cut_off={s.cut_off} holds_cancelled={s.holds_cancelled} "
                f"delivered={s.delivered} published={s.published} caught_up={s.caught_up} "
                f"duplicates={s.duplicates}"
                for i, s in sorted(self.stats.items())
            ),
            "log:",
            *(f"  {line}" for line in self.log),
        ]
        return "\n".join(lines)


async def test_chaos_every_client_holds_every_acknowledged_message_once_in_order(
    valkey_server: ValkeyServerProcess,
) -> None:
    chaos = Chaos(valkey_server.url, SEED)
    try:
        with trio.fail_after(BUDGET):
            await chaos.run()
    except BaseException as exc:
        exc.add_note(chaos.figures())
        raise
    finally:
        with trio.CancelScope(shield=True):
            for app in chaos.apps:
                app.kill()
            with trio.move_on_after(10):
                for app in chaos.apps:
                    await app.reap()
    report = chaos.figures()
    print(report)
    slow = chaos.slow
    assert slow is not None
    violations = chaos.violations()
    shown = [f"{len(violations)} broken promises (the first 30):", *violations[:30]]
    assert not violations, "\n".join([*shown, "", report])
    acked = chaos.acks()
    assert len(acked) > 100, report
    # The chaos happened: drops, a cut-off seen as 1013 and recovered, a kill.
    assert chaos.balancer.drops >= 10, report
    assert chaos.cut_detected_at is not None, report
    assert slow.hold_code == 1013, report
    assert len(slow.rejoins) >= 2 and slow.rejoins[1].joins[BULK][1].replayed > 0, report
    assert chaos.stats[SLOW_HOME].cut_off >= 1, report
    assert chaos.killed_clients, report
    assert chaos.apps[KILLED].starts == 2, report
    # Reconnects went to every instance, the restarted one included.
    assert all(chaos.balancer.routed[i] > 0 for i in range(INSTANCES)), report
    assert chaos.balancer.routed[KILLED] > chaos.routed_at_restart, report
    for sub in chaos.subscribers:
        assert sub.rejoins and sub.rejoins[0].connection == 1, report
