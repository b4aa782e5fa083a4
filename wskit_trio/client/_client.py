"""The typed trio client: ``open_client()`` and :class:`Client`, its façade.

One client owns one nursery (the ``async with open_client(...)`` block) with two
tasks: the :class:`ConnectionSupervisor` (connect, reconnect, heartbeat, offline
queue) and the :class:`Dispatcher` (the ``on()`` handlers). What each frame from
the server means is the :class:`ClientSession`'s decision (sans-IO); the client
acts on it: it settles requests from the reader itself, and queues messages for
the handlers. Nothing outlives the block but the positions the session
remembers, which outlive each connection (delivery.md §12.3).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, TypeAlias, TypeVar, overload

import trio

from .._errors import ConnectionClosed, RpcError
from .._groups import single_exception
from .._options import options_as_keywords
from .._protocol import extensions, frames
from .._protocol.pubsub import Position
from .._protocol.session import (
    ClientSession,
    HeartbeatAcked,
    Ignored,
    InboundMessage,
    Problem,
    Progressed,
    Replied,
    RequestFailed,
    Unhandled,
    message_meta,
)
from .._schema import MessageSchema, RpcSchema
from ._call import Pending, PlainFrame, RequestStream
from ._config import ClientOptions
from ._handlers import AnyHandler, Dispatcher
from ._socket import ClientSocket
from ._state import ClientState, ClientStatistics
from ._supervisor import ConnectionSupervisor, CutOff

__all__ = ["Client", "open_client"]

log = logging.getLogger("wskit_trio.client")

P = TypeVar("P")
T = TypeVar("T")
Req = TypeVar("Req")
Res = TypeVar("Res")

Handler: TypeAlias = Callable[[InboundMessage[P]], "Awaitable[None] | None"]

#: How long a ``$ws:abort`` for a request its caller gave up on may take to go out.
_ABORT_TIMEOUT = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """A connection to a wskit_trio (or WS-Kit) server that survives disconnects.

    Made by :func:`open_client`; usable only inside its ``async with`` block.
    After ``aclose()`` (or the block's end) every use raises
    :class:`AlreadyClosed`; once the connection is lost for good (reconnect off
    or given up), :class:`ConnectionClosed`.

    Recovery (delivery.md §12): the client remembers the latest position it has
    seen per topic (:meth:`position`), across connections, and ``on_connect``
    runs after every connect, ahead of the offline queue, so the app re-joins
    with it and gets what it missed::

        @attrs.frozen
        class Join:
            room: str
            since: Position | None = None

        JOIN = message("JOIN", Join)

        async def rejoin(client: Client) -> None:
            await client.send(JOIN, Join("room:1", since=client.position("room:1")))

        async with open_client(url, on_connect=rejoin) as client:
            ...

    ``since`` goes on the wire as ``{"offset": 42, "epoch": "..."}`` (or ``null``)
    and the server's handler passes it on to ``ctx.topics.subscribe(topic,
    since=...)``. The hook may also ``await client.request(...)`` (to learn
    whether the server ``recovered``): its reply is read while the hook runs.
    With ``wait_open`` the first hook runs before the block starts: to have the
    ``on()`` handlers in place for what the first join brings, open with
    ``wait_open=False`` and register them first thing in the block.
    """

    def __init__(self, url: str, options: ClientOptions | None = None) -> None:
        self.url = url
        self.options = options = options if options is not None else ClientOptions()
        self._session: ClientSession[Pending[Any]] = ClientSession(
            max_requests=options.pending_requests_limit
        )
        self._dispatcher = Dispatcher(self._handler_failed)
        self._supervisor = ConnectionSupervisor(
            url,
            options,
            on_message=self._receive,
            on_lost=self._connection_lost,
            on_closed=self._closed,
            report=self._report,
            on_connect=self._connected,
        )

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._supervisor.state

    @property
    def is_open(self) -> bool:
        return self._supervisor.state is ClientState.OPEN

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected on the current (or last) connection."""
        return self._supervisor.subprotocol

    @property
    def extensions(self) -> frozenset[str]:
        """The protocol extensions the current (or last) connection uses
        (docs/protocol.md §7): what the server advertised in its 101, unless the
        ``extensions`` option overrides it. Empty on a WS-Kit server. The client
        itself uses ``"timeoutMs"`` and ``"abort"``; check ``"positions"`` before
        asking the server for positions (a ``since`` in your join message)."""
        return self._supervisor.extensions

    async def wait_state(self, *states: ClientState) -> ClientState:
        """Wait until the state is one of ``states`` (returns at once if it is)."""
        return await self._supervisor.wait_state(*states)

    def statistics(self) -> ClientStatistics:
        supervisor = self._supervisor
        return ClientStatistics(
            state=supervisor.state,
            connects=supervisor.connects,
            reconnect_attempt=supervisor.attempt,
            pending_requests=len(self._session),
            queued=len(supervisor.queue),
            dropped=supervisor.queue.dropped,
        )

    def position(self, topic: str) -> Position | None:
        """The latest position seen on ``topic`` (from ``meta.topic/offset/epoch``,
        delivery.md §11.4), kept across reconnects; ``None`` before the first
        message stamped with one. Re-join with it (``since=``) in ``on_connect``."""
        return self._session.position(topic)

    def set_position(self, topic: str, position: Position | None) -> None:
        """Where the app's state of ``topic`` stands, when it knows better than the
        messages seen: after loading a snapshot taken at ``position`` (the
        ``Recovery.position`` of a join that did not recover), so the next re-join
        asks for what came after the snapshot. ``None`` forgets the topic."""
        self._session.set_position(topic, position)

    async def _connected(self) -> None:
        """A connection is up: the app's ``on_connect`` re-joins on it."""
        hook = self.options.on_connect
        if hook is not None:
            await hook(self)

    def _report(self, exc: Exception) -> None:
        if self.options.on_error is None:
            log.warning("wskit_trio client: %s", exc)
            return
        try:
            self.options.on_error(exc)
        except Exception:
            log.exception("on_error hook failed")

    def _handler_failed(self, handler: AnyHandler, exc: Exception) -> None:
        if self.options.on_error is None:
            log.exception("client handler %r failed", handler)
        else:
            self._report(exc)

    # -- handlers -------------------------------------------------------------------

    @overload
    def on(self, schema: MessageSchema[P], handler: Handler[P]) -> Callable[[], None]: ...
    @overload
    def on(self, schema: MessageSchema[P]) -> Callable[[Handler[P]], Handler[P]]: ...
    def on(self, schema: MessageSchema[Any], handler: Handler[Any] | None = None) -> Any:
        """Run ``handler(message)`` (sync or async) for every valid ``schema`` message.

        Inbound frames of that type are validated strictly against the schema first;
        invalid ones go to ``on_error``. Handlers of a type run in registration
        order, one message at a time. Returns a function that removes the handler;
        also usable as a decorator (``@client.on(PONG)``).
        """
        if handler is None:

            def decorate(fn: Handler[Any]) -> Handler[Any]:
                self.on(schema, fn)
                return fn

            return decorate
        self._session.listen(schema)
        self._dispatcher.add(schema.type, handler)

        def off() -> None:
            if self._dispatcher.remove(schema.type, handler):
                self._session.unlisten(schema.type)

        return off

    # -- sending --------------------------------------------------------------------

    @overload
    async def send(
        self, schema: MessageSchema[None], payload: None = None, *, meta: Any = None
    ) -> bool: ...
    @overload
    async def send(self, schema: MessageSchema[T], payload: T, *, meta: Any = None) -> bool: ...
    async def send(
        self, schema: MessageSchema[Any], payload: Any = None, *, meta: Any = None
    ) -> bool:
        """Send a message: validated first (``OutboundValidationError``, nothing sent),
        then sent now if open, else put in the offline queue.

        Returns ``False`` when the frame was dropped (queue full under
        ``"drop_newest"``, or ``"off"``), ``True`` otherwise. Raises
        :class:`AlreadyClosed` after ``aclose()``, :class:`ConnectionClosed` once
        the connection is lost for good.
        """
        self._supervisor.check_usable()
        wire_meta = message_meta(schema, meta, _now_ms())
        text = frames.encode_frame(schema.type, wire_meta, schema.wire_payload(payload))
        return await self._supervisor.transmit(PlainFrame(schema.type, text))

    # -- requests -------------------------------------------------------------------

    @overload
    async def request(
        self,
        schema: RpcSchema[None, Res],
        payload: None = None,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 (RequestTimeout, timeoutMs, $ws:abort)
        meta: Any = None,
        on_progress: Callable[[Res], Awaitable[None] | None] | None = None,
        correlation_id: str | None = None,
    ) -> Res: ...
    @overload
    async def request(
        self,
        schema: RpcSchema[Req, Res],
        payload: Req,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 (RequestTimeout, timeoutMs, $ws:abort)
        meta: Any = None,
        on_progress: Callable[[Res], Awaitable[None] | None] | None = None,
        correlation_id: str | None = None,
    ) -> Res: ...
    async def request(
        self,
        schema: RpcSchema[Any, Any],
        payload: Any = None,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 (RequestTimeout, timeoutMs, $ws:abort)
        meta: Any = None,
        on_progress: Callable[[Any], Awaitable[None] | None] | None = None,
        correlation_id: str | None = None,
    ) -> Any:
        """Send a request and return the reply's payload (typed by the schema).

        The frame carries a fresh UUID correlationId and, on a server that has that
        extension (:attr:`extensions`), ``meta.timeoutMs``: what is left of
        ``timeout`` seconds (``None``: no client timeout) or of the caller's own
        trio deadline, whichever ends first. ``on_progress`` (sync or async) gets
        each progress payload. Raises :class:`RpcError` for an error answer,
        :class:`RequestTimeout` after ``timeout``, :class:`ConnectionClosed` when the
        connection is lost first, :class:`AlreadyClosed` when the client is (or gets)
        closed by ``aclose()``, :class:`FrameDropped` when it cannot be queued while
        offline, ``InboundValidationError`` for an invalid reply. A timed-out or
        cancelled request is aborted on the server (``$ws:abort``, where it has
        that extension). With ``open_client(retry=Retry(...))``, retryable errors
        are retried.
        """
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        attempt = 1
        while True:
            try:
                async with self._call(
                    schema,
                    payload,
                    meta,
                    deadline,
                    timeout,
                    correlation_id,
                    progress=on_progress is not None,
                ) as call:
                    async for progress in call:
                        if on_progress is not None:
                            result = on_progress(progress)
                            if inspect.isawaitable(result):
                                await result
                    return await call.result()
            except RpcError as err:
                policy = self.options.retry
                if policy is None or not err.should_retry or attempt >= policy.max_attempts:
                    raise
                delay = policy.wait_before(attempt, err)
                if trio.current_time() + delay >= deadline:
                    raise
                log.debug("retrying %s in %.3f s after %s", schema.type, delay, err.code)
                await trio.sleep(delay)
                attempt += 1
                correlation_id = None

    @overload
    def stream(
        self,
        schema: RpcSchema[None, Res],
        payload: None = None,
        *,
        timeout: float | None = 30.0,
        meta: Any = None,
        correlation_id: str | None = None,
    ) -> AbstractAsyncContextManager[RequestStream[Res]]: ...
    @overload
    def stream(
        self,
        schema: RpcSchema[Req, Res],
        payload: Req,
        *,
        timeout: float | None = 30.0,
        meta: Any = None,
        correlation_id: str | None = None,
    ) -> AbstractAsyncContextManager[RequestStream[Res]]: ...
    def stream(
        self,
        schema: RpcSchema[Any, Any],
        payload: Any = None,
        *,
        timeout: float | None = 30.0,
        meta: Any = None,
        correlation_id: str | None = None,
    ) -> AbstractAsyncContextManager[RequestStream[Any]]:
        """A request whose progress you iterate::

            async with client.stream(EXPORT, Export(id="x")) as call:
                async for progress in call:
                    ...
                report = await call.result()

        Same frames, deadlines and errors as :meth:`request`; leaving the block
        before the reply aborts the request on the server.
        """
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        return self._call(schema, payload, meta, deadline, timeout, correlation_id, progress=True)

    @asynccontextmanager
    async def _call(
        self,
        schema: RpcSchema[Any, Res],
        payload: Any,
        meta: Any,
        deadline: float,
        seconds: float | None,
        correlation_id: str | None,
        *,
        progress: bool,
    ) -> AsyncIterator[RequestStream[Res]]:
        supervisor = self._supervisor
        supervisor.check_usable()
        request = schema.request
        wire_meta = message_meta(request, meta, _now_ms())
        body = request.wire_payload(payload)
        cid = correlation_id or str(uuid.uuid4())
        budget = min(deadline, trio.current_effective_deadline())
        pending: Pending[Res] = Pending(schema, cid, body, wire_meta, budget)
        self._session.begin_request(cid, pending, schema, progress=progress)
        try:
            await supervisor.transmit(pending)
            yield RequestStream(pending, deadline, seconds)
        finally:
            self._session.end_request(cid, pending)
            if not pending.settled:
                pending.abandoned = True
                supervisor.queue.discard(pending)
                sock = pending.sent_on
                if (
                    sock is not None
                    and sock is supervisor.socket
                    and extensions.ABORT in sock.extensions
                ):
                    # The server is working on it: tell it to stop (the caller is
                    # cancelled or timed out; this must still go out, briefly).
                    abort = frames.encode_frame(frames.ABORT_TYPE, {"correlationId": cid})
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(_ABORT_TIMEOUT),
                        suppress(ConnectionClosed),
                    ):
                        await sock.send(abort)

    # -- receiving ------------------------------------------------------------------

    async def _receive(self, data: str | bytes) -> None:
        """The reader's hand-off: act on what the session says ``data`` means."""
        match self._session.receive(data):
            case Replied(request, payload):
                request.succeed(payload)
            case Progressed(request, payload):
                request.push_progress(payload)
            case RequestFailed(request, error, report):
                request.fail(error)
                if report:
                    self._report(error)
            case InboundMessage() as message:
                await self._dispatcher.deliver(self._dispatcher.handlers(message.type), message)
            case Unhandled(frame):
                if self.options.on_unhandled is not None:
                    await self._dispatcher.deliver((self.options.on_unhandled,), frame)
            case HeartbeatAcked():
                self._supervisor.heartbeat_acked()
            case Problem(error):
                self._report(error)
            case Ignored():
                pass

    def _connection_lost(self, sock: ClientSocket, cut_off: CutOff) -> None:
        """Requests sent on ``sock`` are lost with it (queued ones are not)."""
        for pending in self._session.requests():
            if pending.sent_on is sock:
                self._session.end_request(pending.correlation_id, pending)
                pending.fail(cut_off())

    def _closed(self, cut_off: CutOff) -> None:
        """Closed for good: every request still waiting fails."""
        for pending in self._session.end_all():
            pending.fail(cut_off())

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: the close handshake (at most ``close_timeout``), no
        reconnect. Requests still waiting, and every later use, raise
        :class:`AlreadyClosed`. Idempotent."""
        await self._supervisor.close(code, reason)


@options_as_keywords(ClientOptions)
@asynccontextmanager
async def open_client(url: str, options: ClientOptions) -> AsyncIterator[Client]:
    """Connect to ``url`` for the block; close on exit.

    The keywords are :class:`ClientOptions`' fields: ``auth`` (an :class:`Auth`,
    or just the token callable), ``reconnect`` (a :class:`Reconnect`, or
    ``False``), ``queue``/``queue_size`` (the offline queue), ``heartbeat``,
    ``retry``, ``extensions``, timeouts, hooks...

    With ``wait_open`` (the default) the block starts once the first connection is
    open, and a first connection that fails raises :class:`ConnectError` (a bad
    token: ``status == 401``); later losses are reconnected. Without it the block
    starts at once and the first connection is retried like any other.
    """
    client = Client(url, options)
    # The one real exception of the client's nursery (the block's own, or an internal
    # task's) leaves as it was raised: public APIs raise single exceptions.
    with single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._dispatcher.run)
            await nursery.start(client._supervisor.run, options.wait_open)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
