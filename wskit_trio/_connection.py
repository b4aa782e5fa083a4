"""One connection = one nursery: reader/dispatcher, writer, RPC tasks, heartbeat.

The reader decodes and dispatches; event handlers run inline in it, so they
keep arrival order and a slow handler slows only its own client (TCP
back-pressure). Each RPC runs in its own task and cancel scope, children of the
connection's nursery. Every frame goes out through the bounded :class:`Outbox`
and one writer task. When the connection ends, the nursery is cancelled, so
nothing of it outlives it; ``on_close`` hooks run last.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any, Generic, TypeVar

import attrs
import trio

from ._config import Heartbeat, Limits
from ._context import ConnectionContext, Context, RpcContext
from ._errors import CloseError, ConnectionClosed, MessageTooBig, WsKitError
from ._outbound import FrameKind, Outbox, OutboxStatistics
from ._protocol import frames
from ._protocol.codes import ErrorCode
from ._protocol.validation import Problems
from ._router import CompiledRouter, Route, maybe_await, run_chain
from ._transport import Transport

__all__ = ["Connection", "ConnectionStatistics"]

log = logging.getLogger("wskit_trio")

D = TypeVar("D")


def _internal(exc: BaseException) -> WsKitError:
    # The client learns nothing of the exception: no text, no stack.
    err = WsKitError(ErrorCode.INTERNAL, "Internal error")
    err.__cause__ = exc
    return err


class Connection(Generic[D]):
    """The runtime of one accepted WebSocket. Create, then ``await run()``."""

    def __init__(
        self,
        router: CompiledRouter[D],
        transport: Transport,
        data: D,
        limits: Limits,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.router = router
        self.transport = transport
        self.data = data
        self.limits = limits
        self.heartbeat = heartbeat
        self.client_id = str(uuid.uuid4())
        self.outbox = Outbox(
            limits.outbound_queue, limits.outbound_policy, limits.outbound_queue_bytes
        )
        self.context: ConnectionContext[D] = ConnectionContext(self)
        #: In-flight RPCs by correlationId.
        self.rpcs: dict[str, RpcContext[Any, Any, D]] = {}
        #: Topics this connection subscribes to (kept by the pub/sub hub).
        self.topics: set[str] = set()
        self._rpcs_idle = trio.Event()
        self._rpcs_idle.set()
        self._nursery: trio.Nursery | None = None
        #: Set by ``shutdown``: new RPCs are refused with UNAVAILABLE.
        self._draining = False
        #: Set once ``run`` has returned (every task ended, ``on_close`` ran).
        self._finished = trio.Event()
        self._close_code = 1000
        self._close_reason = ""
        #: How the connection ended, once it has: (code, reason).
        self.closed: tuple[int, str] | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it, then run ``on_close``.

        An exception from the runtime itself (not from a handler: those are answered)
        closes the connection with 1011 and propagates to the server, which logs it."""
        try:
            if self.router.observer is not None:
                self.router.observer.connection_opened()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop)
                # The slow-consumer handling starts when the queue overflows (a task
                # per connection waiting for it would cost memory on idle ones).
                self.outbox.on_overflow = self._start_overflow
                if self.outbox.overflowed.is_set():
                    self._start_overflow()
                if await self._open():
                    nursery.start_soon(self._read_loop)
                    if self.heartbeat is not None:
                        nursery.start_soon(self._heartbeat_loop, self.heartbeat)
        except Exception:
            self._close_code, self._close_reason = 1011, "Internal error"
            raise
        finally:
            # Frames nobody will send are freed now, not whenever the cyclic GC runs.
            self.outbox.close(discard=True)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.limits.close_timeout):
                    await self.transport.close(self._close_code, self._close_reason)
                if self.topics:
                    with trio.move_on_after(self.limits.close_timeout):
                        await self.router.pubsub.remove_connection(self)
                if self.closed is None:
                    self.closed = (self._close_code, self._close_reason)
                if self.router.observer is not None:
                    self.router.observer.connection_closed()
                await self._run_close_hooks()
            self._finished.set()

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued are sent; no new frames are accepted.

        A client that does not read them is cut off after ``limits.close_timeout``.
        """
        if not self.outbox.closed:
            self._close_code, self._close_reason = code, reason
            self.outbox.close()
            if self._nursery is not None and not self._finished.is_set():
                # A nursery already closing refuses the task: nothing left to bound.
                with contextlib.suppress(RuntimeError):
                    self._nursery.start_soon(self._cut_off_after_close_timeout)

    async def _cut_off_after_close_timeout(self) -> None:
        await trio.sleep(self.limits.close_timeout)
        self.abort(self._close_code, self._close_reason)

    def abort(self, code: int, reason: str = "") -> None:
        """Close now: queued frames are discarded and every task of the connection
        is cancelled."""
        self._close_code, self._close_reason = code, reason
        self.outbox.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def shutdown(self, grace: float) -> None:
        """Graceful stop; returns once the connection has ended.

        New RPCs are refused (``UNAVAILABLE``, retryable); in-flight ones get up to
        ``grace`` seconds to finish. The rest are cancelled, with nothing more sent
        for them, and the connection closes with 1001 once the frames already queued
        are out, or after ``limits.close_timeout`` if the client does not read them.
        """
        self._draining = True
        with trio.move_on_after(grace):
            await self._rpcs_idle.wait()
        self._cancel_rpcs()
        self.close_soon(1001, "server shutting down")
        if self._nursery is None:
            return  # never ran
        with trio.move_on_after(self.limits.close_timeout):
            await self._finished.wait()
        self.abort(1001, "server shutting down")
        await self._finished.wait()

    def _cancel_rpcs(self) -> None:
        """Cancel every RPC handler and send nothing more for any of them: the close
        that follows is their answer (no DEADLINE_EXCEEDED, no INTERNAL)."""
        for ctx in self.rpcs.values():
            ctx.done = True
            ctx.cancel_scope.cancel()

    async def _open(self) -> bool:
        try:
            for hook in self.router.on_open:
                await maybe_await(hook(self.context))
        except CloseError as exc:
            self.close_soon(exc.code, exc.reason)
            return False
        except Exception as exc:
            log.exception("on_open hook failed; closing with 1011")
            await self.router.report(_internal(exc), self.context)
            self.close_soon(1011, "Internal error")
            return False
        return True

    async def _run_close_hooks(self) -> None:
        for hook in self.router.on_close:
            with trio.move_on_after(self.limits.close_timeout):
                try:
                    await maybe_await(hook(self.context))
                except Exception:
                    log.exception("on_close hook %r failed", hook)

    # -- tasks --------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._nursery is not None
        try:
            while batch := await self.outbox.get_batch(self.transport.settle):
                await self.transport.send(batch)
                if self.router.observer is not None:
                    self.router.observer.frames_out(batch)
        except ConnectionClosed as exc:
            self.closed = (exc.code, exc.reason)
        else:
            if self._nursery.cancel_scope.cancel_called:
                # ``abort``: ``run`` closes, shielded. A close started here would be
                # cancelled at once, and a cancelled close drops the TCP connection
                # without a close frame.
                return
            # Closed on our side and drained: now the close handshake.
            with trio.move_on_after(self.limits.close_timeout):
                await self.transport.close(self._close_code, self._close_reason)
        self._nursery.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        assert self._nursery is not None
        # A transport that reads many messages at once says how many it still holds:
        # while it does, the frames their handlers queue skip the schedule point each
        # (``Outbox.burst_task``); the reader yields when it next reads the socket.
        pending = self.transport.pending
        me = trio.lowlevel.current_task()
        try:
            while True:
                data = await self.transport.receive()
                self.outbox.burst_task = me if pending() else None
                await self.dispatch(data)
        except MessageTooBig:
            await self._message_too_big()
            return
        except ConnectionClosed as exc:
            self.closed = (exc.code, exc.reason)
            if exc.code == 1009:
                # The socket closed itself for a too-big message (trio-websocket does,
                # for one far over the limit): nothing can be sent any more.
                await self.router.report(
                    WsKitError(ErrorCode.RESOURCE_EXHAUSTED, "Message too big"), self.context
                )
        self._nursery.cancel_scope.cancel()

    async def _message_too_big(self) -> None:
        """A message over ``max_message_bytes`` (protocol.md §4, §8): close with 1009,
        but only once the answers already queued are out. The messages before it
        were accepted, so their answers are not lost (the transport has stopped
        reading and left the socket open). RPCs still running are cancelled with
        nothing more sent for them; a client that reads nothing more is cut off
        after ``close_timeout``."""
        await self.router.report(
            WsKitError(ErrorCode.RESOURCE_EXHAUSTED, "Message too big"), self.context
        )
        self._cancel_rpcs()
        # The writer drains the queue, then does the close handshake and ends the
        # connection; close_soon bounds that by close_timeout.
        self.close_soon(1009, "Message too big")

    def _start_overflow(self) -> None:
        if self._nursery is not None and not self._nursery.cancel_scope.cancel_called:
            # RuntimeError: the connection has just ended, nothing left to do.
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._watch_overflow)

    async def _watch_overflow(self) -> None:
        await self.outbox.overflowed.wait()
        await self.router.report(
            WsKitError(ErrorCode.RESOURCE_EXHAUSTED, "Outbound queue full"), self.context
        )
        # Queued frames are dropped; what the writer already holds goes out, then the
        # 1008 close, so a slow (not dead) client learns why. A client that reads
        # nothing more is cut off after close_timeout.
        self._close_code, self._close_reason = 1008, "slow consumer"
        self.outbox.close(discard=True)
        self._cancel_rpcs()
        await trio.sleep(self.limits.close_timeout)
        self.abort(1008, "slow consumer")

    async def _heartbeat_loop(self, heartbeat: Heartbeat) -> None:
        while True:
            await trio.sleep(heartbeat.interval)
            with trio.move_on_after(heartbeat.timeout):
                try:
                    await self.transport.ping()
                except ConnectionClosed:
                    return  # the reader sees the close too and ends the connection
                continue
            if heartbeat.on_stale is not None:
                try:
                    await heartbeat.on_stale(self.context)
                    continue
                except Exception:
                    log.exception("heartbeat on_stale hook failed; closing with 1008")
            self.abort(1008, "heartbeat timeout")
            return

    # -- dispatch -----------------------------------------------------------------

    async def dispatch(self, data: str | bytes) -> None:
        """Handle one inbound message: answer it per protocol.md §4 or run its route."""
        frame = frames.decode_frame(data)
        observer = self.router.observer
        if isinstance(frame, frames.FrameError):
            if observer is not None:
                observer.frame_in(None, False)
            await self._refuse(frame.code, frame.message, frame.details, frame.correlation_id)
            return
        msg_type = frame.type
        route = self.router.routes.get(msg_type)
        if observer is not None:
            observer.frame_in(msg_type, route is not None)
        if route is None:
            await self._dispatch_unrouted(frame)
            return
        cid = frame.correlation_id
        result = frames.validate_frame(
            frame, route.schema.structure_payload, route.schema.structure_meta
        )
        if isinstance(result, list):
            await self._refuse_invalid(result, cid, rpc=route.is_rpc)
            return
        payload, meta, _ = result
        if route.response is None:
            await self._run_event(route, Context(self, msg_type, payload, meta))
            return
        if cid is None:
            await self._refuse(
                ErrorCode.INVALID_ARGUMENT, "RPC request needs meta.correlationId", None, None
            )
            return
        # Admit RPCs only while the outbound queue has room: each may add a terminal
        # frame past capacity, so this bounds the queue by capacity + RPCs in flight
        # even for a client that sends requests and never reads the answers.
        if not await self.outbox.wait_room():
            return
        if self._draining:
            await self._refuse(ErrorCode.UNAVAILABLE, "Server shutting down", None, cid, rpc=True)
            return
        if cid in self.rpcs:
            await self._refuse(
                ErrorCode.INVALID_ARGUMENT, "correlationId already in flight", None, cid, rpc=True
            )
            return
        if len(self.rpcs) >= self.limits.max_in_flight_rpcs:
            await self._refuse(
                ErrorCode.RESOURCE_EXHAUSTED, "Too many RPCs in flight", None, cid, rpc=True
            )
            return
        ctx: RpcContext[Any, Any, D] = RpcContext(
            self, msg_type, payload, meta, cid, route.response
        )
        ctx.cancel_scope.deadline = trio.current_time() + self.limits.rpc_timeout(
            meta.get("timeoutMs")
        )
        self.rpcs[cid] = ctx
        if self._rpcs_idle.is_set():
            self._rpcs_idle = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_rpc, route, ctx)

    async def _dispatch_unrouted(self, frame: frames.InboundFrame) -> None:
        msg_type = frame.type
        if msg_type in (frames.HEARTBEAT_TYPE, frames.ABORT_TYPE):
            # Control frames are strict too: no payload, standard meta keys only.
            problems = frames.validate_frame(frame, None, None)
            if isinstance(problems, list):
                await self._refuse_invalid(problems, frame.correlation_id)
                return
        if msg_type == frames.HEARTBEAT_TYPE:
            await self.outbox.put(frames.encode_heartbeat_ack(int(time.time() * 1000)))
        elif msg_type == frames.ABORT_TYPE:
            if frame.correlation_id is None:
                await self._refuse(
                    ErrorCode.INVALID_ARGUMENT, "$ws:abort needs meta.correlationId", None, None
                )
                return
            ctx = self.rpcs.get(frame.correlation_id)
            if ctx is not None:
                # The client has given up: cancel, and send nothing more for it.
                ctx.aborted = ctx.done = True
                ctx.cancel_scope.cancel()
        elif frames.is_reserved_type(msg_type):
            await self._refuse(
                ErrorCode.INVALID_ARGUMENT,
                f"Type {msg_type!r} is reserved",
                None,
                frame.correlation_id,
            )
        else:
            await self._refuse(
                ErrorCode.UNIMPLEMENTED,
                f"No handler for type {msg_type!r}",
                None,
                frame.correlation_id,
                rpc=True,
            )

    async def _refuse(
        self,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None,
        correlation_id: str | None,
        *,
        rpc: bool = False,
    ) -> None:
        await self.router.report(WsKitError(code, message, details), self.context)
        frame = frames.encode_error(code, message, details, correlation_id=correlation_id, rpc=rpc)
        if rpc and correlation_id is not None:
            # The one answer to an RPC: never dropped, so queued only when there is
            # room (see ``dispatch``); waiting here back-pressures this client's reader.
            if await self.outbox.wait_room():
                self.outbox.put_nowait(frame, FrameKind.TERMINAL)
        else:
            await self.outbox.put(frame)

    async def _refuse_invalid(
        self, problems: Problems, correlation_id: str | None, *, rpc: bool = False
    ) -> None:
        details = {"errors": [{"path": p, "message": m} for p, m in problems]}
        await self._refuse(
            ErrorCode.INVALID_ARGUMENT, "Validation failed", details, correlation_id, rpc=rpc
        )

    async def _run_event(self, route: Route, ctx: Context[Any, D]) -> None:
        try:
            await run_chain(route, ctx)
        except WsKitError as err:
            await self._fail(ctx, err)
        except Exception as exc:
            log.exception("handler for %s failed", ctx.type)
            await self._fail(ctx, _internal(exc))

    async def _run_rpc(self, route: Route, ctx: RpcContext[Any, Any, D]) -> None:
        try:
            with ctx.cancel_scope:
                try:
                    await run_chain(route, ctx)
                except WsKitError as err:
                    await self._fail(ctx, err)
                except Exception as exc:
                    log.exception("RPC handler for %s failed", ctx.type)
                    await self._fail(ctx, _internal(exc))
                else:
                    if not ctx.done:
                        await self._fail(
                            ctx,
                            WsKitError(ErrorCode.INTERNAL, "handler returned without a reply"),
                        )
            if ctx.cancel_scope.cancelled_caught and not ctx.done:
                await self._fail(ctx, WsKitError(ErrorCode.DEADLINE_EXCEEDED))
        finally:
            del self.rpcs[ctx.correlation_id or ""]
            if not self.rpcs:
                self._rpcs_idle.set()

    async def _fail(self, ctx: Context[Any, D], err: WsKitError) -> None:
        # Hooks first: once the client sees the error, on_error has seen it too.
        await self.router.report(err, ctx)
        await ctx._send_error(err)

    # -- introspection ------------------------------------------------------------

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            self.client_id, len(self.rpcs), len(self.topics), self.outbox.statistics()
        )


@attrs.frozen
class ConnectionStatistics:
    """One connection's load: what it has in flight and how its outbound queue fares
    (``outbox.dropped`` counts frames a slow client lost to the queue policy)."""

    client_id: str
    rpcs_in_flight: int
    topics: int
    outbox: OutboxStatistics
