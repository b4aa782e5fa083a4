"""Options declared once, as a frozen attrs class, and taken as typed keywords.

A factory such as ``open_client(url, **options)`` should not repeat every option
of its options class (name, type, default) in its own signature. Decorated with
``@options_as_keywords(ClientOptions)``, ``open_client(url, options)`` is called as
``open_client(url, reconnect=False, ...)``: the keywords are the options class's
own fields, so mypy checks their names and types at every call site, and the
defaults stay in the class.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["options_as_keywords"]

P = ParamSpec("P")
A = TypeVar("A")
Options = TypeVar("Options")
R = TypeVar("R")


def options_as_keywords(
    options: Callable[P, Options],
) -> Callable[[Callable[[A, Options], R]], Callable[Concatenate[A, P], R]]:
    """Turn ``fn(first, options)`` into ``fn(first, /, **fields of options)``.

    ``options`` is the options class (its ``__init__`` gives the keywords, their
    types and defaults). The result's ``__signature__`` lists the fields, so
    ``help()`` and editors show them too.
    """

    def decorate(fn: Callable[[A, Options], R]) -> Callable[Concatenate[A, P], R]:
        @functools.wraps(fn)
        def with_keywords(first: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return fn(first, options(*args, **kwargs))

        declared = inspect.signature(fn)
        head = next(iter(declared.parameters.values()))
        with_keywords.__signature__ = declared.replace(  # type: ignore[attr-defined]
            parameters=[
                head.replace(kind=inspect.Parameter.POSITIONAL_ONLY),
                *inspect.signature(options).parameters.values(),
            ]
        )
        return with_keywords

    return decorate
