"""OpenTelemetry spans (``wskit_trio.tracing``): a real server on 127.0.0.1 driven by
the bundled client, whose ``meta.traceparent`` the spans continue; the spans are
read back from the SDK's in-memory exporter. The meta keys' validation runs in
memory (``wskit_trio.testing``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from _net import running_server
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wskit_trio import (
    Context,
    ErrorCode,
    Router,
    RpcContext,
    WsKitError,
    message,
    rpc,
)
from wskit_trio.client import InboundMessage, RequestTimeout, RpcError, open_client
from wskit_trio.testing import open_test_app
from wskit_trio.tracing import tracing

TIMEOUT = 15

#: The client's own trace and span (W3C Trace Context, sampled).
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


@attrs.frozen
class Text:
    text: str


PING = message("PING", Text)
PONG = message("PONG", Text)
ECHO = rpc("ECHO", Text, "ECHOED", Text)
SLOW = rpc("SLOW", None, "SLOWED", Text)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time over real sockets (see ``_net``); pytest-trio picks it up."""
    return trio.testing.MockClock(autojump_threshold=_net.AUTOJUMP_THRESHOLD)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def traced_router(provider: TracerProvider) -> Router[Any]:
    router: Router[Any] = Router()
    router.use(tracing(tracer_provider=provider))
    app_tracer = provider.get_tracer("the app")

    @router.on(PING)
    async def ping(ctx: Context[Text, Any]) -> None:
        await ctx.send(PONG, Text(ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Text, Text, Any]) -> None:
        text = ctx.payload.text
        if text == "missing":
            raise WsKitError(ErrorCode.NOT_FOUND, "no such thing")
        if text == "boom":
            raise RuntimeError("a bug")
        if text == "refuse":
            await ctx.error(ErrorCode.FAILED_PRECONDITION, "not now")
            return
        with app_tracer.start_as_current_span("lookup"):  # the app's own span
            await trio.lowlevel.checkpoint()
        await ctx.reply(Text(text))

    @router.rpc(SLOW)
    async def slow(ctx: RpcContext[None, Text, Any]) -> None:
        await trio.sleep(10)
        await ctx.reply(Text("late"))

    return router


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_spans_continue_the_clients_traceparent(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = traced_router(provider)
    traced = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(router, heartbeat=None) as server,
            open_client(server.url) as client,
        ):
            pong = trio.Event()

            def on_pong(msg: InboundMessage[Text]) -> None:
                pong.set()

            client.on(PONG, on_pong)
            await client.send(PING, Text("hi"), meta=traced)
            await pong.wait()

            assert await client.request(ECHO, Text("a"), meta=traced) == Text("a")
            assert await client.request(ECHO, Text("b"), meta=traced) == Text("b")
            assert await client.request(ECHO, Text("untraced")) == Text("untraced")
            for text, code in (
                ("missing", ErrorCode.NOT_FOUND),
                ("boom", ErrorCode.INTERNAL),
                ("refuse", ErrorCode.FAILED_PRECONDITION),
            ):
                with pytest.raises(RpcError) as failed:
                    await client.request(ECHO, Text(text), meta=traced)
                assert failed.value.code == code
            with pytest.raises((RpcError, RequestTimeout)):
                await client.request(SLOW, timeout=1.0, meta=traced)
            # Every span has ended once the server's tasks are idle again.
            await trio.testing.wait_all_tasks_blocked()
            spans = exporter.get_finished_spans()
            client_id = next(iter(server.connections)).client_id

    echoes = by_name(spans, "ECHO")
    assert len(echoes) == 6  # one per RPC
    assert len(by_name(spans, "PING")) == 1
    assert len(by_name(spans, "SLOW")) == 1
    roots: list[ReadableSpan] = []
    for span in spans:
        if span.name == "lookup":
            continue
        if span.parent is None:
            roots.append(span)
            continue
        # The client's span is the parent: same trace, its span id, and its tracestate.
        assert span.parent is not None and span.parent.is_remote
        assert span.parent.trace_id == TRACE_ID
        assert span.parent.span_id == SPAN_ID
        assert span.context is not None and span.context.trace_id == TRACE_ID
        assert span.context.trace_state.get("vendor") == "abc"
        assert span.attributes is not None
        assert span.attributes["wskit.client_id"] == client_id

    (event,) = by_name(spans, "PING")
    assert event.kind == SpanKind.CONSUMER
    assert event.attributes is not None
    assert event.attributes["wskit.kind"] == "event"
    assert event.attributes["wskit.outcome"] == "ok"
    assert "wskit.correlation_id" not in event.attributes
    assert event.status.status_code == StatusCode.UNSET

    outcomes: dict[str, list[ReadableSpan]] = {}
    for span in echoes:
        assert span.kind == SpanKind.SERVER
        assert span.attributes is not None
        assert span.attributes["wskit.kind"] == "rpc"
        assert isinstance(span.attributes["wskit.correlation_id"], str)
        outcomes.setdefault(str(span.attributes["wskit.outcome"]), []).append(span)
    assert {k: len(v) for k, v in outcomes.items()} == {
        "ok": 3,
        "NOT_FOUND": 1,
        "INTERNAL": 1,
        "FAILED_PRECONDITION": 1,
    }
    # Only the request sent without a traceparent started a trace of its own.
    (root,) = roots
    assert root.name == "ECHO" and root in outcomes["ok"]
    assert root.context is not None and root.context.trace_id != TRACE_ID
    for outcome in ("NOT_FOUND", "INTERNAL", "FAILED_PRECONDITION"):
        (failed_span,) = outcomes[outcome]
        assert failed_span.status.status_code == StatusCode.ERROR
        assert failed_span.attributes is not None
        assert failed_span.attributes["error.type"] == outcome
    assert outcomes["NOT_FOUND"][0].status.description == "no such thing"
    # The unexpected exception is on the span (the client only got INTERNAL).
    (crash,) = outcomes["INTERNAL"][0].events
    assert crash.name == "exception"
    assert crash.attributes is not None and crash.attributes["exception.message"] == "a bug"

    (slow,) = by_name(spans, "SLOW")
    assert slow.attributes is not None
    assert slow.attributes["wskit.outcome"] == "DEADLINE_EXCEEDED"
    assert slow.status.status_code == StatusCode.ERROR

    # The handler's own span is a child of the RPC's: the span is current in it.
    lookups = by_name(spans, "lookup")
    assert len(lookups) == 3
    ok_ids = {span.context.span_id for span in outcomes["ok"] if span.context is not None}
    for lookup in lookups:
        assert lookup.parent is not None and lookup.parent.span_id in ok_ids


async def test_trace_meta_is_standard_and_checked_with_or_without_tracing() -> None:
    router: Router[Any] = Router()  # no tracing

    @router.on(PING)
    async def ping(ctx: Context[Text, Any]) -> None:
        await ctx.send(PONG, Text(str(ctx.meta.get("traceparent"))))

    with trio.fail_after(TIMEOUT):
        async with open_test_app(router, heartbeat=None) as app:
            client = await app.connect()
            meta = {"traceparent": TRACEPARENT, "tracestate": "a=b"}
            await client.send_json({"type": "PING", "meta": meta, "payload": {"text": "x"}})
            assert await client.receive_payload(PONG) == Text(TRACEPARENT)
            bad = {"type": "PING", "meta": {"traceparent": 1}, "payload": {"text": "x"}}
            await client.send_json(bad)
            error = await client.receive_error()
            assert error.error_code == ErrorCode.INVALID_ARGUMENT
            assert error.payload["details"]["errors"] == [
                {"path": "$.meta.traceparent", "message": "expected string, got integer"}
            ]
