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
from collections.abc import Callable

import trio

__all__ = ["Beat", "Heartbeats"]


class Beat:
    """One connection's place in the queue: ``ping`` starts its ping (``None`` once
    the connection has closed: the queue then drops it when it comes up)."""

    __slots__ = ("ping",)

    def __init__(self, ping: Callable[[], None]) -> None:
        self.ping: Callable[[], None] | None = ping


class Heartbeats:
    """The ping schedule of one server's connections (:meth:`run` is its task)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._due: deque[tuple[float, Beat]] = deque()
        self._idle = trio.lowlevel.ParkingLot()
        #: Whether :meth:`run` runs: only then may connections rely on it.
        self.running = False

    def add(self, beat: Beat) -> None:
        """Ping ``beat`` ``interval`` seconds from now."""
        self._due.append((trio.current_time() + self.interval, beat))
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
                await trio.sleep_until(due[0][0])
                now = trio.current_time()
                while due and due[0][0] <= now:
                    ping = due.popleft()[1].ping
                    if ping is not None:
                        ping()
        finally:
            self.running = False
            due.clear()
