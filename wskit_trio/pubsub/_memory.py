"""The embedded default: one process, delivery straight into subscribers' queues."""

from __future__ import annotations

from collections.abc import Callable, Collection

import trio

from .._protocol.pubsub import Envelope
from ._backend import Capability, Deliver, PublishResult

__all__ = ["MemoryPubSub"]


def _no_delivery(envelope: Envelope) -> int:
    return 0


class MemoryPubSub:
    """In-process pub/sub: a publish is delivered before ``publish`` returns."""

    capability: Capability = "exact"
    #: Nothing to lose touch with.
    healthy: bool = True

    def __init__(self) -> None:
        self._deliver: Deliver = _no_delivery

    def attach(self, deliver: Deliver, local_topics: Callable[[], Collection[str]]) -> None:
        self._deliver = deliver

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def subscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def publish(self, envelope: Envelope) -> PublishResult:
        # Cancellation is honoured before delivery, never halfway through it.
        await trio.lowlevel.checkpoint_if_cancelled()
        return PublishResult(ok=True, matched=self._deliver(envelope), capability="exact")
