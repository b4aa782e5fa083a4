"""Property tests: arbitrary text, bytes and JSON thrown at the decoder and at a running
router. Nothing raises out of the connection, and every frame gets exactly the answer
docs/protocol.md §4 gives it, as derived independently by :func:`oracle`."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import trio
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wskit_trio import Context, Router, RpcContext, message
from wskit_trio._protocol.frames import FrameError, InboundFrame, decode_frame, validate_frame
from wskit_trio.testing import TestClient, open_test_app

LEAVE = message("LEAVE")
LEFT = message("LEFT")

RESERVED_META = {"clientId", "receivedAt"}
REGISTERED = {"PING": "event", "LEAVE": "event", "ECHO": "rpc"}

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- the oracle: docs/protocol.md §1, §2 and §4, written out independently -----------------


class Answer(NamedTuple):
    """One expected server frame: its type, error code (for errors) and correlationId."""

    type: str
    code: str | None = None
    cid: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _parse(data: str | bytes) -> tuple[bool, Any]:
    """(True, value) for strict JSON (no NaN/Infinity), else (False, None)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return False, None
    try:
        return True, json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid(frame: dict[str, Any], has_payload: bool) -> bool:
    """Whether ``frame`` passes strict validation for a schema whose payload is
    ``{"text": str}`` (``has_payload``) or absent, with no extended meta."""
    if not set(frame) <= {"type", "meta", "payload"}:
        return False
    meta = frame.get("meta", {})
    if not isinstance(meta, dict):
        return False
    for key, value in meta.items():
        if key in RESERVED_META:
            continue  # stripped, whatever the value
        if key in ("correlationId", "traceparent", "tracestate"):
            if not isinstance(value, str):
                return False
        elif key in ("timestamp", "timeoutMs"):
            if not _is_number(value) or (key == "timeoutMs" and value < 0):
                return False
        else:
            return False
    if not has_payload:
        return "payload" not in frame
    payload = frame.get("payload")
    return (
        isinstance(payload, dict) and set(payload) == {"text"} and isinstance(payload["text"], str)
    )


def oracle(data: str | bytes) -> list[Answer]:
    """What the server sends in answer to one inbound WebSocket message."""
    ok, frame = _parse(data)
    if not ok or not isinstance(frame, dict):
        return [Answer("ERROR", "INVALID_ARGUMENT")]
    meta = frame.get("meta")
    cid = meta.get("correlationId") if isinstance(meta, dict) else None
    cid = cid if isinstance(cid, str) else None
    type_ = frame.get("type")
    if not isinstance(type_, str):
        return [Answer("ERROR", "INVALID_ARGUMENT", cid)]
    if type_ in ("__heartbeat", "$ws:abort"):
        # Control frames are strict too: a payload-less frame, standard meta only.
        if not _valid(frame, has_payload=False):
            return [Answer("ERROR", "INVALID_ARGUMENT", cid)]
        if type_ == "__heartbeat":
            return [Answer("__heartbeat_ack")]
        # Cancels that RPC (none is in flight here); without an id it is malformed.
        return [] if cid is not None else [Answer("ERROR", "INVALID_ARGUMENT")]
    if type_.startswith(("__", "$")):
        return [Answer("ERROR", "INVALID_ARGUMENT", cid)]
    kind = REGISTERED.get(type_)
    if kind is None:
        return [Answer("RPC_ERROR" if cid is not None else "ERROR", "UNIMPLEMENTED", cid)]
    if not _valid(frame, has_payload=type_ != "LEAVE"):
        rpc_error = kind == "rpc" and cid is not None
        return [Answer("RPC_ERROR" if rpc_error else "ERROR", "INVALID_ARGUMENT", cid)]
    if kind == "rpc":
        if cid is None:
            return [Answer("ERROR", "INVALID_ARGUMENT")]
        return [Answer("ECHOED", None, cid)]
    return [Answer("PONG" if type_ == "PING" else "LEFT")]


# -- strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
types = (
    st.sampled_from(
        [
            "PING",
            "LEAVE",
            "ECHO",
            "__heartbeat",
            "$ws:abort",
            "__heartbeat_ack",
            "$ws:rpc-progress",
            "__x",
            "$",
            "PONG",
            "ERROR",
            "RPC_ERROR",
            "",
        ]
    )
    | st.text(max_size=8)
    | json_values
)


def _generous_budget(meta: dict[str, Any]) -> dict[str, Any]:
    # A valid timeoutMs bounds the echo handler; keep it far from running out, so the
    # answer is the reply (the deadline itself is tested in test_rpc.py).
    budget = meta.get("timeoutMs")
    if isinstance(budget, int | float) and not isinstance(budget, bool) and 0 <= budget < 10_000:
        meta["timeoutMs"] = budget + 10_000
    return meta


meta_values = st.dictionaries(
    st.sampled_from(
        [
            *("correlationId", "timestamp", "timeoutMs", "traceparent", "tracestate"),
            *("clientId", "receivedAt"),
        ]
    )
    | st.text(max_size=6),
    st.text(max_size=6)
    | st.integers(min_value=-5, max_value=10**15)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=1e6)
    | json_values,
    max_size=4,
).map(_generous_budget)
payloads = (
    st.fixed_dictionaries({"text": st.text(max_size=12)})
    | st.fixed_dictionaries({"text": json_values})
    | st.dictionaries(st.sampled_from(["text", "extra"]) | st.text(max_size=4), json_values)
    | json_values
)


@st.composite
def frame_objects(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # mostly with a type
        frame["type"] = draw(types)
    if draw(st.booleans()):
        frame["meta"] = draw(meta_values | json_values)
    if draw(st.booleans()):
        frame["payload"] = draw(payloads)
    if draw(st.integers(0, 5)) == 0:
        frame[draw(st.sampled_from(["id", "topic", "data"]) | st.text(max_size=4))] = draw(
            json_values
        )
    return frame


@st.composite
def encoded_frames(draw: st.DrawFn) -> str | bytes:
    frame = draw(frame_objects())
    text = json.dumps(frame, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8") if draw(st.booleans()) else text


@st.composite
def near_valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A registered message, valid or with one mistake of the kinds §2 lists."""
    type_ = draw(st.sampled_from(sorted(REGISTERED)))
    meta: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        meta["correlationId"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        meta["timestamp"] = draw(st.integers(0, 2**53) | st.floats(0, 1e13))
    if draw(st.booleans()):
        meta["timeoutMs"] = draw(st.integers(10_000, 10**9))
    for key in sorted(RESERVED_META):
        if draw(st.booleans()):
            meta[key] = draw(json_values)  # stripped, whatever it is
    frame: dict[str, Any] = {"type": type_}
    empty_meta = draw(st.booleans())
    if meta or empty_meta:
        frame["meta"] = meta
    if type_ != "LEAVE":
        frame["payload"] = {"text": draw(st.text(max_size=12))}
    mistake = draw(
        st.sampled_from(
            [None, None, None, "root", "meta", "payload", "type", "bool", "cid", "presence"]
        )
    )
    junk = draw(json_values)
    if mistake == "root":
        frame[draw(st.sampled_from(["id", "topic", "data", "Type"]))] = junk
    elif mistake == "meta":
        meta[draw(st.sampled_from(["traceId", "x", "timeout"]))] = junk
        frame["meta"] = meta
    elif mistake == "payload" and "payload" in frame:
        frame["payload"][draw(st.sampled_from(["extra", "Text", "text2"]))] = junk
    elif mistake == "type" and "payload" in frame:
        frame["payload"]["text"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif mistake == "bool":
        frame["meta"] = {
            **meta,
            draw(st.sampled_from(["timestamp", "timeoutMs"])): draw(st.booleans()),
        }
    elif mistake == "cid":
        frame["meta"] = {**meta, "correlationId": draw(json_values)}
    elif mistake == "presence":
        if "payload" in frame:
            del frame["payload"]
        else:
            frame["payload"] = draw(st.just({}) | json_values)
    return frame


messages = (
    near_valid_frames().map(json.dumps)
    | encoded_frames()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | json_values.map(json.dumps)
    | st.sampled_from(
        [
            "NaN",
            '{"type": "PING", "meta": {"timestamp": Infinity}}',
            " {} ",
            "",
            '{"type": "$ws:abort", "meta": {"correlationId": "c-1"}}',
            '{"type": "$ws:abort", "meta": {"correlationId": 1}}',
            '{"type": "__heartbeat", "meta": {"correlationId": "c"}, "x": 1}',
            # Lone surrogates: valid JSON escapes that are not encodable as UTF-8.
            '{"type": "PING", "payload": {"text": "\\ud800"}}',
            '{"type": "PING", "payload": {"\\udc00": 1}}',
            '{"type": "\\ud800", "meta": {"correlationId": "\\udfff"}}',
        ]
    )
)


# -- the decoder ------------------------------------------------------------------------


def _structure_ping(value: Any) -> Ping:
    assert PING.structure_payload is not None
    return PING.structure_payload(value)  # type: ignore[no-any-return]


@PROPERTY_SETTINGS
@given(messages)
def test_decoder_gives_the_envelope_answer(data: str | bytes) -> None:
    expected = oracle(data)
    result = decode_frame(data)
    if isinstance(result, FrameError):
        assert expected == [Answer("ERROR", "INVALID_ARGUMENT", result.correlation_id)]
        assert result.code == "INVALID_ARGUMENT"
        assert result.message
        return
    assert isinstance(result, InboundFrame)
    ok, frame = _parse(data)
    assert ok and isinstance(frame, dict)
    assert result.type == frame["type"] and result.raw == frame
    meta = frame.get("meta")
    cid = meta.get("correlationId") if isinstance(meta, dict) else None
    assert result.correlation_id == (cid if isinstance(cid, str) else None)

    # validate_frame against each schema shape agrees with the oracle's strict rules.
    for structure, has_payload in ((_structure_ping, True), (None, False)):
        validated = validate_frame(result, structure, None)
        if _valid(frame, has_payload):
            assert not isinstance(validated, list)
            payload, clean_meta, extended = validated
            assert payload == (Ping(frame["payload"]["text"]) if has_payload else None)
            assert extended is None
            assert not RESERVED_META & set(clean_meta)
            assert clean_meta == {
                k: v for k, v in frame.get("meta", {}).items() if k not in RESERVED_META
            }
        else:
            assert isinstance(validated, list) and validated
            for path, problem in validated:
                assert path == "$" or path.startswith(("$.", "$["))
                assert isinstance(problem, str) and problem


# -- a running router -------------------------------------------------------------------


def make_router() -> Router[Conn]:
    router: Router[Conn] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        assert not RESERVED_META & set(ctx.meta)
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.on(LEAVE)
    async def leave(ctx: Context[None, Conn]) -> None:
        await ctx.send(LEFT)

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.reply(Pong(reply=ctx.payload.text))

    return router


def _check_error_shape(raw: dict[str, Any]) -> None:
    """docs/protocol.md §3: exactly type/meta/payload; message and retryable always present."""
    assert set(raw) == {"type", "meta", "payload"}
    payload = raw["payload"]
    assert set(payload) <= {"code", "message", "details", "retryable", "retryAfterMs"}
    assert isinstance(payload["message"], str) and payload["message"]
    assert payload["retryable"] is False  # none of these codes is retryable by default
    assert "retryAfterMs" not in payload
    if "details" in payload:
        assert payload["details"]
        assert payload["code"] == "INVALID_ARGUMENT"
        assert payload["details"]["errors"]


def _answer_of(sent: str | bytes, inbound: str | bytes) -> Answer:
    assert isinstance(sent, str)  # a text frame
    sent.encode("utf-8")  # ... that a real socket can encode
    raw = json.loads(sent)
    assert isinstance(raw, dict)
    meta = raw.get("meta", {})
    if raw["type"] in ("ERROR", "RPC_ERROR"):
        _check_error_shape(raw)
        return Answer(raw["type"], raw["payload"]["code"], meta.get("correlationId"))
    if raw["type"] == "__heartbeat_ack":
        assert set(meta) == {"ts"} and type(meta["ts"]) is int
        return Answer(raw["type"])
    ok, frame = _parse(inbound)
    assert ok
    if raw["type"] in ("PONG", "ECHOED"):
        assert raw["payload"] == {"reply": frame["payload"]["text"]}
    return Answer(raw["type"], None, meta.get("correlationId"))


def _sent_nowait(client: TestClient[Conn]) -> str | bytes | None:
    """The next message exactly as the server sent it (``TestClient`` parses them)."""
    try:
        return client._transport._inbound.receive_nowait()
    except trio.WouldBlock:
        return None


async def _serve_sequence(sequence: list[str | bytes]) -> None:
    reported: list[str] = []
    router = make_router()
    router.on_error(lambda err, ctx: reported.append(str(err.code)))
    with trio.fail_after(10):
        async with open_test_app(router) as app:
            client = await app.connect(Conn())
            expected_errors: list[str] = []
            for data in sequence:
                expected = oracle(data)
                await client.send_raw(data)
                await trio.testing.wait_all_tasks_blocked()
                got: list[Answer] = []
                while (sent := _sent_nowait(client)) is not None:
                    got.append(_answer_of(sent, data))
                assert got == expected, data
                for answer in expected or [Answer("nothing")]:
                    event(f"answer: {answer.type} {answer.code or ''}".rstrip())
                assert client.closed is None
                expected_errors += [a.code for a in expected if a.code is not None]
            # Every answered failure was also reported to on_error, in order.
            assert reported == expected_errors


@PROPERTY_SETTINGS
@given(st.lists(messages, min_size=1, max_size=6))
def test_router_answers_every_frame_as_protocol_md_says(sequence: list[str | bytes]) -> None:
    trio.run(_serve_sequence, sequence)


@PROPERTY_SETTINGS
@given(st.lists(frame_objects() | near_valid_frames(), min_size=1, max_size=6))
def test_router_answers_every_json_object_as_protocol_md_says(
    frames: list[dict[str, Any]],
) -> None:
    sequence: list[str | bytes] = [json.dumps(f) for f in frames]
    trio.run(_serve_sequence, sequence)


def test_oracle_agrees_with_hand_written_examples() -> None:
    # The oracle itself, pinned on the rows of docs/protocol.md §4.
    assert oracle("nope") == [Answer("ERROR", "INVALID_ARGUMENT")]
    assert oracle(b"\xff") == [Answer("ERROR", "INVALID_ARGUMENT")]
    assert oracle(b'{"type": "PING", "payload": {"text": "a"}}') == [Answer("PONG")]
    assert oracle('{"type": "__x", "meta": {"correlationId": "c"}}') == [
        Answer("ERROR", "INVALID_ARGUMENT", "c")
    ]
    assert oracle('{"type": "X", "meta": {"correlationId": "c"}}') == [
        Answer("RPC_ERROR", "UNIMPLEMENTED", "c")
    ]
    assert oracle('{"type": "ECHO", "payload": {"text": "a"}}') == [
        Answer("ERROR", "INVALID_ARGUMENT")
    ]
    assert oracle('{"type": "ECHO", "meta": {"correlationId": "c"}, "payload": {}}') == [
        Answer("RPC_ERROR", "INVALID_ARGUMENT", "c")
    ]
    assert oracle('{"type": "LEAVE", "meta": {"clientId": 1}}') == [Answer("LEFT")]
    assert oracle('{"type": "LEAVE", "payload": {}}') == [Answer("ERROR", "INVALID_ARGUMENT")]
    assert oracle('{"type": "$ws:abort", "meta": {"correlationId": "c"}}') == []
    assert oracle('{"type": "__heartbeat"}') == [Answer("__heartbeat_ack")]
