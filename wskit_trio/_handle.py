"""What the rest of the runtime sees of a connection, and of the server's pub/sub.

Contexts and the pub/sub hub talk to a connection through
:class:`ConnectionHandle`, and contexts reach the hub through
:class:`Subscriptions`; neither knows the ``Connection`` class or the hub class.
This module imports nothing else of the runtime's, so the modules above it form
no import cycle (a test checks the package's import graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._outbound import FrameKind, OutboxStatistics

if TYPE_CHECKING:
    from ._protocol.pubsub import Position, PublishResult, Recovery
    from ._schema import MessageSchema
    from ._transport import UpgradeRequest

__all__ = ["ConnectionHandle", "ConnectionStatistics", "Subscriptions"]


@attrs.frozen
class ConnectionStatistics:
    """One connection's load: what it has in flight and how its outbound queue fares
    (``outbox.dropped`` counts frames a slow client lost to the queue policy)."""

    client_id: str
    rpcs_in_flight: int
    topics: int
    outbox: OutboxStatistics


class Subscriptions(Protocol):
    """The server's pub/sub hub, as a connection's contexts use it. ``ctx`` is the
    context asking (the topic policy's ``authorize`` hook gets it)."""

    async def subscribe(
        self,
        conn: ConnectionHandle,
        topic: str,
        ctx: object,
        *,
        positions: bool = False,
        since: Position | None = None,
        drop_oldest: bool = False,
    ) -> Recovery | None: ...

    async def unsubscribe(self, conn: ConnectionHandle, topic: str, ctx: object) -> None: ...

    def topics_of(self, conn: ConnectionHandle) -> frozenset[str]: ...

    async def remove(self, conn: ConnectionHandle) -> None:
        """Drop every subscription of a connection that has closed."""
        ...

    async def publish(
        self,
        topic: str,
        schema: MessageSchema[Any],
        payload: Any,
        *,
        meta: dict[str, Any] | None = None,
        exclude: str | None = None,
        ctx: object = None,
    ) -> PublishResult: ...


class ConnectionHandle(Protocol):
    """One live connection, as contexts and the pub/sub hub use it."""

    @property
    def client_id(self) -> str: ...

    #: The app's connection data (``authenticate``'s result, as changed since).
    data: Any

    @property
    def request(self) -> UpgradeRequest: ...

    @property
    def pubsub(self) -> Subscriptions: ...

    async def send(self, frame: str, kind: FrameKind) -> bool:
        """Queue an encoded frame (the queue's policy applies; see ``Outbox.put``)."""
        ...

    def offer(self, frame: str, *, wake: bool = True) -> bool:
        """Queue a frame if there is room now; ``False`` (nothing queued) if not.
        ``wake=False``: the writer is not woken for it; the caller must call
        :meth:`flush_nowait` before anything can wait for it (the hub does, at the
        end of a delivery burst)."""
        ...

    def flush_nowait(self) -> None:
        """Write the queued frames from the calling task if the writer is idle and
        the socket takes them at once; else wake the writer for them. Never waits."""
        ...

    async def send_within(self, frame: str, patience: float) -> bool:
        """Queue a frame, waiting at most ``patience`` seconds for room (pub/sub
        fan-out); ``False`` if nothing was queued."""
        ...

    def send_replacing(self, frame: str, group: str) -> bool:
        """Queue a frame that supersedes the older frames of ``group``: when full,
        the oldest of those make room; ``False`` (nothing queued) if they can't."""
        ...

    def cut_off(self, code: int, reason: str) -> bool:
        """Close a client that cannot keep up: queued frames dropped, close ``code``.
        ``False`` if it was closing already."""
        ...

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        """Close once the frames already queued are sent."""
        ...

    def statistics(self) -> ConnectionStatistics: ...
