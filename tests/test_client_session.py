"""The client's protocol state machine (``wskit_trio._protocol.client_session``),
synchronously: what every kind of inbound frame means, given the requests in flight
and the types listened for. No trio, no socket; the "request handles" are strings.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from conftest import ECHO, PING, PONG, Ping, Pong

from wskit_trio import ConfigurationError, ErrorCode, OutboundValidationError, message, rpc
from wskit_trio._errors import InboundValidationError, RpcError
from wskit_trio._protocol.session import (
    HEARTBEAT_ACK,
    ClientSession,
    Ignored,
    InboundMessage,
    Problem,
    Progressed,
    Replied,
    RequestFailed,
    Unhandled,
    message_meta,
)

STATUS = rpc("STATUS", None, "STATUS_OK", None)


def wire(type: str, cid: str | None = None, **rest: Any) -> str:
    """A server frame; ``cid`` goes into ``meta.correlationId``."""
    frame: dict[str, Any] = {"type": type, "meta": {} if cid is None else {"correlationId": cid}}
    frame.update(rest)
    return json.dumps(frame)


def session_with(*cids: str, progress: bool = True) -> ClientSession[str]:
    """A session with an ECHO request in flight per id; each id is its own handle."""
    session: ClientSession[str] = ClientSession()
    for cid in cids:
        session.begin_request(cid, cid, ECHO, progress=progress)
    return session


# -- replies ------------------------------------------------------------------------------


def test_a_reply_settles_its_request_once() -> None:
    session = session_with("c-1", "c-2")
    reply = wire("ECHOED", "c-1", payload={"reply": "hi"})
    assert session.receive(reply) == Replied("c-1", Pong("hi"))
    assert session.requests() == ["c-2"]
    # The same reply again: its request is finished, the type is a response type.
    assert session.receive(reply) == Ignored("a reply for no request in flight")


def test_a_reply_for_an_unknown_correlation_id_is_late_not_unhandled() -> None:
    session = session_with("c-1")
    assert isinstance(session.receive(wire("ECHOED", "c-9", payload={"reply": "x"})), Ignored)
    assert session.requests() == ["c-1"]
    # Without a correlationId it is no reply at all: an ordinary (unhandled) message.
    frame = {"type": "ECHOED", "meta": {}, "payload": {"reply": "x"}}
    assert session.receive(json.dumps(frame)) == Unhandled(frame)


def test_an_invalid_reply_fails_its_request_and_is_reported() -> None:
    session = session_with("c-1")
    result = session.receive(wire("ECHOED", "c-1", payload={"reply": 5}))
    assert isinstance(result, RequestFailed)
    assert (result.request, result.report) == ("c-1", True)
    assert isinstance(result.error, InboundValidationError)
    assert result.error.type == "ECHOED"
    assert result.error.errors == [("$.payload.reply", "expected string, got integer")]
    assert len(session) == 0


def test_a_frame_of_another_type_with_the_request_id_does_not_settle_it() -> None:
    session = session_with("c-1")
    session.listen(PONG)
    inherited = wire("PONG", "c-1", payload={"reply": "note"})
    assert session.receive(inherited) == InboundMessage(
        "PONG", Pong("note"), {"correlationId": "c-1"}
    )
    assert session.requests() == ["c-1"]


def test_a_reply_without_payload() -> None:
    session: ClientSession[str] = ClientSession()
    session.begin_request("s", "s", STATUS)
    assert session.receive(wire("STATUS_OK", "s")) == Replied("s", None)


# -- progress -------------------------------------------------------------------------


def test_progress_reads_payload_then_data() -> None:
    session = session_with("c-1")
    new = wire("$ws:rpc-progress", "c-1", payload={"reply": "new"}, data={"reply": "old"})
    old = wire("$ws:rpc-progress", "c-1", data={"reply": "old"})
    assert session.receive(new) == Progressed("c-1", Pong("new"))
    assert session.receive(old) == Progressed("c-1", Pong("old"))
    assert session.requests() == ["c-1"]  # progress is not terminal


def test_invalid_progress_is_reported_and_the_request_goes_on() -> None:
    session = session_with("c-1")
    invalid = session.receive(wire("$ws:rpc-progress", "c-1", payload={"reply": 5}))
    missing = session.receive(wire("$ws:rpc-progress", "c-1"))
    assert isinstance(invalid, Problem) and isinstance(missing, Problem)
    assert isinstance(invalid.error, InboundValidationError)
    assert invalid.error.errors == [("$.payload.reply", "expected string, got integer")]
    assert isinstance(missing.error, InboundValidationError)
    assert missing.error.errors == [("$.payload", "required key missing")]
    assert session.requests() == ["c-1"]


def test_progress_nobody_reads_or_for_no_request_is_ignored() -> None:
    unread = session_with("c-1", progress=False)
    progress = wire("$ws:rpc-progress", "c-1", payload={"reply": 5})  # not even validated
    assert unread.receive(progress) == Ignored("progress its caller does not read")

    session = session_with("c-1")
    assert isinstance(session.receive(wire("ECHOED", "c-1", payload={"reply": "done"})), Replied)
    for cid in ("c-1", "c-unknown"):  # finished, never known
        late = wire("$ws:rpc-progress", cid, payload={"reply": "x"})
        assert session.receive(late) == Ignored("progress for no request in flight")
    no_id = wire("$ws:rpc-progress", payload={"reply": "x"})
    assert session.receive(no_id) == Ignored("progress for no request in flight")


def test_progress_of_a_response_without_payload() -> None:
    session: ClientSession[str] = ClientSession()
    session.begin_request("s", "s", STATUS)
    assert session.receive(wire("$ws:rpc-progress", "s")) == Progressed("s", None)


# -- errors ---------------------------------------------------------------------------


def test_rpc_error_fails_its_request() -> None:
    session = session_with("c-1")
    payload = {
        "code": "NOT_FOUND",
        "message": "No such user",
        "details": {"id": "u1"},
        "retryable": False,
    }
    result = session.receive(wire("RPC_ERROR", "c-1", payload=payload))
    assert isinstance(result, RequestFailed)
    assert (result.request, result.report) == ("c-1", False)
    error = result.error
    assert isinstance(error, RpcError)
    assert (error.code, error.message, error.details) == (
        ErrorCode.NOT_FOUND,
        "No such user",
        {"id": "u1"},
    )
    assert (error.type, error.correlation_id, error.retryable) == ("ECHO", "c-1", False)
    assert len(session) == 0


def test_an_error_frame_with_the_request_id_fails_it_too() -> None:
    session = session_with("c-1")
    payload = {"code": "RESOURCE_EXHAUSTED", "message": "slow down", "retryAfterMs": 1250.7}
    result = session.receive(wire("ERROR", "c-1", payload=payload))
    assert isinstance(result, RequestFailed)
    assert isinstance(result.error, RpcError)
    assert (result.error.retryable, result.error.retry_after_ms) == (True, 1250)


def test_errors_that_answer_no_request() -> None:
    session = session_with("c-1")
    late = session.receive(wire("RPC_ERROR", "c-gone", payload={"code": "INTERNAL"}))
    assert late == Ignored("an error for no request in flight")
    for frame in (
        wire("ERROR", "c-gone", payload={"code": "UNIMPLEMENTED", "message": "no"}),
        wire("ERROR", payload={"code": "UNIMPLEMENTED", "message": "no"}),
        wire("RPC_ERROR", payload={"code": "UNIMPLEMENTED", "message": "no"}),
    ):
        result = session.receive(frame)
        assert isinstance(result, Problem), frame
        assert isinstance(result.error, RpcError)
        assert (result.error.code, result.error.type) == (ErrorCode.UNIMPLEMENTED, None)
    assert session.requests() == ["c-1"]


def test_a_malformed_error_frame_is_read_leniently() -> None:
    result = session_with().receive(wire("ERROR", payload="oops"))
    assert isinstance(result, Problem) and isinstance(result.error, RpcError)
    assert (result.error.code, result.error.retryable) == (ErrorCode.INTERNAL, False)
    assert result.error.retry_after_ms is None


# -- events, heartbeat, malformed frames ------------------------------------------------


def test_a_listened_type_is_validated_into_a_message() -> None:
    session: ClientSession[str] = ClientSession()
    session.listen(PONG)
    frame = wire("PONG", payload={"reply": "hi"}, meta={"timestamp": 5, "clientId": "spoof"})
    assert session.receive(frame) == InboundMessage("PONG", Pong("hi"), {"timestamp": 5})
    invalid = session.receive(wire("PONG", payload={"reply": "hi", "extra": 1}))
    assert isinstance(invalid, Problem)
    assert isinstance(invalid.error, InboundValidationError)
    assert (invalid.error.type, invalid.error.errors) == (
        "PONG",
        [("$.payload.extra", "unknown key")],
    )


def test_a_type_nobody_listens_for_is_unhandled() -> None:
    session: ClientSession[str] = ClientSession()
    frame = {"type": "NEWS", "payload": {"anything": [1, 2]}}
    assert session.receive(json.dumps(frame)) == Unhandled(frame)
    session.listen(PONG)
    session.unlisten("PONG")
    pong = {"type": "PONG", "payload": {"reply": "x"}}
    assert session.receive(json.dumps(pong)) == Unhandled(pong)


def test_one_schema_per_listened_type() -> None:
    session: ClientSession[str] = ClientSession()
    session.listen(PONG)
    session.listen(PONG)  # the same one again is fine
    with pytest.raises(ConfigurationError):
        session.listen(message("PONG", Ping))


def test_heartbeat_ack() -> None:
    ack = json.dumps({"type": "__heartbeat_ack", "meta": {"ts": 1}})
    assert session_with().receive(ack) is HEARTBEAT_ACK


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{not json", "Frame is not valid JSON"),
        ("[1, 2]", "Frame must be a JSON object"),
        ('{"payload": {}}', "Frame has no type"),
        ('{"type": 5}', "Frame type must be a string"),
        (b"\xff\xfe", "Binary frame is not UTF-8 JSON"),
    ],
)
def test_a_malformed_frame_is_a_problem(data: str | bytes, problem: str) -> None:
    result = session_with("c-1").receive(data)
    assert isinstance(result, Problem)
    assert isinstance(result.error, InboundValidationError)
    assert (result.error.type, result.error.errors) == (None, [("$", problem)])


# -- the table of requests in flight ------------------------------------------------------


def test_requests_in_flight_are_bounded_and_unique() -> None:
    session: ClientSession[str] = ClientSession(max_requests=2)
    session.begin_request("a", "first", ECHO)
    with pytest.raises(ValueError, match="already in flight"):
        session.begin_request("a", "again", ECHO)
    session.begin_request("b", "second", ECHO)
    with pytest.raises(RpcError) as info:
        session.begin_request("c", "third", ECHO)
    assert (info.value.code, info.value.type) == (ErrorCode.RESOURCE_EXHAUSTED, "ECHO")
    assert session.requests() == ["first", "second"]


def test_ending_a_request_is_by_handle() -> None:
    session: ClientSession[object] = ClientSession()
    first, second = object(), object()
    session.begin_request("a", first, ECHO)
    session.end_request("a", second)  # not its request: nothing happens
    assert session.requests() == [first]
    session.end_request("a", first)
    session.begin_request("a", second, ECHO)  # the id is free again
    assert session.end_all() == [second]
    assert len(session) == 0
    assert isinstance(session.receive(wire("ECHOED", "a", payload={"reply": "x"})), Ignored)


# -- outbound meta -----------------------------------------------------------------------


@attrs.frozen
class RoomMeta:
    room_id: str


def test_message_meta() -> None:
    in_room = message("SAY", Ping, meta=RoomMeta)
    assert message_meta(PING, None, 7) == {"timestamp": 7}
    managed = {"correlationId": "x", "timeoutMs": 5, "clientId": "spoof", "timestamp": 1}
    assert message_meta(PING, managed, 7) == {"timestamp": 1}
    assert message_meta(in_room, RoomMeta("r1"), 7) == {"timestamp": 7, "roomId": "r1"}
    assert message_meta(in_room, {"roomId": "r1"}, 7) == {"timestamp": 7, "roomId": "r1"}
    with pytest.raises(OutboundValidationError, match=r"meta\.roomId"):
        message_meta(PING, {"roomId": "r1"}, 7)
    with pytest.raises(OutboundValidationError, match=r"\$\.meta"):
        message_meta(in_room, {"roomId": 5}, 7)
    with pytest.raises(OutboundValidationError, match="expected a mapping"):
        message_meta(PING, ["roomId"], 7)


def test_message_meta_drops_the_position_keys() -> None:
    """``topic``, ``offset`` and ``epoch`` are the server's to stamp (delivery.md
    §11.4): like ``clientId``, what a caller puts there is not sent."""
    stamped = {"topic": "room:1", "offset": 4, "epoch": "e", "timestamp": 1}
    assert message_meta(PING, stamped, 7) == {"timestamp": 1}
    in_room = message("SAY", Ping, meta=RoomMeta)
    assert message_meta(in_room, {**stamped, "roomId": "r1"}, 7) == {"timestamp": 1, "roomId": "r1"}
