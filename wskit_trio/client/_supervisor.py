"""Keeping a client connected: connect, reconnect with backoff, heartbeat, and the
offline queue that holds frames while there is no open connection.

:meth:`ConnectionSupervisor.run` is one task of the client's nursery. It opens a
connection (fetching the token anew each time), runs the ``on_connect`` hook
(whose frames go out first), flushes the offline queue in order, and only then
reports ``open``; it reads until the connection ends, then waits out the backoff
and tries again, until the client is closed or the reconnect policy gives up.
What arrives is handed to ``on_message``; the client decides what it means.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import trio

from .._errors import AlreadyClosed, ConnectError, ConnectionClosed, FrameDropped
from .._protocol import frames
from ._call import Outgoing
from ._config import ClientHeartbeat, ClientOptions
from ._queue import OfflineQueue
from ._socket import ClientSocket, open_socket, redacted, with_query
from ._state import ClientState

__all__ = ["ConnectionSupervisor"]

log = logging.getLogger("wskit_trio.client")

#: Makes the exception a frame or request cut off by the end of a connection raises
#: (one per frame: an exception object is raised in one place only).
CutOff = Callable[[], Exception]


class ConnectionSupervisor:
    """One client's connections, one at a time, and the client's state.

    ``on_message(data)`` gets every message received; ``on_lost(socket, error)``
    is told a connection ended (the requests sent on it are lost with it);
    ``on_closed(error)`` that the client is closed for good; ``report(exc)``
    gets what goes wrong outside a request; ``on_connect()`` runs on every new
    connection before the offline queue is flushed.
    """

    def __init__(
        self,
        url: str,
        options: ClientOptions,
        *,
        on_message: Callable[[str | bytes], Awaitable[None]],
        on_lost: Callable[[ClientSocket, CutOff], None],
        on_closed: Callable[[CutOff], None],
        report: Callable[[Exception], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url
        self._options = options
        auth = options.auth
        #: Query parameters never shown: the token's, whatever its name.
        self._secret_params: tuple[str, ...] = (auth.query_param,) if auth else ()
        #: ``url`` as logs and errors show it (no credentials).
        self.shown_url = redacted(url, self._secret_params)
        self.queue: OfflineQueue[Outgoing] = OfflineQueue(options.queue, options.queue_size)
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_closed = on_closed
        self._report = report
        self._on_connect = on_connect
        #: The connection ``on_connect`` is running on, in its task (and the tasks it
        #: starts): what they transmit goes straight out on it, ahead of the queue.
        self._connecting: ContextVar[ClientSocket | None] = ContextVar(
            "wskit_trio_client_on_connect", default=None
        )

        self.state = ClientState.CLOSED
        self._state_changed = trio.Event()
        #: The open connection (``None`` between connections).
        self.socket: ClientSocket | None = None
        #: The subprotocol the server selected on the current (or last) connection.
        self.subprotocol: str | None = None
        #: The protocol extensions the current (or last) connection uses.
        self.extensions: frozenset[str] = frozenset()
        self._heartbeat_ack: trio.Event | None = None
        #: aclose() was called: no reconnect, no new frames.
        self._closing = False
        #: run() ended: the client is closed for good; how, when not by aclose().
        self._finished = False
        self._final_close = ConnectionClosed(1006, "not connected")
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        #: Connections opened so far.
        self.connects = 0
        #: Failed attempts since the connection was lost.
        self.attempt = 0

    # -- state ----------------------------------------------------------------------

    async def wait_state(self, *states: ClientState) -> ClientState:
        while self.state not in states:
            await self._state_changed.wait()
        return self.state

    def _set_state(self, state: ClientState) -> None:
        if state is self.state:
            return
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        log.debug("client %s: %s", self.shown_url, state)
        if self._options.on_state is not None:
            try:
                self._options.on_state(state)
            except Exception:
                log.exception("on_state hook failed")

    def check_usable(self) -> None:
        """Raise if no frame may be sent any more: :class:`AlreadyClosed` after
        ``aclose()``, :class:`ConnectionClosed` once the connection is lost for good."""
        if self._closing:
            raise AlreadyClosed("the client was closed (aclose) and cannot be used")
        if self._finished:
            raise ConnectionClosed(self._final_close.code, self._final_close.reason)

    def _cut_off(self, closed: ConnectionClosed) -> CutOff:
        """What is cut off by the end of the ``closed`` connection raises: the user's
        own ``aclose()`` is not the peer's fault."""
        if self._closing:
            return lambda: AlreadyClosed("the client was closed (aclose) before an answer")
        return lambda: ConnectionClosed(closed.code, closed.reason)

    # -- sending --------------------------------------------------------------------

    async def transmit(self, item: Outgoing) -> bool:
        """Send ``item`` now if open, else put it in the offline queue. ``False``
        when it was dropped (by the queue, or because it is no longer wanted)."""
        self.check_usable()
        sock = self.socket
        connecting = self._connecting.get()
        if connecting is not None and connecting is sock:
            return await self._send_first(connecting, item)
        if self.state is ClientState.OPEN and sock is not None:
            text = item.encode(sock)
            if text is None:
                return False
            item.mark_sent(sock)
            try:
                await sock.send(text)
                return True
            except ConnectionClosed:
                # The connection died under us (nothing went out): queue it for the next.
                item.mark_sent(None)
                self.check_usable()
        return self._enqueue(item)

    async def _send_first(self, sock: ClientSocket, item: Outgoing) -> bool:
        """Send for ``on_connect``, before the queue is flushed. Never queued: if the
        connection is lost, ``ConnectionClosed`` is raised, and the hook runs
        again on the next connection."""
        text = item.encode(sock)
        if text is None:
            return False
        item.mark_sent(sock)
        try:
            await sock.send(text)
        except ConnectionClosed:
            item.mark_sent(None)
            raise
        return True

    def _enqueue(self, item: Outgoing) -> bool:
        pushed = self.queue.push(item)
        if pushed.evicted is not None:
            evicted = FrameDropped(pushed.evicted.type, "evicted from the full offline queue")
            pushed.evicted.dropped(evicted)
            self._report(evicted)
        if pushed.accepted:
            return True
        if self.queue.policy == "off":
            item.dropped(FrameDropped(item.type, "not connected, and the offline queue is off"))
        else:
            full = FrameDropped(item.type, f"the offline queue is full ({self.queue.maxsize})")
            item.dropped(full)
            self._report(full)
        return False

    async def _flush(self, sock: ClientSocket) -> bool:
        """Send what the offline queue holds, in order; then the client is open."""
        while (item := self.queue.pop()) is not None:
            text = item.encode(sock)
            if text is None:
                continue
            item.mark_sent(sock)
            try:
                await sock.send(text)
            except ConnectionClosed:
                item.mark_sent(None)
                self.queue.push_front(item)
                return False
        self._set_state(ClientState.OPEN)
        return True

    # -- connections ----------------------------------------------------------------

    async def _handshake(self) -> tuple[str, list[str]]:
        """The URL and subprotocols of the next attempt (the token is fetched anew)."""
        url = self.url
        protocols = list(self._options.subprotocols)
        auth = self._options.auth
        if auth is None:
            return url, protocols
        try:
            token = auth.token()
            if inspect.isawaitable(token):
                token = await token
            if token:
                if auth.attach == "query":
                    url = with_query(url, auth.query_param, token)
                else:
                    bearer = auth.subprotocol(token)
                    if bearer not in protocols:
                        protocols.append(bearer)
        except Exception as exc:
            raise ConnectError(self.shown_url, f"cannot get a token: {exc!r}") from exc
        return url, protocols

    async def run(
        self, wait_open: bool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and reconnect until closed. Started (``nursery.start``) once the
        first connection is open, or at once without ``wait_open``; a first
        connection that fails then raises :class:`ConnectError`."""
        started = False

        def opened() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        if not wait_open:
            opened()
        options = self._options
        close = ConnectionClosed(1006, "")
        try:
            with self._scope:
                failures = 0
                while not self._closing:
                    self._set_state(ClientState.CONNECTING)
                    try:
                        url, protocols = await self._handshake()
                        async with open_socket(
                            url,
                            subprotocols=protocols,
                            headers=options.headers,
                            ssl_context=options.ssl_context,
                            connect_timeout=options.connect_timeout,
                            close_timeout=options.close_timeout,
                            max_message_size=options.max_message_size,
                            secret_params=self._secret_params,
                            extensions=options.extensions,
                        ) as sock:
                            failures = self.attempt = 0
                            self.connects += 1
                            close = await self._connection(sock, opened)
                    except ConnectError as exc:
                        if not started:
                            raise
                        self._report(exc)
                        close = exc
                    if self._closing or not options.reconnect.enabled:
                        break
                    failures += 1
                    limit = options.reconnect.max_attempts
                    if limit is not None and failures > limit:
                        break
                    self.attempt = failures
                    self._set_state(ClientState.RECONNECTING)
                    await trio.sleep(options.reconnect.backoff.delay(failures))
        finally:
            self._finish(close)
            self._done.set()

    async def _connection(self, sock: ClientSocket, opened: Callable[[], None]) -> ConnectionClosed:
        """Run one open connection until it closes; returns how it closed."""
        self.socket = sock
        self.subprotocol = sock.subprotocol
        self.extensions = sock.extensions
        closed = ConnectionClosed(1006, "")
        try:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    nonlocal closed
                    try:
                        while True:
                            await self._on_message(await sock.receive())
                    except ConnectionClosed as exc:
                        if closed.code == 1006 and not closed.reason:
                            closed = exc
                    nursery.cancel_scope.cancel()

                async def keepalive(heartbeat: ClientHeartbeat) -> None:
                    nonlocal closed
                    if await self._keepalive(sock, heartbeat):
                        return
                    closed = ConnectionClosed(1006, "heartbeat timeout")
                    self._report(ConnectionClosed(1006, "heartbeat timeout: server not answering"))
                    await sock.abort()

                nursery.start_soon(read)
                await self._connected(sock)
                if await self._flush(sock):
                    opened()
                    if self._options.heartbeat is not None:
                        nursery.start_soon(keepalive, self._options.heartbeat)
        finally:
            self.socket = None
            self._heartbeat_ack = None
            self._on_lost(sock, self._cut_off(closed))
        return closed

    async def _connected(self, sock: ClientSocket) -> None:
        """Run ``on_connect`` with its frames going out on ``sock`` ahead of the
        offline queue (the reader is running, so its requests get their replies)."""
        if self._on_connect is None:
            return
        token = self._connecting.set(sock)
        try:
            await self._on_connect()
        except ConnectionClosed as exc:
            # This connection is lost: the hook runs again on the next one.
            log.debug("on_connect cut off: %s", exc)
        except Exception as exc:
            self._report(exc)
        finally:
            self._connecting.reset(token)

    async def _keepalive(self, sock: ClientSocket, heartbeat: ClientHeartbeat) -> bool:
        """Heartbeat until the server misses one (returns ``False``) or the socket
        closes (returns ``True``)."""
        while True:
            await trio.sleep(heartbeat.interval)
            with trio.move_on_after(heartbeat.timeout):
                try:
                    if heartbeat.mode == "ping":
                        await sock.ping()
                    else:
                        ack = self._heartbeat_ack = trio.Event()
                        await sock.send(frames.encode_frame(frames.HEARTBEAT_TYPE, None))
                        await ack.wait()
                except ConnectionClosed:
                    return True
                continue
            return False

    def heartbeat_acked(self) -> None:
        """The server answered the heartbeat frame."""
        if self._heartbeat_ack is not None:
            self._heartbeat_ack.set()

    def _finish(self, close: ConnectionClosed) -> None:
        """Closed for good: what waits for an answer or in the queue is cut off."""
        self._finished = True
        self.socket = None
        if not self._closing:
            self._final_close = ConnectionClosed(close.code, close.reason or "not connected")
        cut_off = self._cut_off(self._final_close)
        self._on_closed(cut_off)
        for item in self.queue.clear():
            item.dropped(cut_off())
        self._set_state(ClientState.CLOSED)

    async def close(self, code: int, reason: str) -> None:
        """Close for good: the close handshake (at most ``close_timeout``), no
        reconnect. Idempotent; returns once :meth:`run` has ended."""
        if not self._closing:
            self._closing = True
            if not self._finished:
                self._set_state(ClientState.CLOSING)
            sock = self.socket
            if sock is not None:
                await sock.close(code, reason, grace=self._options.close_timeout)
            self._scope.cancel()
        await self._done.wait()
