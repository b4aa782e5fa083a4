"""Prometheus metrics (``wskit_trio.prometheus``): a real server driven by the bundled
client over 127.0.0.1, scraped over real HTTP at ``metrics_path``; slow consumers
and backend health in memory (``wskit_trio.testing``).

A ``MockClock`` that jumps once every task has idled for 10 ms of real time runs
the RPC handlers' sleeps in virtual time, so their latencies are exact.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.testing
from _net import running_server
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from wskit_trio import (
    ConfigurationError,
    Context,
    ErrorCode,
    Limits,
    MemoryPubSub,
    Router,
    RpcContext,
    TopicPolicy,
    WsKitError,
    message,
    rpc,
    serve,
    with_pubsub,
)
from wskit_trio.client import InboundMessage, RpcError, open_client
from wskit_trio.prometheus import PrometheusMetrics, exposition
from wskit_trio.testing import open_test_app

TIMEOUT = 15


@attrs.frozen
class Text:
    text: str


@attrs.frozen
class Said:
    ok: bool
    error: str | None = None


PING = message("PING", Text)
PONG = message("PONG", Text)
ECHO = rpc("ECHO", Text, "ECHOED", Text)
SLOW = rpc("SLOW", None, "SLOWED", Text)
JOIN = rpc("JOIN", Text, "JOINED", Text)
SAY = rpc("SAY", Text, "SAID", Said)
NEWS = message("NEWS", Text)
FEED = message("FEED", Text)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time over real sockets (see ``_net``); pytest-trio picks it up."""
    return trio.testing.MockClock(autojump_threshold=_net.AUTOJUMP_THRESHOLD)


def app_router() -> Router[Any]:
    router: Router[Any] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Text, Any]) -> None:
        await ctx.send(PONG, Text(ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Text, Text, Any]) -> None:
        if ctx.payload.text == "missing":
            raise WsKitError(ErrorCode.NOT_FOUND, "no such thing")
        if ctx.payload.text == "boom":
            raise RuntimeError("a bug")
        await ctx.reply(Text(ctx.payload.text))

    @router.rpc(SLOW)
    async def slow(ctx: RpcContext[None, Text, Any]) -> None:
        await trio.sleep(0.3)
        await ctx.reply(Text("done"))

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[Text, Text, Any]) -> None:
        await ctx.topics.subscribe(ctx.payload.text)
        await ctx.reply(ctx.payload)

    @router.rpc(SAY)
    async def say(ctx: RpcContext[Text, Said, Any]) -> None:
        result = await ctx.publish(ctx.payload.text, NEWS, Text("hello"))
        await ctx.reply(Said(result.ok, result.error))

    return router


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text-format scrape, by name and labels."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped[(name, frozenset(labels.items()))]


def label_values(
    scraped: Iterable[tuple[str, frozenset[tuple[str, str]]]], name: str, label: str
) -> set[str]:
    return {dict(labels)[label] for sample, labels in scraped if sample == name}


async def http_request(
    port: int, target: str, *, method: str = "GET", accept: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    """One plain HTTP/1.1 request: the status line, headers and body (read to the
    server's close: ``content-length`` long, or empty for a HEAD)."""
    extra = f"Accept: {accept}\r\n" if accept else ""
    request = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert len(body) == (0 if method == "HEAD" else int(headers["content-length"]))
    return status, headers, body


async def test_a_scrape_of_a_served_router_counts_its_traffic() -> None:
    router = app_router()
    registry = CollectorRegistry()
    router.plugin(PrometheusMetrics(registry))
    news = trio.Event()
    got_news: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(router, metrics_path="/metrics", heartbeat=None) as server,
            open_client(server.url) as alice,
            open_client(server.url) as bob,
        ):
            pongs: list[str] = []
            three_pongs = trio.Event()

            def on_pong(msg: InboundMessage[Text]) -> None:
                pongs.append(msg.payload.text)
                if len(pongs) == 3:
                    three_pongs.set()

            def on_news(msg: InboundMessage[Text]) -> None:
                got_news.append(msg.payload.text)
                if len(got_news) == 2:
                    news.set()

            alice.on(PONG, on_pong)
            alice.on(NEWS, on_news)
            bob.on(NEWS, on_news)
            for i in range(3):
                await alice.send(PING, Text(str(i)))
            await three_pongs.wait()

            assert await alice.request(ECHO, Text("a")) == Text("a")
            assert await alice.request(ECHO, Text("b")) == Text("b")
            with pytest.raises(RpcError) as missing:
                await alice.request(ECHO, Text("missing"))
            assert missing.value.code == ErrorCode.NOT_FOUND
            with pytest.raises(RpcError) as boom:
                await alice.request(ECHO, Text("boom"))
            assert boom.value.code == ErrorCode.INTERNAL
            assert await alice.request(SLOW) == Text("done")

            assert await alice.request(JOIN, Text("room")) == Text("room")
            assert await bob.request(JOIN, Text("room")) == Text("room")
            assert await alice.request(SAY, Text("room")) == Said(True)
            assert await alice.request(SAY, Text("not a topic!")) == Said(
                False, ErrorCode.INVALID_ARGUMENT
            )
            await news.wait()

            status, headers, body = await http_request(server.port, "/metrics")
            assert status == "HTTP/1.1 200 OK"
            assert headers["content-type"].startswith("text/plain; version=")
            scraped = samples(body)

            assert value(scraped, "wskit_connections_opened_total") == 2
            assert value(scraped, "wskit_connections_active") == 2
            assert value(scraped, "wskit_frames_in_total", type="PING") == 3
            assert value(scraped, "wskit_frames_in_total", type="ECHO") == 4
            assert value(scraped, "wskit_frames_out_total", type="PONG") == 3
            assert value(scraped, "wskit_frames_out_total", type="NEWS") == 2
            assert value(scraped, "wskit_frames_out_total", type="RPC_ERROR") == 2
            assert value(scraped, "wskit_errors_total", code="NOT_FOUND") == 1
            assert value(scraped, "wskit_errors_total", code="INTERNAL") == 1

            # One observation per RPC, labelled with what the client was answered.
            rpc_counts = {
                (dict(labels)["type"], dict(labels)["outcome"]): count
                for (name, labels), count in scraped.items()
                if name == "wskit_rpc_duration_seconds_count"
            }
            assert rpc_counts == {
                ("ECHO", "ok"): 2,
                ("ECHO", "NOT_FOUND"): 1,
                ("ECHO", "INTERNAL"): 1,
                ("SLOW", "ok"): 1,
                ("JOIN", "ok"): 2,
                ("SAY", "ok"): 2,
            }
            # The slow one took its 0.3 s (virtual: not a timer's whim): the 0.5 bucket.
            slow = {"type": "SLOW", "outcome": "ok"}
            assert 0.3 <= value(scraped, "wskit_rpc_duration_seconds_sum", **slow) < 0.5
            assert value(scraped, "wskit_rpc_duration_seconds_bucket", le="0.25", **slow) == 0
            assert value(scraped, "wskit_rpc_duration_seconds_bucket", le="0.5", **slow) == 1
            assert value(scraped, "wskit_rpc_duration_seconds_bucket", le="+Inf", **slow) == 1

            assert value(scraped, "wskit_publishes_total", outcome="ok") == 1
            assert value(scraped, "wskit_publishes_total", outcome="INVALID_ARGUMENT") == 1
            assert value(scraped, "wskit_pubsub_deliveries_total") == 2
            assert value(scraped, "wskit_pubsub_cut_offs_total") == 0
            assert value(scraped, "wskit_outbound_dropped_total") == 0
            assert value(scraped, "wskit_pubsub_backend_healthy", backend="MemoryPubSub") == 1
            # Labels stay bounded: only registered types and real outcomes.
            assert label_values(scraped, "wskit_frames_in_total", "type") == {
                "PING",
                "ECHO",
                "SLOW",
                "JOIN",
                "SAY",
            }

            # HEAD (the length of a GET), and OpenMetrics for a scraper that asks.
            status, headers, _ = await http_request(server.port, "/metrics?x=1", method="HEAD")
            assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) > 0
            _, headers, body = await http_request(
                server.port, "/metrics", accept="application/openmetrics-text; version=1.0.0"
            )
            assert headers["content-type"].startswith("application/openmetrics-text")
            assert body.endswith(b"# EOF\n")
            status, headers, _ = await http_request(server.port, "/metrics", method="POST")
            assert status.startswith("HTTP/1.1 405 ") and headers["allow"] == "GET, HEAD"
    assert sorted(got_news) == ["hello", "hello"]


def test_metrics_path_needs_the_plugin() -> None:
    with pytest.raises(ConfigurationError, match="PrometheusMetrics"):
        serve(app_router(), metrics_path="/metrics")


class UnhealthyPubSub(MemoryPubSub):
    healthy = False


async def test_cut_offs_drops_and_backend_health_outlive_the_server(
    autojump_clock: trio.abc.Clock,
) -> None:
    router = app_router()
    policy = TopicPolicy(drop_oldest=re.compile("cursor"))
    router.plugin(with_pubsub(UnhealthyPubSub(), policy=policy))
    metrics = PrometheusMetrics(None)
    router.plugin(metrics)
    limits = Limits(outbound_queue=4, slow_consumer_timeout=1.0)
    with trio.fail_after(TIMEOUT):
        async with open_test_app(router, limits=limits, heartbeat=None) as app:
            # Two that read nothing: one is cut off, the other's queue drops the oldest.
            stalled = await app.connect(client_buffer=1)
            await stalled.request(JOIN, Text("feed"))
            assert (await stalled.receive()).type == "JOINED"
            dropping = await app.connect(client_buffer=1)
            await dropping.request(JOIN, Text("cursor"))
            assert (await dropping.receive()).type == "JOINED"
            for _ in range(10):
                await router.publish("feed", FEED, Text("x"))
                await router.publish("cursor", FEED, Text("x"))
            assert await stalled.wait_closed() == (1013, "slow consumer")
            await trio.testing.wait_all_tasks_blocked()
            during = samples(metrics.exposition()[0])
            assert value(during, "wskit_pubsub_backend_healthy", backend="UnhealthyPubSub") == 0
        after = samples(exposition(metrics)[0])
    for scraped in (during, after):
        assert value(scraped, "wskit_pubsub_cut_offs_total") == 1
        # At most 4 queued and 1 in the client's buffer: the rest of 10 were dropped
        # (read from the open connection, then kept when it closed).
        assert value(scraped, "wskit_outbound_dropped_total") >= 5
        assert value(scraped, "wskit_pubsub_deliveries_total") >= 11
        assert value(scraped, "wskit_connections_opened_total") == 2
    assert value(after, "wskit_connections_active") == 0
    # Counters keep what the stopped server counted (plus the frames still queued when
    # the app closed the connection); its backend is no longer reported.
    for name in ("wskit_outbound_dropped_total", "wskit_pubsub_deliveries_total"):
        assert value(after, name) >= value(during, name)
    assert label_values(after, "wskit_pubsub_backend_healthy", "backend") == set()


def test_one_registry_refuses_a_second_collector() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusMetrics(registry)
    PrometheusMetrics(registry, namespace="other")  # its own names


def test_importing_the_package_imports_neither_prometheus_nor_opentelemetry() -> None:
    code = (
        "import sys, wskit_trio, wskit_trio.client, wskit_trio.testing\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
