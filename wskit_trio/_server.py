"""``serve()``: listeners, the upgrade decision, connections, graceful shutdown.

The server owns two nurseries: an outer one for connections and an inner one
for accepting. Stopping cancels only the accept loop; connections then get the
grace period to finish their RPCs before they are closed with 1001, and
``serve`` returns once the last one has ended.
"""

from __future__ import annotations

import errno
import inspect
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, cast

import attrs
import trio

from ._admission import Admission, TrustedProxies, client_ip
from ._config import DEFAULT_HEARTBEAT, Heartbeat, Limits
from ._connection import Connection
from ._errors import ConfigurationError, ConnectionClosed, UpgradeRejected
from ._groups import single_exception
from ._heartbeat import Heartbeats
from ._memory import LARGE_CONNECTION_BYTES, trim_heap
from ._observer import Observer
from ._protocol._json import dumps
from ._protocol.pubsub import PublishResult
from ._router import ErrorHook, Router
from ._schema import MessageSchema
from ._transport import (
    Accepted,
    Rejected,
    Transport,
    UpgradeRequest,
    host_port,
    select_subprotocol,
)
from ._transport._accept import aclose_quietly, peer, peer_text, read_head, send_http
from ._transport._http import RequestHead, check_upgrade
from ._transport._http import response as http_response
from ._transport._trio_websocket import open_trio_websocket
from ._transport._wsproto import open_wsproto
from .pubsub._hub import PubSubHub

__all__ = [
    "Authenticate",
    "Page",
    "Server",
    "ServerStatistics",
    "Serve",
    "TransportName",
    "serve",
]

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

#: A transport's ``open_*(stream, head, request, subprotocol, *, max_message_bytes,
#: close_timeout)``: answers 101 and yields the WebSocket.
OpenTransport: TypeAlias = Callable[..., AbstractAsyncContextManager[Transport]]

_INTERNAL: Final = Rejected(500, "Internal Server Error")

#: Errors of accept(2) that say the system is short of file descriptors or memory for
#: now (``trio.serve_listeners``' list), and how long to wait before accepting again.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_RETRY: Final = 0.1
#: Every connection's task is named this (the name trio would build for each).
_CONNECTION_TASK: Final = f"{__name__}.Server._serve_stream"


def _utf8(body: str | bytes) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


@attrs.frozen
class Page:
    """A fixed answer to a plain HTTP GET (or HEAD) on one path: ``serve(pages=...)``.

    For the page of a browser app that then opens its WebSocket on the same
    origin: one process, no second web server, no CORS. The body is sent as is,
    whole; anything bigger or changing belongs behind a real web server.
    """

    body: bytes = attrs.field(converter=_utf8)
    content_type: str = "text/html; charset=utf-8"


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
        path: str | None = None,
        health_path: str | None = None,
        metrics_path: str | None = None,
        pages: Mapping[str, Page] | None = None,
        allowed_origins: Sequence[str] | None = None,
        trusted_proxies: Sequence[str] = (),
        tls: bool = False,
        error_hooks: Sequence[ErrorHook[D]] = (),
    ) -> None:
        compiled = router.compile()
        #: ``error_hooks`` run after the router's ``on_error`` hooks (the harness
        #: records errors with one).
        self._router = attrs.evolve(compiled, on_error=(*compiled.on_error, *error_hooks))
        #: This server's pub/sub hub: its connections' subscriptions, on the router's
        #: backend (``with_pubsub``). ``statistics()`` and ``subscribers(topic)``.
        self.pubsub = PubSubHub(
            self._router.pubsub,
            self._router.observer,
            slow_consumer_timeout=limits.slow_consumer_timeout,
        )
        self._authenticate = authenticate
        self._subprotocols = tuple(subprotocols)
        self.limits = limits
        self._heartbeat = heartbeat
        #: One task pings every connection when due (see ``_heartbeat``).
        self._heartbeats = Heartbeats(heartbeat.interval) if heartbeat is not None else None
        self._admission = Admission(
            path=path,
            allowed_origins=allowed_origins,
            max_connections=limits.max_connections,
            max_connections_per_ip=limits.max_connections_per_ip,
        )
        self._health_path = health_path
        self._metrics_path = metrics_path
        self._exposition = _exposition_of(compiled.observer) if metrics_path is not None else None
        self._pages = dict(pages or {})
        self._trusted = TrustedProxies(trusted_proxies)
        self._scheme = "wss" if tls else "ws"
        self.connections: set[Connection[D]] = set()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        #: Set once shutdown began: connections that finish their handshake after it
        #: are closed with 1001 at once.
        self._closing = False
        self._grace = limits.shutdown_grace
        #: The waits for a request head still running. Once shutdown has drained the
        #: connections they end at once (``_drained``): nothing started on those
        #: sockets, and browsers open spare ones ahead of need, which would otherwise
        #: hold every shutdown for ``close_timeout``.
        self._awaiting_heads: set[trio.CancelScope] = set()
        self._drained = False
        self._accepted = 0
        self._rejected = 0
        self.host = ""
        self.port = 0
        #: The nursery of the server's own tasks, once it runs.
        self._services: trio.Nursery | None = None
        self._trimming = False

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS) of the (first) listener."""
        return f"{self._scheme}://{host_port(self.host, self.port)}"

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(len(self.connections), self._accepted, self._rejected)

    async def publish(
        self,
        topic: str,
        schema: MessageSchema[Any],
        payload: Any = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult:
        """Publish to every subscriber of ``topic``, on every instance, from outside
        any connection (a background task, say): like ``ctx.publish``, with no
        connection to authorize or exclude."""
        return await self.pubsub.publish(topic, schema, payload, meta=meta)

    async def aclose(self, *, grace: float | None = None) -> None:
        """Stop gracefully and wait until stopped: stop accepting, give in-flight RPCs
        ``grace`` seconds (default ``limits.shutdown_grace``), close every connection
        with 1001."""
        if grace is not None:
            self._grace = grace
        self._stop.set()
        await self._stopped.wait()

    # -- one client, from its first byte ---------------------------------------------

    async def _serve_stream(self, open_transport: OpenTransport, stream: trio.abc.Stream) -> None:
        """One TCP connection's whole life. Whatever it sends, only it is affected:
        its failures are logged and answered (HTTP 500 before the upgrade, 1011 after),
        and the stream is closed."""
        try:
            upgrade = await self._read_upgrade(open_transport, stream)
            if upgrade is not None:
                await self.handle(upgrade.request, upgrade.open, upgrade.reject)
        finally:
            await aclose_quietly(stream, self.limits.close_timeout)

    async def _read_upgrade(
        self, open_transport: OpenTransport, stream: trio.abc.Stream
    ) -> _Upgrade | None:
        """Up to :meth:`handle`: the request head, a plain HTTP request's answer, the
        upgrade's own checks. ``None`` once the client is answered (or dropped); a
        failure here is logged and answered with 500. (Its own frame: what it holds is
        gone once the connection is open.)"""
        address = peer(stream)
        try:
            head: RequestHead | Rejected | None = None
            with trio.move_on_after(self.limits.handshake_timeout) as waiting:
                if self._drained:
                    waiting.cancel()
                self._awaiting_heads.add(waiting)
                try:
                    head = await read_head(stream)
                finally:
                    self._awaiting_heads.discard(waiting)
            if head is None:
                log.debug("%s sent no request head in time; dropped", peer_text(address))
                return None
            if isinstance(head, Rejected):
                await send_http(stream, head, self.limits.close_timeout)
                return None
            if not head.is_upgrade:
                answer = self._plain(head)
                if answer is not None:
                    await send_http(stream, answer, self.limits.close_timeout)
                    return None
            refusal = check_upgrade(head)
            if refusal is not None:
                await send_http(stream, refusal, self.limits.close_timeout)
                return None
            request = UpgradeRequest.from_target(
                head.target,
                head.headers,
                head.subprotocols,
                peer_text(address),
                client_ip(address[0] if address else None, head.headers, self._trusted),
            )
            return _Upgrade(open_transport, stream, head, request, self.limits)
        except ConnectionClosed:
            return None  # the peer went away before the upgrade
        except Exception:
            log.exception("connection from %s failed before the upgrade", peer_text(address))
            await send_http(stream, _INTERNAL, self.limits.close_timeout)
            return None

    def _plain(self, head: RequestHead) -> bytes | None:
        """The answer to a plain HTTP request (no upgrade) on the health check's,
        the metrics' or a page's path; ``None`` for any other path (refused as no
        upgrade)."""
        if (
            head.path != self._health_path
            and head.path != self._metrics_path
            and head.path not in self._pages
        ):
            return None
        if head.method not in ("GET", "HEAD"):
            return http_response(405, "Method not allowed", (("allow", "GET, HEAD"),))
        head_only = head.method == "HEAD"
        if head.path == self._health_path:
            return self._health(head_only)
        if head.path == self._metrics_path:
            return self._metrics(head.header("accept"), head_only)
        page = self._pages[head.path]
        return http_response(200, page.body, content_type=page.content_type, head_only=head_only)

    def _health(self, head_only: bool) -> bytes:
        """The health check's answer: 200 while serving, 503 while draining or while
        the pub/sub backend is unhealthy, with the details as JSON."""
        backend = self._router.pubsub.backend
        draining = self._closing or self._stop.is_set()
        status = "draining" if draining else "ok" if backend.healthy else "degraded"
        body = dumps(
            {
                "status": status,
                "connections": len(self.connections),
                "pubsub": {"backend": type(backend).__name__, "healthy": backend.healthy},
            }
        )
        return http_response(
            200 if status == "ok" else 503,
            body,
            (("cache-control", "no-store"),),
            content_type="application/json",
            head_only=head_only,
        )

    def _metrics(self, accept: str | None, head_only: bool) -> bytes:
        """A Prometheus scrape (``metrics_path``): the router's ``PrometheusMetrics``,
        in the format the scraper's ``Accept`` asks for."""
        assert self._exposition is not None
        body, content_type = self._exposition(accept)
        return http_response(
            200,
            body,
            (("cache-control", "no-store"),),
            content_type=content_type,
            head_only=head_only,
        )

    async def decide(
        self, request: UpgradeRequest, default_data: Any = None
    ) -> Accepted | Rejected:
        """Path, Origin and caps, then ``authenticate`` and the subprotocol (docs/protocol.md
        §7). An ``Accepted`` holds a connection slot: :meth:`handle` gives it back.
        Without ``authenticate`` the connection gets ``default_data``."""
        refusal = self._admission.admit(request)
        if refusal is not None:
            self._rejected += 1
            return refusal
        data: Any = default_data
        if self._authenticate is not None:
            try:
                result = self._authenticate(request)
                if inspect.isawaitable(result):
                    result = await result
            except UpgradeRejected as exc:
                refusal = Rejected(exc.status, exc.body, exc.headers)
            except Exception:
                log.exception(
                    "authenticate failed for %s; refusing the upgrade with 500", request.client_ip
                )
                refusal = _INTERNAL
            else:
                if result is None:
                    refusal = Rejected(401, "Unauthorized")
                data = result
            if refusal is not None:
                self._admission.release(request)
                self._rejected += 1
                return refusal
        self._accepted += 1
        return Accepted(data, select_subprotocol(request.subprotocols, self._subprotocols))

    async def handle(
        self,
        request: UpgradeRequest,
        open_transport: Callable[[str | None], AbstractAsyncContextManager[Transport]],
        reject: Callable[[Rejected], Awaitable[None]],
        *,
        default_data: Any = None,
    ) -> None:
        """Everything after a valid upgrade request, for every transport (the test
        harness's too): :meth:`decide`, then ``reject`` or ``open_transport`` (which
        answers 101) and the connection's life. Never raises but ``Cancelled``: a
        failure is logged once and answered (500 before the upgrade, 1011 after)."""
        # Who answers a failure: ``reject`` (500) until the 101 has gone out, nobody
        # after (the connection closes with 1011).
        answer: Callable[[Rejected], Awaitable[None]] | None = reject
        try:
            decision = await self.decide(request, default_data)
            if isinstance(decision, Rejected):
                await reject(decision)
                return
            try:
                async with open_transport(decision.subprotocol) as transport:
                    # Not held for the connection's life: they were for the upgrade.
                    answer = None
                    del open_transport, reject
                    if self._closing:
                        with trio.move_on_after(self.limits.close_timeout):
                            await transport.close(1001, "server shutting down")
                        return
                    conn: Connection[D] = Connection(
                        self._router,
                        transport,
                        cast(D, decision.data),
                        self.limits,
                        self._heartbeat,
                        self.pubsub,
                        self._heartbeats,
                    )
                    del decision
                    # Served from this frame, not from a method of its own: each
                    # frame is held by every idle connection, for its whole life.
                    self.connections.add(conn)
                    try:
                        await conn.run()
                    except Exception:
                        # A bug in one connection must not take the server (and every
                        # other connection) down with it: they share its nursery.
                        log.exception(
                            "connection %s from %s failed; closed with 1011",
                            conn.client_id,
                            request.client_ip,
                        )
                    finally:
                        self.connections.discard(conn)
                        if conn.statistics().outbox.high_water_bytes >= LARGE_CONNECTION_BYTES:
                            self._trim_soon()
            finally:
                self._admission.release(request)
        except ConnectionClosed:
            pass  # the peer went away during the upgrade
        except Exception:
            log.exception(
                "connection from %s failed %s",
                request.client_ip,
                "during the upgrade" if answer is not None else "after the upgrade",
            )
            if answer is not None:
                await answer(_INTERNAL)

    async def run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """What runs for the server's life around its connections, until cancelled:
        the pub/sub hub and the heartbeat schedule."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pubsub.run)
            if self._heartbeats is not None:
                await nursery.start(self._heartbeats.run)
            task_status.started()

    def _trim_soon(self) -> None:
        """Give the memory a large connection held back to the OS, a moment after it
        ended (one trim for a burst of them): see ``_memory``."""
        if self._trimming or self._services is None:
            return
        self._trimming = True
        self._services.start_soon(self._trim_after, 1.0)

    async def _trim_after(self, delay: float) -> None:
        await trio.sleep(delay)
        self._trimming = False
        trim_heap()

    async def shutdown_connections(self, grace: float | None = None) -> None:
        """Shut every connection down gracefully (``Connection.shutdown``), at once, and
        return when they have all ended: new RPCs refused, in-flight ones get ``grace``
        seconds (default: the one ``aclose`` was given, else
        ``limits.shutdown_grace``), then close 1001. Upgrades after it get 1001 too."""
        self._closing = True
        grace = self._grace if grace is None else grace
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                nursery.start_soon(conn.shutdown, grace)

    async def _watch_signals(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                self._stop.set()
                return

    async def _listen(
        self, host: str | None, port: int, ssl_context: ssl.SSLContext | None
    ) -> list[trio.SocketListener | trio.SSLListener[trio.SocketStream]]:
        try:
            sockets = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            where = host_port(host or "*", port)
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from None
        self.host, self.port = sockets[0].socket.getsockname()[:2]
        if ssl_context is None:
            return list(sockets)
        return [trio.SSLListener(sock, ssl_context) for sock in sockets]

    async def _accept(
        self,
        listener: trio.SocketListener | trio.SSLListener[trio.SocketStream],
        open_transport: OpenTransport,
        connections: trio.Nursery,
    ) -> None:
        """Accept clients until cancelled, each served by :meth:`_serve_stream` as its
        task's own coroutine in ``connections`` (``trio.serve_listeners`` wraps each in
        a coroutine of its own, and names each task anew: memory every idle connection
        pays). As there, an accept that fails for want of file descriptors or memory is
        logged and retried after a moment; any other failure is raised."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error(
                        "accept failed (%s); retrying in %s seconds",
                        errno.errorcode[exc.errno],
                        _ACCEPT_RETRY,
                        exc_info=True,
                    )
                    await trio.sleep(_ACCEPT_RETRY)
                else:
                    connections.start_soon(
                        self._serve_stream, open_transport, stream, name=_CONNECTION_TASK
                    )

    async def _serve(
        self,
        host: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
        handle_signals: bool,
        task_status: trio.TaskStatus[Server[D]],
        transport: TransportName = "wsproto",
    ) -> None:
        open_transport: OpenTransport = (
            open_trio_websocket if transport == "trio-websocket" else open_wsproto
        )
        try:
            async with trio.open_nursery() as services:
                self._services = services
                # The pub/sub backend outlives every connection (they unsubscribe
                # on close), so it runs in a nursery around theirs.
                await services.start(self.run_services)
                async with trio.open_nursery() as connections:
                    listeners = await self._listen(host, port, ssl_context)
                    async with trio.open_nursery() as accepting:
                        for listener in listeners:
                            accepting.start_soon(
                                self._accept, listener, open_transport, connections
                            )
                        if handle_signals and threading.current_thread() is threading.main_thread():
                            await accepting.start(self._watch_signals)
                        _announce(self.url)
                        task_status.started(self)
                        await self._stop.wait()
                        accepting.cancel_scope.cancel()
                    # Stop accepting: new clients are refused at once, not left hanging.
                    for listener in listeners:
                        await listener.aclose()
                    await self.shutdown_connections()
                    # Sockets that never asked for anything are closed now (during the
                    # drain they could still ask: a health check gets its 503).
                    self._drained = True
                    for waiting in self._awaiting_heads:
                        waiting.cancel()
                    # Upgrades still in their handshake get close_timeout, then are cut.
                    connections.cancel_scope.deadline = (
                        trio.current_time() + self.limits.close_timeout
                    )
                services.cancel_scope.cancel()
        finally:
            self._stopped.set()


class _Upgrade:
    """:meth:`Server.handle`'s ``open_transport`` and ``reject`` for a request read from
    a stream. The request head is handed to the transport (which keeps what it
    needs) and not kept here: this lives as long as its connection."""

    __slots__ = ("_head", "_limits", "_open", "_stream", "request")

    def __init__(
        self,
        open_transport: OpenTransport,
        stream: trio.abc.Stream,
        head: RequestHead,
        request: UpgradeRequest,
        limits: Limits,
    ) -> None:
        self._open = open_transport
        self._stream = stream
        self._head: RequestHead | None = head
        self.request = request
        self._limits = limits

    def open(self, subprotocol: str | None) -> AbstractAsyncContextManager[Transport]:
        head, self._head = self._head, None
        assert head is not None, "opened twice"
        return self._open(
            self._stream,
            head,
            self.request,
            subprotocol,
            max_message_bytes=self._limits.max_message_bytes,
            close_timeout=self._limits.close_timeout,
        )

    async def reject(self, refusal: Rejected) -> None:
        await send_http(self._stream, refusal, self._limits.close_timeout)


def _exposition_of(observer: Observer | None) -> Callable[[str | None], tuple[bytes, str]]:
    """What answers ``metrics_path``: the router's ``PrometheusMetrics`` (imported only
    then: ``prometheus_client`` is an optional dependency)."""
    from .prometheus import PrometheusMetrics

    if not isinstance(observer, PrometheusMetrics):
        raise ConfigurationError(
            "metrics_path needs router.plugin(PrometheusMetrics()) from wskit_trio.prometheus"
        )
    return observer.exposition


def _announce(url: str) -> None:
    """``listening on ...`` at INFO; an app that configured no logging at all still
    sees that one line (on stderr), so ``trio.run(serve(router))`` says where it is."""
    log.info("listening on %s", url)
    if not log.hasHandlers():
        print(f"wskit_trio: listening on {url}", file=sys.stderr, flush=True)


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
                path=opts["path"],
                health_path=opts["health_path"],
                metrics_path=opts["metrics_path"],
                pages=opts["pages"],
                allowed_origins=opts["allowed_origins"],
                trusted_proxies=opts["trusted_proxies"],
                tls=opts["ssl_context"] is not None,
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
    heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
    ssl_context: ssl.SSLContext | None = None,
    handle_signals: bool = True,
    transport: TransportName = "wsproto",
    path: str | None = None,
    health_path: str | None = None,
    metrics_path: str | None = None,
    pages: Mapping[str, Page] | None = None,
    allowed_origins: Sequence[str] | None = None,
    trusted_proxies: Sequence[str] = (),
) -> Serve[D]:
    """Serve ``router`` over WebSocket.

    ``authenticate`` runs at the HTTP upgrade; without it every connection is
    accepted with data ``None``. ``heartbeat`` pings every client (every 30 s, stale
    10 s later, by default; ``None`` turns it off), so a peer that vanished without
    a word does not hold its connection forever. ``handle_signals`` makes
    SIGINT/SIGTERM a graceful shutdown (only in the main thread); turn it off when
    embedding. ``transport`` picks the WebSocket implementation: ``"wsproto"``
    (default, the fast one) or ``"trio-websocket"``.

    At the door: ``path`` (``"/ws"``) answers 404 to upgrades on any other path;
    ``health_path`` (``"/healthz"``) answers a plain GET with 200 and a JSON status,
    503 while draining or while the pub/sub backend is unhealthy;
    ``metrics_path`` (``"/metrics"``) answers a plain GET with a Prometheus scrape of
    the router's ``PrometheusMetrics`` (``wskit_trio.prometheus``; without that plugin
    it raises ``ConfigurationError``);
    ``pages`` (``{"/": Page(html)}``) answers a plain GET or HEAD on each of those
    paths with its fixed body (a browser app's page; an upgrade there is still an
    upgrade, and ``path`` still decides where those are taken);
    ``allowed_origins`` (``["https://app.example.com", "https://*.example.com"]``)
    refuses browsers on other sites with 403 (requests without ``Origin`` pass);
    ``trusted_proxies`` (addresses or networks) are the reverse proxies whose
    ``Forwarded`` / ``X-Forwarded-For`` give the client's address, for the caps in
    ``limits``, ``key_per_ip`` and the logs.
    """
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {_TRANSPORTS}, got {transport!r}")
    if metrics_path is not None:
        _exposition_of(router.observer)  # a missing plugin is refused now, not at start
    for where in pages or {}:
        if not where.startswith("/") or "?" in where:
            raise ValueError(f"a page's path starts with / and has no query, got {where!r}")
        if where in (health_path, metrics_path):
            raise ValueError(f"{where!r} is the health or metrics path; a page cannot use it")
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
            "path": path,
            "health_path": health_path,
            "metrics_path": metrics_path,
            "pages": dict(pages or {}),
            "allowed_origins": None if allowed_origins is None else tuple(allowed_origins),
            "trusted_proxies": tuple(trusted_proxies),
        },
    )
