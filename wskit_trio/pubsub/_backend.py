"""The seam between local fan-out and whatever carries messages between instances."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal, Protocol, TypeAlias

import attrs
import trio

from .._protocol.pubsub import Envelope

__all__ = ["Capability", "Deliver", "PubSubBackend", "PublishResult"]

Capability: TypeAlias = Literal["exact", "unknown"]
#: Hands an envelope to this instance's local subscribers; returns how many matched.
Deliver: TypeAlias = Callable[[Envelope], int]


@attrs.frozen
class PublishResult:
    """What a publish achieved.

    ``ok`` means the backend accepted the message. ``matched`` is the number of
    subscribers it was handed to when the backend can know it (``capability ==
    "exact"``), else ``None``. On failure ``error`` is an error code and
    ``retryable`` says whether trying again later may succeed.
    """

    ok: bool
    matched: int | None = None
    capability: Capability = "exact"
    error: str | None = None
    retryable: bool = False


class PubSubBackend(Protocol):
    """Carries envelopes to every instance (the publisher's included).

    The hub calls :meth:`attach` once, then runs :meth:`run` in the server's
    nursery for the backend's whole life. Every instance delivers what reaches it
    to its own local subscribers only (protocol.md §9).
    """

    capability: Capability

    @property
    def healthy(self) -> bool:
        """Whether publishes can get through now (the health endpoint reports it)."""
        ...

    def attach(self, deliver: Deliver, local_topics: Callable[[], Collection[str]]) -> None:
        """Where to hand received envelopes, and which topics have local subscribers
        (to subscribe again after a reconnect)."""
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
        """Send to every instance. Never raises for backend trouble: reports it, promptly."""
        ...
