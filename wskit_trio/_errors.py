"""Every exception wskit_trio raises, in one place.

The tree, named by who is at fault::

    Exception
    ├── WsKitError                 the peer or the app answers with a protocol error code
    ├── CloseError                 an on_open hook refuses a connection with a close code
    ├── UpgradeRejected            authenticate refuses the HTTP upgrade with a status
    ├── ConnectionClosed           the WebSocket is gone; the operation cannot complete
    └── ConfigurationError         the application wired something up wrong
        (also a TypeError: ValidationError for outbound payloads is a ValueError)

This module imports nothing from trio, so the sans-IO protocol core can use it.
"""

from __future__ import annotations

from typing import Any, Final

from ._protocol.codes import ERROR_CODE_META, NOT_GIVEN, ErrorCode

__all__ = [
    "UNSET",
    "CloseError",
    "ConfigurationError",
    "ConnectionClosed",
    "OutboundValidationError",
    "UpgradeRejected",
    "WsKitError",
]


#: Marks "not given" where ``None`` has a meaning of its own (``retry_after_ms=None``
#: means "never retry", absent means "use the code's suggested backoff").
UNSET: Final[Any] = NOT_GIVEN


class WsKitError(Exception):
    """An error with a protocol code, sent to the peer as ``ERROR``/``RPC_ERROR``.

    Raise it anywhere in a handler or middleware: the connection answers with this
    code, message, details and retry hints, and keeps serving. ``code`` is one of
    :class:`ErrorCode` or a custom string (custom codes carry no retry default, so
    give ``retryable`` explicitly).
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = UNSET,
    ) -> None:
        self.code = ErrorCode(code) if code in ERROR_CODE_META else str(code)
        meta = ERROR_CODE_META.get(self.code)
        self.message = message if message is not None else (meta.description if meta else self.code)
        self.details = details or {}
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        super().__init__(f"{self.code}: {self.message}")

    def __repr__(self) -> str:
        return f"WsKitError({str(self.code)!r}, {self.message!r}, {self.details!r})"


class CloseError(Exception):
    """Raised by an ``on_open`` hook to refuse a connection with a WebSocket close code."""

    def __init__(self, code: int = 4000, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"close {code}: {reason}")


class UpgradeRejected(Exception):
    """Raised by ``authenticate`` to refuse the HTTP upgrade with ``status`` and ``body``."""

    def __init__(self, status: int = 401, body: str = "Unauthorized") -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body}")


class ConnectionClosed(Exception):
    """The WebSocket closed (by either side); what needed it cannot complete."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class ConfigurationError(TypeError):
    """The application registered or configured something wskit_trio cannot accept.

    Raised at registration time (duplicate routes, reserved types or meta keys,
    non-attrs payload classes), never while serving.
    """


class OutboundValidationError(ValueError):
    """A handler tried to send a payload that does not match its schema.

    Nothing was sent. ``errors`` lists ``(path, message)`` for each problem.
    """

    def __init__(self, type: str, errors: list[tuple[str, str]]) -> None:
        self.type = type
        self.errors = errors
        listed = "; ".join(f"{p}: {m}" for p, m in errors)
        super().__init__(f"invalid outbound {type} payload: {listed}")
