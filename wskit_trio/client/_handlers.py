"""The ``on()`` handlers, by message type, and the task that runs them.

Handlers run one event at a time, in arrival order, in a task of their own: the
reader only queues events (and settles requests itself), so a handler that awaits
a ``request()`` never waits for its own reply to get through this queue.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import trio

__all__ = ["EVENT_BUFFER", "Dispatcher"]

#: Events waiting for the handlers; when full the reader waits (back-pressure).
EVENT_BUFFER = 1000

AnyHandler = Callable[[Any], Any]


class Dispatcher:
    """Handlers by type; :meth:`run` is the task that calls them.

    ``failed(handler, exc)`` is told of each exception a handler raises (called
    while it is being handled, so it may log the traceback); the next event goes on.
    """

    def __init__(self, failed: Callable[[AnyHandler, Exception], None]) -> None:
        self._failed = failed
        self._handlers: dict[str, list[AnyHandler]] = {}
        self._in, self._out = trio.open_memory_channel[tuple[Sequence[AnyHandler], Any]](
            EVENT_BUFFER
        )

    def add(self, type: str, handler: AnyHandler) -> None:
        self._handlers.setdefault(type, []).append(handler)

    def remove(self, type: str, handler: AnyHandler) -> bool:
        """Remove ``handler`` (if there); ``True`` when ``type`` has none left."""
        handlers = self._handlers.get(type)
        if handlers is None:
            return False
        if handler in handlers:
            handlers.remove(handler)
        if handlers:
            return False
        del self._handlers[type]
        return True

    def handlers(self, type: str) -> tuple[AnyHandler, ...]:
        """The handlers of ``type`` now (a later ``on()`` does not see earlier events)."""
        return tuple(self._handlers.get(type, ()))

    async def deliver(self, handlers: Sequence[AnyHandler], event: Any) -> None:
        """Queue ``event`` for ``handlers``; waits while the queue is full."""
        await self._in.send((handlers, event))

    async def run(self) -> None:
        """Call the handlers (sync or async) of each event in turn, forever."""
        async for handlers, event in self._out:
            for handler in handlers:
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    self._failed(handler, exc)
