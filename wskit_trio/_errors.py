"""Every exception wskit_trio raises, in one place.

The tree, named by who is at fault::

    Exception
    ├── WsKitError                 the peer or the app answers with a protocol error code
    │   ├── RateLimited            a rate limit refused a message (RESOURCE_EXHAUSTED)
    │   ├── RpcError               client: the server answered a request with an error
    │   └── RequestTimeout         client: no answer in time (also a TimeoutError)
    ├── CloseError                 an on_open hook refuses a connection with a close code
    ├── UpgradeRejected            authenticate refuses the HTTP upgrade with a status
    ├── ConnectionClosed           the peer or the network ended the WebSocket (like trio's
    │   │                          BrokenResourceError); the operation cannot complete
    │   ├── MessageTooBig          server: a message over max_message_bytes (close 1009)
    │   └── ConnectError           client: the WebSocket could not be opened (refused, 401...)
    ├── AlreadyClosed              you closed it yourself (aclose) and then used it (like
    │                              trio's ClosedResourceError)
    ├── FrameDropped               client: offline, and the offline queue refused the frame
    ├── ConfigurationError         the application wired something up wrong
    │   (also a TypeError: ValidationError for outbound payloads is a ValueError, and
    │   so is InboundValidationError: the client got a frame that breaks its schema)
    ├── ValkeyError                Valkey answered a command with an error reply
    └── ValkeyUnavailable          Valkey cannot be reached (refused, lost, timed out)

This module imports nothing from trio, so the sans-IO protocol core can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ._protocol.codes import ERROR_CODE_META, NOT_GIVEN, ErrorCode, is_retryable

__all__ = [
    "UNSET",
    "AlreadyClosed",
    "CloseError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionClosed",
    "FrameDropped",
    "InboundValidationError",
    "MessageTooBig",
    "OutboundValidationError",
    "RateLimited",
    "RequestTimeout",
    "RpcError",
    "UpgradeRejected",
    "ValkeyError",
    "ValkeyUnavailable",
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


class RateLimited(WsKitError):
    """A rate limit refused a message: the client sent too much, too fast.

    Sent as ``RESOURCE_EXHAUSTED`` (retryable) with details ``{cost, capacity,
    remaining}`` and ``retryAfterMs``: the client should wait that long and retry.
    """

    def __init__(
        self,
        *,
        cost: int,
        capacity: int,
        remaining: int,
        retry_after_ms: int | None,
        message: str = "Rate limit exceeded",
    ) -> None:
        super().__init__(
            ErrorCode.RESOURCE_EXHAUSTED,
            message,
            {"cost": cost, "capacity": capacity, "remaining": remaining},
            retryable=True,
            retry_after_ms=retry_after_ms,
        )
        self.cost = cost
        self.capacity = capacity
        self.remaining = remaining


class CloseError(Exception):
    """Raised by an ``on_open`` hook to refuse a connection with a WebSocket close code."""

    def __init__(self, code: int = 4000, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"close {code}: {reason}")


class UpgradeRejected(Exception):
    """Raised by ``authenticate`` to refuse the HTTP upgrade with ``status``, ``body``
    and extra ``headers`` (``[("retry-after", "30")]``, say)."""

    def __init__(
        self,
        status: int = 401,
        body: str = "Unauthorized",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.headers = tuple(headers)
        super().__init__(f"HTTP {status}: {body}")


class ConnectionClosed(Exception):
    """The WebSocket closed (by either side); what needed it cannot complete."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class MessageTooBig(ConnectionClosed):
    """A transport's ``receive`` found a message over ``Limits.max_message_bytes``.

    The socket is still open: the transport stopped reading and left the close to
    the connection, which sends the answers already queued for the messages before
    it, then closes with 1009 (docs/protocol.md §4, §8). Being a ``ConnectionClosed(1009)``,
    code that only cares that reading is over needs nothing more.
    """

    def __init__(self) -> None:
        super().__init__(1009, "Message too big")


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


class ValkeyError(Exception):
    """Valkey answered a command with an error reply (the command, script or data is
    at fault, not the connection, which stays usable).

    ``message`` is the server's text, e.g. ``"NOSCRIPT No matching script..."``;
    ``kind`` its first word (``"NOSCRIPT"``, ``"WRONGTYPE"``, ``"ERR"``...).
    """

    def __init__(self, message: str) -> None:
        self.message = message
        self.kind = message.split(" ", 1)[0]
        super().__init__(message)


class ValkeyUnavailable(Exception):
    """Valkey cannot be reached: the connection was refused, was lost or timed out.

    Nothing is wrong with the command; the connection that raised it is unusable.
    Try again later (on a new connection).
    """


# -- the client's errors (wskit_trio.client) ------------------------------------------


class RpcError(WsKitError):
    """The server answered with an error frame (``RPC_ERROR``, or ``ERROR``).

    ``request()`` raises it for its request; an ``ERROR`` that answers no request
    goes to the client's ``on_error``. ``code``, ``message`` and ``details`` are
    the server's. ``retryable`` is the wire value, else the code's default
    (docs/protocol.md §6). ``retry_after_ms`` keeps :class:`WsKitError`'s meaning, so
    a server handler that lets an ``RpcError`` from an upstream call propagate
    passes the same hints on: an int is the server's wait hint in ms, ``None``
    means "do not retry" (the server sent ``null``, or the error is not
    retryable), and for a retryable error without a hint it is the code's
    suggested backoff (``UNSET`` for custom codes). :attr:`should_retry` sums it up.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = UNSET,
        type: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        resolved = is_retryable(str(code), retryable)
        if retry_after_ms is UNSET:
            meta = ERROR_CODE_META.get(str(code))
            if not resolved:
                retry_after_ms = None
            elif meta is not None and meta.backoff_ms is not None:
                retry_after_ms = meta.backoff_ms
        super().__init__(code, message, details, retryable=resolved, retry_after_ms=retry_after_ms)
        self.retryable: bool = resolved
        #: The request's type (``None`` for an ``ERROR`` that answers no request).
        self.type = type
        self.correlation_id = correlation_id

    @property
    def should_retry(self) -> bool:
        """Retryable, and the server did not say "never" (``retryAfterMs: null``)."""
        return self.retryable and self.retry_after_ms is not None

    def __repr__(self) -> str:
        return f"RpcError({str(self.code)!r}, {self.message!r}, {self.details!r})"


class RequestTimeout(WsKitError, TimeoutError):
    """A request got no answer within its ``timeout`` (the client gave up).

    The client told the server with ``$ws:abort``. Code ``DEADLINE_EXCEEDED``;
    also a :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """

    def __init__(self, type: str, timeout: float, correlation_id: str | None = None) -> None:
        super().__init__(ErrorCode.DEADLINE_EXCEEDED, f"{type}: no answer within {timeout:g} s")
        self.type = type
        self.timeout = timeout
        self.correlation_id = correlation_id


class InboundValidationError(ValueError):
    """The server sent a frame that is not valid JSON, or breaks its schema.

    The client dropped it and reported it to ``on_error``; a reply that breaks the
    response schema fails its request with this. ``errors`` lists ``(path, message)``.
    """

    def __init__(self, type: str | None, errors: list[tuple[str, str]]) -> None:
        self.type = type
        self.errors = errors
        listed = "; ".join(f"{p}: {m}" for p, m in errors)
        super().__init__(f"invalid inbound {type or 'frame'}: {listed}")


class ConnectError(ConnectionClosed):
    """The client could not open the WebSocket: refused, unreachable, timed out, or
    rejected at the upgrade (``status`` is the HTTP status then, e.g. 401 for a bad
    token, and ``body`` the server's short explanation)."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(1006, reason)
        self.url = url
        self.status = status
        self.body = body
        self.args = (f"cannot connect to {url}: {reason}",)


class FrameDropped(Exception):
    """The client is not connected and its offline queue refused the frame (the
    queue is full, or ``"off"``), or evicted it to make room (``"drop_oldest"``).
    Nothing was sent. A decision of the local queue, not a closed connection: send
    again later, or make the queue larger."""

    def __init__(self, type: str, reason: str) -> None:
        super().__init__(f"{type} dropped: {reason}")
        self.type = type
        self.reason = reason


class AlreadyClosed(Exception):
    """The client (or connection) was closed by your own ``aclose()`` and then used.
    Unlike :class:`ConnectionClosed`, nobody else is at fault: the caller is."""
