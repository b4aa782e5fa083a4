"""Frames on the wire (docs/protocol.md §1-§4): decode, validate, encode. Pure functions.

Decoding happens in two steps so each failure gets the answer docs/protocol.md §4
gives it: :func:`decode_frame` checks the envelope (JSON object with a string
``type``) before the router knows the type, and :func:`validate_frame` checks
root keys, meta and payload against the schema the router found.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import attrs

from . import _json
from .codes import NOT_GIVEN, ErrorCode, error_payload
from .validation import Problems, StructureFn, problems_of, type_name

__all__ = [
    "ABORT_TYPE",
    "ERROR_TYPE",
    "HEARTBEAT_ACK_TYPE",
    "HEARTBEAT_TYPE",
    "NO_PAYLOAD",
    "PROGRESS_TYPE",
    "RESERVED_META_KEYS",
    "RPC_ERROR_TYPE",
    "STANDARD_META_KEYS",
    "FrameError",
    "InboundFrame",
    "decode_frame",
    "encode_error",
    "encode_frame",
    "encode_heartbeat_ack",
    "encode_progress",
    "is_reserved_type",
    "validate_frame",
]

HEARTBEAT_TYPE: Final = "__heartbeat"
HEARTBEAT_ACK_TYPE: Final = "__heartbeat_ack"
ABORT_TYPE: Final = "$ws:abort"
PROGRESS_TYPE: Final = "$ws:rpc-progress"
ERROR_TYPE: Final = "ERROR"
RPC_ERROR_TYPE: Final = "RPC_ERROR"

#: Server-assigned meta keys (the last three are pub/sub positions, delivery.md
#: §11.4); deleted from inbound meta so clients cannot spoof them.
RESERVED_META_KEYS: Final = frozenset({"clientId", "receivedAt", "topic", "offset", "epoch"})
#: Meta keys every schema accepts, with their JSON checks. ``traceparent`` and
#: ``tracestate`` carry a W3C Trace Context (docs/protocol.md §1): accepted whether or
#: not the server traces, so turning tracing off never breaks a client that sends them.
STANDARD_META_KEYS: Final = frozenset(
    {"timestamp", "correlationId", "timeoutMs", "traceparent", "tracestate"}
)
_STRING_META_KEYS: Final = frozenset({"correlationId", "traceparent", "tracestate"})
_ROOT_KEYS: Final = frozenset({"type", "meta", "payload"})
#: The payload of a message whose schema has none (the key is left out on the wire).
NO_PAYLOAD: Final[Any] = attrs.make_class("NoPayload", [], repr=False)()


class InboundFrame(NamedTuple):
    """An envelope that passed :func:`decode_frame`; meta and payload are not yet validated."""

    type: str
    raw: dict[str, Any]
    #: The inbound ``meta.correlationId`` when it is a string (used to address errors).
    correlation_id: str | None


class FrameError(NamedTuple):
    """Why a frame was refused, in the terms of the error frame that answers it."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None
    correlation_id: str | None = None


def is_reserved_type(type: str) -> bool:
    return type.startswith(("__", "$"))


def decode_frame(data: str | bytes) -> InboundFrame | FrameError:
    """Check the envelope of one WebSocket message (text, or binary holding UTF-8 JSON)."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return FrameError(ErrorCode.INVALID_ARGUMENT, "Binary frame is not UTF-8 JSON")
    try:
        raw = _json.loads(data)
    except (ValueError, RecursionError):
        return FrameError(ErrorCode.INVALID_ARGUMENT, "Frame is not valid JSON")
    if type(raw) is not dict:
        return FrameError(ErrorCode.INVALID_ARGUMENT, "Frame must be a JSON object")
    meta = raw.get("meta")
    correlation_id = None
    if type(meta) is dict:
        cid = meta.get("correlationId")
        if type(cid) is str:
            correlation_id = cid
    msg_type = raw.get("type")
    if type(msg_type) is not str:
        message = "Frame has no type" if msg_type is None else "Frame type must be a string"
        return FrameError(ErrorCode.INVALID_ARGUMENT, message, None, correlation_id)
    return InboundFrame(msg_type, raw, correlation_id)


def _check_standard_meta(key: str, value: Any) -> str | None:
    if key in _STRING_META_KEYS:
        return None if type(value) is str else f"expected string, got {type_name(value)}"
    # timestamp and timeoutMs are numbers; booleans are not numbers.
    if type(value) is not int and type(value) is not float:
        return f"expected number, got {type_name(value)}"
    if key == "timeoutMs" and value < 0:
        return "must not be negative"
    return None


def validate_frame(
    frame: InboundFrame,
    structure_payload: StructureFn | None,
    structure_meta: StructureFn | None,
) -> tuple[Any, dict[str, Any], Any] | Problems:
    """Strictly validate a frame against a schema (docs/protocol.md §2).

    Returns ``(payload, meta, extended_meta)`` or the list of problems.
    ``structure_payload`` is ``None`` for schemas without a payload, in which case
    a ``payload`` key is itself a problem. ``meta`` comes back with the reserved
    keys removed.
    """
    raw = frame.raw
    problems: Problems = []
    for key in raw:
        if key not in _ROOT_KEYS:
            problems.append((f"$.{key}", "unknown key"))

    # An absent meta is {}: extended meta with required fields still rejects it.
    meta_in = raw.get("meta", {})
    meta: dict[str, Any] = {}
    extended: Any = None
    if type(meta_in) is not dict:
        problems.append(("$.meta", f"expected object, got {type_name(meta_in)}"))
    else:
        rest: dict[str, Any] = {}
        for key, value in meta_in.items():
            if key in RESERVED_META_KEYS:
                continue
            if key in STANDARD_META_KEYS:
                problem = _check_standard_meta(key, value)
                if problem is not None:
                    problems.append((f"$.meta.{key}", problem))
            elif structure_meta is None:
                problems.append((f"$.meta.{key}", "unknown key"))
                continue
            else:
                rest[key] = value
            meta[key] = value
        if structure_meta is not None:
            try:
                extended = structure_meta(rest)
            except Exception as exc:  # cattrs: the input's fault, whatever the type
                problems.extend(problems_of(exc, "$.meta"))

    payload: Any = None
    if structure_payload is None:
        if "payload" in raw:
            problems.append(("$.payload", "unexpected key: this message has no payload"))
    elif "payload" not in raw:
        problems.append(("$.payload", "required key missing"))
    else:
        try:
            payload = structure_payload(raw["payload"])
        except Exception as exc:  # cattrs: the input's fault, whatever the type
            problems.extend(problems_of(exc, "$.payload"))
    if problems:
        return problems
    return payload, meta, extended


def encode_frame(type: str, meta: dict[str, Any] | None, payload: Any = NO_PAYLOAD) -> str:
    """A server → client frame. ``meta=None`` omits the key (pub/sub deliveries), and
    so does ``payload=NO_PAYLOAD`` (messages without a payload)."""
    frame: dict[str, Any] = {"type": type}
    if meta is not None:
        frame["meta"] = meta
    if payload is not NO_PAYLOAD:
        frame["payload"] = payload
    return _json.dumps(frame)


def encode_progress(correlation_id: str, payload: Any) -> str:
    # `data` repeats `payload`: WS-Kit 0.10 clients read `data`, its server writes `payload`.
    return _json.dumps(
        {
            "type": PROGRESS_TYPE,
            "meta": {"correlationId": correlation_id},
            "payload": payload,
            "data": payload,
        }
    )


def encode_error(
    code: str,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    *,
    correlation_id: str | None = None,
    rpc: bool = False,
    retryable: bool | None = None,
    retry_after_ms: Any = NOT_GIVEN,
) -> str:
    """An ``ERROR`` frame, or ``RPC_ERROR`` when it answers an RPC with a correlationId."""
    payload = error_payload(code, message, details, retryable, retry_after_ms)
    meta = {"correlationId": correlation_id} if correlation_id is not None else {}
    frame_type = RPC_ERROR_TYPE if rpc and correlation_id is not None else ERROR_TYPE
    return _json.dumps({"type": frame_type, "meta": meta, "payload": payload})


def encode_heartbeat_ack(server_ms: int) -> str:
    return _json.dumps({"type": HEARTBEAT_ACK_TYPE, "meta": {"ts": server_ms}})
