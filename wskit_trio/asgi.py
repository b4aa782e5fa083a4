"""The router as an ASGI application: mount it next to HTTP routes (Starlette) and
run it under an ASGI server on trio (Hypercorn's ``--worker-class trio``).

:class:`WebSocketApp` answers ``websocket`` scopes exactly as ``serve()`` answers
upgrades, through the same :class:`~wskit_trio.Server`: the door (path, Origin,
caps), ``authenticate``, the subprotocol, then one
:class:`~wskit_trio._connection.Connection` per socket. Only the transport
differs (``_transport._asgi``). Plain ASGI: no framework and no server is imported.

Structured concurrency. The pub/sub hub has to run while any connection may
publish, but an ASGI app owns no task of its own: the server calls it once per
scope. So the hub runs in the nursery of whoever needs it first: the ``lifespan``
(the ASGI lifespan scope, or :meth:`WebSocketApp.lifespan` hooked into a
framework's), else the first connection, whose task then stays until the last
connection it served for has ended. Either way, no task outlives the scope that
started it.

Shutdown. Hypercorn's trio worker sends ``lifespan.shutdown`` only after every
connection has ended: when its shutdown trigger fires it stops accepting, waits
``graceful_timeout``, then cancels what is left. A connection cancelled that way
closes with 1001, like ``serve()``'s, but its in-flight RPCs get no grace. For the
grace, await :meth:`WebSocketApp.shutdown` in the shutdown trigger before it
returns: in-flight RPCs get ``limits.shutdown_grace``, then 1001.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final, Generic, TypeVar

import trio

from ._admission import TrustedProxies
from ._config import Heartbeat, Limits
from ._groups import single_exception
from ._router import Router
from ._server import Authenticate, Server
from ._transport import Rejected
from ._transport._asgi import (
    Receive,
    Scope,
    Send,
    open_asgi,
    refuse,
    request_of,
    send_response,
)
from .pubsub._hub import PubSubHub

__all__ = ["WebSocketApp"]

log = logging.getLogger("wskit_trio")

D = TypeVar("D")

#: The answer to a plain HTTP request that reached the app (RFC 9110's 426).
_NOT_WEBSOCKET: Final = Rejected(426, "This is a WebSocket endpoint", (("upgrade", "websocket"),))
_UNAVAILABLE: Final = Rejected(503, "Service unavailable")


class WebSocketApp(Generic[D]):
    """An ASGI application serving ``router`` on ``websocket`` scopes.

    The options are ``serve()``'s, less the socket ones (host, port, TLS, signals:
    the ASGI server's). Differences that ASGI imposes:

    * ``heartbeat`` defaults to ``None``. An ASGI app cannot send a WebSocket ping, so
      a heartbeat here closes (1008) a client that sends nothing for ``interval +
      timeout`` seconds: turn it on for clients that send ``__heartbeat`` frames.
      Protocol pings are the server's (Hypercorn: ``websocket_ping_interval``).
    * A refused upgrade gets its status and body where the server offers the
      ``websocket.http.response`` extension (Hypercorn does), else a 403.
    * Keep the server's own message limit (Hypercorn: ``websocket_max_message_size``,
      16 MiB) above ``limits.max_message_bytes``, so that ours (1009 once the answers
      before it are out) is the one that applies.

    ``server`` is the :class:`~wskit_trio.Server` behind it: ``publish``,
    ``statistics()``, ``pubsub``.
    """

    def __init__(
        self,
        router: Router[D],
        *,
        authenticate: Authenticate[D] | None = None,
        subprotocols: Sequence[str] = (),
        limits: Limits | None = None,
        heartbeat: Heartbeat | None = None,
        path: str | None = None,
        allowed_origins: Sequence[str] | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.limits = limits or Limits()
        self.server: Server[D] = Server(
            router,
            authenticate=authenticate,
            subprotocols=subprotocols,
            limits=self.limits,
            heartbeat=heartbeat,
            path=path,
            allowed_origins=None if allowed_origins is None else tuple(allowed_origins),
            trusted_proxies=tuple(trusted_proxies),
        )
        self._trusted = TrustedProxies(trusted_proxies)
        self._hub = _HubHost(self.server.pubsub)
        self._lifespans = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await send_response(send, "http.response", _NOT_WEBSOCKET)
        else:
            raise ValueError(f"WebSocketApp serves websocket and lifespan scopes, not {kind!r}")

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the app's services (the pub/sub hub) for the block; on a normal exit,
        first close every connection gracefully (:meth:`shutdown`).

        The ASGI lifespan scope does this by itself. Frameworks keep the lifespan to
        themselves, so hook it in: ``Starlette(routes=..., lifespan=ws.lifespan)``, or
        ``async with ws.lifespan(app):`` inside a lifespan of your own. ``app`` (the
        framework's app, which Starlette passes) is not used."""
        if self._lifespans:
            raise RuntimeError("this WebSocketApp's lifespan is already running")
        self._lifespans += 1
        try:
            async with self._hub.hold():
                yield
                await self.shutdown()
        finally:
            self._lifespans -= 1

    async def shutdown(self, grace: float | None = None) -> None:
        """Close every connection gracefully and return once they have all ended: new
        RPCs are refused, in-flight ones get ``grace`` seconds (default
        ``limits.shutdown_grace``), then 1001. Upgrades after it get 1001 at once.

        With Hypercorn, await it in the shutdown trigger before it returns
        (Hypercorn's own shutdown cancels connections after ``graceful_timeout``)."""
        await self.server.shutdown_connections(grace)

    # -- scopes -------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        event = await receive()
        if event.get("type") != "websocket.connect":
            return  # gone before it asked
        request = request_of(scope, self._trusted)
        try:
            async with self._hub.hold():
                await self.server.handle(
                    request,
                    partial(
                        open_asgi,
                        receive,
                        send,
                        request,
                        max_message_bytes=self.limits.max_message_bytes,
                    ),
                    partial(refuse, scope, send),
                )
        except _HubFailed:
            log.error("pub/sub backend failed to start; refusing %s", request.client_ip)
            await refuse(scope, send, _UNAVAILABLE)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around :meth:`lifespan`."""
        event = await receive()
        if event.get("type") != "lifespan.startup":
            return
        started = False
        try:
            async with self.lifespan():
                started = True
                await send({"type": "lifespan.startup.complete"})
                while (await receive()).get("type") != "lifespan.shutdown":
                    pass
        except Exception as exc:
            phase = "shutdown" if started else "startup"
            log.exception("WebSocketApp lifespan %s failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


class _HubFailed(Exception):
    """The pub/sub hub could not start (its backend failed): nothing to serve with."""


class _HubHost:
    """Runs the pub/sub hub while anyone holds it, in the nursery of the first holder.

    The first holder hosts: it starts the hub in a nursery of its own and, once its
    own block is done, waits for the other holders to finish before it stops the
    hub. A holder that arrives while a previous host is still stopping starts the
    next one after it (one ``PubSubHub.run`` at a time).
    """

    def __init__(self, hub: PubSubHub) -> None:
        self._hub = hub
        self._holders = 0
        #: Set once the hub runs (or failed to start); ``None`` while no host runs it.
        self._started: trio.Event | None = None
        self._running = False
        #: Set when the host may be the only holder left.
        self._fewer = trio.Event()
        #: Held by the host for its whole life, so hosts never overlap.
        self._lock = trio.Lock()

    @property
    def running(self) -> bool:
        """Whether the hub runs (someone holds it)."""
        return self._running

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self._holders += 1
        try:
            started = self._started
            if started is None:
                async with self._host():
                    yield
            else:
                await started.wait()
                if not self._running:
                    raise _HubFailed()
                yield
        finally:
            self._holders -= 1
            self._fewer.set()

    @asynccontextmanager
    async def _host(self) -> AsyncIterator[None]:
        started = self._started = trio.Event()
        try:
            with single_exception():
                async with self._lock, trio.open_nursery() as nursery:
                    await self._start(nursery, started)
                    yield
                    while self._holders > 1:
                        self._fewer = trio.Event()
                        await self._fewer.wait()
                    # From here on, a new holder hosts a hub of its own (once this one
                    # has stopped: the lock).
                    self._started = None
                    self._running = False
                    nursery.cancel_scope.cancel()
        finally:
            if self._started is started:
                self._started = None
                self._running = False

    async def _start(self, nursery: trio.Nursery, started: trio.Event) -> None:
        try:
            await nursery.start(self._hub.run)
            self._running = True
        except Exception as exc:
            log.exception("pub/sub backend failed to start")
            raise _HubFailed() from exc
        finally:
            started.set()
