"""The seam between the Valkey backends and where their commands go: one node or a cluster.

``ValkeyPubSub`` and ``ValkeyRateLimiter`` run commands through :class:`Commands` and
receive pushes through :class:`Subscriptions`, so one code path serves both a single
Valkey (``valkey://``) and a Valkey Cluster (``valkey+cluster://``):

* Every command names the key it touches (``key=``). A single node ignores it; a
  cluster routes the command to the primary owning that key's slot, so a script's
  keys (and a sharded channel) must share one slot (:class:`Layout` gives them one
  hash tag).
* ``ordered=True`` marks a command whose order relative to its neighbours is a
  promise (a publish, delivery.md §10.2): a cluster then does not retry it after a
  redirect or a transient error, since retries go out in whatever order their tasks
  wake; the caller gets the error (retryable) instead.
* A single node's subscriber connection is one ``SUBSCRIBE`` connection whose loss
  ends the session; a cluster's is one ``SSUBSCRIBE`` connection per shard, whose
  loss (or a ``sunsubscribe`` push after a failover or a resharding) only loses that
  shard's channels, reported to the owner to re-subscribe and catch up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from .._errors import ConfigurationError
from ._cluster import ShardedSubscriber, ValkeyCluster
from ._connection import Arg, ValkeyConnection

__all__ = [
    "ClusterCommands",
    "ClusterSubscriptions",
    "Commands",
    "Layout",
    "NodeCommands",
    "OnMessage",
    "Subscriptions",
    "commands_of",
]

#: ``on_message(channel, data)``, awaited before the next push of its connection.
OnMessage = Callable[[bytes, bytes], Awaitable[None]]


class Commands(Protocol):
    """Runs commands on one node, or on a cluster routing each by ``key``."""

    @property
    def closed(self) -> bool: ...

    def execute(
        self, *args: Arg, key: str | bytes | None = None, ordered: bool = False
    ) -> Awaitable[Any]: ...

    async def aclose(self) -> None: ...


class Subscriptions(Protocol):
    """Channel subscriptions: one node's ``SUBSCRIBE`` connection, or a cluster's
    ``SSUBSCRIBE`` connections (one per shard)."""

    @property
    def channels(self) -> frozenset[bytes]: ...

    async def subscribe(self, *channels: bytes) -> None: ...

    async def unsubscribe(self, *channels: bytes) -> None: ...

    async def listen(self, on_message: OnMessage) -> None:
        """Read pushes until cancelled, or (one node) until the connection is lost,
        raising ``ValkeyUnavailable``."""
        ...

    async def aclose(self) -> None: ...


class NodeCommands:
    """:class:`Commands` on one :class:`ValkeyConnection` (``key`` and ``ordered`` need
    nothing: one connection runs commands in the order they were sent)."""

    __slots__ = ("conn",)

    def __init__(self, conn: ValkeyConnection) -> None:
        self.conn = conn

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def execute(
        self, *args: Arg, key: str | bytes | None = None, ordered: bool = False
    ) -> Awaitable[Any]:
        return self.conn.execute(*args)

    async def aclose(self) -> None:
        await self.conn.aclose()


class ClusterCommands:
    """:class:`Commands` on a :class:`ValkeyCluster`: routed by ``key``'s slot; an
    ``ordered`` command is not retried (the cluster client raises instead)."""

    __slots__ = ("cluster",)

    def __init__(self, cluster: ValkeyCluster) -> None:
        self.cluster = cluster

    @property
    def closed(self) -> bool:
        return self.cluster.closed

    def execute(
        self, *args: Arg, key: str | bytes | None = None, ordered: bool = False
    ) -> Awaitable[Any]:
        return self.cluster.execute(*args, key=key, retry=not ordered)

    async def aclose(self) -> None:
        await self.cluster.aclose()


class ClusterSubscriptions:
    """:class:`Subscriptions` on a cluster's :class:`ShardedSubscriber`. Channels it
    loses without being asked (a shard's connection died, or a promoted replica or a
    resharding sent ``sunsubscribe``) go to ``on_lost``, which must only take note:
    it runs in the shard's reader."""

    __slots__ = ("_on_lost", "sub")

    def __init__(self, sub: ShardedSubscriber, on_lost: Callable[[frozenset[bytes]], None]) -> None:
        self.sub = sub
        self._on_lost = on_lost

    @property
    def channels(self) -> frozenset[bytes]:
        return self.sub.channels

    async def subscribe(self, *channels: bytes) -> None:
        # One slot per SSUBSCRIBE (CROSSSLOT otherwise): one channel at a time.
        for channel in channels:
            await self.sub.ssubscribe(channel)

    async def unsubscribe(self, *channels: bytes) -> None:
        for channel in channels:
            await self.sub.sunsubscribe(channel)

    async def listen(self, on_message: OnMessage) -> None:
        async def lost(channels: frozenset[bytes]) -> None:
            self._on_lost(channels)

        await self.sub.listen(on_message, lost)

    async def aclose(self) -> None:
        await self.sub.aclose()


def commands_of(conn: ValkeyConnection | ValkeyCluster) -> Commands:
    """:class:`Commands` on a node's connection or on a cluster."""
    return ClusterCommands(conn) if isinstance(conn, ValkeyCluster) else NodeCommands(conn)


@attrs.frozen
class Layout:
    """Where a topic's channel and history keys are, under ``prefix``.

    On one node: channel ``<prefix><topic>``, keys ``<prefix>h:<topic>`` (stream) and
    ``<prefix>hm:<topic>`` (meta hash), as always. On a cluster all three share the
    hash tag ``{<topic>}`` (``<prefix>{<topic>}``, ``<prefix>h:{<topic>}``,
    ``<prefix>hm:{<topic>}``), so the publish script, which touches the keys and
    publishes on the channel, runs on the one shard owning that slot. A topic that
    cannot be a hash tag (empty, or holding ``}``) is tagged by a digest instead:
    ``{#<sha1 prefix>}:<topic>``. The prefix may not hold braces on a cluster (its
    tag would take over, and differently for the channel and the keys).
    """

    prefix: str
    cluster: bool = False

    def __attrs_post_init__(self) -> None:
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ConfigurationError(
                f"a Valkey Cluster prefix may not hold braces (hash tags): {self.prefix!r}"
            )

    def tagged(self, topic: str) -> str:
        """The topic as it appears in names: itself (one node), or with its hash tag."""
        if not self.cluster:
            return topic
        if topic and "}" not in topic:
            return "{" + topic + "}"
        digest = hashlib.sha1(topic.encode()).hexdigest()[:16]
        return "{#" + digest + "}:" + topic

    def channel(self, topic: str) -> str:
        return self.prefix + self.tagged(topic)

    def history_keys(self, topic: str) -> tuple[str, str]:
        """The topic's stream and meta hash."""
        tagged = self.tagged(topic)
        return f"{self.prefix}h:{tagged}", f"{self.prefix}hm:{tagged}"
