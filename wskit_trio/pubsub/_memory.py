"""The embedded default: one process, delivery straight into subscribers' queues.

History (delivery.md §11) lives in a ring buffer per topic. Its epoch is new for
each backend object (a restarted process has lost its history) and again
whenever a topic's history expired (``History.ttl`` after its last publish).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Collection
from typing import Final

import attrs
import trio

from .._protocol.pubsub import Envelope, History, HistorySlice, Position
from ._backend import Capability, Deliver, PublishResult

__all__ = ["MemoryPubSub"]

#: Every so many history operations, expired topics are swept out.
_SWEEP_EVERY: Final = 1024


class _TopicHistory:
    __slots__ = ("envelopes", "epoch", "last_publish", "latest")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = uuid.uuid4().hex
        self.latest = 0
        self.envelopes: deque[Envelope] = deque(maxlen=size)
        self.last_publish = now


class MemoryPubSub:
    """In-process pub/sub: a publish is delivered before ``publish`` returns, to every
    server attached (several servers of one router in one process share it, as
    instances share a Valkey)."""

    capability: Capability = "exact"
    #: Nothing to lose touch with.
    healthy: bool = True

    def __init__(self) -> None:
        self._delivers: list[Deliver] = []
        self._history: History | None = None
        self._topics: dict[str, _TopicHistory] = {}
        self._operations = 0

    def attach(
        self,
        deliver: Deliver,
        local_topics: Callable[[], Collection[str]],
        history: History | None = None,
    ) -> None:
        self._delivers.append(deliver)
        if history is not None:
            self._history = history

    def detach(self, deliver: Deliver) -> None:
        if deliver in self._delivers:
            self._delivers.remove(deliver)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def subscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    def _kept(self, topic: str, history: History) -> _TopicHistory:
        """The topic's history; a new one (a new epoch) if it had none or it expired."""
        now = trio.current_time()
        self._operations += 1
        if self._operations % _SWEEP_EVERY == 0:
            # Topics nobody touches any more expire too, so their buffers are freed.
            for name, other in list(self._topics.items()):
                if now - other.last_publish > history.ttl:
                    del self._topics[name]
        kept = self._topics.get(topic)
        if kept is None or now - kept.last_publish > history.ttl:
            kept = self._topics[topic] = _TopicHistory(history.size, now)
        return kept

    async def publish(self, envelope: Envelope) -> PublishResult:
        # Cancellation is honoured before delivery, never halfway through it. Nothing
        # below yields before the delivery starts, so publishes are numbered and
        # delivered in the order they were made.
        await trio.lowlevel.checkpoint_if_cancelled()
        position: Position | None = None
        history = self._history
        if history is not None and history.covers(envelope.topic):
            kept = self._kept(envelope.topic, history)
            kept.latest += 1
            kept.last_publish = trio.current_time()
            envelope = attrs.evolve(envelope, offset=kept.latest, epoch=kept.epoch)
            kept.envelopes.append(envelope)
            position = Position(kept.latest, kept.epoch)
        matched = 0
        for deliver in list(self._delivers):
            matched += await deliver(envelope)
        return PublishResult(ok=True, matched=matched, capability="exact", position=position)

    async def read_history(self, topic: str, after: int | None) -> HistorySlice:
        await trio.lowlevel.checkpoint()
        history = self._history
        if history is None or not history.covers(topic):
            return HistorySlice(epoch="", latest=0, complete=False)
        # A topic read before its first publish gets its epoch now: the position
        # handed out (offset 0) stays valid for the messages that follow.
        kept = self._kept(topic, history)
        if after is None:
            return HistorySlice(kept.epoch, kept.latest)
        envelopes = tuple(e for e in kept.envelopes if e.offset is not None and e.offset > after)
        oldest = kept.envelopes[0].offset if kept.envelopes else kept.latest + 1
        complete = oldest is not None and oldest <= after + 1
        return HistorySlice(kept.epoch, kept.latest, envelopes, complete)
