"""The server's side of one connection as a state machine: frames in, actions out.

h11's rule: everything that decides what the protocol does lives in one pure
place. :class:`ServerSession` takes each inbound WebSocket message (and the
time) and returns the one :data:`Action` that answers it (docs/protocol.md §4,
§5): run an event, start an RPC with its deadline, abort one, acknowledge a
heartbeat, or refuse with an error. It owns the in-flight RPC table, the
draining flag and the limits that bound them. The connection runtime only
carries the actions out (tasks, cancel scopes, the outbound queue) and tells
the session when an RPC has ended.

:class:`ClientSession` is the client's side: it owns what the answers depend on,
the requests in flight (correlationId → what the request expects) and the
message types the application listens for. :meth:`ClientSession.receive` takes
one WebSocket message and says what it means, as a plain value the client's I/O
layer acts on: settle a request, feed it progress, run handlers, report a
problem, or nothing. The I/O layer attaches a handle of its own to each request
(``H``: the thing its caller waits on) and gets it back in the results that
concern that request. The session also remembers the latest position seen per
topic (delivery.md §12.3): what the client re-joins with after a reconnect.

Nothing here imports trio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

import attrs

from .._errors import (
    UNSET,
    ConfigurationError,
    InboundValidationError,
    OutboundValidationError,
    RpcError,
)
from . import frames
from .codes import ErrorCode
from .pubsub import POSITION_META_KEYS, Position
from .validation import Problems, StructureFn, check, type_name, unstructure

__all__ = [
    "HEARTBEAT_ACK",
    "Abort",
    "Action",
    "ClientSession",
    "HeartbeatAck",
    "HeartbeatAcked",
    "Ignore",
    "Ignored",
    "Inbound",
    "InboundMessage",
    "Problem",
    "Progressed",
    "Refuse",
    "Replied",
    "RequestFailed",
    "RequestSpec",
    "RouteSpec",
    "RunEvent",
    "SchemaSpec",
    "ServerSession",
    "StartRpc",
    "Unhandled",
    "message_meta",
    "rpc_timeout",
]


class SchemaSpec(Protocol):
    """What a session needs of a message schema (``MessageSchema`` has it): its type
    and its strict structuring."""

    @property
    def type(self) -> str: ...

    @property
    def structure_payload(self) -> StructureFn | None: ...

    @property
    def structure_meta(self) -> StructureFn | None: ...


class RouteSpec(Protocol):
    """What the session needs of a route: how to validate it, and whether it is an RPC."""

    @property
    def schema(self) -> SchemaSpec: ...

    @property
    def is_rpc(self) -> bool: ...


R = TypeVar("R", bound=RouteSpec)


class RunEvent(NamedTuple, Generic[R]):
    """Run an event's handler chain, in arrival order."""

    route: R
    type: str
    payload: Any
    meta: dict[str, Any]


class StartRpc(NamedTuple, Generic[R]):
    """Start an RPC handler under its own cancel scope, ``deadline`` on the clock the
    session was given. Its ``correlation_id`` is in flight until ``rpc_finished``."""

    route: R
    type: str
    payload: Any
    meta: dict[str, Any]
    correlation_id: str
    deadline: float


class Refuse(NamedTuple):
    """Answer with an error frame (``RPC_ERROR`` when ``rpc`` and there is a
    ``correlation_id``, else ``ERROR``); nothing runs. ``type`` is the inbound type
    (``None`` if the frame had none) and ``routed`` whether a route exists for it."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None
    correlation_id: str | None = None
    rpc: bool = False
    type: str | None = None
    routed: bool = False


class Abort(NamedTuple):
    """The client gave up on an RPC in flight: cancel it and send nothing more for it."""

    correlation_id: str
    type: str = frames.ABORT_TYPE


class HeartbeatAck(NamedTuple):
    """Answer the client's heartbeat."""

    type: str = frames.HEARTBEAT_TYPE


class Ignore(NamedTuple):
    """Nothing to do (a ``$ws:abort`` for an RPC that is not in flight)."""

    type: str


Action: TypeAlias = RunEvent[Any] | StartRpc[Any] | Refuse | Abort | HeartbeatAck | Ignore


def rpc_timeout(timeout_ms: Any, max_rpc_timeout: float) -> float:
    """Seconds an RPC may run: the client's ``timeoutMs``, capped by the server's
    maximum (``0`` or ``inf`` means none)."""
    cap = max_rpc_timeout if max_rpc_timeout > 0 else math.inf
    if isinstance(timeout_ms, int | float) and not isinstance(timeout_ms, bool):
        return min(max(timeout_ms, 0) / 1000, cap)
    return cap


def _invalid(problems: Problems) -> dict[str, Any]:
    return {"errors": [{"path": path, "message": message} for path, message in problems]}


class ServerSession(Generic[R]):
    """One connection's protocol state: which RPCs are in flight, whether the server
    is draining, and the answer to every inbound message."""

    __slots__ = ("_in_flight", "draining", "max_in_flight_rpcs", "max_rpc_timeout", "routes")

    def __init__(
        self, routes: Mapping[str, R], *, max_in_flight_rpcs: int, max_rpc_timeout: float
    ) -> None:
        self.routes = routes
        self.max_in_flight_rpcs = max_in_flight_rpcs
        self.max_rpc_timeout = max_rpc_timeout
        # (A dict used as a set: an empty one is a quarter of an empty set's size, on
        # every connection, most of which never have an RPC in flight.)
        self._in_flight: dict[str, None] = {}
        #: Set by :meth:`start_draining`: new RPCs are refused, retryable.
        self.draining = False

    @property
    def rpcs_in_flight(self) -> int:
        return len(self._in_flight)

    def start_draining(self) -> None:
        """The server is shutting down: refuse new RPCs with ``UNAVAILABLE``."""
        self.draining = True

    def rpc_finished(self, correlation_id: str) -> None:
        """An RPC started by :class:`StartRpc` has ended (replied, failed, cancelled)."""
        self._in_flight.pop(correlation_id, None)

    def receive(self, data: str | bytes, now: float) -> Action:
        """The answer to one inbound message, received at ``now``."""
        frame = frames.decode_frame(data)
        if isinstance(frame, frames.FrameError):
            return Refuse(frame.code, frame.message, frame.details, frame.correlation_id)
        msg_type = frame.type
        route = self.routes.get(msg_type)
        if route is None:
            return self._unrouted(frame)
        cid = frame.correlation_id
        rpc = route.is_rpc
        schema = route.schema
        result = frames.validate_frame(frame, schema.structure_payload, schema.structure_meta)
        if isinstance(result, list):
            return Refuse(
                ErrorCode.INVALID_ARGUMENT,
                "Validation failed",
                _invalid(result),
                cid,
                rpc,
                msg_type,
                True,
            )
        payload, meta, _ = result
        if not rpc:
            return RunEvent(route, msg_type, payload, meta)
        if cid is None:
            return Refuse(
                ErrorCode.INVALID_ARGUMENT,
                "RPC request needs meta.correlationId",
                type=msg_type,
                routed=True,
            )
        if self.draining:
            return Refuse(
                ErrorCode.UNAVAILABLE, "Server shutting down", None, cid, True, msg_type, True
            )
        if cid in self._in_flight:
            return Refuse(
                ErrorCode.INVALID_ARGUMENT,
                "correlationId already in flight",
                None,
                cid,
                True,
                msg_type,
                True,
            )
        if len(self._in_flight) >= self.max_in_flight_rpcs:
            return Refuse(
                ErrorCode.RESOURCE_EXHAUSTED,
                "Too many RPCs in flight",
                None,
                cid,
                True,
                msg_type,
                True,
            )
        self._in_flight[cid] = None
        deadline = now + rpc_timeout(meta.get("timeoutMs"), self.max_rpc_timeout)
        return StartRpc(route, msg_type, payload, meta, cid, deadline)

    def _unrouted(self, frame: frames.InboundFrame) -> Action:
        msg_type = frame.type
        cid = frame.correlation_id
        if msg_type in (frames.HEARTBEAT_TYPE, frames.ABORT_TYPE):
            # Control frames are strict too: no payload, standard meta keys only.
            problems = frames.validate_frame(frame, None, None)
            if isinstance(problems, list):
                return Refuse(
                    ErrorCode.INVALID_ARGUMENT,
                    "Validation failed",
                    _invalid(problems),
                    cid,
                    type=msg_type,
                )
            if msg_type == frames.HEARTBEAT_TYPE:
                return HeartbeatAck()
            if cid is None:
                return Refuse(
                    ErrorCode.INVALID_ARGUMENT, "$ws:abort needs meta.correlationId", type=msg_type
                )
            return Abort(cid) if cid in self._in_flight else Ignore(msg_type)
        if frames.is_reserved_type(msg_type):
            reserved = f"Type {msg_type!r} is reserved"
            return Refuse(ErrorCode.INVALID_ARGUMENT, reserved, None, cid, False, msg_type)
        unknown = f"No handler for type {msg_type!r}"
        return Refuse(ErrorCode.UNIMPLEMENTED, unknown, None, cid, True, msg_type)


# -- the client's side ---------------------------------------------------------------

H = TypeVar("H")
P = TypeVar("P")

#: Meta keys the client manages itself (or the server assigns): never the caller's.
_MANAGED_META_KEYS = frozenset(
    {*frames.RESERVED_META_KEYS, *POSITION_META_KEYS, "correlationId", "timeoutMs"}
)


class RequestSpec(Protocol):
    """What the session needs of an RPC schema (``RpcSchema`` has it)."""

    @property
    def type(self) -> str: ...
    @property
    def response(self) -> SchemaSpec: ...


# -- what an inbound frame means ------------------------------------------------------


@attrs.frozen
class InboundMessage(Generic[P]):
    """A validated message from the server, as ``on()`` handlers get it."""

    type: str
    #: The payload, an instance of the schema's payload class (``None`` without one).
    payload: P
    #: The frame's meta, camelCase keys as on the wire.
    meta: dict[str, Any]
    #: The topic it was published to, when its subscription has positions
    #: (``meta.topic``, delivery.md §11.4); ``None`` otherwise.
    topic: str | None = None
    #: Its place in that topic's history (``meta.offset``, ``meta.epoch``).
    position: Position | None = None


@attrs.frozen
class Replied(Generic[H]):
    """The valid reply to ``request``: settle it with ``payload``."""

    request: H
    payload: Any


@attrs.frozen
class Progressed(Generic[H]):
    """A valid progress update (``$ws:rpc-progress``) for ``request``."""

    request: H
    payload: Any


@attrs.frozen
class RequestFailed(Generic[H]):
    """``request`` ends with ``error``: the server's ``RPC_ERROR``/``ERROR`` for it
    (an :class:`RpcError`), or a reply that breaks the response schema (an
    :class:`InboundValidationError`, which ``report`` says to pass to ``on_error``
    too: the server is at fault)."""

    request: H
    error: RpcError | InboundValidationError
    report: bool = False


@attrs.frozen
class Unhandled:
    """A well-formed frame of a type nobody listens for (for ``on_unhandled``)."""

    frame: dict[str, Any]


@attrs.frozen
class HeartbeatAcked:
    """The server answered a ``__heartbeat``."""


HEARTBEAT_ACK: HeartbeatAcked = HeartbeatAcked()


@attrs.frozen
class Problem:
    """Report ``error`` (``on_error``) and do nothing else: a malformed frame, an
    invalid message or progress update, an ``ERROR`` that answers no request."""

    error: RpcError | InboundValidationError


@attrs.frozen
class Ignored:
    """Nothing to do, for ``reason`` (a late answer to a request its caller gave up
    on, progress nobody reads)."""

    reason: str


Inbound: TypeAlias = (
    Replied[H]
    | Progressed[H]
    | RequestFailed[H]
    | InboundMessage[Any]
    | Unhandled
    | HeartbeatAcked
    | Problem
    | Ignored
)


class _Stamp(NamedTuple):
    """The position keys a published frame carries (delivery.md §11.4), and the
    frame without them, which is what the message's schema validates."""

    topic: str
    position: Position
    unstamped: frames.InboundFrame


#: The JSON type each position key must have (booleans are not integers).
_STAMP_TYPES: dict[str, tuple[type, str]] = {
    "topic": (str, "string"),
    "offset": (int, "integer"),
    "epoch": (str, "string"),
}


def _read_stamp(frame: frames.InboundFrame) -> _Stamp | Problems | None:
    """The frame's ``meta.topic/offset/epoch``: ``None`` when it has none of them,
    the problems when they are not all there and well-typed."""
    meta = frame.raw.get("meta")
    if type(meta) is not dict or POSITION_META_KEYS.isdisjoint(meta):
        return None
    problems: Problems = []
    for key, (expected, name) in _STAMP_TYPES.items():
        if key not in meta:
            problems.append(
                (f"$.meta.{key}", "required key missing: topic, offset, epoch go together")
            )
        elif type(meta[key]) is not expected:
            problems.append((f"$.meta.{key}", f"expected {name}, got {type_name(meta[key])}"))
    if problems:
        return problems
    if meta["offset"] < 0:
        return [("$.meta.offset", "must not be negative")]
    rest = {key: value for key, value in meta.items() if key not in POSITION_META_KEYS}
    unstamped = frames.InboundFrame(frame.type, {**frame.raw, "meta": rest}, frame.correlation_id)
    return _Stamp(meta["topic"], Position(meta["offset"], meta["epoch"]), unstamped)


@attrs.frozen
class _Expected(Generic[H]):
    """A request in flight: the I/O layer's handle and what the answer must be."""

    correlation_id: str
    request: H
    request_type: str
    response: SchemaSpec
    accepts_progress: bool


# -- the session ----------------------------------------------------------------------


class ClientSession(Generic[H]):
    """Requests in flight and listened types; what each inbound frame means.

    ``max_requests`` bounds the requests in flight: one more is refused with
    ``RpcError(RESOURCE_EXHAUSTED)`` before anything is sent.

    It also keeps the latest position seen per topic (delivery.md §12.3), across
    connections: what the application re-joins with after a reconnect.
    """

    def __init__(self, *, max_requests: int = 1000) -> None:
        self.max_requests = max_requests
        self._requests: dict[str, _Expected[H]] = {}
        self._listened: dict[str, SchemaSpec] = {}
        self._positions: dict[str, Position] = {}
        #: Response types of every request made: a reply of such a type for no request
        #: in flight is late (its caller gave up), not an unknown message.
        self._response_types: set[str] = set()

    # -- requests in flight -------------------------------------------------------------

    def begin_request(
        self, correlation_id: str, request: H, schema: RequestSpec, *, progress: bool = True
    ) -> None:
        """Expect an answer to ``schema``'s request ``correlation_id``, on behalf of
        ``request``. ``progress=False``: progress updates are ignored unread."""
        if len(self._requests) >= self.max_requests:
            raise RpcError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"Too many pending requests (limit {self.max_requests})",
                type=schema.type,
            )
        if correlation_id in self._requests:
            raise ValueError(f"correlationId {correlation_id!r} is already in flight")
        self._requests[correlation_id] = _Expected(
            correlation_id, request, schema.type, schema.response, progress
        )
        self._response_types.add(schema.response.type)

    def end_request(self, correlation_id: str, request: H) -> None:
        """Expect nothing more for ``request`` (its caller gave up, or its connection
        is lost). A no-op once it is settled, or when the id now belongs to another."""
        expected = self._requests.get(correlation_id)
        if expected is not None and expected.request is request:
            del self._requests[correlation_id]

    def requests(self) -> list[H]:
        """The requests in flight, oldest first."""
        return [expected.request for expected in self._requests.values()]

    def end_all(self) -> list[H]:
        """Forget every request in flight (the client is closed); returns them."""
        ended = self.requests()
        self._requests.clear()
        return ended

    def __len__(self) -> int:
        return len(self._requests)

    # -- listened types -----------------------------------------------------------------

    def listen(self, schema: SchemaSpec) -> None:
        """Deliver valid ``schema.type`` messages (one schema per type)."""
        known = self._listened.get(schema.type)
        if known is not None and known is not schema:
            raise ConfigurationError(
                f"another schema for {schema.type!r} is registered; use one per type"
            )
        self._listened[schema.type] = schema

    def unlisten(self, type: str) -> None:
        """Nobody listens for ``type`` any more: its messages are unhandled."""
        self._listened.pop(type, None)

    # -- positions ----------------------------------------------------------------------

    def position(self, topic: str) -> Position | None:
        """The latest position seen on ``topic`` (``None`` before the first message
        stamped with one): re-join with it to get what came after."""
        return self._positions.get(topic)

    def set_position(self, topic: str, position: Position | None) -> None:
        """Take ``position`` as where this client stands on ``topic`` (``None``:
        nowhere): an app that loaded a snapshot of the topic's state at a position
        (a ``Recovery.position`` after ``recovered=False``) re-joins from there, not
        from what it saw before the snapshot. Messages stamped later advance it."""
        if position is None:
            self._positions.pop(topic, None)
        else:
            self._positions[topic] = position

    def _advance(self, topic: str, position: Position) -> None:
        """Remember ``position`` unless it is not newer than the one known in the same
        epoch; an epoch change replaces it (the old history is gone)."""
        known = self._positions.get(topic)
        if known is None or known.epoch != position.epoch or position.offset > known.offset:
            self._positions[topic] = position

    # -- inbound ------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> Inbound[H]:
        """What one message from the server means (docs/protocol.md §3)."""
        frame = frames.decode_frame(data)
        if isinstance(frame, frames.FrameError):
            return Problem(InboundValidationError(None, [("$", frame.message)]))
        if frame.type == frames.HEARTBEAT_ACK_TYPE:
            return HEARTBEAT_ACK
        cid = frame.correlation_id
        expected = self._requests.get(cid) if cid is not None else None
        if frame.type == frames.PROGRESS_TYPE:
            return self._progress(frame, expected)
        if frame.type in (frames.ERROR_TYPE, frames.RPC_ERROR_TYPE):
            return self._error(frame, expected)
        if expected is not None and frame.type == expected.response.type:
            return self._reply(frame, expected)
        return self._message(frame)

    def _settle(self, expected: _Expected[H]) -> H:
        """The request's answer is here: expect nothing more for it."""
        del self._requests[expected.correlation_id]
        return expected.request

    def _reply(self, frame: frames.InboundFrame, expected: _Expected[H]) -> Inbound[H]:
        request = self._settle(expected)
        response = expected.response
        result = frames.validate_frame(frame, response.structure_payload, response.structure_meta)
        if isinstance(result, list):
            return RequestFailed(request, InboundValidationError(frame.type, result), report=True)
        return Replied(request, result[0])

    def _progress(self, frame: frames.InboundFrame, expected: _Expected[H] | None) -> Inbound[H]:
        if expected is None:
            return Ignored("progress for no request in flight")
        if not expected.accepts_progress:
            return Ignored("progress its caller does not read")
        structure = expected.response.structure_payload
        if structure is None:
            return Progressed(expected.request, None)
        raw = frame.raw
        # docs/protocol.md §3: read `payload`, fall back to `data` (WS-Kit 0.10 servers).
        key = "payload" if "payload" in raw else "data"
        if key not in raw:
            return Problem(
                InboundValidationError(frame.type, [("$.payload", "required key missing")])
            )
        value, problems = check(structure, raw[key], f"$.{key}")
        if problems:
            return Problem(InboundValidationError(frame.type, problems))
        return Progressed(expected.request, value)

    def _error(self, frame: frames.InboundFrame, expected: _Expected[H] | None) -> Inbound[H]:
        if expected is not None:
            return RequestFailed(self._settle(expected), _rpc_error(frame, expected.request_type))
        if frame.type == frames.ERROR_TYPE or frame.correlation_id is None:
            return Problem(_rpc_error(frame, None))
        return Ignored("an error for no request in flight")

    def _message(self, frame: frames.InboundFrame) -> Inbound[H]:
        stamp = _read_stamp(frame)
        if isinstance(stamp, list):
            return Problem(InboundValidationError(frame.type, stamp))
        if stamp is not None:
            # Seen, whatever follows: re-joining before it would only replay it.
            self._advance(stamp.topic, stamp.position)
        schema = self._listened.get(frame.type)
        if schema is None:
            if frame.correlation_id is not None and frame.type in self._response_types:
                return Ignored("a reply for no request in flight")
            return Unhandled(frame.raw)
        # The server stamps the position keys and no schema may declare them: the
        # schema validates the rest, as strictly as ever.
        checked = frame if stamp is None else stamp.unstamped
        result = frames.validate_frame(checked, schema.structure_payload, schema.structure_meta)
        if isinstance(result, list):
            return Problem(InboundValidationError(frame.type, result))
        payload, meta, _ = result
        if stamp is None:
            return InboundMessage(frame.type, payload, meta)
        position = stamp.position
        meta.update(topic=stamp.topic, offset=position.offset, epoch=position.epoch)
        return InboundMessage(frame.type, payload, meta, stamp.topic, position)


# -- reading and writing frames ---------------------------------------------------------


def _hint(value: Any) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return int(value)
    return None


def _rpc_error(frame: frames.InboundFrame, request_type: str | None) -> RpcError:
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
        type=request_type,
        correlation_id=frame.correlation_id,
    )


def message_meta(schema: SchemaSpec, meta: Any, timestamp_ms: int) -> dict[str, Any]:
    """The wire meta of an outbound message: ``timestamp`` and the caller's ``meta``
    (an attrs instance or a mapping), checked against the schema's extended meta.

    The keys the client manages (``correlationId``, ``timeoutMs``) and the
    server-assigned ones are dropped; anything else unknown raises
    :class:`OutboundValidationError`.
    """
    if meta is None:
        given: dict[str, Any] = {}
    elif attrs.has(type(meta)):
        given = unstructure(meta)
    elif isinstance(meta, Mapping):
        given = dict(meta)
    else:
        raise OutboundValidationError(
            schema.type, [("$.meta", f"expected a mapping, got {type(meta).__name__}")]
        )
    given = {k: v for k, v in given.items() if k not in _MANAGED_META_KEYS}
    extended = {k: v for k, v in given.items() if k not in frames.STANDARD_META_KEYS}
    if schema.structure_meta is not None:
        _, problems = check(schema.structure_meta, extended, "$.meta")
        if problems:
            raise OutboundValidationError(schema.type, problems)
    elif extended:
        raise OutboundValidationError(
            schema.type, [(f"$.meta.{key}", "unknown key") for key in sorted(extended)]
        )
    return {"timestamp": timestamp_ms, **given}
