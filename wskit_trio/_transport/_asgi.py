"""The ASGI adapter: a WebSocket that an ASGI server (Hypercorn's trio worker, say)
has already parsed, seen through the app's ``receive`` and ``send`` callables.
ASGI's end of a socket (``websocket.disconnect``, and the ``OSError`` a server may
raise from a ``send`` after it) becomes ``ConnectionClosed`` here and nowhere else.

The ASGI server owns the socket: it frames messages, answers the client's pings
and completes the close handshake. ASGI gives an app no ping of its own, so
:meth:`AsgiTransport.ping` stands for one with what an app does see: it returns
once the client has sent something (any message, a ``__heartbeat`` included)
since the previous ping. A heartbeat over ASGI therefore closes clients that stay
silent for ``interval + timeout``, not ones whose pong is missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeAlias

import trio

from .._admission import TrustedProxies, client_ip
from .._errors import ConnectionClosed, MessageTooBig
from . import Headers, Rejected, UpgradeRequest, host_port, over_limit
from ._http import ACCEPT_HEADERS

__all__ = [
    "AsgiTransport",
    "Receive",
    "Scope",
    "Send",
    "open_asgi",
    "refuse",
    "request_of",
    "send_response",
]

#: An ASGI scope or event, as this adapter reads it (servers type them as TypedDicts,
#: frameworks as mutable mappings: both are mappings).
Scope: TypeAlias = Mapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Mapping[str, Any]]]
#: ``Any``: a server's ``send`` takes its own event types, a framework's any mapping.
Send: TypeAlias = Callable[[Any], Awaitable[None]]

#: The close code ASGI reports when the client's close frame carried none.
_NO_STATUS: Final = 1005


def request_of(scope: Scope, trusted: TrustedProxies) -> UpgradeRequest:
    """The upgrade request a ``websocket`` scope describes. ``path`` is the whole path
    the client asked for (ASGI's ``path`` includes the ``root_path`` a framework
    mounted the app under), as ``serve()`` sees it."""
    # One string for them all, as ``serve()`` keeps them (the request lives as long
    # as its connection).
    headers = Headers.parsed(
        (bytes(name), bytes(value)) for name, value in scope.get("headers") or ()
    )
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    path = str(scope.get("path") or "/")
    client = scope.get("client")
    peer_ip = str(client[0]) if client else None
    return UpgradeRequest.from_target(
        f"{path}?{query}" if query else path,
        headers,
        tuple(scope.get("subprotocols") or ()),
        host_port(client[0], client[1]) if client else None,
        client_ip(peer_ip, headers, trusted),
    )


async def send_response(send: Send, prefix: str, refusal: Rejected) -> None:
    """A plain HTTP answer through ASGI: ``prefix`` is ``"http.response"`` for an
    ``http`` scope, ``"websocket.http.response"`` to refuse an upgrade (the ASGI
    extension). A client already gone is no error."""
    body = refusal.body.encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in refusal.headers),
    ]
    with contextlib.suppress(OSError):
        await send({"type": f"{prefix}.start", "status": refusal.status, "headers": headers})
        await send({"type": f"{prefix}.body", "body": body})


async def refuse(scope: Scope, send: Send, refusal: Rejected) -> None:
    """Refuse an upgrade: with the refusal's status and body when the server offers the
    ``websocket.http.response`` extension (Hypercorn does), else with ``websocket.close``
    before ``websocket.accept``, which the server answers with 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send_response(send, "websocket.http.response", refusal)
        return
    with contextlib.suppress(OSError):
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.body})


class AsgiTransport:
    """A :class:`~wskit_trio._transport.Transport` over ASGI ``receive``/``send``."""

    def __init__(
        self, receive: Receive, send: Send, request: UpgradeRequest, max_message_bytes: int
    ) -> None:
        self._receive = receive
        self._send = send
        self._request = request
        self._max_bytes = max_message_bytes
        #: How the socket ended (the client's close, or a failed send), once it has.
        self._ended: ConnectionClosed | None = None
        self._close_sent = False
        #: Messages received so far, and the count the last ``ping`` saw.
        self._received = 0
        self._seen = 0
        #: Set (and replaced) whenever a message or the end arrives: what ``ping`` waits on.
        self._activity: trio.Event | None = None

    @property
    def request(self) -> UpgradeRequest:
        return self._request

    async def receive(self) -> str | bytes:
        if self._ended is not None:
            raise ConnectionClosed(self._ended.code, self._ended.reason)
        event = await self._receive()
        if event.get("type") == "websocket.receive":
            text = event.get("text")
            message: str | bytes = text if text is not None else bytes(event.get("bytes") or b"")
            self._received += 1
            self._wake()
            if over_limit(message, self._max_bytes):
                # The socket stays open: the connection sends what it has queued, then
                # closes with 1009.
                raise MessageTooBig()
            return message
        if event.get("type") == "websocket.disconnect":
            ended = ConnectionClosed(
                int(event.get("code") or _NO_STATUS), str(event.get("reason") or "")
            )
        else:  # a server that breaks the protocol: treat it as a dropped socket
            ended = ConnectionClosed(1006, f"unexpected ASGI event {event.get('type')!r}")
        self._end(ended)
        raise ConnectionClosed(ended.code, ended.reason)

    async def send(self, messages: Sequence[str]) -> None:
        if self._ended is not None or self._close_sent:
            ended = self._ended or ConnectionClosed(1006, "")
            raise ConnectionClosed(ended.code, ended.reason)
        try:
            for message in messages:
                await self._send({"type": "websocket.send", "text": message})
        except OSError:
            # ASGI servers raise an OSError subclass for a send to a client that left.
            self._end(ConnectionClosed(1006, ""))
            raise ConnectionClosed(1006, "") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``websocket.close``: the server completes the handshake. Nothing to wait
        for here (the reader learns of the end through ``websocket.disconnect``)."""
        if self._close_sent or self._ended is not None:
            return
        self._close_sent = True
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def ping(self) -> None:
        """ASGI has no ping: return once the client has sent anything since the last
        call (at once if it already has). Raises ``ConnectionClosed`` once it is gone."""
        while self._received == self._seen:
            if self._ended is not None:
                raise ConnectionClosed(self._ended.code, self._ended.reason)
            if self._activity is None:
                self._activity = trio.Event()
            await self._activity.wait()
        self._seen = self._received
        await trio.lowlevel.checkpoint()

    async def settle(self) -> None:
        pass  # no bursts to wait for

    def pending(self) -> int:
        return 0  # ASGI hands over one message at a time

    def can_send_nowait(self) -> bool:
        return False  # the writer sends everything

    def send_nowait(self, messages: Sequence[str]) -> bool:
        raise NotImplementedError  # never called: see can_send_nowait

    def _end(self, ended: ConnectionClosed) -> None:
        if self._ended is None:
            self._ended = ended
        self._wake()

    def _wake(self) -> None:
        if self._activity is not None:
            self._activity.set()
            self._activity = None


@asynccontextmanager
async def open_asgi(
    receive: Receive,
    send: Send,
    request: UpgradeRequest,
    subprotocol: str | None,
    *,
    max_message_bytes: int,
) -> AsyncIterator[AsgiTransport]:
    """Accept the upgrade (``websocket.accept``, the server answers 101) and yield the
    transport."""
    try:
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": subprotocol,
                # The extensions this server speaks, as the other transports' 101 says.
                "headers": [(n.lower().encode(), v.encode()) for n, v in ACCEPT_HEADERS],
            }
        )
    except OSError:
        raise ConnectionClosed(1006, "") from None
    yield AsgiTransport(receive, send, request, max_message_bytes)
