"""The bounded per-connection outbound queue and its full-queue policies.

Every frame a connection sends goes through one :class:`Outbox` to one writer
at a time, so frames keep their order and a slow client costs at most ``capacity``
frames and about ``capacity_bytes`` characters of memory (the frame that crosses
that line is still taken, so a single large frame always fits): frames the
writer has taken count until the transport has taken them all. What happens
when the queue is full (in frames or in size) is the policy:

* ``"wait"``: the sender waits for room (back-pressure into the handler).
* ``"drop_oldest"``: the oldest progress frame is dropped, else the oldest
  plain frame; the sender never waits.
* ``"close"``: the slow client is closed with 1008: queued frames are dropped,
  what the writer already holds goes out, then the close frame (the connection
  cuts off a client that reads nothing more after ``close_timeout``).

Terminal RPC frames (replies and RPC errors) are never dropped and never wait:
they may exceed ``capacity``, bounded by the limit on RPCs in flight. So a
reply cannot be lost to a deadline that expires while it waits for room. The
connection admits a new RPC (and queues its refusals) only after
:meth:`Outbox.wait_room`, so the queue never holds more than ``capacity`` plus
one terminal frame per RPC in flight, whatever the client does.

The writer is a task only while there is something to write: the outbox starts
it (``OutboxOwner.start_writer``) when frames wait and nobody is writing, and
it ends when the queue is empty. Most frames never need it: the connection's reader and the
pub/sub hub write what they queued themselves, at once, when the socket takes
it (:meth:`Outbox.take_nowait`). So an idle connection holds no writer task.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeAlias

import attrs
import trio

__all__ = ["FrameKind", "Outbox", "OutboxOwner", "OutboxStatistics", "QueuePolicy"]

QueuePolicy: TypeAlias = Literal["wait", "drop_oldest", "close"]


class FrameKind(enum.IntEnum):
    PROGRESS = 0  # dropped first
    PLAIN = 1
    TERMINAL = 2  # never dropped


class OutboxOwner(Protocol):
    """Who writes what an :class:`Outbox` holds (the connection)."""

    def start_writer(self) -> None:
        """Start a writer task, which calls :meth:`Outbox.get_batch` (and
        :meth:`Outbox.written` after each write) until it returns ``None``."""

    def flush_nowait(self) -> None:
        """Write what is queued from the calling task if the socket takes it at once
        (:meth:`Outbox.take_nowait`), else see that the writer does."""

    def outbox_overflowed(self) -> None:
        """The ``"close"`` policy fired (said once): close the slow client."""


@attrs.frozen
class OutboxStatistics:
    #: Frames held: queued, or taken by the writer and not yet sent.
    queued: int
    capacity: int
    dropped: int
    sent: int
    #: The most frames ever queued at once (≤ capacity + RPCs in flight).
    high_water: int = 0
    #: Characters held (queued or being written), and the bound on them.
    queued_bytes: int = 0
    capacity_bytes: int = 0
    #: The most characters ever held at once.
    high_water_bytes: int = 0


class Outbox:
    """A FIFO of encoded frames with a capacity and a full-queue policy."""

    __slots__ = (
        "_bytes",
        "_closed",
        "_frames",
        "_idle",
        "_wake",
        "_writable",
        "_writer",
        "_writing",
        "_writing_bytes",
        "burst_task",
        "capacity",
        "capacity_bytes",
        "dropped",
        "high_water",
        "high_water_bytes",
        "overflowed",
        "owner",
        "policy",
        "sent",
    )

    def __init__(
        self, capacity: int, policy: QueuePolicy = "wait", capacity_bytes: int = 8 << 20
    ) -> None:
        if capacity < 1 or capacity_bytes < 1:
            raise ValueError("outbound queue capacity must be at least 1")
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.policy: QueuePolicy = policy
        #: Queued frames, each with its kind and the group it supersedes within
        #: (a ``drop_oldest`` topic: :meth:`put_replacing`), else ``None``.
        #: (A list, not a deque: frames are only appended and taken all at once, and
        #: an empty list costs a tenth of an empty deque on each idle connection.)
        self._frames: list[tuple[str, FrameKind, str | None]] = []
        #: Frames of the batch the writer is sending (still held, so still counted).
        self._writing = 0
        #: Characters held: queued frames and the writer's batch (``_writing_bytes``).
        self._bytes = 0
        self._writing_bytes = 0
        #: Senders waiting for room (made when one first has to: most never do).
        self._writable: trio.lowlevel.ParkingLot | None = None
        self._closed = False
        #: Set when the "close" policy fired; the connection closes with 1008.
        self.overflowed = False
        self.dropped = 0
        self.sent = 0
        self.high_water = 0
        self.high_water_bytes = 0
        #: Set by the connection's reader while it works through messages it has
        #: already received: its own ``put`` calls then neither wake the writer nor
        #: yield (the burst is bounded by one read; the reader writes the answers
        #: and yields when it next reads).
        self.burst_task: trio.lowlevel.Task | None = None
        #: Who writes: the outbox starts its writer when frames wait and nobody writes
        #: them; ``put`` has it write at once while no burst runs; it is told once
        #: when ``overflowed`` is first set (rather than keep a task waiting for
        #: that). The connection sets it; until then frames wait.
        self.owner: OutboxOwner | None = None
        #: A writer task runs (started, and its ``get_batch`` has not said ``None``).
        self._writer = False
        #: Where a lingering writer waits for frames (see ``get_batch``).
        self._idle: trio.lowlevel.ParkingLot | None = None
        #: Set by :meth:`wake_writer`: ``get_batch`` returns, even with nothing queued.
        self._wake = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Frames held: queued, or taken by the writer and not yet sent."""
        return len(self._frames) + self._writing

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            len(self),
            self.capacity,
            self.dropped,
            self.sent,
            self.high_water,
            self._bytes,
            self.capacity_bytes,
            self.high_water_bytes,
        )

    def _full(self) -> bool:
        return (
            len(self._frames) + self._writing >= self.capacity or self._bytes >= self.capacity_bytes
        )

    def put_nowait(
        self, frame: str, kind: FrameKind = FrameKind.PLAIN, *, wake: bool = True
    ) -> bool:
        """Queue without waiting. Returns ``False`` if the frame was not queued.

        Under ``"wait"`` a full queue refuses the frame (counted as dropped).
        ``wake=False`` leaves the writer waiting: the caller writes the frame itself
        (:meth:`take_nowait`) or wakes the writer (:meth:`notify_writer`), and does
        so before anything can wait for the writer.
        """
        if self._closed:
            return False
        if kind is not FrameKind.TERMINAL and self._full():
            if self.policy == "close":
                self._overflow()
                self.dropped += 1
                return False
            if self.policy == "wait" or not self._evict_until_room():
                self.dropped += 1
                return False
        return self._append(frame, kind, None, wake)

    def _append(
        self, frame: str, kind: FrameKind, group: str | None = None, wake: bool = True
    ) -> bool:
        frames = self._frames
        frames.append((frame, kind, group))
        self._bytes += len(frame)
        if self._bytes > self.high_water_bytes:
            self.high_water_bytes = self._bytes
        held = len(frames) + self._writing
        if held > self.high_water:
            self.high_water = held
        if wake:
            self._need_writer()
        return True

    def _need_writer(self) -> None:
        if not self._writer:
            if self.owner is not None:
                self._writer = True
                self.owner.start_writer()
        elif self._idle:  # a lingering writer waits for frames (``get_batch``)
            self._idle.unpark()

    def notify_writer(self) -> None:
        """Start the writer if frames are queued and nobody is writing them (see
        ``put_nowait(wake=False)``)."""
        if self._frames:
            self._need_writer()

    async def _wait_room(self) -> None:
        """Park until the writer frees room (it is started first if frames wait for it:
        a frame queued with ``wake=False`` must not leave the sender waiting forever)."""
        self.notify_writer()
        if self._writable is None:
            self._writable = trio.lowlevel.ParkingLot()
        await self._writable.park()

    async def put(self, frame: str, kind: FrameKind = FrameKind.PLAIN) -> bool:
        """Queue a frame, applying the policy when full. Returns ``False`` if dropped
        or the outbox is closed.

        Always a schedule point, so a handler sending in a loop lets the writer (and
        everyone else) run; except in the reader's burst (``burst_task``), which
        yields once at its end instead of once per frame, and writes the burst's
        answers then. A non-terminal frame is also a cancel point before it is
        queued; a terminal frame, once asked for, is queued whatever happens.
        """
        if kind is not FrameKind.TERMINAL:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.policy == "wait" and not self._closed and self._full():
                while self._full() and not self._closed:
                    await self._wait_room()
                return self.put_nowait(frame, kind)
        burst = self.burst_task
        if burst is not None and burst is trio.lowlevel.current_task():
            return self.put_nowait(frame, kind, wake=False)
        if burst is not None or self.owner is None:
            queued = self.put_nowait(frame, kind)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return queued
        # Nobody is working through a burst: this task writes the frame itself if the
        # socket takes it, rather than start a writer task for one write. After the
        # schedule point, as a writer would: until the sender next yields, nothing
        # else in this process sees the frame gone, so what the sender does after
        # ``send`` (its middleware, its bookkeeping) still comes first for them.
        queued = self.put_nowait(frame, kind, wake=False)
        await trio.lowlevel.cancel_shielded_checkpoint()
        owner = self.owner
        if owner is not None:  # (``None`` once the connection has ended meanwhile)
            owner.flush_nowait()
        return queued

    def offer(self, frame: str, *, wake: bool = True) -> bool:
        """Queue a plain frame if that needs no wait: the fast path of a pub/sub
        delivery (:meth:`put_within` is the slow one). ``False``: nothing queued,
        nothing counted as dropped. ``wake=False`` as for :meth:`put_nowait` (the
        hub writes a delivery burst's frames itself once the burst is over)."""
        if self._closed:
            return False
        # ``_full`` and ``_append`` inlined: a fan-out runs this once per subscriber.
        frames = self._frames
        held = len(frames) + self._writing
        size = self._bytes
        if held >= self.capacity or size >= self.capacity_bytes:
            return self.policy != "wait" and self.put_nowait(frame, wake=wake)
        frames.append((frame, FrameKind.PLAIN, None))
        size += len(frame)
        self._bytes = size
        if size > self.high_water_bytes:
            self.high_water_bytes = size
        if held >= self.high_water:
            self.high_water = held + 1
        if wake:
            self._need_writer()
        return True

    async def put_within(self, frame: str, patience: float) -> bool:
        """Queue a plain frame, waiting at most ``patience`` seconds for room (a pub/sub
        delivery to a slow subscriber: delivery.md §10.3). ``False`` if there was no
        room in time, or the outbox closed: nothing was queued."""
        if self.offer(frame):
            return True
        if self._closed or self.policy != "wait":
            return False  # (under the other policies ``offer`` already decided)
        with trio.move_on_after(patience):
            while self._full() and not self._closed:
                await self._wait_room()
            return self.put_nowait(frame)
        return False

    def put_replacing(self, frame: str, group: str) -> bool:
        """Queue a frame that supersedes the older frames of its ``group`` (a topic
        under the ``drop_oldest`` opt-in): when full, the oldest queued frames of
        that group make room, and only those, so no other topic loses a frame.
        When the writer holds everything, the frame goes in over the bound (one
        frame at most: the next one of its group replaces it). ``False`` (nothing
        queued) when other frames fill the queue: the caller waits for room like
        any other delivery."""
        if self._closed:
            return False
        while self._full():
            for index, entry in enumerate(self._frames):
                if entry[2] == group:
                    del self._frames[index]
                    self._bytes -= len(entry[0])
                    self.dropped += 1
                    break
            else:
                if self._frames:
                    return False
                break
        return self._append(frame, FrameKind.PLAIN, group)

    def has_room(self) -> bool:
        """Below capacity and open: :meth:`wait_room` would return ``True`` at once."""
        return not (self._closed or self._full())

    async def wait_room(self) -> bool:
        """Wait until the queue is below capacity, before queueing frames the policy
        may not drop (RPC answers, and admitting an RPC whose reply will be one).

        Under ``"drop_oldest"`` a droppable frame is evicted rather than waited for;
        under ``"close"`` a full queue overflows (the connection closes). Returns
        ``False`` when nothing should be queued: overflowed or closed.
        """
        while self._full() and not self._closed:
            if self.policy == "close":
                self._overflow()
                return False
            if self.policy == "drop_oldest" and self._evict_one():
                continue
            await self._wait_room()
        return not self._closed

    def _overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            if self.owner is not None:
                self.owner.outbox_overflowed()

    def _evict_one(self) -> bool:
        for wanted in (FrameKind.PROGRESS, FrameKind.PLAIN):
            for index, (frame, kind, _) in enumerate(self._frames):
                if kind is wanted:
                    del self._frames[index]
                    self._bytes -= len(frame)
                    self.dropped += 1
                    return True
        return False

    def _evict_until_room(self) -> bool:
        """Drop oldest droppable frames until there is room; ``False`` if none is left
        to drop (the queue holds only terminal frames and what is being written)."""
        while self._full():
            if not self._evict_one():
                return False
        return True

    async def get_batch(
        self, settle: Callable[[], Awaitable[None]] | None = None, *, linger: bool = False
    ) -> list[str] | None:
        """The writer's next batch: every queued frame, in order; ``None`` when there is
        nothing to write, and the writer ends (the owner is asked for another when
        there is). With ``linger`` it waits for frames instead: for a transport that
        only its writer can write to, a task started for each write would cost more
        than one kept waiting.

        The writer calls :meth:`written` once the transport has taken the batch, and
        this again only then; until then that batch (and one :meth:`take_nowait`
        gave someone else, left for the writer to finish) still counts against
        ``capacity``. Returns ``[]`` once the outbox is closed and drained, or when
        :meth:`wake_writer` asks the writer to finish a write. ``settle``, when given,
        is awaited before taking frames: the transport may let the frames its
        reader is about to produce join the same write.
        """
        unsettled = settle is not None
        while True:
            if self._frames:
                if unsettled and settle is not None:
                    unsettled = False
                    await settle()
                    continue  # (someone may have written them in the writer's place)
                # Its write also finishes one begun in its place (the transport writes
                # what that left first), whose frames still count: ``_take``.
                self._wake = False
                return self._take()
            if self._closed or self._wake:
                self._wake = False
                return []
            if not linger:
                self._writer = False
                return None
            if self._idle is None:
                self._idle = trio.lowlevel.ParkingLot()
            await self._idle.park()
            unsettled = settle is not None

    def _take(self) -> list[str]:
        batch = [entry[0] for entry in self._frames]
        self._frames.clear()
        # Added to, not replaced: a write begun in the writer's place (``take_nowait``)
        # and not finished counts until this batch is out too.
        self._writing += len(batch)
        self._writing_bytes = self._bytes
        return batch

    def take_nowait(self) -> list[str] | None:
        """Every queued frame, for a write the caller makes at once in the writer's
        place; ``None`` unless frames are queued and the writer holds none (it is
        waiting for frames, so the order holds). Like the writer's batch, they count
        until :meth:`written` says they are out, or until the writer, woken by
        :meth:`wake_writer` to finish the write, comes back for more."""
        if self._writing or not self._frames:
            return None
        return self._take()

    def written(self) -> None:
        """The batch taken last is out: its frames count as sent, and free their room."""
        self.sent += self._writing
        self._bytes -= self._writing_bytes
        self._writing = self._writing_bytes = 0
        if self._writable:
            self._writable.unpark_all()

    def wake_writer(self) -> None:
        """Make the writer's ``get_batch`` return (``[]`` if nothing is queued), so that
        it finishes a write someone else started (see :meth:`take_nowait`); the
        writer is started for it if none runs."""
        self._wake = True
        self._need_writer()

    def close(self, *, discard: bool = False) -> None:
        """No more frames are accepted; the writer drains what is queued and stops.
        With ``discard``, queued frames are dropped instead (not those the writer holds)."""
        self._closed = True
        if discard:
            self.dropped += len(self._frames)
            self._frames.clear()
            self._bytes = self._writing_bytes
        # The writer drains what is left, then does the close handshake.
        self._need_writer()
        if self._writable:
            self._writable.unpark_all()
