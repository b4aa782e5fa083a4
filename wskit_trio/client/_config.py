"""What ``open_client()`` is configured with: reconnect, retry, auth, heartbeat."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias

import attrs

from .._errors import ConfigurationError
from ._backoff import Backoff

__all__ = ["Auth", "ClientHeartbeat", "Reconnect", "Retry", "TokenSource"]

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


def _check_prefix(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _SUBPROTOCOL.match(value):
        raise ConfigurationError(f"protocol_prefix {value!r} is not a valid subprotocol token")


@attrs.frozen(kw_only=True)
class Auth:
    """How the client presents its token at the upgrade (protocol.md §7).

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
