"""The server's protocol state machine, run synchronously: no trio run, no connection.

Every row of docs/protocol.md §4 that the session decides, the in-flight table and
draining, and the property test: for any sequence of messages, the session's
action is the answer the independent oracle (``test_properties.oracle``) derives.
The same oracle runs against a live connection in ``test_properties``, and the
wire is checked over sockets in ``test_server``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from test_properties import (
    PROPERTY_SETTINGS,
    Answer,
    frame_objects,
    make_router,
    messages,
    near_valid_frames,
    oracle,
)

from wskit_trio._protocol.codes import ErrorCode
from wskit_trio._protocol.session import (
    Abort,
    Action,
    HeartbeatAck,
    Ignore,
    Refuse,
    RunEvent,
    ServerSession,
    StartRpc,
    rpc_timeout,
)
from wskit_trio._router import Route


def new_session(**limits: Any) -> ServerSession[Route]:
    limits.setdefault("max_in_flight_rpcs", 1000)
    limits.setdefault("max_rpc_timeout", 120.0)
    return ServerSession(make_router().compile().routes, **limits)


def frame(type: Any, payload: Any = None, **meta: Any) -> str:
    obj: dict[str, Any] = {"type": type}
    if payload is not None:
        obj["payload"] = payload
    if meta:
        obj["meta"] = meta
    return json.dumps(obj)


def echo(cid: str, **meta: Any) -> str:
    return frame("ECHO", {"text": "x"}, correlationId=cid, **meta)


def refusal(action: Action) -> tuple[str, str | None, bool]:
    assert isinstance(action, Refuse), action
    return str(action.code), action.correlation_id, action.rpc


# -- docs/protocol.md §4, row by row ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("nope", ("INVALID_ARGUMENT", None, False)),
        (b"\xff\xfe", ("INVALID_ARGUMENT", None, False)),
        ("[1, 2]", ("INVALID_ARGUMENT", None, False)),
        ('{"payload": {}}', ("INVALID_ARGUMENT", None, False)),
        ('{"type": 5, "meta": {"correlationId": "c"}}', ("INVALID_ARGUMENT", "c", False)),
        (frame("__nope", correlationId="c"), ("INVALID_ARGUMENT", "c", False)),
        (frame("$ws:rpc-progress"), ("INVALID_ARGUMENT", None, False)),
        (frame("UNKNOWN"), ("UNIMPLEMENTED", None, True)),
        (frame("UNKNOWN", correlationId="c"), ("UNIMPLEMENTED", "c", True)),
        (frame("ECHO", {"text": "x"}), ("INVALID_ARGUMENT", None, False)),
        (frame("PING", {"text": 5}), ("INVALID_ARGUMENT", None, False)),
        (frame("ECHO", {"text": 5}, correlationId="c"), ("INVALID_ARGUMENT", "c", True)),
        (
            frame("PING", {"text": "x"}, clientId="spoof", extra=1),
            ("INVALID_ARGUMENT", None, False),
        ),
        (frame("$ws:abort"), ("INVALID_ARGUMENT", None, False)),
        (frame("__heartbeat", {"x": 1}), ("INVALID_ARGUMENT", None, False)),
    ],
)
def test_each_failure_gets_its_answer(data: str | bytes, expected: tuple[str, str, bool]) -> None:
    action = new_session().receive(data, 0.0)
    assert refusal(action) == expected
    assert isinstance(action, Refuse) and action.message


def test_validation_failures_list_each_problem_by_path() -> None:
    action = new_session().receive(frame("PING", {"text": 5, "more": 1}), 0.0)
    assert isinstance(action, Refuse) and action.routed and action.type == "PING"
    assert action.details == {
        "errors": [
            {"path": "$.payload.text", "message": "expected string, got integer"},
            {"path": "$.payload.more", "message": "unknown key"},
        ]
    }


def test_an_event_runs_with_its_payload_and_meta_without_reserved_keys() -> None:
    action = new_session().receive(frame("PING", {"text": "hi"}, receivedAt=1, timestamp=2), 5.0)
    assert isinstance(action, RunEvent)
    assert (action.type, action.payload.text, action.meta) == ("PING", "hi", {"timestamp": 2})
    assert action.route.schema.type == "PING"


def test_an_rpc_starts_with_its_deadline_capped_by_the_server() -> None:
    session = new_session(max_rpc_timeout=10.0)
    start = session.receive(echo("a", timeoutMs=2500), 100.0)
    assert isinstance(start, StartRpc)
    assert (start.correlation_id, start.deadline) == ("a", 102.5)
    capped = session.receive(echo("b", timeoutMs=60_000), 100.0)
    assert isinstance(capped, StartRpc) and capped.deadline == 110.0
    default = session.receive(echo("c"), 100.0)
    assert isinstance(default, StartRpc) and default.deadline == 110.0
    assert session.rpcs_in_flight == 3


def test_rpc_timeout() -> None:
    assert rpc_timeout(1500, 120) == 1.5
    assert rpc_timeout(-5, 120) == 0
    assert rpc_timeout(None, 120) == 120
    assert rpc_timeout(True, 120) == 120  # a bool is not a number
    assert rpc_timeout(10**9, 0) == 10**6  # no server maximum
    assert rpc_timeout(None, float("inf")) == float("inf")


def test_the_in_flight_table_refuses_duplicates_and_excess_until_rpcs_finish() -> None:
    session = new_session(max_in_flight_rpcs=2)
    assert isinstance(session.receive(echo("a"), 0.0), StartRpc)
    assert refusal(session.receive(echo("a"), 0.0)) == ("INVALID_ARGUMENT", "a", True)
    assert isinstance(session.receive(echo("b"), 0.0), StartRpc)
    assert refusal(session.receive(echo("c"), 0.0)) == ("RESOURCE_EXHAUSTED", "c", True)
    session.rpc_finished("a")
    assert isinstance(session.receive(echo("c"), 0.0), StartRpc)
    # A finished id may be used again.
    session.rpc_finished("b")
    assert isinstance(session.receive(echo("b"), 0.0), StartRpc)


def test_abort_cancels_only_an_rpc_in_flight() -> None:
    session = new_session()
    session.receive(echo("a"), 0.0)
    assert session.receive(frame("$ws:abort", correlationId="a"), 0.0) == Abort("a")
    assert session.receive(frame("$ws:abort", correlationId="zzz"), 0.0) == Ignore("$ws:abort")
    session.rpc_finished("a")
    assert isinstance(session.receive(frame("$ws:abort", correlationId="a"), 0.0), Ignore)


def test_heartbeat_is_acknowledged() -> None:
    assert new_session().receive(frame("__heartbeat"), 0.0) == HeartbeatAck()
    assert new_session().receive(frame("__heartbeat", timestamp=1), 0.0) == HeartbeatAck()


def test_draining_refuses_new_rpcs_as_retryable_unavailable_but_runs_events() -> None:
    session = new_session()
    session.receive(echo("a"), 0.0)
    session.start_draining()
    action = session.receive(echo("b"), 0.0)
    assert refusal(action) == (ErrorCode.UNAVAILABLE, "b", True)
    assert isinstance(session.receive(frame("PING", {"text": "x"}), 0.0), RunEvent)
    assert session.receive(frame("$ws:abort", correlationId="a"), 0.0) == Abort("a")


# -- the oracle --------------------------------------------------------------------------


def answer_of(action: Action) -> list[Answer]:
    """What the connection sends for ``action`` (for the oracle's router, whose
    handlers answer at once: PING → PONG, LEAVE → LEFT, ECHO → ECHOED)."""
    if isinstance(action, Refuse):
        rpc_error = action.rpc and action.correlation_id is not None
        kind = "RPC_ERROR" if rpc_error else "ERROR"
        return [Answer(kind, str(action.code), action.correlation_id)]
    if isinstance(action, HeartbeatAck):
        return [Answer("__heartbeat_ack")]
    if isinstance(action, RunEvent):
        return [Answer("PONG" if action.type == "PING" else "LEFT")]
    if isinstance(action, StartRpc):
        return [Answer("ECHOED", None, action.correlation_id)]
    return []  # Abort / Ignore: nothing is sent


def run_sequence(sequence: list[str | bytes]) -> None:
    session = new_session()
    for data in sequence:
        action = session.receive(data, 0.0)
        got = answer_of(action)
        assert got == oracle(data), data
        for answer in got or [Answer("nothing")]:
            event(f"answer: {answer.type} {answer.code or ''}".rstrip())
        if isinstance(action, StartRpc):
            session.rpc_finished(action.correlation_id)  # the echo replied at once


@PROPERTY_SETTINGS
@given(st.lists(messages, min_size=1, max_size=6))
def test_the_session_answers_every_message_as_the_oracle_says(
    sequence: list[str | bytes],
) -> None:
    run_sequence(sequence)


@PROPERTY_SETTINGS
@given(st.lists(frame_objects() | near_valid_frames(), min_size=1, max_size=6))
def test_the_session_answers_every_json_object_as_the_oracle_says(
    objects: list[dict[str, Any]],
) -> None:
    run_sequence([json.dumps(obj) for obj in objects])
