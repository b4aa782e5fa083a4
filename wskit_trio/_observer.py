"""The observation points the runtime offers to metrics (``wskit_trio.middleware.Metrics``,
``wskit_trio.prometheus.PrometheusMetrics``).

A router carries at most one observer (``None`` by default, and then the hot
path pays one ``is None`` test per inbound message and per outbound batch).
Calls are synchronous and must be cheap; they must not raise.

Counts the runtime keeps anyway (a hub's deliveries and cut-offs, a connection's
dropped frames) are not reported one by one: the observer is handed the hub or
the connection and may read their ``statistics()`` when it is asked for numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._handle import ConnectionHandle
    from ._protocol.pubsub import PublishResult

__all__ = ["HubView", "Observer"]


class _Healthy(Protocol):
    @property
    def healthy(self) -> bool: ...


class _HubCounts(Protocol):
    @property
    def delivered(self) -> int: ...
    @property
    def cut_off(self) -> int: ...


class HubView(Protocol):
    """A server's pub/sub hub (``PubSubHub``), as an observer reads it: the hub
    itself cannot be named here without an import cycle."""

    @property
    def backend(self) -> _Healthy: ...

    def statistics(self) -> _HubCounts: ...


class Observer(Protocol):
    def connection_opened(self, conn: ConnectionHandle) -> None:
        """A connection was accepted and starts running."""

    def connection_closed(self, conn: ConnectionHandle) -> None:
        """A connection ended (every connection opened ends exactly once); its
        ``statistics()`` are final."""

    def frame_in(self, type: str | None, routed: bool) -> None:
        """An inbound message: its ``type`` (``None`` when it was not a valid frame)
        and whether a route is registered for it."""

    def frames_out(self, frames: list[str]) -> None:
        """Encoded frames just written to a client."""

    def published(self, result: PublishResult) -> None:
        """The outcome of one publish (``ctx.publish`` or ``router.publish``)."""

    def rpc_finished(self, type: str, outcome: str, seconds: float) -> None:
        """An RPC's task ended, ``seconds`` (``trio.current_time()``'s clock) after its
        handler started: the whole middleware chain and handler, and the error
        answer of a handler that raised. ``outcome`` is what the client was
        answered: ``"ok"`` (the reply) or the error code; ``"aborted"`` when the
        client gave up (``$ws:abort``), ``"cancelled"`` when the connection closed
        or the server shut down first."""

    def pubsub_started(self, hub: HubView) -> None:
        """A server's pub/sub hub attached to its backend (the server starts)."""

    def pubsub_stopped(self, hub: HubView) -> None:
        """That hub detached (the server stopped); its ``statistics()`` are final."""
