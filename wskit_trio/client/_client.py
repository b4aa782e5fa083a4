"""The typed trio client: ``open_client()`` and :class:`Client`.

One client owns one nursery (the ``async with open_client(...)`` block): a
supervisor task connects, runs each connection (reader, heartbeat) and
reconnects with backoff; a dispatcher task runs the ``on()`` handlers in
arrival order. Nothing outlives the block.

Frames sent while the client is not open wait in the offline queue and are
flushed, in order, before the state becomes ``open`` again. The reader settles
requests itself (replies, progress, errors), so a handler that awaits a
``request()`` never waits for its own reply to get through the handler queue.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import ssl
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Generic, TypeAlias, TypeVar, overload

import attrs
import trio

from .._errors import (
    UNSET,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    FrameDropped,
    InboundValidationError,
    OutboundValidationError,
    RpcError,
)
from .._groups import single_exception
from .._protocol import frames
from .._protocol.codes import ErrorCode
from .._protocol.validation import check, unstructure
from .._schema import MessageSchema, RpcSchema
from ._call import Outgoing, Pending, PlainFrame, RequestStream
from ._config import Auth, ClientHeartbeat, Reconnect, Retry, TokenSource
from ._queue import OfflineQueue, OfflineQueuePolicy
from ._socket import ClientSocket, open_socket, redacted, with_query

__all__ = [
    "Client",
    "ClientState",
    "ClientStatistics",
    "InboundMessage",
    "open_client",
]

log = logging.getLogger("wskit_trio.client")

P = TypeVar("P")
T = TypeVar("T")
Req = TypeVar("Req")
Res = TypeVar("Res")

#: Inbound events waiting for the dispatcher; when full the reader waits (back-pressure).
EVENT_BUFFER = 1000
_ABORT_TIMEOUT = 1.0


class ClientState(enum.StrEnum):
    """``closed → connecting → open → closing → closed``, and ``reconnecting``
    (waiting out the backoff) between a lost connection and the next attempt."""

    CLOSED = "closed"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    RECONNECTING = "reconnecting"


@attrs.frozen
class InboundMessage(Generic[P]):
    """A validated message from the server, as ``on()`` handlers get it."""

    type: str
    #: The payload, an instance of the schema's payload class (``None`` without one).
    payload: P
    #: The frame's meta, camelCase keys as on the wire.
    meta: dict[str, Any]


@attrs.frozen
class ClientStatistics:
    state: ClientState
    #: Connections opened so far.
    connects: int
    #: Failed attempts since the connection was lost (0 while open).
    reconnect_attempt: int
    pending_requests: int
    queued: int
    #: Frames the offline queue refused or evicted so far.
    dropped: int


Handler: TypeAlias = Callable[[InboundMessage[P]], "Awaitable[None] | None"]
ErrorHook: TypeAlias = Callable[[Exception], None]
UnhandledHook: TypeAlias = Callable[[dict[str, Any]], "Awaitable[None] | None"]
StateHook: TypeAlias = Callable[[ClientState], None]


def _hint(value: Any) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return int(value)
    return None


def _rpc_error(frame: frames.InboundFrame, type: str | None) -> RpcError:
    """An ``ERROR``/``RPC_ERROR`` frame as an exception, read leniently: an error
    report is worth surfacing even when it is not quite well-formed."""
    payload = frame.raw.get("payload")
    if not isinstance(payload, dict):
        payload = {}
    code = payload.get("code")
    message = payload.get("message")
    details = payload.get("details")
    retryable = payload.get("retryable")
    retry_after: Any = UNSET
    if "retryAfterMs" in payload:
        retry_after = _hint(payload["retryAfterMs"])
    return RpcError(
        code if isinstance(code, str) and code else ErrorCode.INTERNAL,
        message if isinstance(message, str) else None,
        details if isinstance(details, dict) else None,
        retryable=retryable if isinstance(retryable, bool) else None,
        retry_after_ms=retry_after,
        type=type,
        correlation_id=frame.correlation_id,
    )


class Client:
    """A connection to a wskit_trio (or WS-Kit) server that survives disconnects.

    Made by :func:`open_client`; usable only inside its ``async with`` block.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: Auth | None,
        subprotocols: Sequence[str],
        headers: Sequence[tuple[str, str]],
        reconnect: Reconnect,
        queue: OfflineQueuePolicy,
        queue_size: int,
        heartbeat: ClientHeartbeat | None,
        retry: Retry | None,
        pending_requests_limit: int,
        extensions: bool,
        connect_timeout: float,
        close_timeout: float,
        max_message_size: int,
        ssl_context: ssl.SSLContext | None,
        on_error: ErrorHook | None,
        on_unhandled: UnhandledHook | None,
        on_state: StateHook | None,
    ) -> None:
        self.url = url
        self._auth = auth
        #: Query parameters never shown: the token's, whatever its name.
        self._secret_params: tuple[str, ...] = (auth.query_param,) if auth else ()
        #: ``url`` as logs and errors show it (no credentials).
        self._shown_url = redacted(url, self._secret_params)
        self._subprotocols = tuple(subprotocols)
        self._headers = tuple(headers)
        self._reconnect = reconnect
        self._queue: OfflineQueue[Outgoing] = OfflineQueue(queue, queue_size)
        self._heartbeat = heartbeat
        self._retry = retry
        self._pending_limit = pending_requests_limit
        self._extensions = extensions
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._ssl_context = ssl_context
        self._on_error = on_error
        self._on_unhandled = on_unhandled
        self._on_state = on_state

        self._state = ClientState.CLOSED
        self._state_changed = trio.Event()
        self._socket: ClientSocket | None = None
        self._subprotocol: str | None = None
        self._pending: dict[str, Pending[Any]] = {}
        #: Response types of requests made: a late reply (its caller gave up) is
        #: dropped quietly instead of reaching ``on_unhandled``.
        self._response_types: set[str] = set()
        self._schemas: dict[str, MessageSchema[Any]] = {}
        self._handlers: dict[str, list[Callable[[Any], Any]]] = {}
        self._events_in, self._events_out = trio.open_memory_channel[
            tuple[Sequence[Callable[[Any], Any]], Any]
        ](EVENT_BUFFER)
        self._heartbeat_ack: trio.Event | None = None
        #: aclose() was called: no reconnect, no new frames.
        self._closing = False
        self._close_code = (1000, "")
        #: The supervisor ended: the client is closed for good.
        self._finished = False
        self._final_close: ConnectionClosed | None = None
        self._supervisor_scope = trio.CancelScope()
        self._supervisor_done = trio.Event()
        self._connects = 0
        self._attempt = 0

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is ClientState.OPEN

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected on the current (or last) connection."""
        return self._subprotocol

    async def wait_state(self, *states: ClientState) -> ClientState:
        """Wait until the state is one of ``states`` (returns at once if it is)."""
        while self._state not in states:
            await self._state_changed.wait()
        return self._state

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            state=self._state,
            connects=self._connects,
            reconnect_attempt=self._attempt,
            pending_requests=len(self._pending),
            queued=len(self._queue),
            dropped=self._queue.dropped,
        )

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        log.debug("client %s: %s", self._shown_url, state)
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("on_state hook failed")

    def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            log.warning("wskit_trio client: %s", exc)
            return
        try:
            self._on_error(exc)
        except Exception:
            log.exception("on_error hook failed")

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
        known = self._schemas.get(schema.type)
        if known is not None and known is not schema:
            raise ConfigurationError(
                f"another schema for {schema.type!r} is registered; use one per type"
            )
        self._schemas[schema.type] = schema
        handlers = self._handlers.setdefault(schema.type, [])
        handlers.append(handler)

        def off() -> None:
            if handler in handlers:
                handlers.remove(handler)
            if not handlers and self._handlers.get(schema.type) is handlers:
                del self._handlers[schema.type]
                del self._schemas[schema.type]

        return off

    # -- sending --------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closing or self._finished:
            final = self._final_close
            code, reason = (final.code, final.reason) if final else self._close_code
            raise ConnectionClosed(code, reason or "client closed")

    def _encode_meta(self, schema: MessageSchema[Any], meta: Any) -> dict[str, Any]:
        if meta is None:
            user: dict[str, Any] = {}
        elif attrs.has(type(meta)):
            user = unstructure(meta)
        elif isinstance(meta, Mapping):
            user = dict(meta)
        else:
            raise OutboundValidationError(
                schema.type, [("$.meta", f"expected a mapping, got {type(meta).__name__}")]
            )
        # Server-assigned and client-managed keys are not the caller's to set.
        for key in (*frames.RESERVED_META_KEYS, "correlationId", "timeoutMs"):
            user.pop(key, None)
        extended = {k: v for k, v in user.items() if k not in frames.STANDARD_META_KEYS}
        if schema.structure_meta is not None:
            _, problems = check(schema.structure_meta, extended, "$.meta")
            if problems:
                raise OutboundValidationError(schema.type, problems)
        elif extended:
            raise OutboundValidationError(
                schema.type, [(f"$.meta.{key}", "unknown key") for key in sorted(extended)]
            )
        wire = {"timestamp": int(time.time() * 1000)}
        wire.update(user)
        return wire

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
        ``ConnectionClosed`` once the client is closed for good.
        """
        self._check_usable()
        wire_meta = self._encode_meta(schema, meta)
        text = frames.encode_frame(schema.type, wire_meta, schema.wire_payload(payload))
        return await self._transmit(PlainFrame(schema.type, text))

    async def _transmit(self, item: Outgoing) -> bool:
        self._check_usable()
        sock = self._socket
        if self._state is ClientState.OPEN and sock is not None:
            text = item.encode()
            if text is None:
                return False
            item.mark_sent(sock)
            try:
                await sock.send(text)
                return True
            except ConnectionClosed:
                # The connection died under us (nothing went out): queue it for the next.
                item.mark_sent(None)
                self._check_usable()
        return self._enqueue(item)

    def _enqueue(self, item: Outgoing) -> bool:
        pushed = self._queue.push(item)
        if pushed.evicted is not None:
            evicted = FrameDropped(pushed.evicted.type, "evicted from the full offline queue")
            pushed.evicted.dropped(evicted)
            self._report(evicted)
        if pushed.accepted:
            return True
        if self._queue.policy == "off":
            item.dropped(FrameDropped(item.type, "not connected, and the offline queue is off"))
        else:
            full = FrameDropped(item.type, f"the offline queue is full ({self._queue.maxsize})")
            item.dropped(full)
            self._report(full)
        return False

    async def _flush(self, sock: ClientSocket) -> bool:
        """Send what the offline queue holds, in order; then the client is open."""
        while (item := self._queue.pop()) is not None:
            text = item.encode()
            if text is None:
                continue
            item.mark_sent(sock)
            try:
                await sock.send(text)
            except ConnectionClosed:
                item.mark_sent(None)
                self._queue.push_front(item)
                return False
        self._set_state(ClientState.OPEN)
        return True

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

        The frame carries a fresh UUID correlationId and ``meta.timeoutMs``: what is
        left of ``timeout`` seconds (``None``: no client timeout) or of the caller's
        own trio deadline, whichever ends first. ``on_progress`` (sync or async) gets
        each progress payload. Raises :class:`RpcError` for an error answer,
        :class:`RequestTimeout` after ``timeout``, ``ConnectionClosed`` when the
        connection is lost first, ``InboundValidationError`` for an invalid reply.
        A timed-out or cancelled request is aborted on the server (``$ws:abort``).
        With ``open_client(retry=Retry(...))``, retryable errors are retried.
        """
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        attempt = 1
        while True:
            try:
                async with self._call(
                    schema, payload, meta, deadline, timeout, correlation_id
                ) as call:
                    async for progress in call:
                        if on_progress is not None:
                            result = on_progress(progress)
                            if inspect.isawaitable(result):
                                await result
                    return await call.result()
            except RpcError as err:
                policy = self._retry
                if policy is None or not err.should_retry or attempt >= policy.max_attempts:
                    raise
                hint = _hint(err.retry_after_ms)
                delay = max((hint or 0) / 1000, policy.backoff.delay(attempt))
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
        return self._call(schema, payload, meta, deadline, timeout, correlation_id)

    @asynccontextmanager
    async def _call(
        self,
        schema: RpcSchema[Any, Res],
        payload: Any,
        meta: Any,
        deadline: float,
        seconds: float | None,
        correlation_id: str | None,
    ) -> AsyncIterator[RequestStream[Res]]:
        self._check_usable()
        request = schema.request
        wire_meta = self._encode_meta(request, meta)
        body = request.wire_payload(payload)
        if len(self._pending) >= self._pending_limit:
            raise RpcError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"Too many pending requests (limit {self._pending_limit})",
                type=schema.type,
            )
        cid = correlation_id or str(uuid.uuid4())
        if cid in self._pending:
            raise ValueError(f"correlationId {cid!r} is already in flight")
        budget = min(deadline, trio.current_effective_deadline())
        pending: Pending[Res] = Pending(
            schema, cid, body, wire_meta, budget, send_deadline=self._extensions
        )
        self._pending[cid] = pending
        self._response_types.add(schema.response.type)
        try:
            await self._transmit(pending)
            yield RequestStream(pending, deadline, seconds)
        finally:
            if self._pending.get(cid) is pending:
                del self._pending[cid]
            if not pending.settled:
                pending.abandoned = True
                self._queue.discard(pending)
                sock = pending.sent_on
                if sock is not None and sock is self._socket and self._extensions:
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

    async def _dispatch(self, data: str | bytes) -> None:
        frame = frames.decode_frame(data)
        if isinstance(frame, frames.FrameError):
            self._report(InboundValidationError(None, [("$", frame.message)]))
            return
        msg_type = frame.type
        cid = frame.correlation_id
        pending = self._pending.get(cid) if cid is not None else None
        if msg_type == frames.HEARTBEAT_ACK_TYPE:
            if self._heartbeat_ack is not None:
                self._heartbeat_ack.set()
            return
        if msg_type == frames.PROGRESS_TYPE:
            if pending is not None:
                self._progress(pending, frame)
            return  # progress for a request its caller gave up on
        if msg_type in (frames.ERROR_TYPE, frames.RPC_ERROR_TYPE):
            if pending is not None:
                del self._pending[pending.correlation_id]
                pending.fail(_rpc_error(frame, pending.type))
            elif msg_type == frames.ERROR_TYPE or cid is None:
                self._report(_rpc_error(frame, None))
            return
        if pending is not None and msg_type == pending.schema.response.type:
            del self._pending[pending.correlation_id]
            response = pending.schema.response
            result = frames.validate_frame(
                frame, response.structure_payload, response.structure_meta
            )
            if isinstance(result, list):
                error = InboundValidationError(msg_type, result)
                pending.fail(error)
                self._report(error)
            else:
                pending.succeed(result[0])
            return
        schema = self._schemas.get(msg_type)
        if schema is None:
            if cid is not None and msg_type in self._response_types:
                return  # a late reply: its caller gave up
            if self._on_unhandled is not None:
                await self._events_in.send(((self._on_unhandled,), frame.raw))
            return
        result = frames.validate_frame(frame, schema.structure_payload, schema.structure_meta)
        if isinstance(result, list):
            self._report(InboundValidationError(msg_type, result))
            return
        message = InboundMessage(msg_type, result[0], result[1])
        await self._events_in.send((tuple(self._handlers.get(msg_type, ())), message))

    def _progress(self, pending: Pending[Any], frame: frames.InboundFrame) -> None:
        raw = frame.raw
        response = pending.schema.response
        # protocol.md §3: read `payload`, fall back to `data` (WS-Kit 0.10 servers).
        key = "payload" if "payload" in raw else "data"
        if response.structure_payload is None:
            pending.push_progress(None)
            return
        if key not in raw:
            error = InboundValidationError(frame.type, [("$.payload", "required key missing")])
            self._report(error)
            return
        value, problems = check(response.structure_payload, raw[key], f"$.{key}")
        if problems:
            self._report(InboundValidationError(frame.type, problems))
            return
        pending.push_progress(value)

    async def _run_handlers(self) -> None:
        """The dispatcher: ``on()`` handlers and ``on_unhandled``, one event at a time."""
        async for handlers, event in self._events_out:
            for handler in handlers:
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    if self._on_error is None:
                        log.exception("client handler %r failed", handler)
                    else:
                        self._report(exc)

    # -- connections ----------------------------------------------------------------

    async def _handshake(self) -> tuple[str, list[str]]:
        """The URL and subprotocols of the next attempt (the token is fetched anew)."""
        url = self.url
        protocols = list(self._subprotocols)
        auth = self._auth
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
            raise ConnectError(self._shown_url, f"cannot get a token: {exc!r}") from exc
        return url, protocols

    async def _supervise(
        self, wait_open: bool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False

        def opened() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        if not wait_open:
            opened()
        close = ConnectionClosed(1006, "")
        try:
            with self._supervisor_scope:
                failures = 0
                while not self._closing:
                    self._set_state(ClientState.CONNECTING)
                    try:
                        url, protocols = await self._handshake()
                        async with open_socket(
                            url,
                            subprotocols=protocols,
                            headers=self._headers,
                            ssl_context=self._ssl_context,
                            connect_timeout=self._connect_timeout,
                            close_timeout=self._close_timeout,
                            max_message_size=self._max_message_size,
                            secret_params=self._secret_params,
                        ) as sock:
                            failures = self._attempt = 0
                            self._connects += 1
                            close = await self._session(sock, opened)
                    except ConnectError as exc:
                        if not started:
                            raise
                        self._report(exc)
                        close = exc
                    if self._closing or not self._reconnect.enabled:
                        break
                    failures += 1
                    limit = self._reconnect.max_attempts
                    if limit is not None and failures > limit:
                        break
                    self._attempt = failures
                    self._set_state(ClientState.RECONNECTING)
                    await trio.sleep(self._reconnect.backoff.delay(failures))
        finally:
            self._finish(close)
            self._supervisor_done.set()

    async def _session(self, sock: ClientSocket, opened: Callable[[], None]) -> ConnectionClosed:
        """Run one open connection until it closes; returns how it closed."""
        self._socket = sock
        self._subprotocol = sock.subprotocol
        closed = ConnectionClosed(1006, "")
        try:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    nonlocal closed
                    try:
                        while True:
                            await self._dispatch(await sock.receive())
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
                if await self._flush(sock):
                    opened()
                    if self._heartbeat is not None:
                        nursery.start_soon(keepalive, self._heartbeat)
        finally:
            self._socket = None
            self._heartbeat_ack = None
            # Requests this connection carried are lost with it (queued ones are not).
            for pending in list(self._pending.values()):
                if pending.sent_on is sock:
                    del self._pending[pending.correlation_id]
                    pending.fail(ConnectionClosed(closed.code, closed.reason))
        return closed

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

    def _finish(self, close: ConnectionClosed) -> None:
        """Closed for good: fail every request still waiting, drop the queue."""
        self._finished = True
        self._socket = None
        code, reason = (
            self._close_code if self._closing else (close.code, close.reason or "not connected")
        )
        self._final_close = ConnectionClosed(code, reason)
        for pending in list(self._pending.values()):
            pending.fail(ConnectionClosed(code, reason))
        self._pending.clear()
        for item in self._queue.clear():
            item.dropped(ConnectionClosed(code, reason))
        self._set_state(ClientState.CLOSED)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: the close handshake (at most ``close_timeout``), no
        reconnect; pending requests fail with ``ConnectionClosed``. Idempotent."""
        if not self._closing:
            self._closing = True
            self._close_code = (code, reason)
            if not self._finished:
                self._set_state(ClientState.CLOSING)
            sock = self._socket
            if sock is not None:
                await sock.close(code, reason, grace=self._close_timeout)
            self._supervisor_scope.cancel()
        await self._supervisor_done.wait()


@asynccontextmanager
async def open_client(
    url: str,
    *,
    auth: Auth | TokenSource | None = None,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    reconnect: Reconnect | bool = True,
    queue: OfflineQueuePolicy = "drop_newest",
    queue_size: int = 1000,
    heartbeat: ClientHeartbeat | None = None,
    retry: Retry | None = None,
    pending_requests_limit: int = 1000,
    extensions: bool = True,
    connect_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_message_size: int = 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
    wait_open: bool = True,
    on_error: ErrorHook | None = None,
    on_unhandled: UnhandledHook | None = None,
    on_state: StateHook | None = None,
) -> AsyncIterator[Client]:
    """Connect to ``url`` for the block; close on exit.

    ``auth``: an :class:`Auth`, or just the token callable (sent as the
    ``access_token`` query parameter). ``reconnect``: a :class:`Reconnect`, or
    ``False`` to stay closed once the connection is lost. ``queue``/``queue_size``:
    the offline queue. ``heartbeat``: detect a dead server. ``retry``: re-send
    requests answered with a retryable error. ``extensions``: send protocol v1's
    additions, ``meta.timeoutMs`` on requests and ``$ws:abort`` when a caller gives
    up; turn it off for a WS-Kit 0.10 server, whose strict meta refuses
    ``timeoutMs`` (deadlines then hold on this side only).

    With ``wait_open`` (the default) the block starts once the first connection is
    open, and a first connection that fails raises :class:`ConnectError` (a bad
    token: ``status == 401``); later losses are reconnected. Without it the block
    starts at once and the first connection is retried like any other.

    ``on_error(exc)`` (sync) gets what goes wrong outside a request: invalid frames,
    ``ERROR`` frames that answer no request, failed reconnect attempts, queue
    overflow, handler exceptions. ``on_unhandled(frame)`` gets valid frames of
    types no handler is registered for. ``on_state(state)`` (sync) sees every
    state change.
    """
    if callable(auth) and not isinstance(auth, Auth):
        auth = Auth(token=auth)
    if isinstance(reconnect, bool):
        reconnect = Reconnect(enabled=reconnect)
    client = Client(
        url,
        auth=auth,
        subprotocols=subprotocols,
        headers=headers,
        reconnect=reconnect,
        queue=queue,
        queue_size=queue_size,
        heartbeat=heartbeat,
        retry=retry,
        pending_requests_limit=pending_requests_limit,
        extensions=extensions,
        connect_timeout=connect_timeout,
        close_timeout=close_timeout,
        max_message_size=max_message_size,
        ssl_context=ssl_context,
        on_error=on_error,
        on_unhandled=on_unhandled,
        on_state=on_state,
    )
    # The one real exception of the client's nursery (the block's own, or an internal
    # task's) leaves as it was raised: public APIs raise single exceptions.
    with single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run_handlers)
            await nursery.start(client._supervise, wait_open)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
