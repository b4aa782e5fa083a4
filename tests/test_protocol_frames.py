"""The sans-IO frame codec (docs/protocol.md §1-§4, §6) on plain values: no trio, no sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from expect import error_frame

import wskit_trio
from wskit_trio._protocol import _json, frames
from wskit_trio._protocol.codes import ERROR_CODE_META, ErrorCode, error_payload, is_retryable
from wskit_trio._protocol.frames import FrameError, InboundFrame, decode_frame, validate_frame
from wskit_trio._protocol.validation import structurer

# -- decode_frame: the envelope (docs/protocol.md §1, first row of §4) -----------------------


@pytest.mark.parametrize(
    "data",
    [
        "",
        "nope",
        "{",
        '{"type": "PING",}',
        "{'type': 'PING'}",
        '{"type": "PING"} trailing',
        "NaN",
        '{"type": "PING", "meta": {"timestamp": NaN}}',
        '{"type": "PING", "meta": {"timestamp": Infinity}}',
        '{"type": "PING", "meta": {"timestamp": -Infinity}}',
        "[" * 100_000,  # deep nesting: a RecursionError inside the parser, still "not JSON"
    ],
)
def test_not_json_is_invalid_argument(data: str) -> None:
    result = decode_frame(data)
    assert isinstance(result, FrameError)
    assert result.code is ErrorCode.INVALID_ARGUMENT
    assert result.correlation_id is None


@pytest.mark.parametrize("data", ["[]", '[{"type": "PING"}]', '"PING"', "1", "1.5", "null", "true"])
def test_not_an_object_is_invalid_argument(data: str) -> None:
    result = decode_frame(data)
    assert isinstance(result, FrameError)
    assert result.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "frame",
    [
        {},
        {"payload": {"text": "hi"}},
        {"type": None},
        {"type": 1},
        {"type": 1.5},
        {"type": True},
        {"type": ["PING"]},
        {"type": {"name": "PING"}},
    ],
)
def test_type_missing_or_not_a_string_is_invalid_argument(frame: dict[str, Any]) -> None:
    result = decode_frame(json.dumps(frame))
    assert isinstance(result, FrameError)
    assert result.code is ErrorCode.INVALID_ARGUMENT
    assert result.correlation_id is None


def test_envelope_error_keeps_the_correlation_id() -> None:
    # "An ERROR carries the inbound correlationId when there was one."
    result = decode_frame('{"type": 7, "meta": {"correlationId": "c-9"}}')
    assert isinstance(result, FrameError)
    assert result.correlation_id == "c-9"


@pytest.mark.parametrize("data", [b"\xff", b"\xc3", b"\x80abc", b'{"type": "PING"}\xfe'])
def test_binary_frame_that_is_not_utf8_is_invalid_argument(data: bytes) -> None:
    result = decode_frame(data)
    assert isinstance(result, FrameError)
    assert result.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("data", [b"", b"not json", b"[1]"])
def test_binary_frame_that_is_utf8_but_not_a_json_object_is_invalid_argument(data: bytes) -> None:
    result = decode_frame(data)
    assert isinstance(result, FrameError)
    assert result.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_binary_frame_holding_utf8_json_decodes(wrap: Any) -> None:
    text = '{"type": "PING", "meta": {"correlationId": "c-1"}, "payload": {"text": "héllo"}}'
    result = decode_frame(wrap(text.encode("utf-8")))
    assert result == decode_frame(text)
    assert isinstance(result, InboundFrame)
    assert result.type == "PING"
    assert result.correlation_id == "c-1"
    assert result.raw["payload"] == {"text": "héllo"}


@pytest.mark.parametrize(
    ("meta", "cid"),
    [
        (None, None),
        ({}, None),
        ({"correlationId": "c-1"}, "c-1"),
        ({"correlationId": ""}, ""),
        ({"correlationId": 1}, None),
        ({"correlationId": None}, None),
        ("c-1", None),
    ],
)
def test_correlation_id_is_taken_only_when_a_string(meta: Any, cid: str | None) -> None:
    frame: dict[str, Any] = {"type": "X"}
    if meta is not None:
        frame["meta"] = meta
    result = decode_frame(json.dumps(frame))
    assert isinstance(result, InboundFrame)
    assert result.correlation_id == cid


@pytest.mark.parametrize(
    ("type", "reserved"),
    [
        ("__heartbeat", True),
        ("__anything", True),
        ("$ws:abort", True),
        ("$x", True),
        ("_single", False),
        ("PING", False),
        ("a__b", False),
        ("a$b", False),
        ("", False),
    ],
)
def test_reserved_types(type: str, reserved: bool) -> None:
    assert frames.is_reserved_type(type) is reserved


# -- validate_frame: strict validation (docs/protocol.md §2) ----------------------------------


@attrs.frozen
class Room:
    room_id: str


@attrs.frozen
class Trace:
    trace_id: str


ROOM = structurer(Room)
TRACE = structurer(Trace)


def _inbound(frame: dict[str, Any]) -> InboundFrame:
    result = decode_frame(json.dumps(frame))
    assert isinstance(result, InboundFrame)
    return result


def _problems(frame: dict[str, Any], payload: Any = ROOM, meta: Any = None) -> list[str]:
    result = validate_frame(_inbound(frame), payload, meta)
    assert isinstance(result, list), f"expected problems, got {result!r}"
    return sorted(path for path, _ in result)


def test_valid_frame_gives_payload_and_meta() -> None:
    frame = {"type": "JOIN", "meta": {"timestamp": 1730450000000}, "payload": {"roomId": "r1"}}
    result = validate_frame(_inbound(frame), ROOM, None)
    assert result == (Room("r1"), {"timestamp": 1730450000000}, None)


def test_meta_is_optional() -> None:
    assert validate_frame(_inbound({"type": "JOIN", "payload": {"roomId": "r"}}), ROOM, None) == (
        Room("r"),
        {},
        None,
    )


def test_unknown_root_keys_are_rejected() -> None:
    frame = {"type": "JOIN", "payload": {"roomId": "r"}, "id": 1, "topic": "t", "data": {}}
    assert _problems(frame) == ["$.data", "$.id", "$.topic"]


def test_unknown_meta_keys_are_rejected() -> None:
    frame = {"type": "JOIN", "meta": {"traceId": "t", "x": 1}, "payload": {"roomId": "r"}}
    assert _problems(frame) == ["$.meta.traceId", "$.meta.x"]


def test_unknown_payload_keys_are_rejected() -> None:
    frame = {"type": "JOIN", "payload": {"roomId": "r", "extra": True}}
    assert _problems(frame) == ["$.payload.extra"]


@pytest.mark.parametrize("meta", [[], "m", 1, None, True])
def test_meta_must_be_an_object(meta: Any) -> None:
    assert _problems({"type": "JOIN", "meta": meta, "payload": {"roomId": "r"}}) == ["$.meta"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("correlationId", 1),
        ("correlationId", None),
        ("correlationId", ["c"]),
        ("timestamp", "1730450000000"),
        ("timestamp", True),  # booleans are not numbers
        ("timestamp", None),
        ("timeoutMs", False),
        ("timeoutMs", "100"),
        ("timeoutMs", -1),
    ],
)
def test_standard_meta_keys_are_type_checked(key: str, value: Any) -> None:
    frame = {"type": "JOIN", "meta": {key: value}, "payload": {"roomId": "r"}}
    assert _problems(frame) == [f"$.meta.{key}"]


@pytest.mark.parametrize(
    "meta",
    [
        {"correlationId": "c-1"},
        {"timestamp": 1730450000000},
        {"timestamp": 1.5},
        {"timeoutMs": 0},
        {"timeoutMs": 2500.5},
        {"correlationId": "c", "timestamp": 1, "timeoutMs": 10},
    ],
)
def test_standard_meta_keys_are_accepted(meta: dict[str, Any]) -> None:
    result = validate_frame(
        _inbound({"type": "J", "meta": meta, "payload": {"roomId": "r"}}), ROOM, None
    )
    assert not isinstance(result, list)
    assert result[1] == meta


def test_reserved_meta_keys_are_stripped_not_rejected() -> None:
    frame = {
        "type": "JOIN",
        "meta": {"clientId": "spoofed", "receivedAt": 1, "correlationId": "c-1"},
        "payload": {"roomId": "r"},
    }
    result = validate_frame(_inbound(frame), ROOM, None)
    assert not isinstance(result, list)
    assert result[1] == {"correlationId": "c-1"}


def test_reserved_meta_keys_are_stripped_whatever_their_value() -> None:
    frame = {
        "type": "J",
        "meta": {"clientId": {"x": [1]}, "receivedAt": "no"},
        "payload": {"roomId": "r"},
    }
    assert validate_frame(_inbound(frame), ROOM, None) == (Room("r"), {}, None)


def test_extended_meta_is_structured_and_kept_in_meta() -> None:
    frame = {"type": "J", "meta": {"traceId": "t-1", "timestamp": 5}, "payload": {"roomId": "r"}}
    assert validate_frame(_inbound(frame), ROOM, TRACE) == (
        Room("r"),
        {"traceId": "t-1", "timestamp": 5},
        Trace("t-1"),
    )


def test_extended_meta_problems_have_paths() -> None:
    assert _problems({"type": "J", "payload": {"roomId": "r"}}, meta=TRACE) == ["$.meta.traceId"]
    frame = {"type": "J", "meta": {"traceId": 1, "other": 2}, "payload": {"roomId": "r"}}
    assert _problems(frame, meta=TRACE) == ["$.meta.other", "$.meta.traceId"]


def test_payload_required_when_the_schema_declares_one() -> None:
    assert _problems({"type": "JOIN"}) == ["$.payload"]
    assert _problems({"type": "JOIN", "payload": None}) == ["$.payload"]
    assert _problems({"type": "JOIN", "payload": []}) == ["$.payload"]


@pytest.mark.parametrize("payload", [{}, None, {"roomId": "r"}, [], 0])
def test_payload_rejected_when_the_schema_has_none(payload: Any) -> None:
    assert _problems({"type": "LEAVE", "payload": payload}, payload=None) == ["$.payload"]


def test_payloadless_schema_accepts_a_frame_without_payload() -> None:
    assert validate_frame(_inbound({"type": "LEAVE"}), None, None) == (None, {}, None)


def test_every_problem_is_reported_at_once() -> None:
    frame = {"type": "J", "meta": {"x": 1, "timestamp": "t"}, "payload": {"extra": 1}, "id": 2}
    assert _problems(frame) == [
        "$.id",
        "$.meta.timestamp",
        "$.meta.x",
        "$.payload.extra",
        "$.payload.roomId",
    ]


# -- outbound frames (docs/protocol.md §3) ------------------------------------------------


def test_protocol_md_rpc_error_example() -> None:
    text = frames.encode_error(
        "NOT_FOUND", "User not found", {"id": "u1"}, correlation_id="c-1", rpc=True
    )
    assert json.loads(text) == {
        "type": "RPC_ERROR",
        "meta": {"correlationId": "c-1"},
        "payload": {
            "code": "NOT_FOUND",
            "message": "User not found",
            "details": {"id": "u1"},
            "retryable": False,
        },
    }


def test_protocol_md_error_example() -> None:
    text = frames.encode_error(
        "RESOURCE_EXHAUSTED",
        "Rate limit exceeded",
        {"cost": 1, "capacity": 10, "remaining": 0},
        retry_after_ms=1250,
    )
    assert json.loads(text) == {
        "type": "ERROR",
        "meta": {},
        "payload": {
            "code": "RESOURCE_EXHAUSTED",
            "message": "Rate limit exceeded",
            "details": {"cost": 1, "capacity": 10, "remaining": 0},
            "retryable": True,
            "retryAfterMs": 1250,
        },
    }


def test_rpc_error_without_correlation_id_is_a_plain_error() -> None:
    assert json.loads(frames.encode_error("INTERNAL", rpc=True)) == error_frame(
        "INTERNAL", "Internal error"
    )


def test_error_carries_correlation_id_when_not_rpc() -> None:
    text = frames.encode_error("INVALID_ARGUMENT", "bad", correlation_id="c-2")
    assert json.loads(text) == error_frame("INVALID_ARGUMENT", "bad", cid="c-2")


def test_empty_details_are_omitted() -> None:
    assert "details" not in json.loads(frames.encode_error("NOT_FOUND", details={}))["payload"]
    assert "details" not in error_payload("NOT_FOUND", details=None)


#: docs/protocol.md §6, copied by hand: code -> (retryable, suggested backoff ms).
SPEC_TABLE: dict[str, tuple[bool, int | None]] = {
    "UNAUTHENTICATED": (False, None),
    "PERMISSION_DENIED": (False, None),
    "INVALID_ARGUMENT": (False, None),
    "FAILED_PRECONDITION": (False, None),
    "NOT_FOUND": (False, None),
    "ALREADY_EXISTS": (False, None),
    "UNIMPLEMENTED": (False, None),
    "CANCELLED": (False, None),
    "DEADLINE_EXCEEDED": (True, 50),
    "RESOURCE_EXHAUSTED": (True, 100),
    "UNAVAILABLE": (True, 100),
    "ABORTED": (True, 50),
    "INTERNAL": (False, 200),
}


def test_error_code_table_matches_protocol_md() -> None:
    assert {str(code) for code in ErrorCode} == set(SPEC_TABLE)
    assert set(ERROR_CODE_META) == set(SPEC_TABLE)
    for code, (retryable, backoff) in SPEC_TABLE.items():
        assert (ERROR_CODE_META[code].retryable, ERROR_CODE_META[code].backoff_ms) == (
            retryable,
            backoff,
        )


@pytest.mark.parametrize("code", sorted(SPEC_TABLE))
def test_error_payload_defaults_per_code(code: str) -> None:
    retryable, backoff = SPEC_TABLE[code]
    payload = error_payload(code)
    expected: dict[str, Any] = {
        "code": code,
        "message": ERROR_CODE_META[code].description,
        "retryable": retryable,
    }
    if retryable:
        expected["retryAfterMs"] = backoff
    assert payload == expected
    assert payload["message"]


@pytest.mark.parametrize("code", sorted(SPEC_TABLE))
def test_retryable_given_overrides_the_default(code: str) -> None:
    _, backoff = SPEC_TABLE[code]
    assert error_payload(code, retryable=False) == {
        "code": code,
        "message": ERROR_CODE_META[code].description,
        "retryable": False,
    }
    forced = error_payload(code, retryable=True)
    assert forced["retryable"] is True
    # retryAfterMs when given, else the code's suggested backoff when retryable.
    if backoff is None:
        assert "retryAfterMs" not in forced
    else:
        assert forced["retryAfterMs"] == backoff


def test_retry_after_ms_given_wins_and_null_means_never() -> None:
    assert error_payload("UNAVAILABLE", retry_after_ms=5)["retryAfterMs"] == 5
    assert error_payload("NOT_FOUND", retry_after_ms=5)["retryAfterMs"] == 5
    never = json.loads(frames.encode_error("UNAVAILABLE", retry_after_ms=None))["payload"]
    assert never == {
        "code": "UNAVAILABLE",
        "message": ERROR_CODE_META["UNAVAILABLE"].description,
        "retryable": True,
        "retryAfterMs": None,
    }


def test_custom_codes_have_no_defaults() -> None:
    assert error_payload("QUOTA_GONE") == {
        "code": "QUOTA_GONE",
        "message": "QUOTA_GONE",
        "retryable": False,
    }
    assert error_payload("QUOTA_GONE", "Gone", retryable=True) == {
        "code": "QUOTA_GONE",
        "message": "Gone",
        "retryable": True,
    }


def test_is_retryable_prefers_the_wire_value() -> None:
    assert is_retryable("UNAVAILABLE") is True
    assert is_retryable("UNAVAILABLE", False) is False
    assert is_retryable("NOT_FOUND", True) is True
    assert is_retryable("INTERNAL") is False
    assert is_retryable("CUSTOM") is False


def test_send_frame() -> None:
    text = frames.encode_frame("USER", {"correlationId": "c-1"}, {"id": "u1", "name": "Alice"})
    assert json.loads(text) == {
        "type": "USER",
        "meta": {"correlationId": "c-1"},
        "payload": {"id": "u1", "name": "Alice"},
    }


def test_pubsub_frame_omits_meta_and_payloadless_frame_omits_payload() -> None:
    assert json.loads(frames.encode_frame("T", None, {"a": 1})) == {
        "type": "T",
        "payload": {"a": 1},
    }
    assert json.loads(frames.encode_frame("LEFT", {})) == {"type": "LEFT", "meta": {}}


def test_progress_frame_repeats_payload_as_data() -> None:
    assert json.loads(frames.encode_progress("c-1", {"n": 1})) == {
        "type": "$ws:rpc-progress",
        "meta": {"correlationId": "c-1"},
        "payload": {"n": 1},
        "data": {"n": 1},
    }


def test_heartbeat_ack_frame() -> None:
    assert json.loads(frames.encode_heartbeat_ack(1730450000123)) == {
        "type": "__heartbeat_ack",
        "meta": {"ts": 1730450000123},
    }


def test_outbound_json_is_always_valid_utf8() -> None:
    # A client can smuggle a lone surrogate in as a JSON escape; echoing it must not
    # produce a text frame that cannot be encoded (which used to crash the server).
    inbound = decode_frame('{"type": "PING", "payload": {"text": "\\ud800 \\udfff é"}}')
    assert isinstance(inbound, InboundFrame)
    text = frames.encode_frame("PONG", {}, inbound.raw["payload"])
    text.encode("utf-8")
    assert json.loads(text)["payload"] == {"text": "\ud800 \udfff é"}
    # Ordinary non-ASCII text stays unescaped (compact UTF-8 on the wire).
    assert _json.dumps({"t": "é"}) == '{"t":"é"}'


def test_outbound_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        _json.dumps({"x": float("nan")})


# -- the protocol core never imports trio --------------------------------------------


def test_every_protocol_module_imports_and_runs_without_trio() -> None:
    package_dir = str(Path(wskit_trio.__file__).parent)
    script = textwrap.dedent(
        f"""
        import sys, types
        sys.modules["trio"] = None  # any "import trio" now raises ImportError
        stub = types.ModuleType("wskit_trio")
        stub.__path__ = [{package_dir!r}]  # skip the real __init__, which imports trio
        sys.modules["wskit_trio"] = stub

        import attrs, importlib, pkgutil
        import wskit_trio._protocol as protocol
        for module in pkgutil.iter_modules(protocol.__path__):
            importlib.import_module("wskit_trio._protocol." + module.name)
        from wskit_trio._protocol import codes, frames, validation
        from wskit_trio._protocol.session import HEARTBEAT_ACK, ClientSession
        from wskit_trio._protocol.ratelimit import TokenBucket
        from wskit_trio._protocol.session import HeartbeatAck, ServerSession

        @attrs.frozen
        class Ping:
            text: str

        frame = frames.decode_frame('{{"type": "PING", "payload": {{"text": "hi"}}}}')
        assert isinstance(frame, frames.InboundFrame), frame
        result = frames.validate_frame(frame, validation.structurer(Ping), None)
        assert result == (Ping("hi"), {{}}, None), result
        bad = frames.decode_frame("nope")
        assert isinstance(bad, frames.FrameError) and bad.code == "INVALID_ARGUMENT"
        assert codes.error_payload("UNAVAILABLE")["retryAfterMs"] == 100
        frames.encode_error("INTERNAL", correlation_id="c", rpc=True)
        session = ServerSession({{}}, max_in_flight_rpcs=1, max_rpc_timeout=1.0)
        assert session.receive('{{"type": "__heartbeat"}}', 0.0) == HeartbeatAck()
        assert ClientSession().receive('{{"type": "__heartbeat_ack"}}') is HEARTBEAT_ACK
        assert TokenBucket(1, 1.0, 0).consume(0).allowed
        loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("trio"))
        assert loaded == ["trio"] and sys.modules["trio"] is None, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
