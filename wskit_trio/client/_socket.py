"""The client's WebSocket, on trio-websocket: its exceptions become ours here and
nowhere else (``ConnectError`` for a failed open, ``ConnectionClosed`` after)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
import trio_websocket

from .._errors import ConnectError, ConnectionClosed

__all__ = ["ClientSocket", "open_socket"]


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(1006, "")
    return ConnectionClosed(reason.code, reason.reason or "")


class ClientSocket:
    """One open client WebSocket."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; ``ConnectionClosed`` once the socket is closed."""
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, message: str) -> None:
        """Send one text frame; ``ConnectionClosed`` if the socket is gone (then
        nothing was sent, unless the connection broke in the middle of it)."""
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def ping(self) -> None:
        """A protocol ping; returns when its pong arrives."""
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "", *, grace: float = 5.0) -> None:
        """The close handshake, for at most ``grace`` seconds; then (or when
        cancelled) the TCP connection is dropped. Idempotent; never raises
        ``ConnectionClosed``."""
        with trio.move_on_after(grace) as scope:
            await self._ws.aclose(code, reason)
        if scope.cancelled_caught:
            await self.abort()  # a dead peer never answers the close frame

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (the peer is dead)."""
        await self._ws._close_stream()


@asynccontextmanager
async def open_socket(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_message_size: int = 1024 * 1024,
) -> AsyncIterator[ClientSocket]:
    """Open a WebSocket to ``url`` for the block; raises :class:`ConnectError` when
    it cannot be opened. On exit the socket is closed (gracefully unless cancelled)."""
    cm = trio_websocket.open_websocket_url(
        url,
        ssl_context,
        subprotocols=list(subprotocols) or None,
        extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers] or None,
        connect_timeout=connect_timeout,
        disconnect_timeout=close_timeout,
        max_message_size=max_message_size,
    )
    opened = finished = False
    try:
        async with cm as ws:
            opened = True
            yield ClientSocket(ws)
            finished = True
    except trio_websocket.ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace")
        reason = f"HTTP {exc.status_code}" + (f" {body}" if body else "")
        raise ConnectError(url, reason, status=exc.status_code, body=body) from None
    except trio_websocket.ConnectionTimeout:
        raise ConnectError(url, f"timed out after {connect_timeout:g} s") from None
    except trio_websocket.DisconnectionTimeout:
        # The peer did not finish the close handshake; the TCP connection is gone now.
        if not finished:
            raise
    except trio_websocket.HandshakeError as exc:
        cause = exc.__cause__ or exc.__context__
        raise ConnectError(url, str(cause) if cause else "handshake failed") from None
    except (OSError, trio_websocket.ConnectionClosed) as exc:
        if opened:
            raise
        raise ConnectError(url, str(exc) or type(exc).__name__) from None
