"""The standard error codes (docs/protocol.md §6) and the error payload they produce."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final, NamedTuple


class ErrorCode(enum.StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    ABORTED = "ABORTED"
    INTERNAL = "INTERNAL"


class ErrorCodeMeta(NamedTuple):
    retryable: bool
    backoff_ms: int | None
    description: str


ERROR_CODE_META: Final[Mapping[str, ErrorCodeMeta]] = {
    ErrorCode.UNAUTHENTICATED: ErrorCodeMeta(False, None, "Not authenticated"),
    ErrorCode.PERMISSION_DENIED: ErrorCodeMeta(False, None, "Permission denied"),
    ErrorCode.INVALID_ARGUMENT: ErrorCodeMeta(False, None, "Invalid argument"),
    ErrorCode.FAILED_PRECONDITION: ErrorCodeMeta(False, None, "Failed precondition"),
    ErrorCode.NOT_FOUND: ErrorCodeMeta(False, None, "Not found"),
    ErrorCode.ALREADY_EXISTS: ErrorCodeMeta(False, None, "Already exists"),
    ErrorCode.UNIMPLEMENTED: ErrorCodeMeta(False, None, "Not implemented"),
    ErrorCode.CANCELLED: ErrorCodeMeta(False, None, "Cancelled"),
    ErrorCode.DEADLINE_EXCEEDED: ErrorCodeMeta(True, 50, "Deadline exceeded"),
    ErrorCode.RESOURCE_EXHAUSTED: ErrorCodeMeta(True, 100, "Resource exhausted"),
    ErrorCode.UNAVAILABLE: ErrorCodeMeta(True, 100, "Service unavailable"),
    ErrorCode.ABORTED: ErrorCodeMeta(True, 50, "Aborted"),
    ErrorCode.INTERNAL: ErrorCodeMeta(False, 200, "Internal error"),
}

#: Sentinel for "retry_after_ms not given" (None means "never retry").
NOT_GIVEN: Final[Any] = object()


def error_payload(
    code: str,
    message: str | None = None,
    details: Mapping[str, Any] | None = None,
    retryable: bool | None = None,
    retry_after_ms: Any = NOT_GIVEN,
) -> dict[str, Any]:
    """The ``payload`` of an ERROR / RPC_ERROR frame, with the code's defaults filled in.

    ``retry_after_ms`` is ``NOT_GIVEN`` (use the code's backoff when retryable),
    an int, or ``None`` ("never, under the current policy", sent as ``null``).
    """
    meta = ERROR_CODE_META.get(code)
    if retryable is None:
        retryable = meta.retryable if meta is not None else False
    payload: dict[str, Any] = {
        "code": code,
        "message": message if message is not None else (meta.description if meta else code),
    }
    if details:
        payload["details"] = dict(details)
    payload["retryable"] = retryable
    if retry_after_ms is not NOT_GIVEN:
        payload["retryAfterMs"] = retry_after_ms
    elif retryable and meta is not None and meta.backoff_ms is not None:
        payload["retryAfterMs"] = meta.backoff_ms
    return payload


def is_retryable(code: str, wire_retryable: bool | None = None) -> bool:
    """What a client should infer: the wire value when present, else the table's default."""
    if wire_retryable is not None:
        return wire_retryable
    meta = ERROR_CODE_META.get(code)
    return meta.retryable if meta is not None else False
