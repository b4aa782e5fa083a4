"""The I/O around :mod:`._http` that every transport shares: read a request head
from a new stream, answer plain HTTP, know the peer. Stream errors become ours
(``ConnectionClosed``) here."""

from __future__ import annotations

import contextlib
from typing import Any, Final

import trio

from .._errors import ConnectionClosed
from . import Rejected, host_port
from ._http import HeadReader, RequestHead, response

__all__ = ["STREAM_ERRORS", "aclose_quietly", "peer", "peer_text", "read_head", "send_http"]

STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: Bytes asked of the socket per read while the head is incomplete: a head is small,
#: and what follows it (early frames) is kept for the WebSocket.
_RECEIVE_SIZE: Final = 16384
#: After a plain HTTP answer: how long, and how much, to read what the client still
#: sends before closing.
_LINGER: Final = 1.0
_LINGER_BYTES: Final = 256 * 1024


def peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The socket's peer ``(host, port)``, or ``None`` (not a socket, or gone)."""
    inner: Any = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(inner, "socket", None)
    try:
        address = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def peer_text(address: tuple[str, int] | None) -> str | None:
    return None if address is None else host_port(*address)


async def read_head(stream: trio.abc.Stream) -> RequestHead | Rejected:
    """Read until the request head is complete (the caller bounds how long). A peer
    that closes first raises ``ConnectionClosed``."""
    reader = HeadReader()
    while True:
        try:
            data = await stream.receive_some(_RECEIVE_SIZE)
        except STREAM_ERRORS:
            raise ConnectionClosed(1006, "") from None
        if not data:
            raise ConnectionClosed(1006, "")
        got = reader.feed(bytes(data))
        if got is not None:
            return got


async def send_http(stream: trio.abc.Stream, answer: Rejected | bytes, patience: float) -> None:
    """Send a plain HTTP answer (a refusal, or a whole response) before closing; a
    peer already gone is no error, and one that reads nothing gets ``patience``
    seconds."""
    data = (
        response(answer.status, answer.body, answer.headers)
        if isinstance(answer, Rejected)
        else answer
    )
    with trio.move_on_after(patience), contextlib.suppress(*STREAM_ERRORS):
        await stream.send_all(data)
        if isinstance(stream, trio.SocketStream):
            # Closing with request bytes unread sends a reset, which can destroy the
            # answer before the client reads it: stop writing, and drop what the
            # client still sends until it closes (for a moment, a bounded amount).
            await stream.send_eof()
            with trio.move_on_after(_LINGER):
                drained = 0
                while drained < _LINGER_BYTES:
                    chunk = await stream.receive_some(_RECEIVE_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)


async def aclose_quietly(stream: trio.abc.Stream, patience: float) -> None:
    """Close ``stream`` whatever state it is in, within ``patience`` seconds (a TLS
    close may wait on a peer that reads nothing), shielded: it runs while cleaning
    up."""
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(patience),
        contextlib.suppress(*STREAM_ERRORS, trio.BusyResourceError),
    ):
        await stream.aclose()
