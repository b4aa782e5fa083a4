"""A TCP proxy a test can break on purpose: the network between a real client and a
real server, with a switch.

``cut()`` drops every connection through it (what a Wi-Fi drop looks like to both
ends) and answers new ones with HTTP 503 until ``restore()``; ``hold_downstream()`` stops
forwarding server → client bytes, so what the server sends next is lost by the
following ``cut()`` (an answer that never arrived). Each of these is an explicit
step of the scenario, so tests built on it need no sleeps.
"""

from __future__ import annotations

from contextlib import suppress

import trio

__all__ = ["FlakyLink"]

_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FlakyLink:
    """``await nursery.start(FlakyLink(target_port).run)`` then connect clients to
    ``link.url``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        #: Connections accepted (and forwarded) so far.
        self.accepted = 0
        self._up = True
        self._pipes: set[trio.CancelScope] = set()
        self._downstream = trio.Event()
        self._downstream.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection now; answer new ones with 503 until :meth:`restore`."""
        self._up = False
        for scope in self._pipes:
            scope.cancel()

    def restore(self) -> None:
        """Accept and forward connections again (downstream forwarding resumes too)."""
        self._up = True
        self._downstream.set()

    def hold_downstream(self) -> None:
        """Stop forwarding server → client on every connection (upstream still flows)."""
        self._downstream = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self._up:
                # What a load balancer with no backend says. (Closing the socket
                # instead would leave the client's handshake waiting for its timeout.)
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.receive_some(65536)
                    await client.send_all(_UNAVAILABLE)
                return
            try:
                server = await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError:
                return
            self.accepted += 1
            async with server:
                with trio.CancelScope() as scope:
                    self._pipes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, server, False, scope)
                            nursery.start_soon(self._pump, server, client, True, scope)
                    finally:
                        self._pipes.discard(scope)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        downstream: bool,
        scope: trio.CancelScope,
    ) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                if downstream:
                    await self._downstream.wait()
                await sink.send_all(data)
        scope.cancel()  # one side closed: close the other too
