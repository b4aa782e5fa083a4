"""The observation points the runtime offers to metrics (``wskit_trio.middleware.Metrics``).

A router carries at most one observer (``None`` by default, and then the hot
path pays one ``is None`` test per inbound message and per outbound batch).
Calls are synchronous and must be cheap; they must not raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._protocol.pubsub import PublishResult

__all__ = ["Observer"]


class Observer(Protocol):
    def connection_opened(self) -> None:
        """A connection was accepted and starts running."""

    def connection_closed(self) -> None:
        """A connection ended (every connection opened ends exactly once)."""

    def frame_in(self, type: str | None, routed: bool) -> None:
        """An inbound message: its ``type`` (``None`` when it was not a valid frame)
        and whether a route is registered for it."""

    def frames_out(self, frames: list[str]) -> None:
        """Encoded frames just written to a client."""

    def published(self, result: PublishResult) -> None:
        """The outcome of one publish (``ctx.publish`` or ``router.publish``)."""
