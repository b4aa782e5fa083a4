"""Test helpers: expected wire frames, written out from docs/protocol.md §3 for exact
comparisons, and an in-memory app bounded in time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import trio

from wskit_trio import Router
from wskit_trio.testing import TestApp, open_test_app

__all__ = ["ANY_TEXT", "error_frame", "open_app", "paths_of"]

D = TypeVar("D")

#: Seconds any one harness test may take (virtual seconds under ``autojump_clock``).
TIMEOUT = 10.0


@asynccontextmanager
async def open_app(
    router: Router[D], *, within: float = TIMEOUT, **options: Any
) -> AsyncIterator[TestApp[D]]:
    """``open_test_app`` under ``trio.fail_after(within)``: a hang fails, not stalls."""
    with trio.fail_after(within):
        async with open_test_app(router, **options) as app:
            yield app


class _AnyText:
    """Equal to any non-empty string: for messages docs/protocol.md leaves to the server."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<any text>"


ANY_TEXT: Final[Any] = _AnyText()
_ABSENT: Final[Any] = object()


def error_frame(
    code: str,
    message: Any = ANY_TEXT,
    *,
    rpc: bool = False,
    cid: str | None = None,
    details: Any = None,
    retryable: bool = False,
    retry_after_ms: Any = _ABSENT,
) -> dict[str, Any]:
    """An ``ERROR`` (or ``RPC_ERROR``) frame exactly as docs/protocol.md §3 draws it:
    ``details`` only when given, ``retryable`` always, ``retryAfterMs`` only when given."""
    payload: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        payload["details"] = details
    payload["retryable"] = retryable
    if retry_after_ms is not _ABSENT:
        payload["retryAfterMs"] = retry_after_ms
    return {
        "type": "RPC_ERROR" if rpc else "ERROR",
        "meta": {} if cid is None else {"correlationId": cid},
        "payload": payload,
    }


def paths_of(frame: dict[str, Any]) -> list[str]:
    """The ``path`` of each problem in an INVALID_ARGUMENT frame's details, sorted."""
    errors = frame["payload"]["details"]["errors"]
    for problem in errors:
        assert set(problem) == {"path", "message"}, problem
        assert isinstance(problem["message"], str) and problem["message"], problem
    return sorted(problem["path"] for problem in errors)
