"""A Valkey Cluster client on trio: commands routed by key slot, sharded pub/sub.

A cluster splits the key space into 16384 slots (:func:`key_slot`), each served by
one shard: a primary and its replicas. :class:`ValkeyCluster` reads which primary
serves which slot from ``CLUSTER SHARDS``, keeps one pipelined
:class:`~wskit_trio.valkey.ValkeyConnection` per primary (opened when first needed)
and sends each command to the primary of its key's slot. The map goes stale when
the topology changes, and the cluster says so:

* ``MOVED slot host:port``: the slot lives elsewhere now (failover, resharding):
  the map is read again and the command sent there.
* ``ASK slot host:port``: the slot is being migrated and this key already moved:
  the command goes there once, after ``ASKING`` (the map stays as it is).
* ``CLUSTERDOWN`` (a shard lost its primary and no replica took over yet),
  ``TRYAGAIN``, ``LOADING``, ``READONLY``, ``MASTERDOWN``, or a node that cannot be
  reached: the map is read again and the command retried with a short backoff,
  until ``command_timeout`` (counted from the call) runs out. A failover takes 1-2 s
  with ``cluster-node-timeout 1000``, so callers see a prompt, retryable failure
  during it and success afterwards.

A command whose connection broke after it was (maybe) sent is not retried, since it
may have run (a publish script would publish twice): it raises
:class:`ValkeyUnavailable` at once, unless the caller says it is ``idempotent``.
Errors map as on one node: :class:`ValkeyError` for an error reply (``kind`` its
first word), :class:`ValkeyUnavailable` when no node answers; a transient reply the
retries could not get past is raised as its :class:`ValkeyError` (its ``kind`` is
in ``TRANSIENT_ERRORS``).

:class:`ShardedSubscriber` subscribes to sharded channels (``SSUBSCRIBE``), one
subscriber connection per shard primary, and tells its owner which channels it lost
(the connection died, or the node stopped serving their slot and said so with a
``sunsubscribe`` push) so the owner can subscribe them again and recover what it
missed.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import attrs
import trio
from valkey.crc import key_slot as _crc_slot

from .._errors import ValkeyError, ValkeyUnavailable
from ._connection import (
    Arg,
    ValkeyAddress,
    ValkeyConnection,
    ValkeySubscriber,
    _RespStream,
    parse_url,
)

__all__ = [
    "SLOTS",
    "ClusterAddress",
    "ClusterShard",
    "NodeAddress",
    "ShardedSubscriber",
    "ValkeyCluster",
    "ValkeyClusterStatistics",
    "is_cluster_url",
    "key_slot",
    "parse_cluster_url",
]

_T = TypeVar("_T")
_C = TypeVar("_C", bound=_RespStream)

#: Number of hash slots of a Valkey Cluster.
SLOTS: Final = 16384
#: ``host, port`` of one cluster node.
NodeAddress = tuple[str, int]
CLUSTER_SCHEMES: Final = ("valkey+cluster", "redis+cluster")
#: Error replies after which the map is read again and the command retried.
_RETRIED: Final = frozenset({"CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN"})
#: Error replies that say the map is stale (or may be).
_REFRESHING: Final = _RETRIED | {"MOVED", "ASK"}
#: Redirections followed for one command before it counts as a failed attempt.
_MAX_REDIRECTS: Final = 5
_FIRST_BACKOFF: Final = 0.01
_MAX_BACKOFF: Final = 0.2


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key``: CRC16 (XMODEM) of the key, or of its hash tag (the
    part between the first ``{`` and the next ``}``, if not empty), mod 16384.
    Keys sharing a hash tag share a slot, so one script may touch them all."""
    return _crc_slot(key.encode() if isinstance(key, str) else key)


@attrs.frozen
class ClusterAddress:
    """Where a cluster is, as parsed by :func:`parse_cluster_url`: the seed nodes
    first asked for the slot map, and the password every node wants."""

    seeds: tuple[ValkeyAddress, ...]
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a cluster (``valkey+cluster://``, ``redis+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """Parse ``valkey+cluster://[:password@]host1[:port],host2[:port],...``
    (``redis+cluster://`` works too). Each host is read as :func:`parse_url` reads
    a single-node URL; a cluster has only database 0. Raises ``ValueError``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Valkey Cluster URL (valkey+cluster://...): {url!r}")
    base = scheme.lower().split("+", 1)[0]
    userinfo, at, location = rest.rpartition("@")
    cut = min((i for i in (location.find("/"), location.find("?")) if i >= 0), default=None)
    hosts, suffix = (location, "") if cut is None else (location[:cut], location[cut:])
    seeds = []
    for host in hosts.split(","):
        if not host.strip():
            raise ValueError(f"empty host in Valkey Cluster URL {url!r}")
        seed = parse_url(f"{base}://{userinfo}{at}{host.strip()}{suffix}")
        if seed.db != 0:
            raise ValueError(f"a Valkey Cluster has only database 0: {url!r}")
        seeds.append(seed)
    return ClusterAddress(tuple(seeds), seeds[0].password)


@attrs.frozen
class ClusterShard:
    """One shard as ``CLUSTER SHARDS`` describes it: its slot ranges (inclusive),
    its primary and its replicas that are online."""

    slots: tuple[tuple[int, int], ...]
    primary: NodeAddress
    replicas: tuple[NodeAddress, ...] = ()


@attrs.frozen
class ValkeyClusterStatistics:
    """Counters of a :class:`ValkeyCluster` since it was made."""

    #: Shards in the current map, and connections open now (commands + subscribers).
    shards: int
    connections: int
    #: Times the map was read; ``MOVED`` / ``ASK`` replies followed; attempts retried
    #: after a transient failure; commands that failed for good (time up).
    refreshes: int
    redirects: int
    retries: int
    failures: int


def parse_shards(reply: Any, asked: str) -> list[ClusterShard]:
    """The shards with slots in a ``CLUSTER SHARDS`` reply (RESP2: flat key/value
    lists) from the node at host ``asked``. A shard's primary is its node with role
    ``master``; replicas marked ``failed`` (or still ``loading``) are left out. A
    node that does not know its own address (one never introduced to another
    reports an empty ip) is taken to be at ``asked``."""
    shards = []
    for entry in reply:
        fields = _pairs(entry)
        bounds = [int(n) for n in fields.get(b"slots", ())]
        ranges = tuple(zip(bounds[::2], bounds[1::2], strict=True))
        primary: NodeAddress | None = None
        replicas: list[NodeAddress] = []
        for raw in fields.get(b"nodes", ()):
            node = _pairs(raw)
            if b"port" not in node:
                continue
            endpoint = node.get(b"endpoint") or b""
            if endpoint in (b"", b"?"):
                endpoint = node.get(b"ip") or b""
            address = (endpoint.decode() or asked, int(node[b"port"]))
            if node.get(b"role") == b"master":
                primary = address
            elif node.get(b"health") == b"online":
                replicas.append(address)
        if ranges and primary is not None:
            shards.append(ClusterShard(ranges, primary, tuple(replicas)))
    return shards


def _pairs(flat: Any) -> dict[bytes, Any]:
    items = list(flat)
    return dict(zip(items[::2], items[1::2], strict=True))


def _redirect_target(error: ValkeyError, asked: NodeAddress) -> tuple[int, NodeAddress]:
    """The slot and node of a ``MOVED`` / ``ASK`` reply (an empty host means the
    host of the node that answered)."""
    _, slot, where = error.message.split(" ", 2)
    host, _, port = where.strip().rpartition(":")
    return int(slot), (host.strip("[]") or asked[0], int(port))


async def _execute(args: tuple[Arg, ...], conn: ValkeyConnection) -> Any:
    return await conn.execute(*args)


class _Unreached(ValkeyUnavailable):
    """No connection to the node: the command was never sent, so it is safe to retry."""


class ValkeyCluster:
    """A client of one Valkey Cluster. Open it with :meth:`connect`, close it with
    :meth:`aclose`.

    >>> cluster = await ValkeyCluster.connect(parse_cluster_url(url))
    >>> await cluster.execute("SET", "k", 1, key="k")
    b'OK'

    ``connect_timeout`` bounds opening one connection; ``command_timeout`` bounds a
    whole :meth:`execute`, retries included. Both stay under 2 s by default so a
    node that disappears makes callers fail promptly.
    """

    def __init__(
        self,
        address: ClusterAddress,
        *,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.5,
    ) -> None:
        if not address.seeds:
            raise ValueError("a cluster address needs at least one seed node")
        self.address = address
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        #: The primary serving each slot (``None``: nobody, as far as we know).
        self._slots: list[NodeAddress | None] = [None] * SLOTS
        self._shards: tuple[ClusterShard, ...] = ()
        self._conns: dict[NodeAddress, ValkeyConnection] = {}
        self._opening: dict[NodeAddress, trio.Lock] = {}
        #: Set when the map read in flight is over (concurrent callers share one).
        self._refreshing: trio.Event | None = None
        self._refresh_error: str | None = None
        self._subscribers: weakref.WeakSet[ShardedSubscriber] = weakref.WeakSet()
        self._closed = False
        self._refreshes = self._redirects = self._retries = self._failures = 0

    @classmethod
    async def connect(
        cls,
        address: ClusterAddress | str,
        *,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.5,
    ) -> ValkeyCluster:
        """Read the slot map from the first seed that answers (each seed gets
        ``connect_timeout`` + ``command_timeout``). Raises :class:`ValkeyUnavailable`
        if none does, :class:`ValkeyError` if one refuses (a wrong password, or a
        server without cluster mode)."""
        if isinstance(address, str):
            address = parse_cluster_url(address)
        self = cls(address, connect_timeout=connect_timeout, command_timeout=command_timeout)
        try:
            await self.refresh()
        except BaseException:
            await self.aclose()
            raise
        return self

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    # -- the map -----------------------------------------------------------------------

    @property
    def shards(self) -> tuple[ClusterShard, ...]:
        """The shards as last read from the cluster."""
        return self._shards

    def primaries(self) -> list[NodeAddress]:
        """Each shard's primary, as last read."""
        return [shard.primary for shard in self._shards]

    def slot_owner(self, slot: int) -> NodeAddress | None:
        """The primary serving ``slot`` as far as this client knows."""
        return self._slots[slot]

    async def refresh(self) -> None:
        """Read the slot map again (``CLUSTER SHARDS``), from a known primary, else a
        replica, else a seed. Callers that come while a read is in flight wait for
        that one. Raises :class:`ValkeyUnavailable` if no node answered."""
        self._check_open()
        if self._refreshing is not None:
            await self._refreshing.wait()
            if self._refresh_error is not None:
                raise ValkeyUnavailable(self._refresh_error)
            return
        done = self._refreshing = trio.Event()
        try:
            self._refreshes += 1
            self._refresh_error = "no node of the cluster answered"
            await self._read_map()
            self._refresh_error = None
        finally:
            self._refreshing = None
            done.set()

    async def _refresh_quietly(self) -> None:
        """Read the map within ``command_timeout`` if a node answers; never raises
        (for a caller about to raise its own failure)."""
        with trio.move_on_after(self.command_timeout):
            with contextlib.suppress(ValkeyUnavailable):
                await self.refresh()

    def _candidates(self) -> list[NodeAddress]:
        nodes: list[NodeAddress] = []
        known = [s.primary for s in self._shards] + [r for s in self._shards for r in s.replicas]
        for node in [*known, *((seed.host, seed.port) for seed in self.address.seeds)]:
            if node not in nodes:
                nodes.append(node)
        # Nodes we hold a live connection to first: no connect needed.
        nodes.sort(key=lambda n: n not in self._conns or self._conns[n].closed)
        return nodes

    async def _read_map(self) -> None:
        failures: list[str] = []
        for node in self._candidates():
            conn: ValkeyConnection | None = None
            try:
                with trio.fail_after(self.connect_timeout + self.command_timeout):
                    conn = await self._connection(node)
                    reply = await conn.execute("CLUSTER", "SHARDS")
            except trio.TooSlowError:
                if conn is not None:
                    await conn.aclose()  # the node hangs: its callers learn it at once
                failures.append(f"{node[0]}:{node[1]}: timed out")
                continue
            except ValkeyUnavailable as exc:
                failures.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            except ValkeyError as exc:
                if exc.kind in _RETRIED:
                    failures.append(f"{node[0]}:{node[1]}: {exc}")
                    continue
                raise
            shards = parse_shards(reply, node[0])
            if not shards:
                failures.append(f"{node[0]}:{node[1]}: no shard serves any slot")
                continue
            slots: list[NodeAddress | None] = [None] * SLOTS
            for shard in shards:
                for first, last in shard.slots:
                    slots[first : last + 1] = [shard.primary] * (last - first + 1)
            self._slots, self._shards = slots, tuple(shards)
            return
        self._refresh_error = "no node of the cluster answered: " + "; ".join(failures)
        raise ValkeyUnavailable(self._refresh_error)

    # -- commands ----------------------------------------------------------------------

    async def execute(
        self,
        *args: Arg,
        key: str | bytes | None,
        retry: bool = True,
        idempotent: bool = False,
    ) -> Any:
        """Run one command on the primary serving ``key``'s slot and return its reply
        (every key the command touches must be in that slot: use a hash tag). A
        command that touches no key passes ``key=None`` and goes to the primary of
        slot 0.

        Follows ``MOVED`` / ``ASK`` and retries transient failures within
        ``command_timeout`` (see the module's docs). A command whose connection broke
        after it was sent raises :class:`ValkeyUnavailable` unless ``idempotent``.
        With ``retry=False`` the command is sent once: a redirection or a transient
        failure updates the map for the next command and is raised (a
        :class:`ValkeyError` whose ``kind`` is in ``TRANSIENT_ERRORS``, or
        :class:`ValkeyUnavailable`), for commands whose order is a promise (retries
        go out in whatever order their tasks wake).
        """
        run = functools.partial(_execute, args)
        return await self._routed(
            0 if key is None else key_slot(key),
            self._connection,
            run,
            idempotent=idempotent,
            retry=retry,
            asking=functools.partial(self._asking, run),
        )

    async def execute_on(self, node: NodeAddress, *args: Arg) -> Any:
        """Run one command on ``node`` (e.g. ``PING`` each primary), within
        ``command_timeout``, with no routing and no retry."""
        self._check_open()
        conn: ValkeyConnection | None = None
        with trio.move_on_after(self.command_timeout):
            conn = await self._connection(node)
            return await conn.execute(*args)
        if conn is not None:
            await conn.aclose()  # the node hangs: its other callers learn it at once
        raise ValkeyUnavailable(f"Valkey at {node[0]}:{node[1]} did not answer in time")

    async def _routed(
        self,
        slot: int,
        opener: Callable[[NodeAddress], Awaitable[_C]],
        run: Callable[[_C], Awaitable[_T]],
        *,
        idempotent: bool,
        retry: bool = True,
        asking: Callable[[NodeAddress], Awaitable[_T]] | None = None,
    ) -> _T:
        """``run(conn)`` on the connection ``opener`` gives for the node serving
        ``slot``, following redirections and retrying transient failures until
        ``command_timeout``. ``asking(node)`` follows an ``ASK`` (without it, an
        ``ASK`` is retried like ``TRYAGAIN``, until the move ends). ``retry=False``:
        one attempt; a failure refreshes the map and is raised.

        A command still unanswered when the time is up means its node hangs: that
        connection is closed (its other callers learn it at once) and
        :class:`ValkeyUnavailable` raised. One cancel scope per call: this is every
        command's path."""
        self._check_open()
        deadline = trio.current_time() + self.command_timeout
        ask: NodeAddress | None = None
        redirects = 0
        delay = _FIRST_BACKOFF
        failure: Exception | None = None
        while True:
            in_flight: _C | None = None
            with trio.move_on_at(deadline) as scope:
                node = ask or self._slots[slot]
                try:
                    if node is None:
                        try:
                            await self.refresh()
                        except ValkeyUnavailable as exc:
                            raise _Unreached(str(exc)) from exc  # nothing was sent
                        node = self._slots[slot]
                        if node is None:
                            raise _Unreached(f"no node of the cluster serves slot {slot}")
                    if ask is not None and asking is not None:
                        ask = None
                        return await asking(node)
                    conn = await opener(node)
                    in_flight = conn
                    return await run(conn)
                except ValkeyError as exc:
                    in_flight = None
                    redirect = exc.kind == "MOVED" or (exc.kind == "ASK" and asking is not None)
                    if not retry and exc.kind in _REFRESHING:
                        await self._refresh_quietly()
                        if exc.kind == "MOVED":
                            moved_slot, target = _redirect_target(exc, node or ("", 0))
                            self._slots[moved_slot] = target
                        self._failures += 1
                        raise
                    if redirect and redirects < _MAX_REDIRECTS:
                        redirects += 1
                        self._redirects += 1
                        moved_slot, target = _redirect_target(exc, node or ("", 0))
                        if exc.kind == "ASK":
                            ask = target
                            continue
                        # The whole range has likely moved (a failover): read the map.
                        try:
                            await self.refresh()
                        except ValkeyUnavailable as unreached:
                            failure = unreached
                        self._slots[moved_slot] = target
                        continue
                    if exc.kind not in _REFRESHING:
                        raise
                    failure = exc
                except _Unreached as exc:
                    if not retry:
                        await self._refresh_quietly()
                        self._failures += 1
                        raise ValkeyUnavailable(str(exc)) from exc
                    failure = exc
                except ValkeyUnavailable as exc:
                    in_flight = None
                    if not idempotent or not retry:
                        self._failures += 1
                        raise
                    failure = exc
            if scope.cancelled_caught and in_flight is not None:
                await in_flight.aclose()
                self._failures += 1
                raise ValkeyUnavailable(
                    f"Valkey did not answer within {self.command_timeout} s (slot {slot})"
                )
            if trio.current_time() + delay >= deadline:
                break
            self._retries += 1
            await trio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
            with trio.move_on_at(deadline):
                try:
                    await self.refresh()
                except ValkeyUnavailable as exc:
                    failure = exc
        self._failures += 1
        if isinstance(failure, ValkeyError):
            raise failure
        reason = f"{failure}" if failure is not None else "timed out"
        raise ValkeyUnavailable(
            f"the cluster did not serve slot {slot} within {self.command_timeout} s: {reason}"
        ) from failure

    async def _asking(
        self, run: Callable[[ValkeyConnection], Awaitable[_T]], node: NodeAddress
    ) -> _T:
        """``ASKING`` then the command, on a connection of their own (on the shared one
        another caller's command could come in between and lose the ``ASKING``)."""
        conn = await self._open(node)
        try:
            await conn.execute("ASKING")
            return await run(conn)
        finally:
            await conn.aclose()

    async def _open(self, node: NodeAddress) -> ValkeyConnection:
        try:
            return await ValkeyConnection.connect(
                node[0],
                node[1],
                password=self.address.password,
                connect_timeout=self.connect_timeout,
            )
        except ValkeyUnavailable as exc:
            raise _Unreached(str(exc)) from exc

    async def _connection(self, node: NodeAddress) -> ValkeyConnection:
        """The pipelined connection to ``node``, opened if there is none (or it broke)."""
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        async with self._opening.setdefault(node, trio.Lock()):
            conn = self._conns.get(node)
            if conn is not None and not conn.closed:
                return conn
            conn = await self._open(node)
            if self._closed:
                await conn.aclose()
                raise ValkeyUnavailable("the cluster client is closed")
            self._conns[node] = conn
            return conn

    def _check_open(self) -> None:
        if self._closed:
            raise ValkeyUnavailable("the cluster client is closed")

    # -- sharded pub/sub -----------------------------------------------------------------

    def sharded_subscriber(self) -> ShardedSubscriber:
        """A new :class:`ShardedSubscriber` on this cluster (no connection yet)."""
        subscriber = ShardedSubscriber(self)
        self._subscribers.add(subscriber)
        return subscriber

    # -- the rest ------------------------------------------------------------------------

    def statistics(self) -> ValkeyClusterStatistics:
        open_conns = sum(not c.closed for c in self._conns.values())
        open_conns += sum(s._open_links() for s in self._subscribers)
        return ValkeyClusterStatistics(
            shards=len(self._shards),
            connections=open_conns,
            refreshes=self._refreshes,
            redirects=self._redirects,
            retries=self._retries,
            failures=self._failures,
        )

    async def aclose(self) -> None:
        """Close every connection (subscribers' too); callers still waiting get
        :class:`ValkeyUnavailable`."""
        self._closed = True
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.aclose()
        for subscriber in list(self._subscribers):
            await subscriber._close_links()

    async def __aenter__(self) -> ValkeyCluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ShardedSubscriber:
    """Sharded pub/sub on a cluster: one subscriber connection per shard primary.

    Made by :meth:`ValkeyCluster.sharded_subscriber`. Run :meth:`listen` in a task;
    while it runs, :meth:`ssubscribe` and :meth:`sunsubscribe` return once Valkey
    confirmed them. A channel is served by the shard of its slot (:func:`key_slot`
    of the channel name, hash tags included).

    Channels can be lost without asking: the shard's connection dies (the primary
    crashed), or the node stops serving their slot (a failover or a resharding) and
    says so with a ``sunsubscribe`` push. ``listen`` reports them to ``on_lost``,
    already removed from :attr:`channels`; subscribing them again finds the shard
    serving them now (retrying while a failover runs, within ``command_timeout``).
    Whatever was published meanwhile is missed: the owner recovers it (history).
    """

    def __init__(self, cluster: ValkeyCluster) -> None:
        self._cluster = cluster
        self._links: dict[NodeAddress, ValkeySubscriber] = {}
        self._opening: dict[NodeAddress, trio.Lock] = {}
        #: Channels confirmed, and the node whose connection holds each.
        self._channels: dict[bytes, NodeAddress] = {}
        self._nursery: trio.Nursery | None = None
        #: Set while :meth:`listen` runs.
        self._listening = trio.Event()
        self._on_message: Callable[[bytes, bytes], Awaitable[object] | None] | None = None
        self._on_lost: Callable[[frozenset[bytes]], Awaitable[object] | None] | None = None

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels subscribed (confirmed) now."""
        return frozenset(self._channels)

    async def listen(
        self,
        on_message: Callable[[bytes, bytes], Awaitable[object] | None],
        on_lost: Callable[[frozenset[bytes]], Awaitable[object] | None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Run until cancelled: ``on_message(channel, data)`` for every message (in
        order per shard; awaited before that shard's next push is read),
        ``on_lost(channels)`` for channels lost without asking. The loss of a
        shard is reported, never raised. On the way out every connection closes.
        ``nursery.start(sub.listen, ...)`` returns once it listens (with
        ``start_soon``, a subscribe waits for it)."""
        if self._nursery is not None:
            raise RuntimeError("this ShardedSubscriber is already listening")
        self._on_message, self._on_lost = on_message, on_lost
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._listening.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._listening = trio.Event()
            await self._close_links()
            self._channels.clear()
        raise AssertionError("unreachable")  # pragma: no cover

    async def ssubscribe(self, channel: str | bytes) -> None:
        """Subscribe to ``channel`` on the primary serving its slot; return once
        confirmed. Raises :class:`ValkeyUnavailable` (retryable) if no node serves it
        within ``command_timeout``, :class:`ValkeyError` for any other refusal."""
        if self._nursery is None:
            with trio.move_on_after(self._cluster.command_timeout):
                await self._listening.wait()
            if self._nursery is None:
                raise RuntimeError("run listen() before subscribing")
        name = channel.encode() if isinstance(channel, str) else channel

        async def run(link: ValkeySubscriber) -> NodeAddress:
            await link.ssubscribe(name)
            return self._node_of(link)

        node = await self._cluster._routed(key_slot(name), self._link, run, idempotent=True)
        self._channels[name] = node

    async def sunsubscribe(self, channel: str | bytes) -> None:
        """Unsubscribe from ``channel``. Returns once confirmed, or at once when its
        connection is gone (nothing to unsubscribe then); never raises for Valkey."""
        channel = channel.encode() if isinstance(channel, str) else channel
        node = self._channels.pop(channel, None)
        link = self._links.get(node) if node is not None else None
        if link is None or link.closed:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(self._cluster.command_timeout):
            # Lost with its connection, or the slot moved: not subscribed either way.
            with contextlib.suppress(ValkeyError, ValkeyUnavailable):
                await link.sunsubscribe(channel)

    def _node_of(self, link: ValkeySubscriber) -> NodeAddress:
        for node, known in self._links.items():
            if known is link:
                return node
        raise ValkeyUnavailable("the shard's connection was lost")

    async def _link(self, node: NodeAddress) -> ValkeySubscriber:
        """The subscriber connection to ``node``, opened (and its listener started)
        if there is none."""
        link = self._links.get(node)
        if link is not None and not link.closed:
            return link
        async with self._opening.setdefault(node, trio.Lock()):
            link = self._links.get(node)
            if link is not None and not link.closed:
                return link
            cluster = self._cluster
            try:
                link = await ValkeySubscriber.connect(
                    node[0],
                    node[1],
                    password=cluster.address.password,
                    connect_timeout=cluster.connect_timeout,
                )
            except ValkeyUnavailable as exc:
                raise _Unreached(str(exc)) from exc
            if self._nursery is None or cluster._closed:
                await link.aclose()
                raise ValkeyUnavailable("the sharded subscriber stopped listening")
            self._links[node] = link
            self._nursery.start_soon(self._serve, node, link)
            return link

    async def _serve(self, node: NodeAddress, link: ValkeySubscriber) -> None:
        """Read ``link``'s pushes until it breaks; then report its channels lost."""
        assert self._on_message is not None
        with contextlib.suppress(ValkeyUnavailable):
            await link.listen(self._on_message, functools.partial(self._unasked, node))
        if self._links.get(node) is link:
            del self._links[node]
        lost = frozenset(c for c, n in self._channels.items() if n == node)
        for channel in lost:
            del self._channels[channel]
        if lost and not self._cluster._closed:
            await self._report(lost)

    async def _unasked(self, node: NodeAddress, kind: bytes, channel: bytes) -> None:
        """The node unsubscribed us from ``channel`` (it no longer serves its slot)."""
        if kind == b"sunsubscribe" and self._channels.get(channel) == node:
            del self._channels[channel]
            await self._report(frozenset({channel}))

    async def _report(self, lost: frozenset[bytes]) -> None:
        assert self._on_lost is not None
        handled = self._on_lost(lost)
        if handled is not None:
            await handled

    async def aclose(self) -> None:
        """Close every shard connection now (their channels are dropped unreported);
        :meth:`listen`, if running, keeps running with no channel until cancelled."""
        self._channels.clear()
        await self._close_links()

    def _open_links(self) -> int:
        return sum(not link.closed for link in self._links.values())

    async def _close_links(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()
