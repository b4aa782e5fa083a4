"""An in-memory WebSocket: the harness's transport. No sockets, same semantics.

The client end and the server end share two memory channels. A close sends a
close marker and ends the channel, like a close frame; pings are answered by
the client end unless the test makes it unresponsive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import trio

from .._errors import ConnectionClosed, MessageTooBig
from . import UpgradeRequest, over_limit

__all__ = ["CloseMarker", "MemoryTransport", "memory_pair"]


@attrs.frozen
class CloseMarker:
    code: int
    reason: str


class MemoryTransport:
    """One end of an in-memory WebSocket."""

    def __init__(
        self,
        request: UpgradeRequest,
        inbound: trio.MemoryReceiveChannel[str | bytes],
        outbound: trio.MemorySendChannel[str | bytes],
        max_message_bytes: int = 1 << 62,
    ) -> None:
        self._request = request
        self._inbound = inbound
        self._outbound = outbound
        self._max_bytes = max_message_bytes
        #: Close code/reason once closed (by either side).
        self.closed: CloseMarker | None = None
        #: The close frame the peer sent, read once its earlier frames are drained.
        self._peer_close: CloseMarker | None = None
        #: Whether this end answers pings (tests switch it off to simulate a dead peer).
        self.responsive = True
        self.peer: MemoryTransport | None = None
        #: Whether a ``send`` is under way, and what ``send_nowait`` could not put in
        #: the channel (the next ``send`` puts it in first).
        self._sending = False
        self._unsent: list[str] = []

    @property
    def request(self) -> UpgradeRequest:
        return self._request

    async def receive(self) -> str | bytes:
        if self.closed is not None:
            raise ConnectionClosed(self.closed.code, self.closed.reason)
        try:
            item = await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            marker = self._peer_close or CloseMarker(1006, "")
            await self._close(marker)  # echo, as the close handshake does
            raise ConnectionClosed(marker.code, marker.reason) from None
        if over_limit(item, self._max_bytes):
            # The socket stays open: the connection sends what it has queued, then
            # closes with 1009.
            raise MessageTooBig()
        return item

    async def send(self, messages: Sequence[str]) -> None:
        if self._unsent:
            messages = [*self._unsent, *messages]
            self._unsent = []
        self._sending = True
        try:
            for message in messages:
                await self.send_one(message)
        finally:
            self._sending = False

    async def send_one(self, message: str | bytes) -> None:
        if self.closed is not None:
            raise ConnectionClosed(self.closed.code, self.closed.reason)
        try:
            await self._outbound.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(1006, "") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._close(CloseMarker(code, reason))

    async def _close(self, marker: CloseMarker) -> None:
        if self.closed is not None:
            return
        self.closed = marker
        if self.peer is not None and self.peer._peer_close is None:
            self.peer._peer_close = marker
        await self._outbound.aclose()

    def drop(self) -> None:
        """End abruptly, without a close frame: the peer sees 1006."""
        if self.closed is not None:
            return
        self.closed = CloseMarker(1006, "")
        self._outbound.close()
        self._inbound.close()

    async def settle(self) -> None:
        pass  # no bursts to wait for

    def pending(self) -> int:
        return 0  # one message at a time

    def can_send_nowait(self) -> bool:
        return self.closed is None and not self._sending and not self._unsent

    def send_nowait(self, messages: Sequence[str]) -> bool:
        """As the socket transport's: what the channel takes now; the rest waits for
        the next ``send`` (which also reports a peer that has gone)."""
        for index, message in enumerate(messages):
            try:
                self._outbound.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._unsent = list(messages[index:])
                return False
        return True

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.peer is None or not self.peer.responsive:
            await trio.sleep_forever()


def memory_pair(
    request: UpgradeRequest,
    *,
    max_message_bytes: int = 1 << 62,
    client_buffer: float = math.inf,
) -> tuple[MemoryTransport, MemoryTransport]:
    """``(server_end, client_end)``. ``client_buffer`` bounds frames in flight to the
    client, so a client that stops reading pushes back on the server like TCP does."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes](math.inf)
    to_client_send, to_client_recv = trio.open_memory_channel[str | bytes](client_buffer)
    server = MemoryTransport(request, to_server_recv, to_client_send, max_message_bytes)
    client = MemoryTransport(request, to_client_recv, to_server_send)
    server.peer, client.peer = client, server
    return server, client
