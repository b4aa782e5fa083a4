"""The seam between local fan-out and whatever carries messages between instances."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol, TypeAlias

import trio

from .._protocol.pubsub import Capability, Envelope, History, HistorySlice, PublishResult

__all__ = ["Capability", "Deliver", "PubSubBackend", "PublishResult"]

#: Hands an envelope to this instance's local subscribers; returns how many matched.
#: It may wait (a subscriber's queue is full: delivery.md §10.3), at most about
#: ``Limits.slow_consumer_timeout`` per stalled subscriber; envelopes of one topic
#: must be handed over one at a time, in order.
Deliver: TypeAlias = Callable[[Envelope], Awaitable[int]]


class PubSubBackend(Protocol):
    """Carries envelopes to every instance (the publisher's included).

    A server's hub calls :meth:`attach` when the server starts, runs :meth:`run` in
    the server's nursery while it serves, and :meth:`detach` when it stops. Every
    instance delivers what reaches it to its own local subscribers only
    (docs/protocol.md §9).
    """

    capability: Capability

    @property
    def healthy(self) -> bool:
        """Whether publishes can get through now (the health endpoint reports it)."""
        ...

    def attach(
        self,
        deliver: Deliver,
        local_topics: Callable[[], Collection[str]],
        history: History | None = None,
    ) -> None:
        """Where to hand received envelopes, which topics have local subscribers (to
        subscribe again after a reconnect), and which topics keep history."""
        ...

    def detach(self, deliver: Deliver) -> None:
        """Stop handing envelopes to ``deliver`` (its server has stopped)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (connections, reconnects) until cancelled."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Start receiving ``topic``; return once the backend confirmed it. Raises
        ``WsKitError(UNAVAILABLE)`` when it cannot."""
        ...

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (no local subscriber is left). Best effort."""
        ...

    async def publish(self, envelope: Envelope) -> PublishResult:
        """Send to every instance. Never raises for backend trouble: reports it, promptly.

        For a topic with history, ``ok`` means the message is in the history: the
        backend gave it the next offset in the topic's epoch, atomically with
        appending and publishing it (delivery.md §11.2), and the envelope every
        instance receives carries that position."""
        ...

    async def read_history(self, topic: str, after: int | None) -> HistorySlice:
        """The topic's epoch and latest offset, and its kept messages after offset
        ``after`` (``None``: no messages, only where the topic stands; delivery.md
        §12). A topic without history answers ``complete=False``. Raises
        ``WsKitError(UNAVAILABLE)`` promptly when the backend cannot be reached."""
        ...
