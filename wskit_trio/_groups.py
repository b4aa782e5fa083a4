"""Unwrapping exception groups at the public boundary.

Inside, nurseries use strict exception groups (trio's default). A user calling
``serve()``, ``open_test_app()`` or ``open_client()`` should still see the one
exception that happened (``OSError: address in use``, ``ConnectError``,
``KeyboardInterrupt``), not a group of one beside the cancellations it caused;
a real group of several problems is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import trio

__all__ = ["only_cancelled", "reraise", "single_exception", "the_one_exception"]


def only_cancelled(exc: BaseException) -> bool:
    """``exc`` is ``Cancelled``, or a group of nothing else: a consequence, not a cause."""
    if isinstance(exc, BaseExceptionGroup):
        return all(only_cancelled(sub) for sub in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def the_one_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single exception ``group`` stands for, or ``None`` if it holds several.

    Cancellations beside a real exception are its consequences and are dropped; a
    group holding only one cancellation stands for that cancellation.
    """
    real = [exc for exc in group.exceptions if not only_cancelled(exc)]
    if len(real) == 1:
        one = real[0]
    elif not real and len(group.exceptions) == 1:
        one = group.exceptions[0]
    else:
        return None
    if isinstance(one, BaseExceptionGroup):
        return the_one_exception(one) or one
    return one


def reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` (taken out of its group) as it was first raised: same traceback,
    same ``__context__``."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a group that stands for one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        one = the_one_exception(group)
        if one is None:
            raise
        reraise(one)
