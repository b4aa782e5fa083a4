"""The bounded per-connection outbound queue and its full-queue policies.

Every frame a connection sends goes through one :class:`Outbox` to one writer
task, so frames keep their order and a slow client costs at most ``capacity``
frames of memory. What happens when the queue is full is the policy:

* ``"wait"``: the sender waits for room (back-pressure into the handler).
* ``"drop_oldest"``: the oldest progress frame is dropped, else the oldest
  plain frame; the sender never waits.
* ``"close"``: the slow client is closed with 1008.

Terminal RPC frames (replies and RPC errors) are never dropped and never wait:
they may exceed ``capacity``, bounded by the limit on RPCs in flight. So a
reply cannot be lost to a deadline that expires while it waits for room.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Literal, TypeAlias

import attrs
import trio

__all__ = ["FrameKind", "Outbox", "OutboxStatistics", "QueuePolicy"]

QueuePolicy: TypeAlias = Literal["wait", "drop_oldest", "close"]


class FrameKind(enum.IntEnum):
    PROGRESS = 0  # dropped first
    PLAIN = 1
    TERMINAL = 2  # never dropped


@attrs.frozen
class OutboxStatistics:
    queued: int
    capacity: int
    dropped: int
    sent: int


class Outbox:
    """A FIFO of encoded frames with a capacity and a full-queue policy."""

    def __init__(self, capacity: int, policy: QueuePolicy = "wait") -> None:
        if capacity < 1:
            raise ValueError("outbound queue capacity must be at least 1")
        self.capacity = capacity
        self.policy: QueuePolicy = policy
        self._frames: deque[tuple[str, FrameKind]] = deque()
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._closed = False
        #: Set when the "close" policy fired; the connection closes with 1008.
        self.overflowed = trio.Event()
        self.dropped = 0
        self.sent = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(len(self._frames), self.capacity, self.dropped, self.sent)

    def put_nowait(self, frame: str, kind: FrameKind = FrameKind.PLAIN) -> bool:
        """Queue without waiting. Returns ``False`` if the frame was not queued.

        Under ``"wait"`` a full queue refuses the frame (counted as dropped);
        callers that must not block (pub/sub fan-out) use this.
        """
        if self._closed:
            return False
        if len(self._frames) >= self.capacity and kind is not FrameKind.TERMINAL:
            if self.policy == "close":
                self.overflowed.set()
                self.dropped += 1
                return False
            if self.policy == "wait" or not self._evict_one():
                self.dropped += 1
                return False
        self._frames.append((frame, kind))
        self._readable.unpark()
        return True

    async def put(self, frame: str, kind: FrameKind = FrameKind.PLAIN) -> bool:
        """Queue a frame, applying the policy when full. Returns ``False`` if dropped
        or the outbox is closed."""
        while (
            self.policy == "wait"
            and kind is not FrameKind.TERMINAL
            and len(self._frames) >= self.capacity
            and not self._closed
        ):
            await self._writable.park()
        return self.put_nowait(frame, kind)

    def _evict_one(self) -> bool:
        for wanted in (FrameKind.PROGRESS, FrameKind.PLAIN):
            for index, (_, kind) in enumerate(self._frames):
                if kind is wanted:
                    del self._frames[index]
                    self.dropped += 1
                    return True
        return False

    async def get_batch(self) -> list[str]:
        """Wait for at least one frame, then take every queued frame, in order.

        Returns ``[]`` once the outbox is closed and drained.
        """
        while not self._frames:
            if self._closed:
                return []
            await self._readable.park()
        batch = [frame for frame, _ in self._frames]
        self._frames.clear()
        self.sent += len(batch)
        self._writable.unpark_all()
        return batch

    def close(self) -> None:
        """No more frames are accepted; the writer drains what is queued and stops."""
        self._closed = True
        self._readable.unpark_all()
        self._writable.unpark_all()
