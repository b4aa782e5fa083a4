"""The trio-websocket adapter: its exceptions become ours here and nowhere else.

trio-websocket closes the socket itself (1009) when a message exceeds its own
``max_message_size``, dropping what was still to be sent. So it gets a larger
limit (``_library_limit``) and the adapter checks ours, in bytes, without
closing: the connection sends what it has queued, then closes with 1009. Only a
message far over the limit still meets the library's own close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio
import trio_websocket

from .._errors import ConnectionClosed, MessageTooBig
from . import Accepted, Rejected, UpgradeRequest, host_port, over_limit, request_headers

__all__ = ["TrioWebsocketTransport", "serve_trio_websocket"]


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

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None


async def serve_trio_websocket(
    listeners: Sequence[trio.SocketListener | trio.SSLListener[trio.SocketStream]],
    *,
    decide: Callable[[UpgradeRequest], Awaitable[Accepted | Rejected]],
    run_connection: Callable[[TrioWebsocketTransport, object], Awaitable[None]],
    handler_nursery: trio.Nursery,
    max_message_bytes: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSockets on ``listeners`` until cancelled; connections run in
    ``handler_nursery``, so stopping the accept loop leaves them running."""

    async def handle(request: trio_websocket.WebSocketRequest) -> None:
        remote = request.remote
        if isinstance(remote, trio_websocket.Endpoint):
            # The same "host:port" form the wsproto transport reports.
            remote = host_port(remote.address, remote.port)
        host = getattr(getattr(request, "_event", None), "host", None)
        upgrade = UpgradeRequest.from_target(
            request.path,
            request_headers(host if isinstance(host, str) else None, request.headers),
            request.proposed_subprotocols,
            str(remote) if remote else None,
        )
        decision = await decide(upgrade)
        if isinstance(decision, Rejected):
            await request.reject(
                decision.status,
                extra_headers=[(b"content-type", b"text/plain; charset=utf-8")],
                body=decision.body.encode("utf-8"),
            )
            return
        try:
            ws = await request.accept(subprotocol=decision.subprotocol)
        except trio_websocket.ConnectionClosed:
            return
        transport = TrioWebsocketTransport(ws, upgrade, max_message_bytes)
        await run_connection(transport, decision.data)

    server = trio_websocket.WebSocketServer(
        handle,
        listeners,
        handler_nursery=handler_nursery,
        # ``receive`` checks our limit exactly, without closing (see ``_library_limit``).
        max_message_size=_library_limit(max_message_bytes),
    )
    await server.run(task_status=task_status)  # type: ignore[arg-type]
