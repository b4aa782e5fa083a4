"""What a client is configured with: :class:`ClientOptions`, every option declared
once, and the policies it holds (reconnect, retry, auth, heartbeat)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from .._errors import ConfigurationError, RpcError
from ._backoff import Backoff
from ._queue import OfflineQueuePolicy
from ._state import ClientState

__all__ = [
    "Auth",
    "ClientHeartbeat",
    "ClientOptions",
    "ConnectHook",
    "ErrorHook",
    "Reconnect",
    "Retry",
    "StateHook",
    "TokenSource",
    "UnhandledHook",
]

#: Where the token comes from: called (sync or async) before every connection attempt;
#: ``None`` or ``""`` connects without a token.
TokenSource: TypeAlias = Callable[[], "str | Awaitable[str | None] | None"]

#: RFC 6455 subprotocols are HTTP tokens: no spaces, commas or separators.
_SUBPROTOCOL = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@attrs.frozen(kw_only=True)
class Reconnect:
    """Reconnect after a lost connection: unlimited by default, with exponential
    backoff and full jitter (0.3 s doubling up to 10 s). ``max_attempts`` bounds the
    attempts after each loss (``None``: no bound); the count restarts once a
    connection opens."""

    enabled: bool = True
    max_attempts: int | None = None
    backoff: Backoff = attrs.field(factory=Backoff)


@attrs.frozen(kw_only=True)
class Retry:
    """Opt-in: re-send a request the server answered with a retryable error.

    ``max_attempts`` counts the first one. Before attempt ``n + 1`` the client waits
    the server's ``retryAfterMs``, or ``backoff.delay(n)`` if that is longer. Errors
    whose ``retryAfterMs`` is ``null`` are not retried, and no retry starts that
    would end after the request's timeout. Each attempt has a new correlationId.
    """

    max_attempts: int = 3
    backoff: Backoff = attrs.field(factory=lambda: Backoff(initial=0.1, max=5.0))

    def wait_before(self, attempt: int, error: RpcError) -> float:
        """Seconds to wait after attempt ``attempt`` failed with ``error``: the
        server's ``retryAfterMs``, or ``backoff.delay(attempt)`` if that is longer."""
        hint = error.retry_after_ms
        return max(hint / 1000 if type(hint) is int else 0.0, self.backoff.delay(attempt))


def _check_prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _SUBPROTOCOL.match(value):
        raise ConfigurationError(f"protocol_prefix {value!r} is not a valid subprotocol token")


@attrs.frozen(kw_only=True)
class Auth:
    """How the client presents its token at the upgrade (docs/protocol.md §7).

    ``token`` is called (sync or async) before every connection attempt, so a
    refreshed token is used on reconnect. ``attach="query"`` adds
    ``?access_token=<token>``; ``attach="subprotocol"`` offers ``bearer.<token>``
    after the client's own subprotocols (keeps the token out of URLs and logs).
    """

    token: TokenSource
    attach: Literal["query", "subprotocol"] = "query"
    query_param: str = "access_token"
    protocol_prefix: str = attrs.field(default="bearer.", validator=_check_prefix)

    def subprotocol(self, token: str) -> str:
        value = self.protocol_prefix + token
        if not _SUBPROTOCOL.match(value):
            raise ValueError("the token holds characters a subprotocol cannot carry")
        return value


@attrs.frozen(kw_only=True)
class ClientHeartbeat:
    """Detect a dead server: every ``interval`` seconds send ``{"type": "__heartbeat"}``
    (``mode="frame"``; the server answers ``__heartbeat_ack``) or a WebSocket ping
    (``mode="ping"``). No answer within ``timeout``: the connection is dropped and
    the client reconnects."""

    interval: float = 30.0
    timeout: float = 10.0
    mode: Literal["frame", "ping"] = "frame"


#: Gets what goes wrong outside a request (sync).
ErrorHook: TypeAlias = Callable[[Exception], None]
#: Gets valid frames of types no handler is registered for (sync or async).
UnhandledHook: TypeAlias = Callable[[dict[str, Any]], "Awaitable[None] | None"]
#: Sees every state change (sync).
StateHook: TypeAlias = Callable[[ClientState], None]
#: Runs after every connect, before the offline queue is flushed; gets the
#: :class:`~wskit_trio.client.Client` (typed ``Any`` here: the client module
#: imports this one).
ConnectHook: TypeAlias = Callable[[Any], Awaitable[None]]


def _to_auth(auth: Auth | TokenSource | None) -> Auth | None:
    return Auth(token=auth) if callable(auth) else auth


def _to_reconnect(reconnect: Reconnect | bool) -> Reconnect:
    return Reconnect(enabled=reconnect) if isinstance(reconnect, bool) else reconnect


def _to_subprotocols(subprotocols: Sequence[str]) -> tuple[str, ...]:
    if isinstance(subprotocols, str):
        raise ConfigurationError(f"subprotocols must be a sequence of names, not {subprotocols!r}")
    return tuple(subprotocols)


def _to_headers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in headers)


@attrs.frozen(kw_only=True)
class ClientOptions:
    """Every client option, declared here only.

    ``open_client(url, **options)`` takes them as keywords (checked by type
    checkers against these fields); ``Client(url, options)`` takes the object.
    """

    #: The token and how it goes to the server at the upgrade: an :class:`Auth`, or
    #: just the token callable (sent as the ``access_token`` query parameter).
    auth: Auth | None = attrs.field(default=None, converter=_to_auth)
    #: Subprotocols offered at the upgrade, preferred first.
    subprotocols: tuple[str, ...] = attrs.field(default=(), converter=_to_subprotocols)
    #: Extra HTTP headers of the upgrade request.
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_to_headers)
    #: Reconnect after a lost connection: a :class:`Reconnect`, or ``False`` to stay
    #: closed once the connection is lost.
    reconnect: Reconnect = attrs.field(default=Reconnect(), converter=_to_reconnect)
    #: What the offline queue (frames sent while not open) does when full.
    queue: OfflineQueuePolicy = "drop_newest"
    #: How many frames the offline queue holds.
    queue_size: int = 1000
    #: Detect a dead server (``None``: rely on TCP alone).
    heartbeat: ClientHeartbeat | None = None
    #: Re-send requests answered with a retryable error (``None``: never).
    retry: Retry | None = None
    #: Requests in flight at once; one more raises ``RpcError(RESOURCE_EXHAUSTED)``.
    pending_requests_limit: int = 1000
    #: Use protocol v1's additions (``meta.timeoutMs`` on requests, ``$ws:abort``
    #: when a caller gives up): ``None`` when the server advertises them in its 101
    #: (``X-WsKit-Extensions``; decided on every connect), ``True`` always (a
    #: wskit_trio server behind a proxy that drops the header), ``False`` never.
    #: Without them (a WS-Kit 0.10 server, whose strict meta refuses ``timeoutMs``)
    #: deadlines hold on this side only.
    extensions: bool | None = None
    #: Seconds one connection attempt (TCP, TLS, upgrade) may take.
    connect_timeout: float = 10.0
    #: Seconds the close handshake may take before the connection is dropped.
    close_timeout: float = 5.0
    #: Largest inbound message, bytes.
    max_message_size: int = 1024 * 1024
    #: TLS settings for ``wss://`` (``None``: the system's defaults).
    ssl_context: ssl.SSLContext | None = None
    #: ``open_client`` enters its block once the first connection is open, and a
    #: first connection that fails raises :class:`ConnectError`. ``False``: enter at
    #: once, and retry the first connection like any other.
    wait_open: bool = True
    #: Gets what goes wrong outside a request: invalid frames, ``ERROR`` frames that
    #: answer no request, failed reconnect attempts, queue overflow, handler
    #: exceptions (``None``: they are logged).
    on_error: ErrorHook | None = None
    #: Gets valid frames of types no handler is registered for.
    on_unhandled: UnhandledHook | None = None
    #: Sees every state change.
    on_state: StateHook | None = None
    #: ``await on_connect(client)`` after every connect (the first and each
    #: reconnect), before the offline queue is flushed and the state is ``open``:
    #: what it sends (``send``, ``request``) goes out first, on this connection only.
    #: Re-join here with ``client.position(topic)`` (delivery.md §12.3). An
    #: exception it raises goes to ``on_error`` and the connection opens anyway; it
    #: is cancelled if the connection is lost meanwhile (and runs again on the next).
    on_connect: ConnectHook | None = None
