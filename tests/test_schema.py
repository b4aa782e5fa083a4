"""message() / rpc(): what a schema accepts at construction, and outbound validation."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from conftest import ECHO, PING, Ping, Pong

from wskit_trio import (
    ConfigurationError,
    MessageSchema,
    OutboundValidationError,
    RpcSchema,
    message,
    rpc,
)
from wskit_trio._protocol.validation import check


@attrs.frozen
class Trace:
    trace_id: str


@attrs.frozen
class Nested:
    ping: Ping
    count: int = 0


def test_message_schema() -> None:
    assert isinstance(PING, MessageSchema)
    assert (PING.type, PING.payload_cls, PING.meta_cls) == ("PING", Ping, None)
    assert repr(PING) == "MessageSchema('PING', Ping)"


def test_message_without_payload() -> None:
    leave = message("LEAVE")
    assert (leave.payload_cls, leave.structure_payload) == (None, None)
    assert repr(leave) == "MessageSchema('LEAVE', None)"


def test_rpc_schema() -> None:
    assert isinstance(ECHO, RpcSchema)
    assert ECHO.type == "ECHO"
    assert (ECHO.request.type, ECHO.request.payload_cls) == ("ECHO", Ping)
    assert (ECHO.response.type, ECHO.response.payload_cls) == ("ECHOED", Pong)


def test_extended_meta_class() -> None:
    schema = message("TRACED", Ping, meta=Trace)
    assert schema.meta_cls is Trace
    assert schema.structure_meta is not None
    assert schema.structure_meta({"traceId": "t"}) == Trace("t")


def test_shorthand_builds_an_attrs_class() -> None:
    schema = message("JOIN_ROOM", {"room_id": str, "limit": int | None})
    assert schema.payload_cls is not None and attrs.has(schema.payload_cls)
    cls: Any = schema.payload_cls
    assert cls.__name__ == "JoinRoom"
    assert schema.structure_payload is not None
    # Fields admitting None are optional (default None); the others are required.
    assert schema.structure_payload({"roomId": "r"}) == cls(room_id="r", limit=None)
    assert schema.structure_payload({"roomId": "r", "limit": 3}) == cls(room_id="r", limit=3)
    assert check(schema.structure_payload, {"limit": 3}, "$.payload")[1] == [
        ("$.payload.roomId", "required key missing")
    ]


def test_shorthand_meta() -> None:
    schema = message("X", meta={"trace_id": str})
    assert schema.meta_cls is not None and attrs.has(schema.meta_cls)


@pytest.mark.parametrize(
    "type",
    [
        "__heartbeat",
        "__heartbeat_ack",
        "__mine",
        "$ws:abort",
        "$ws:rpc-progress",
        "$x",
        "ERROR",
        "RPC_ERROR",
    ],
)
def test_reserved_types_are_rejected_at_construction(type: str) -> None:
    with pytest.raises(ConfigurationError, match="reserved"):
        message(type, Ping)
    with pytest.raises(ConfigurationError, match="reserved"):
        rpc(type, Ping, "OK", Pong)
    with pytest.raises(ConfigurationError, match="reserved"):
        rpc("ASK", Ping, type, Pong)


@pytest.mark.parametrize("type", ["", None, 1])
def test_type_must_be_a_non_empty_string(type: Any) -> None:
    with pytest.raises(ConfigurationError):
        message(type, Ping)


def test_rpc_request_and_response_types_must_differ() -> None:
    with pytest.raises(ConfigurationError):
        rpc("SAME", Ping, "SAME", Pong)


@pytest.mark.parametrize("payload", [dict, int, str, object, Ping("x"), "Ping", 1])
def test_payload_must_be_an_attrs_class(payload: Any) -> None:
    with pytest.raises(ConfigurationError, match="attrs class"):
        message("BAD", payload)


def test_meta_must_be_an_attrs_class() -> None:
    with pytest.raises(ConfigurationError, match="attrs class"):
        message("BAD", Ping, meta=dict)


@attrs.frozen
class SpoofClient:
    client_id: str


@attrs.frozen
class SpoofReceived:
    received_at: int


@attrs.frozen
class RedeclaresStandard:
    correlation_id: str


@attrs.frozen
class RedeclaresTimeout:
    timeout_ms: int


@attrs.frozen
class RedeclaresTimestamp:
    timestamp: int


@pytest.mark.parametrize(
    "meta",
    [
        SpoofClient,
        SpoofReceived,
        {"clientId": str},
        {"received_at": int},
        RedeclaresStandard,
        RedeclaresTimeout,
        RedeclaresTimestamp,
    ],
)
def test_reserved_and_standard_meta_keys_are_rejected_at_construction(meta: Any) -> None:
    with pytest.raises(ConfigurationError, match="may not declare"):
        message("X", Ping, meta=meta)
    with pytest.raises(ConfigurationError, match="may not declare"):
        rpc("ASK", Ping, "ANSWER", Pong, req_meta=meta)
    with pytest.raises(ConfigurationError, match="may not declare"):
        rpc("ASK", Ping, "ANSWER", Pong, res_meta=meta)


def test_configuration_error_is_a_type_error() -> None:
    assert issubclass(ConfigurationError, TypeError)


# -- outbound validation (docs/protocol.md §2, last paragraph) -----------------------------


def test_dump_payload_gives_the_wire_json() -> None:
    nested = message("NESTED", Nested)
    assert nested.dump_payload(Nested(Ping("hi"), 2)) == {"ping": {"text": "hi"}, "count": 2}


def test_dump_payload_accepts_the_dict_form_and_validates_it() -> None:
    nested = message("NESTED", Nested)
    assert nested.dump_payload({"ping": {"text": "hi"}}) == {"ping": {"text": "hi"}, "count": 0}
    with pytest.raises(OutboundValidationError) as info:
        nested.dump_payload({"ping": {"text": 1}, "extra": True})
    assert sorted(info.value.errors) == [
        ("$.payload.extra", "unknown key"),
        ("$.payload.ping.text", "expected string, got integer"),
    ]
    assert info.value.type == "NESTED"


def test_dump_payload_rejects_another_class() -> None:
    with pytest.raises(OutboundValidationError) as info:
        PING.dump_payload(Pong("x"))
    assert info.value.errors == [("$.payload", "expected Ping, got Pong")]


def test_dump_payload_checks_field_types_attrs_does_not() -> None:
    # attrs does not check types at runtime; the outbound check does.
    with pytest.raises(OutboundValidationError) as info:
        PING.dump_payload(Ping(text=5))  # type: ignore[arg-type]
    assert info.value.errors == [("$.payload.text", "expected string, got integer")]
    assert isinstance(info.value, ValueError)
    assert "$.payload.text" in str(info.value)


def test_payloadless_schema_refuses_a_payload() -> None:
    leave = message("LEAVE")
    assert leave.dump_payload(None) is None
    with pytest.raises(OutboundValidationError):
        leave.dump_payload(Ping("x"))
