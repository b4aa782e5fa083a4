"""``serve()``: listeners, the upgrade decision, connections, graceful shutdown.

The server owns two nurseries: an outer one for connections and an inner one
for accepting. Stopping cancels only the accept loop; connections then get the
grace period to finish their RPCs before they are closed with 1001, and
``serve`` returns once the last one has ended.
"""

from __future__ import annotations

import inspect
import logging
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import attrs
import trio

from ._config import Heartbeat, Limits
from ._connection import Connection
from ._errors import UpgradeRejected
from ._groups import single_exception
from ._router import Router
from ._transport import (
    Accepted,
    Rejected,
    Transport,
    UpgradeRequest,
    host_port,
    select_subprotocol,
)
from ._transport._trio_websocket import serve_trio_websocket
from ._transport._wsproto import serve_wsproto

__all__ = ["Authenticate", "Server", "ServerStatistics", "Serve", "TransportName", "serve"]

log = logging.getLogger("wskit_trio")

D = TypeVar("D")

#: ``authenticate(request)``: sync or async; returns the connection data, ``None`` to
#: refuse with 401, or raises ``UpgradeRejected(status, body)``.
Authenticate: TypeAlias = Callable[[UpgradeRequest], "D | Awaitable[D | None] | None"]

#: The WebSocket implementation ``serve()`` runs on: ``"wsproto"`` (the default: trio
#: streams, the upgrade through wsproto, one task per connection reading and
#: dispatching) or ``"trio-websocket"``.
TransportName: TypeAlias = Literal["wsproto", "trio-websocket"]
_TRANSPORTS: tuple[TransportName, ...] = ("wsproto", "trio-websocket")


@attrs.frozen
class ServerStatistics:
    connections: int
    accepted: int
    rejected: int


class Server(Generic[D]):
    """A running server: what ``await nursery.start(serve(router, port=0))`` returns."""

    def __init__(
        self,
        router: Router[D],
        *,
        authenticate: Authenticate[D] | None,
        subprotocols: Sequence[str],
        limits: Limits,
        heartbeat: Heartbeat | None,
    ) -> None:
        self._router = router.compile()
        self._authenticate = authenticate
        self._subprotocols = tuple(subprotocols)
        self.limits = limits
        self._heartbeat = heartbeat
        self.connections: set[Connection[D]] = set()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        #: Set once shutdown began: connections that finish their handshake after it
        #: are closed with 1001 at once.
        self._closing = False
        self._grace = limits.shutdown_grace
        self._accepted = 0
        self._rejected = 0
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        """``ws://host:port`` of the (first) listener."""
        return f"ws://{host_port(self.host, self.port)}"

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(len(self.connections), self._accepted, self._rejected)

    async def aclose(self, *, grace: float | None = None) -> None:
        """Stop gracefully and wait until stopped: stop accepting, give in-flight RPCs
        ``grace`` seconds (default ``limits.shutdown_grace``), close every connection
        with 1001."""
        if grace is not None:
            self._grace = grace
        self._stop.set()
        await self._stopped.wait()

    async def decide(self, request: UpgradeRequest) -> Accepted | Rejected:
        """Run ``authenticate`` and pick the subprotocol (protocol.md §7)."""
        data: Any = None
        if self._authenticate is not None:
            try:
                result = self._authenticate(request)
                if inspect.isawaitable(result):
                    result = await result
            except UpgradeRejected as exc:
                self._rejected += 1
                return Rejected(exc.status, exc.body)
            except Exception:
                log.exception("authenticate failed; refusing the upgrade with 500")
                self._rejected += 1
                return Rejected(500, "Internal Server Error")
            if result is None:
                self._rejected += 1
                return Rejected(401, "Unauthorized")
            data = result
        self._accepted += 1
        return Accepted(data, select_subprotocol(request.subprotocols, self._subprotocols))

    async def run_connection(self, transport: Transport, data: Any) -> None:
        """Serve one accepted WebSocket until it closes."""
        if self._closing:
            with trio.move_on_after(self.limits.close_timeout):
                await transport.close(1001, "server shutting down")
            return
        conn: Connection[D] = Connection(
            self._router, transport, data, self.limits, self._heartbeat
        )
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:
            # A bug in one connection must not take the server (and every other
            # connection) down with it: connections run in the server's nursery.
            log.exception("connection %s failed", conn.client_id)
        finally:
            self.connections.discard(conn)

    async def _shutdown_connections(self) -> None:
        """Shut every connection down gracefully (``Connection.shutdown``), at once, and
        return when they have all ended."""
        self._closing = True
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                nursery.start_soon(conn.shutdown, self._grace)

    async def _watch_signals(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                self._stop.set()
                return

    async def _serve(
        self,
        host: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
        handle_signals: bool,
        task_status: trio.TaskStatus[Server[D]],
        transport: TransportName = "wsproto",
    ) -> None:
        try:
            async with trio.open_nursery() as services:
                # The pub/sub backend outlives every connection (they unsubscribe
                # on close), so it runs in a nursery around theirs.
                await services.start(self._router.pubsub.backend.run)
                async with trio.open_nursery() as connections:
                    listeners: list[Any] = list(await trio.open_tcp_listeners(port, host=host))
                    if ssl_context is not None:
                        listeners = [trio.SSLListener(lst, ssl_context) for lst in listeners]
                    first = listeners[0].transport_listener if ssl_context else listeners[0]
                    self.host, self.port = first.socket.getsockname()[:2]
                    accept: Callable[..., Awaitable[None]] = (
                        serve_trio_websocket
                        if transport == "trio-websocket"
                        else partial(serve_wsproto, close_timeout=self.limits.close_timeout)
                    )
                    async with trio.open_nursery() as accepting:
                        await accepting.start(
                            partial(
                                accept,
                                listeners,
                                decide=self.decide,
                                run_connection=self.run_connection,
                                handler_nursery=connections,
                                max_message_bytes=self.limits.max_message_bytes,
                            )
                        )
                        if handle_signals and threading.current_thread() is threading.main_thread():
                            await accepting.start(self._watch_signals)
                        log.info("listening on %s", self.url)
                        task_status.started(self)
                        await self._stop.wait()
                        accepting.cancel_scope.cancel()
                    # Stop accepting: new clients are refused at once, not left hanging.
                    for listener in listeners:
                        await listener.aclose()
                    await self._shutdown_connections()
                    # Upgrades still in their handshake get close_timeout, then are cut.
                    connections.cancel_scope.deadline = (
                        trio.current_time() + self.limits.close_timeout
                    )
                services.cancel_scope.cancel()
        finally:
            self._stopped.set()


class Serve(Generic[D]):
    """The async callable ``serve()`` returns: ``trio.run(serve(router))`` or
    ``server = await nursery.start(serve(router, port=0))``."""

    def __init__(self, router: Router[D], options: dict[str, Any]) -> None:
        self._router = router
        self._options = options

    async def __call__(
        self, *, task_status: trio.TaskStatus[Server[D]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        opts = self._options
        with single_exception():
            server: Server[D] = Server(
                self._router,
                authenticate=opts["authenticate"],
                subprotocols=opts["subprotocols"],
                limits=opts["limits"],
                heartbeat=opts["heartbeat"],
            )
            await server._serve(
                opts["host"],
                opts["port"],
                opts["ssl_context"],
                opts["handle_signals"],
                task_status,
                opts["transport"],
            )


def serve(
    router: Router[D],
    *,
    host: str | None = "127.0.0.1",
    port: int = 3000,
    authenticate: Authenticate[D] | None = None,
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    heartbeat: Heartbeat | None = None,
    ssl_context: ssl.SSLContext | None = None,
    handle_signals: bool = True,
    transport: TransportName = "wsproto",
) -> Serve[D]:
    """Serve ``router`` over WebSocket.

    ``authenticate`` runs at the HTTP upgrade; without it every connection is
    accepted with data ``None``. ``handle_signals`` makes SIGINT/SIGTERM a graceful
    shutdown (only in the main thread); turn it off when embedding. ``transport``
    picks the WebSocket implementation: ``"wsproto"`` (default, the fast one) or
    ``"trio-websocket"``.
    """
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {_TRANSPORTS}, got {transport!r}")
    return Serve(
        router,
        {
            "host": host,
            "port": port,
            "authenticate": authenticate,
            "subprotocols": subprotocols,
            "limits": limits or Limits(),
            "heartbeat": heartbeat,
            "ssl_context": ssl_context,
            "handle_signals": handle_signals,
            "transport": transport,
        },
    )
