"""Running a coroutine in the current task until it first yields to trio's scheduler.

Most RPC handlers reply and return without ever waiting. Starting a task for each
(``nursery.start``) costs a task, a nursery and two trips through the scheduler
before the reply can go out, which is most of an RPC's latency. So the connection's
reader runs the handler itself, through :func:`run_until_blocked`: if the handler
finishes without yielding, no task was needed. If it yields (a blocking wait, or any
checkpoint), ``on_block`` is called first, and the reader hands its reading over to
a new task there; the handler then finishes in the task where it started, which is
where trio needs it to: its cancel scope was entered there, and whatever it parks
on (a parking lot, an I/O wait) has recorded that task.

The handler runs in a context of its own (a copy of the current one), as it would
in a task of its own: context variables it sets do not leak into the reader. (The
reader runs an event handler this way too, in a burst, in its own context as it
runs every event handler, for ``on_block``: see ``_connection``.)
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["run_until_blocked"]

T = TypeVar("T")


@types.coroutine
def run_until_blocked(
    coro: Coroutine[Any, Any, T],
    context: contextvars.Context | None,
    on_block: Callable[[], object],
) -> Generator[Any, Any, T]:
    """Await ``coro`` in ``context`` (``None``: the caller's own), calling ``on_block()``
    once, just before the first time it yields to the scheduler (never, if it
    finishes without yielding).

    Everything ``coro`` yields is passed on to trio unchanged, and what trio sends
    back (a value, or an exception such as ``Cancelled``) is passed back in, so to
    both sides this is ``await coro``.
    """
    try:
        yielded = coro.send(None) if context is None else context.run(coro.send, None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    try:
        on_block()
    except BaseException:
        coro.close()
        raise
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc) if context is None else context.run(coro.throw, exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(sent) if context is None else context.run(coro.send, sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                # What trio sent (an ``Error(Cancelled)``, say) must not stay in this
                # frame: an exception raised from it would hold this frame in its
                # traceback, a cycle that keeps the handler's locals alive until the
                # cyclic collector runs.
                del sent
