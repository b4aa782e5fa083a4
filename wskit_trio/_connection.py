"""One connection = one nursery: reader/dispatcher, writer, RPC tasks, pings.

The connection is the driver of its :class:`~wskit_trio._protocol.session.ServerSession`:
the reader hands each message to the session and carries out the action it gets
back. Event handlers run inline in the reader, so they keep arrival order and a
slow handler slows only its own client (TCP back-pressure). Each RPC runs in its
own cancel scope, in a task of the connection's nursery: the reader runs it
until it first blocks (most reply and return before, and need no task of their
own), and when it blocks, the reader's task stays with it and a new task takes
over reading. Every frame goes out through the bounded :class:`Outbox`, one
writer at a time: whoever queued a frame writes it at once if the socket takes
it and nobody else is writing (``flush_nowait``; the reader does so once done
with what it has received, the pub/sub hub once done with a delivery burst),
else a writer task is started, which ends when the queue is empty. Heartbeat
pings run in short-lived tasks of the nursery, started by the server's one
schedule (``_heartbeat``).

So an idle connection is one task: the one that runs :meth:`Connection.run`,
which reads in the nursery's body (a new reader task takes over only when an
RPC it runs blocks). When the connection ends, the nursery is cancelled, so
nothing of it outlives it; ``on_close`` hooks run last.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from typing import Any, Generic, TypeVar

import trio

from ._config import Heartbeat, Limits
from ._context import ConnectionContext, Context, RpcContext
from ._errors import CloseError, ConnectionClosed, MessageTooBig, WsKitError
from ._groups import only_cancelled
from ._handle import ConnectionStatistics, Subscriptions
from ._heartbeat import Beat, Heartbeats
from ._inline import run_until_blocked
from ._outbound import FrameKind, Outbox
from ._protocol import frames
from ._protocol.codes import ErrorCode
from ._protocol.session import (
    Abort,
    HeartbeatAck,
    Refuse,
    RunEvent,
    ServerSession,
    StartRpc,
)
from ._router import CompiledRouter, Route, maybe_await, run_chain
from ._transport import Transport, UpgradeRequest

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

    # (Slots: a server holds thousands of these, most of them idle.)
    __slots__ = (
        "__weakref__",  # (tests and apps may hold one without keeping it alive)
        "_beat",
        "_client_id",
        "_close_code",
        "_close_reason",
        "_finished",
        "_finished_event",
        "_heartbeats",
        "_nursery",
        "_outbox",
        "_reader",
        "_rpcs",
        "_rpcs_idle",
        "closed",
        "context",
        "data",
        "heartbeat",
        "limits",
        "pubsub",
        "router",
        "session",
        "transport",
    )

    def __init__(
        self,
        router: CompiledRouter[D],
        transport: Transport,
        data: D,
        limits: Limits,
        heartbeat: Heartbeat | None,
        pubsub: Subscriptions,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.router = router
        self.transport = transport
        self.data = data
        self.limits = limits
        self.heartbeat = heartbeat
        #: The server's ping schedule, if it runs one (else a task of its own pings).
        self._heartbeats = heartbeats
        self._beat: Beat | None = None
        self.pubsub = pubsub
        self._client_id: str | None = None
        self.session: ServerSession[Route] = ServerSession(
            router.routes,
            max_in_flight_rpcs=limits.max_in_flight_rpcs,
            max_rpc_timeout=limits.max_rpc_timeout,
        )
        self._outbox = Outbox(
            limits.outbound_queue, limits.outbound_policy, limits.outbound_queue_bytes
        )
        self.context: ConnectionContext[D] = ConnectionContext(self)
        #: The contexts (cancel scopes) of the RPCs the session has in flight.
        self._rpcs: dict[str, RpcContext[Any, Any, D]] = {}
        #: Set once no RPC is in flight, for a ``shutdown`` waiting for that (made
        #: only then: most RPCs start and end with nobody waiting).
        self._rpcs_idle: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        #: The task reading and dispatching messages (``None`` while a new one starts).
        self._reader: trio.lowlevel.Task | None = None
        #: Set once ``run`` has returned (every task ended, ``on_close`` ran), and the
        #: event for those waiting for that (made when someone first waits).
        self._finished = False
        self._finished_event: trio.Event | None = None
        self._close_code = 1000
        self._close_reason = ""
        #: How the connection ended, once it has: (code, reason).
        self.closed: tuple[int, str] | None = None

    # -- the handle contexts and the hub use ---------------------------------------

    @property
    def client_id(self) -> str:
        """A random id, made when first asked for (most idle connections never are)."""
        if self._client_id is None:
            self._client_id = str(uuid.uuid4())
        return self._client_id

    @property
    def request(self) -> UpgradeRequest:
        return self.transport.request

    async def send(self, frame: str, kind: FrameKind) -> bool:
        if kind is FrameKind.TERMINAL and self._reader is trio.lowlevel.current_task():
            # The reply of an RPC the reader runs itself (``_start_rpc``): no schedule
            # point (a yield would hand the reader's task over to the RPC). It goes out
            # now, before the RPC's own bookkeeping, unless the reader works through a
            # burst: then with the burst's other answers, in one write.
            outbox = self._outbox
            queued = outbox.put_nowait(frame, kind, wake=False)
            if outbox.burst_task is None:
                self.flush_nowait()
            return queued
        return await self._outbox.put(frame, kind)

    def offer(self, frame: str, *, wake: bool = True) -> bool:
        return self._outbox.offer(frame, wake=wake)

    async def send_within(self, frame: str, patience: float) -> bool:
        return await self._outbox.put_within(frame, patience)

    def send_replacing(self, frame: str, group: str) -> bool:
        return self._outbox.put_replacing(frame, group)

    def cut_off(self, code: int, reason: str) -> bool:
        """Close a client that cannot keep up, visibly: the frames queued for it are
        dropped, what the writer already holds goes out, then the close frame; its
        RPCs are cancelled. A client that reads nothing more is cut after
        ``limits.close_timeout``."""
        if self._outbox.closed:
            return False
        self._close_code, self._close_reason = code, reason
        self._outbox.close(discard=True)
        self._cancel_rpcs()
        if self._nursery is not None and not self._finished:
            with contextlib.suppress(RuntimeError):  # the nursery is already closing
                self._nursery.start_soon(self._cut_off_after_close_timeout)
        return True

    # -- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it, then run ``on_close``.

        An exception from the runtime itself (not from a handler: those are answered)
        closes the connection with 1011 and propagates to the server, which logs it."""
        try:
            if self.router.observer is not None:
                self.router.observer.connection_opened(self)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # No task waits for what may never come (frames to write, an
                # overflow): each costs memory on every idle connection. The outbox
                # starts the writer when frames wait, and the slow-consumer handling
                # when the queue overflows.
                outbox = self._outbox
                outbox.owner = self
                if outbox.overflowed:
                    self.outbox_overflowed()
                if await self._open():
                    if self.heartbeat is not None:
                        beats = self._heartbeats
                        if beats is not None and beats.running:
                            # No task while idle: the server's schedule starts each ping.
                            self._beat = Beat(self)
                            beats.add(self._beat)
                        else:
                            nursery.start_soon(self._heartbeat_loop, self.heartbeat)
                    await self._read_loop()
        except Exception:
            self._close_code, self._close_reason = 1011, "Internal error"
            raise
        except BaseException as exc:
            if only_cancelled(exc) and not self._outbox.closed:
                # Cancelled from outside (its own nursery's cancel stops at the
                # nursery): the server around it is going away without a graceful
                # shutdown (an ASGI server past its graceful timeout, say). Unless a
                # close was already chosen, say so, as a graceful shutdown does.
                self._close_code, self._close_reason = 1001, "server shutting down"
            raise
        finally:
            if self._beat is not None:
                self._beat.conn = None  # (the schedule drops it when it comes up)
            # Frames nobody will send are freed now, not whenever the cyclic GC runs;
            # so is the connection (the outbox's hooks refer back to it).
            outbox = self._outbox
            outbox.close(discard=True)
            outbox.owner = None
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.limits.close_timeout):
                    await self.transport.close(self._close_code, self._close_reason)
                with trio.move_on_after(self.limits.close_timeout):
                    await self.pubsub.remove(self)
                if self.closed is None:
                    self.closed = (self._close_code, self._close_reason)
                if self.router.observer is not None:
                    self.router.observer.connection_closed(self)
                await self._run_close_hooks()
            self._finished = True
            if self._finished_event is not None:
                self._finished_event.set()

    async def _wait_finished(self) -> None:
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if self._finished_event is None:
            self._finished_event = trio.Event()
        await self._finished_event.wait()

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued are sent; no new frames are accepted.

        A client that does not read them is cut off after ``limits.close_timeout``.
        """
        if not self._outbox.closed:
            self._close_code, self._close_reason = code, reason
            self._outbox.close()
            if self._nursery is not None and not self._finished:
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
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._outbox.close()  # (after the cancel: no writer is started for it)

    async def shutdown(self, grace: float) -> None:
        """Graceful stop; returns once the connection has ended.

        New RPCs are refused (``UNAVAILABLE``, retryable); in-flight ones get up to
        ``grace`` seconds to finish. The rest are cancelled, with nothing more sent
        for them, and the connection closes with 1001 once the frames already queued
        are out, or after ``limits.close_timeout`` if the client does not read them.
        """
        self.session.start_draining()
        if self._rpcs:
            if self._rpcs_idle is None:
                self._rpcs_idle = trio.Event()
            idle = self._rpcs_idle
            with trio.move_on_after(grace):
                await idle.wait()
        self._cancel_rpcs()
        self.close_soon(1001, "server shutting down")
        if self._nursery is None:
            return  # never ran
        with trio.move_on_after(self.limits.close_timeout):
            await self._wait_finished()
        self.abort(1001, "server shutting down")
        await self._wait_finished()

    def _cancel_rpcs(self) -> None:
        """Cancel every RPC handler and send nothing more for any of them: the close
        that follows is their answer (no DEADLINE_EXCEEDED, no INTERNAL)."""
        for ctx in self._rpcs.values():
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

    def start_writer(self) -> None:
        """The outbox has frames to write and nobody writing them: a writer task."""
        nursery = self._nursery
        if nursery is not None and not nursery.cancel_scope.cancel_called:
            # RuntimeError: the connection has just ended, nothing left to write.
            with contextlib.suppress(RuntimeError):
                nursery.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        """Write until the queue is empty (then end: the outbox starts a writer again
        when frames wait), or until the outbox is closed and drained (then the close
        handshake, and the connection ends)."""
        assert self._nursery is not None
        outbox = self._outbox
        transport = self.transport
        try:
            while True:
                # A transport that only the writer writes to (TLS, ASGI) keeps it.
                linger = not transport.can_send_nowait()
                batch = await outbox.get_batch(transport.settle, linger=linger)
                if batch is None:
                    return
                if not batch and outbox.closed:
                    break
                # (Empty when woken to finish a write begun in its place: ``flush_nowait``.)
                await transport.send(batch)
                outbox.written()
                if batch and self.router.observer is not None:
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
        transport = self.transport
        outbox = self._outbox
        me = self._reader = trio.lowlevel.current_task()
        try:
            while True:
                data = await transport.receive()
                outbox.burst_task = me if transport.pending() else None
                await self.dispatch(data)
                if self._reader is not me:
                    # An RPC run here blocked, and this task stayed with it while a
                    # new one took over reading (``_hand_over``): it is done now.
                    return
                if not transport.pending():
                    # The answers to all that was received go out in one write.
                    self.flush_nowait()
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

    def flush_nowait(self) -> None:
        """Write what is queued from the calling task, at once, if no writer holds a
        batch and the socket takes it, rather than start (or wake) the writer and
        wait a trip through the scheduler for it to write. The reader calls it once
        done with what it received (its answers), and for an RPC's reply; the
        pub/sub hub once done with a delivery burst (frames queued with
        ``offer(wake=False)``); the outbox for a ``put`` outside a burst. If the
        socket takes only part, the writer is started to write the rest (those
        frames still count against the queue's bounds until then); if the writer
        holds a batch or the transport cannot write at once, the writer is started
        (or woken) for the frames."""
        outbox = self._outbox
        batch = outbox.take_nowait() if self.transport.can_send_nowait() else None
        if batch is None:
            outbox.notify_writer()
            return
        if self.transport.send_nowait(batch):
            outbox.written()
        else:
            outbox.wake_writer()  # its (empty) send writes the rest
        if self.router.observer is not None:
            self.router.observer.frames_out(batch)

    async def _message_too_big(self) -> None:
        """A message over ``max_message_bytes`` (docs/protocol.md §4, §8): close with 1009,
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

    def outbox_overflowed(self) -> None:
        if self._nursery is not None and not self._nursery.cancel_scope.cancel_called:
            # RuntimeError: the connection has just ended, nothing left to do.
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._on_overflow)

    async def _on_overflow(self) -> None:
        await self.router.report(
            WsKitError(ErrorCode.RESOURCE_EXHAUSTED, "Outbound queue full"), self.context
        )
        # The "close" policy: the client learns why (1008), see ``cut_off``.
        self.cut_off(1008, "slow consumer")

    async def _heartbeat_loop(self, heartbeat: Heartbeat) -> None:
        """Ping every ``interval`` seconds, from a task of its own (when the server runs
        no ping schedule: an ASGI app, say)."""
        while True:
            await trio.sleep(heartbeat.interval)
            if not await self._ping(heartbeat):
                return

    def ping_due(self) -> None:
        """The server's schedule says a ping is due: ping from a short-lived task of
        this connection's nursery, which puts it back in the schedule if all is well."""
        if self._nursery is not None and not self._finished:
            with contextlib.suppress(RuntimeError):  # the nursery is closing
                self._nursery.start_soon(self._ping_and_reschedule)

    async def _ping_and_reschedule(self) -> None:
        assert self.heartbeat is not None and self._heartbeats is not None
        beat = self._beat
        if await self._ping(self.heartbeat) and beat is not None and beat.conn is not None:
            self._heartbeats.add(beat)

    async def _ping(self, heartbeat: Heartbeat) -> bool:
        """One ping; ``False`` once the connection is done (closed meanwhile, or stale
        and closed with 1008). A stale connection's ``on_stale`` hook, if any, decides:
        returning keeps it."""
        with trio.move_on_after(heartbeat.timeout):
            try:
                await self.transport.ping()
            except ConnectionClosed:
                return False  # the reader sees the close too and ends the connection
            return True
        if heartbeat.on_stale is not None:
            try:
                await heartbeat.on_stale(self.context)
                return True
            except Exception:
                log.exception("heartbeat on_stale hook failed; closing with 1008")
        self.abort(1008, "heartbeat timeout")
        return False

    # -- dispatch -----------------------------------------------------------------

    async def dispatch(self, data: str | bytes) -> None:
        """Handle one inbound message: carry out what the session decides for it.

        Called by the reader only: an RPC that blocks keeps the caller's task
        (``_start_rpc``), and a new reader is started in its place."""
        action = self.session.receive(data, trio.current_time())
        observer = self.router.observer
        if observer is not None:
            routed = isinstance(action, RunEvent | StartRpc) or (
                isinstance(action, Refuse) and action.routed
            )
            observer.frame_in(action.type, routed)
        if isinstance(action, RunEvent):
            event: Context[Any, D] = Context(self, action.type, action.payload, action.meta)
            if self._outbox.burst_task is None:
                await self._run_event(action.route, event)
            else:
                # Its frames wait for the reader's one write at the end of the burst,
                # unless it blocks: then they go at once (``_event_blocked``).
                await run_until_blocked(
                    self._run_event(action.route, event), None, self._event_blocked
                )
        elif isinstance(action, StartRpc):
            await self._start_rpc(action)
        elif isinstance(action, Refuse):
            await self._refuse(action)
        elif isinstance(action, HeartbeatAck):
            await self._outbox.put(frames.encode_heartbeat_ack(int(time.time() * 1000)))
        elif isinstance(action, Abort):
            ctx = self._rpcs.get(action.correlation_id)
            if ctx is not None:
                # The client has given up: cancel, and send nothing more for it.
                ctx.aborted = ctx.done = True
                ctx.cancel_scope.cancel()
        # Ignore: nothing to do.

    async def _start_rpc(self, start: StartRpc[Route]) -> None:
        # Start RPCs only while the outbound queue has room: each may add a terminal
        # frame past capacity, so this bounds the queue by capacity + RPCs in flight
        # even for a client that sends requests and never reads the answers.
        if not (self._outbox.has_room() or await self._outbox.wait_room()):
            self.session.rpc_finished(start.correlation_id)
            return
        assert start.route.response is not None
        ctx: RpcContext[Any, Any, D] = RpcContext(
            self,
            start.type,
            start.payload,
            start.meta,
            start.correlation_id,
            start.route.response,
            start.deadline,
        )
        self._rpcs[start.correlation_id] = ctx
        # Run here, in the reader, until the handler first yields to the scheduler:
        # what it does up to its first blocking wait (a publish, say) happens before
        # the next frame is dispatched (delivery.md §10.1), and a handler that replies
        # without waiting costs no task and no trip through the scheduler. If it
        # yields, this task stays with it and a new one reads on (``_hand_over``).
        await run_until_blocked(
            self._run_rpc(start.route, ctx), contextvars.copy_context(), self._hand_over
        )

    def _event_blocked(self) -> None:
        """The event handler the reader runs in a burst is about to block: what the
        burst has queued goes out now, not once the handler is done, and so does what
        it sends from now on. (Outside a burst nothing waits for the reader: each
        ``put`` writes its frame itself, right after its own schedule point.)"""
        self._outbox.burst_task = None
        self._outbox.notify_writer()

    def _hand_over(self) -> None:
        """The RPC handler the reader runs is about to block: the RPC keeps this task
        (its cancel scope was entered here, and whatever it waits on has recorded
        this task), and a new task of the connection's nursery takes over reading."""
        assert self._nursery is not None
        assert self._reader is trio.lowlevel.current_task(), "only the reader dispatches"
        self._reader = None
        self._outbox.burst_task = None
        self._outbox.notify_writer()  # for a reply it may have queued (see ``send``)
        self._nursery.start_soon(self._read_loop)

    async def _refuse(self, refusal: Refuse) -> None:
        code, message, details, cid = (
            refusal.code,
            refusal.message,
            refusal.details,
            refusal.correlation_id,
        )
        await self.router.report(WsKitError(code, message, details), self.context)
        rpc = refusal.rpc and cid is not None
        frame = frames.encode_error(code, message, details, correlation_id=cid, rpc=rpc)
        if rpc:
            # The one answer to an RPC: never dropped, so queued only when there is
            # room (see ``_start_rpc``); waiting here back-pressures this client's reader.
            if await self._outbox.wait_room():
                self._outbox.put_nowait(frame, FrameKind.TERMINAL)
        else:
            await self._outbox.put(frame)

    async def _run_event(self, route: Route, ctx: Context[Any, D]) -> None:
        try:
            await run_chain(route, ctx)
        except WsKitError as err:
            await self._fail(ctx, err)
        except Exception as exc:
            log.exception("handler for %s failed", ctx.type)
            await self._fail(ctx, _internal(exc))

    async def _run_rpc(self, route: Route, ctx: RpcContext[Any, Any, D]) -> None:
        start = trio.current_time()
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
            del self._rpcs[ctx._correlation]
            self.session.rpc_finished(ctx._correlation)
            if not self._rpcs and self._rpcs_idle is not None:
                self._rpcs_idle.set()
                self._rpcs_idle = None
            if self.router.observer is not None:
                outcome = ctx._outcome or ("aborted" if ctx.aborted else "cancelled")
                self.router.observer.rpc_finished(ctx.type, outcome, trio.current_time() - start)

    async def _fail(self, ctx: Context[Any, D], err: WsKitError) -> None:
        # Hooks first: once the client sees the error, on_error has seen it too.
        await self.router.report(err, ctx)
        await ctx._send_error(err)

    # -- introspection ------------------------------------------------------------

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            self.client_id,
            self.session.rpcs_in_flight,
            len(self.pubsub.topics_of(self)),
            self._outbox.statistics(),
        )
