"""The trio-websocket adapter: its exceptions become ours here and nowhere else.

trio-websocket closes the socket itself (1009) when a message exceeds its own
``max_message_size``, dropping what was still to be sent. So it gets a larger
limit (``_library_limit``) and the adapter checks ours, in bytes, without
closing: the connection sends what it has queued, then closes with 1009. Only a
message far over the limit still meets the library's own close.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, TextMessage

from .._errors import ConnectionClosed, MessageTooBig
from . import UpgradeRequest, over_limit
from ._http import ACCEPT_HEADERS, RequestHead

__all__ = ["TrioWebsocketTransport", "open_trio_websocket"]


def _library_limit(max_message_bytes: int) -> int:
    """trio-websocket's own ``max_message_size`` for our byte limit: it counts the
    characters of text messages (up to 4 bytes each), and what it refuses it closes
    on its own, so well above ours (a message up to 4x over ours is still ours)."""
    return 4 * max_message_bytes + 65536


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(1006, "")
    return ConnectionClosed(reason.code, reason.reason or "")


class TrioWebsocketTransport:
    """A :class:`~wskit_trio._transport.Transport` over a trio-websocket connection."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        request: UpgradeRequest,
        max_message_bytes: int,
    ) -> None:
        self._ws = ws
        self._request = request
        self._max_bytes = max_message_bytes
        #: True while a message is being written: if that write is cancelled, part
        #: of a frame may be on the wire and the stream can carry nothing more.
        self._mid_frame = False

    @property
    def request(self) -> UpgradeRequest:
        return self._request

    async def receive(self) -> str | bytes:
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None
        if over_limit(message, self._max_bytes):
            # The socket stays open: the connection sends what it has queued, then
            # closes with 1009.
            raise MessageTooBig()
        return message

    async def send(self, messages: Sequence[str]) -> None:
        try:
            for message in messages:
                self._mid_frame = True
                await self._ws.send_message(message)
                self._mid_frame = False
        except trio_websocket.ConnectionClosed as exc:
            self._mid_frame = False
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._mid_frame:
            # A write was cancelled part-way (a client that stopped reading): a close
            # frame now would land inside the unfinished frame and garble the stream.
            # Drop the TCP connection instead; the peer sees an abnormal close (1006).
            await self._ws._close_stream()
            return
        await self._ws.aclose(code, reason)

    async def settle(self) -> None:
        pass  # no bursts to wait for

    def pending(self) -> int:
        return 0  # trio-websocket hands over one message at a time

    def can_send_nowait(self) -> bool:
        return False  # the writer sends everything

    def send_nowait(self, messages: Sequence[str]) -> bool:
        raise NotImplementedError  # never called: see can_send_nowait

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None


class _Bounded(trio_websocket.WebSocketConnection):
    """trio-websocket keeps a message's fragments in a list and counts only their
    lengths, so a flood of empty fragments grows it without bound. Each fragment
    counts a little more here: such a message meets the library's own limit, and
    its 1009, while its memory is still small."""

    async def _handle_message_event(self, event: TextMessage | BytesMessage) -> None:
        self._message_size += _FRAGMENT_COST
        await super()._handle_message_event(event)


#: What one fragment costs trio-websocket beyond its payload (its list slot, its
#: string object), in the units of its size limit.
_FRAGMENT_COST: Final = 64


class _Replayed(trio.abc.Stream):
    """A stream that first gives back bytes already read from it (the request head,
    read by the server before it chose the transport)."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._replay:
            data, self._replay = self._replay, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise trio.ClosedResourceError  # never called by trio-websocket

    async def aclose(self) -> None:
        await self._stream.aclose()


@asynccontextmanager
async def open_trio_websocket(
    stream: trio.abc.Stream,
    head: RequestHead,
    request: UpgradeRequest,
    subprotocol: str | None,
    *,
    max_message_bytes: int,
    close_timeout: float,
) -> AsyncIterator[TrioWebsocketTransport]:
    """Hand a checked upgrade (``check_upgrade``) to trio-websocket: it reads the
    request again from the replayed head and answers 101 (with the same
    ``ACCEPT_HEADERS`` as ours). Its reader task lives in
    a nursery of this connection's own."""
    replay = _Replayed(stream, head.raw)
    del head  # (this frame lives as long as the connection; the head need not)
    async with trio.open_nursery() as nursery:
        ws = _Bounded(
            replay,
            WSConnection(ConnectionType.SERVER),
            max_message_size=_library_limit(max_message_bytes),
        )
        nursery.start_soon(ws._reader_task)
        try:
            ws_request = await ws._get_request()
            accepted = await ws_request.accept(
                subprotocol=subprotocol,
                extra_headers=[
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in ACCEPT_HEADERS
                ],
            )
        except trio_websocket.ConnectionClosed:
            raise ConnectionClosed(1006, "") from None
        try:
            yield TrioWebsocketTransport(accepted, request, max_message_bytes)
        finally:
            nursery.cancel_scope.cancel()
