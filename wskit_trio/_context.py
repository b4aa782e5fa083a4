"""What handlers, middleware and lifecycle hooks get: typed views of one connection.

* :class:`ConnectionContext` — the connection: data, client id, send, close.
  Lifecycle hooks (``on_open``, ``on_close``, ``on_error``) get this.
* :class:`Context` — one inbound message on top of that: type, payload, meta.
* :class:`RpcContext` — one RPC request: reply, progress, deadline, cancel scope.

Contexts hold no I/O of their own; they hand encoded frames to the connection's
outbound queue.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import attrs
import trio

from ._errors import UNSET, WsKitError
from ._handle import ConnectionHandle, ConnectionStatistics
from ._outbound import FrameKind
from ._protocol import frames
from ._protocol.codes import ErrorCode
from ._protocol.pubsub import Position, PublishResult, Recovery
from ._protocol.validation import unstructure
from ._schema import MessageSchema

if TYPE_CHECKING:
    from ._transport import UpgradeRequest

__all__ = ["ConnectionContext", "Context", "RpcContext", "Topics"]

D = TypeVar("D")
P = TypeVar("P")
T = TypeVar("T")
Req = TypeVar("Req")
Res = TypeVar("Res")


def _dump_meta(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if attrs.has(type(meta)):
        return unstructure(meta)  # type: ignore[no-any-return]
    return dict(meta)


class Topics:
    """One connection's subscriptions (``ctx.topics``).

    ``subscribe`` returns once the backend confirmed the topic, so anything
    published after it reaches this connection. Refusals raise ``WsKitError``
    (``INVALID_ARGUMENT``, ``PERMISSION_DENIED``, ``RESOURCE_EXHAUSTED``,
    ``UNAVAILABLE``), which a handler may let propagate to answer the client.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ConnectionContext[Any]) -> None:
        self._ctx = ctx

    @overload
    async def subscribe(self, topic: str, *, drop_oldest: bool = False) -> None: ...
    @overload
    async def subscribe(
        self,
        topic: str,
        *,
        positions: Literal[True],
        since: Position | None = None,
        drop_oldest: bool = False,
    ) -> Recovery: ...
    @overload
    async def subscribe(
        self, topic: str, *, positions: bool = False, since: Position, drop_oldest: bool = False
    ) -> Recovery: ...
    async def subscribe(
        self,
        topic: str,
        *,
        positions: bool = False,
        since: Position | None = None,
        drop_oldest: bool = False,
    ) -> Recovery | None:
        """Subscribe; returns once the backend confirmed the topic.

        With ``positions=True`` or ``since=Position(...)`` (a topic with history), the
        frames of this topic carry ``meta.topic/offset/epoch`` and the answer is a
        :class:`Recovery`: with ``since``, every message after it is replayed first
        when the history still holds them all (``recovered``), with no gap and no
        duplicate before the live ones (delivery.md §12). ``drop_oldest``: this
        connection takes the topic's messages as superseding each other, like a
        ``TopicPolicy.drop_oldest`` topic (its full queue drops the topic's oldest
        frames instead of slowing the publisher)."""
        conn = self._ctx._conn
        return await conn.pubsub.subscribe(
            conn, topic, self._ctx, positions=positions, since=since, drop_oldest=drop_oldest
        )

    async def unsubscribe(self, topic: str) -> None:
        conn = self._ctx._conn
        await conn.pubsub.unsubscribe(conn, topic, self._ctx)

    async def has(self, topic: str) -> bool:
        """Whether this connection subscribes to ``topic`` (async like the rest of the
        API, so a backend may answer it; ``topic in ctx.topics`` is the local check)."""
        await trio.lowlevel.checkpoint()
        return topic in self

    async def list(self) -> list[str]:
        """The subscribed topics, sorted."""
        await trio.lowlevel.checkpoint()
        return sorted(self._topics())

    def _topics(self) -> frozenset[str]:
        conn = self._ctx._conn
        return conn.pubsub.topics_of(conn)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics()

    def __len__(self) -> int:
        return len(self._topics())


class ConnectionContext(Generic[D]):
    """One live connection, as lifecycle hooks see it."""

    __slots__ = ("_conn",)

    def __init__(self, conn: ConnectionHandle) -> None:
        self._conn = conn

    @property
    def data(self) -> D:
        """The connection's data: what ``authenticate`` returned, as changed since."""
        return self._conn.data  # type: ignore[no-any-return]

    @property
    def client_id(self) -> str:
        """This connection's id, a UUID assigned by the server."""
        return self._conn.client_id

    @property
    def request(self) -> UpgradeRequest:
        """The upgrade request the connection came with (path, query, headers,
        ``client_ip``)."""
        return self._conn.request

    def assign_data(self, **changes: Any) -> None:
        """Change fields of the connection data (every later handler sees them).

        Mutable attrs classes and plain objects are updated in place, frozen attrs
        classes are replaced with an evolved copy, dicts are updated.
        """
        data: Any = self._conn.data
        if isinstance(data, dict):
            data.update(changes)
            return
        try:
            for key, value in changes.items():
                setattr(data, key, value)
        except attrs.exceptions.FrozenInstanceError:
            self._conn.data = attrs.evolve(data, **changes)

    @overload
    async def send(
        self,
        schema: MessageSchema[None],
        payload: None = None,
        *,
        meta: Any = None,
        inherit_correlation_id: bool = False,
    ) -> None: ...
    @overload
    async def send(
        self,
        schema: MessageSchema[T],
        payload: T,
        *,
        meta: Any = None,
        inherit_correlation_id: bool = False,
    ) -> None: ...
    async def send(
        self,
        schema: MessageSchema[Any],
        payload: Any = None,
        *,
        meta: Any = None,
        inherit_correlation_id: bool = False,
    ) -> None:
        """Send a message to this client. The payload is validated against ``schema``
        first; an invalid one raises ``OutboundValidationError`` and sends nothing.
        ``meta`` is a dict or an instance of the schema's meta class."""
        wire_meta = _dump_meta(meta)
        if inherit_correlation_id:
            cid = self._correlation_id()
            if cid is not None:
                wire_meta["correlationId"] = cid
        frame = frames.encode_frame(schema.type, wire_meta, schema.wire_payload(payload))
        await self._conn.send(frame, FrameKind.PLAIN)

    async def error(
        self,
        code: ErrorCode | str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | None = UNSET,
    ) -> None:
        """Send an error frame (``ERROR``, or ``RPC_ERROR`` from an RPC context)."""
        await self._send_error(
            WsKitError(code, message, details, retryable=retryable, retry_after_ms=retry_after_ms)
        )

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection after the frames already queued have been sent."""
        self._conn.close_soon(code, reason)

    def statistics(self) -> ConnectionStatistics:
        """This connection's RPCs in flight, topics and outbound queue (sent, queued,
        dropped by the queue policy, high-water mark)."""
        return self._conn.statistics()

    @property
    def topics(self) -> Topics:
        """This connection's topic subscriptions."""
        return Topics(self)

    @overload
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[None],
        payload: None = None,
        *,
        exclude_self: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult: ...
    @overload
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[T],
        payload: T,
        *,
        exclude_self: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult: ...
    async def publish(
        self,
        topic: str,
        schema: MessageSchema[Any],
        payload: Any = None,
        *,
        exclude_self: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> PublishResult:
        """Publish to every subscriber of ``topic``, on every instance.

        The payload is validated first (``OutboundValidationError``, nothing sent);
        a topic refused by the policy or a backend failure comes back as
        ``PublishResult(ok=False, error=..., retryable=...)``. ``exclude_self`` skips
        this connection.
        """
        return await self._conn.pubsub.publish(
            topic,
            schema,
            payload,
            meta=meta,
            exclude=self._conn.client_id if exclude_self else None,
            ctx=self,
        )

    def _correlation_id(self) -> str | None:
        return None

    async def _send_error(self, err: WsKitError) -> None:
        frame = frames.encode_error(
            err.code,
            err.message,
            err.details,
            correlation_id=self._correlation_id(),
            retryable=err.retryable,
            retry_after_ms=err.retry_after_ms,
        )
        await self._conn.send(frame, FrameKind.PLAIN)


class Context(ConnectionContext[D], Generic[P, D]):
    """One inbound message: its validated ``payload`` (typed by the schema) and ``meta``."""

    __slots__ = ("meta", "payload", "received_at", "type")

    def __init__(self, conn: ConnectionHandle, type: str, payload: P, meta: dict[str, Any]) -> None:
        super().__init__(conn)
        self.type = type
        self.payload = payload
        #: Inbound meta after validation, camelCase keys as on the wire, without the
        #: reserved ``clientId``/``receivedAt`` a client might have tried to spoof.
        self.meta = meta
        #: When the server received the message, ms since the epoch.
        self.received_at = int(time.time() * 1000)

    @property
    def correlation_id(self) -> str | None:
        """The inbound ``meta.correlationId``, if any."""
        return self._correlation_id()

    def _correlation_id(self) -> str | None:
        cid = self.meta.get("correlationId")
        return cid if isinstance(cid, str) else None


class RpcContext(Context[Req, D], Generic[Req, Res, D]):
    """One RPC request. Exactly one terminal frame (reply or error) goes out per
    request; progress and terminal calls after it send nothing."""

    __slots__ = (
        "_correlation",
        "_last_progress",
        "_outcome",
        "_response",
        "aborted",
        "cancel_scope",
        "done",
    )

    def __init__(
        self,
        conn: ConnectionHandle,
        type: str,
        payload: Req,
        meta: dict[str, Any],
        correlation_id: str,
        response: MessageSchema[Res],
        deadline: float = math.inf,
    ) -> None:
        super().__init__(conn, type, payload, meta)
        self._correlation = correlation_id
        self._response = response
        self._last_progress = -math.inf
        #: The handler's cancel scope: deadline from ``meta.timeoutMs`` (capped by the
        #: server maximum), cancelled by ``$ws:abort`` or the connection closing.
        self.cancel_scope = trio.CancelScope(deadline=deadline)
        #: True once the terminal frame went out (or the client gave up).
        self.done = False
        #: True when the client sent ``$ws:abort`` for this request.
        self.aborted = False
        #: The terminal frame sent: ``"ok"`` (the reply) or the error's code; ``None``
        #: until one went out (metrics and tracing report it).
        self._outcome: str | None = None

    @property
    def deadline(self) -> float:
        """The handler's deadline on ``trio.current_time()``'s clock (``inf`` if none).
        Pass it on to calls this handler makes."""
        return self.cancel_scope.deadline

    def _correlation_id(self) -> str:
        return self._correlation

    async def reply(self, payload: Res) -> None:
        """Send the response (the response schema's type, with this correlationId)."""
        data = self._response.wire_payload(payload)
        if self.done:
            await trio.lowlevel.checkpoint()  # still a checkpoint: loops stay cancellable
            return
        meta = {"correlationId": self._correlation}
        # Encoded before ``done`` is set: a payload JSON cannot hold (NaN) fails the handler,
        # which is then answered with an error instead of nothing.
        frame = frames.encode_frame(self._response.type, meta, data)
        self.done = True
        self._outcome = "ok"
        await self._conn.send(frame, FrameKind.TERMINAL)

    async def progress(self, payload: Res, *, throttle_ms: float | None = None) -> None:
        """Send a non-terminal ``$ws:rpc-progress`` frame, validated like the reply.

        With ``throttle_ms``, an update less than that long after the last one that
        was sent is skipped (the next one carries newer state anyway).
        """
        data = self._response.dump_payload(payload)
        if self.done:
            await trio.lowlevel.checkpoint()  # still a checkpoint: loops stay cancellable
            return
        if throttle_ms is not None:
            now = trio.current_time()
            if (now - self._last_progress) * 1000 < throttle_ms:
                await trio.lowlevel.checkpoint()
                return
            self._last_progress = now
        await self._conn.send(frames.encode_progress(self._correlation, data), FrameKind.PROGRESS)

    async def _send_error(self, err: WsKitError) -> None:
        if self.done:
            await trio.lowlevel.checkpoint()  # still a checkpoint: loops stay cancellable
            return
        self.done = True
        self._outcome = str(err.code)
        frame = frames.encode_error(
            err.code,
            err.message,
            err.details,
            correlation_id=self._correlation,
            rpc=True,
            retryable=err.retryable,
            retry_after_ms=err.retry_after_ms,
        )
        await self._conn.send(frame, FrameKind.TERMINAL)
