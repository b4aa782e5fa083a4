"""The server's side of one connection as a state machine: frames in, actions out.

h11's rule: everything that decides what the protocol does lives in one pure
place. :class:`ServerSession` takes each inbound WebSocket message (and the
time) and returns the one :data:`Action` that answers it (docs/protocol.md §4,
§5): run an event, start an RPC with its deadline, abort one, acknowledge a
heartbeat, or refuse with an error. It owns the in-flight RPC table, the
draining flag and the limits that bound them. The connection runtime only
carries the actions out (tasks, cancel scopes, the outbound queue) and tells
the session when an RPC has ended. Nothing here imports trio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

from . import frames
from .codes import ErrorCode
from .validation import Problems, StructureFn

__all__ = [
    "Abort",
    "Action",
    "HeartbeatAck",
    "Ignore",
    "Refuse",
    "RouteSpec",
    "RunEvent",
    "ServerSession",
    "StartRpc",
    "rpc_timeout",
]


class SchemaSpec(Protocol):
    """What the session needs of a message schema: its strict structuring."""

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
        self._in_flight: set[str] = set()
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
        self._in_flight.discard(correlation_id)

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
        self._in_flight.add(cid)
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
