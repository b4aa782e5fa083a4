"""The embedded default: one process, delivery straight into subscribers' queues."""

from __future__ import annotations

from collections.abc import Callable, Collection

import trio

from .._protocol.pubsub import Envelope
from ._backend import Capability, Deliver, PublishResult

__all__ = ["MemoryPubSub"]


class MemoryPubSub:
    """In-process pub/sub: a publish is delivered before ``publish`` returns, to every
    server attached (several servers of one router in one process share it, as
    instances share a Valkey)."""

    capability: Capability = "exact"
    #: Nothing to lose touch with.
    healthy: bool = True

    def __init__(self) -> None:
        self._delivers: list[Deliver] = []

    def attach(self, deliver: Deliver, local_topics: Callable[[], Collection[str]]) -> None:
        self._delivers.append(deliver)

    def detach(self, deliver: Deliver) -> None:
        if deliver in self._delivers:
            self._delivers.remove(deliver)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def subscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def publish(self, envelope: Envelope) -> PublishResult:
        # Cancellation is honoured before delivery, never halfway through it.
        await trio.lowlevel.checkpoint_if_cancelled()
        matched = sum(deliver(envelope) for deliver in self._delivers)
        return PublishResult(ok=True, matched=matched, capability="exact")
