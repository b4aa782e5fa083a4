"""Unwrapping exception groups at the public boundary.

Inside, nurseries use strict exception groups (trio's default). A user calling
``serve()`` or ``open_test_app()`` should still see the one exception that
happened (``OSError: address in use``, ``KeyboardInterrupt``), not a group of
one; a real group of several problems is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["single_exception"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a group holding exactly one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        raise leaf.with_traceback(leaf.__traceback__) from leaf.__cause__
