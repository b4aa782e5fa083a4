"""One task that schedules every connection's heartbeat pings.

A connection that slept in a heartbeat task of its own between pings paid for
that task all the time (about 3 KiB each: a task, its coroutine, its sleep), for
a ping every 30 seconds. Here a server's connections wait in one queue instead,
and a short-lived task pings each one when it is due (in the connection's own
nursery, so it ends with the connection). Every connection of a server has the
same interval, so the queue is in due order by construction: each entry goes
in at the back, ``interval`` seconds from now.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio

__all__ = ["Beat", "Heartbeats", "Pinged"]


class Pinged(Protocol):
    def ping_due(self) -> None:
        """Its ping is due: start it (and :meth:`Heartbeats.add` its beat again)."""


class Beat:
    """One connection's place in the queue, and when it is due. ``conn`` is ``None``
    once the connection has closed: the queue drops it when it comes up, and the
    connection is not held until then."""

    # (One per connection: a small object, no tuple around it, no bound method.)
    __slots__ = ("conn", "due")

    def __init__(self, conn: Pinged) -> None:
        self.conn: Pinged | None = conn
        self.due = 0.0


class Heartbeats:
    """The ping schedule of one server's connections (:meth:`run` is its task)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._due: deque[Beat] = deque()
        self._idle = trio.lowlevel.ParkingLot()
        #: Whether :meth:`run` runs: only then may connections rely on it.
        self.running = False

    def add(self, beat: Beat) -> None:
        """Ping ``beat`` ``interval`` seconds from now."""
        beat.due = trio.current_time() + self.interval
        self._due.append(beat)
        if self._idle:
            self._idle.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start each due ping, until cancelled."""
        due = self._due
        self.running = True
        try:
            task_status.started()
            while True:
                if not due:
                    await self._idle.park()
                    continue
                # Nothing added meanwhile can be due before the head.
                await trio.sleep_until(due[0].due)
                now = trio.current_time()
                while due and due[0].due <= now:
                    conn = due.popleft().conn
                    if conn is not None:
                        conn.ping_due()
        finally:
            self.running = False
            due.clear()
