"""ValkeyPubSub across instances (docs/protocol.md §9), on a real valkey-server.

Instances are routers with their own ``ValkeyPubSub`` sharing one Valkey: two
harness apps in one trio run, and, in one test, two OS processes serving real
WebSockets. Real I/O runs on the real clock, bounded by ``trio.fail_after``;
waits poll actual state (bounded), never sleep-and-hope. The backoff schedule
runs on a virtual clock.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _net import ready_port
from pubsub_app import NEWS, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, News, Publish, Topic, make_router
from valkey_server import ValkeyServerProcess, free_port
from wsclient import WsClient, open_client

from wskit_trio import Limits, Router
from wskit_trio._protocol.pubsub import Envelope
from wskit_trio.testing import Frame, TestApp, TestClient, open_test_app
from wskit_trio.valkey import (
    ValkeyConnection,
    ValkeyPubSub,
    ValkeyPubSubOptions,
    ValkeyUnavailable,
)

IO_TIMEOUT = 5.0


@attrs.frozen
class Instance:
    app: TestApp[Any]
    router: Router[Any]
    backend: ValkeyPubSub


@asynccontextmanager
async def instances(
    server: ValkeyServerProcess, count: int = 2, *, limits: Limits | None = None, **options: Any
) -> AsyncIterator[list[Instance]]:
    """``count`` app instances sharing ``server`` (one channel prefix per test), served
    with ``limits``; ``options`` go to their ``ValkeyPubSub``."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    backends = [ValkeyPubSub.from_url(server.url, prefix=prefix, **options) for _ in range(count)]
    routers = [make_router(backend) for backend in backends]
    async with (
        open_test_app(routers[0], limits=limits) as app0,
        open_test_app(routers[1], limits=limits) as app1,
    ):
        apps = [app0, app1]
        for backend in backends:
            await backend.wait_healthy()
        yield [Instance(a, r, b) for a, r, b in zip(apps, routers, backends, strict=True)]


@asynccontextmanager
async def admin(server: ValkeyServerProcess) -> AsyncIterator[ValkeyConnection]:
    conn = await ValkeyConnection.connect(server.host, server.port)
    try:
        yield conn
    finally:
        await conn.aclose()


async def subscribe(client: TestClient[Any], topic: str) -> None:
    await client.send(SUBSCRIBE, Topic(topic))
    frame = await client.receive()
    assert frame.type == "TOPICS" and frame.payload["has"], frame.raw


async def publish(client: TestClient[Any], topic: str, text: str, **options: Any) -> Frame:
    """Publish through the app; returns the ``PUBLISHED`` answer."""
    await client.send(PUBLISH, Publish(topic, text, **options))
    frame = await client.receive()
    assert frame.type == "PUBLISHED", frame.raw
    return frame


async def receive_news(client: TestClient[Any]) -> dict[str, Any]:
    frame = await client.receive()
    assert frame.type == NEWS.type, frame.raw
    payload: dict[str, Any] = frame.payload
    return payload


async def numsub(conn: ValkeyConnection, channel: str) -> int:
    reply = await conn.execute("PUBSUB", "NUMSUB", channel)
    count: int = reply[1]
    return count


async def wait_until(predicate: Callable[[], Any]) -> None:
    """Poll real state (bounded) until ``await predicate()`` (or ``predicate()``) holds."""
    with trio.fail_after(IO_TIMEOUT):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.002)


# -- delivery across instances ---------------------------------------------------------


async def test_every_publish_reaches_every_subscriber_once_in_order(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with instances(valkey_server) as (one, two), admin(valkey_server) as conn:
            subscribers = [await one.app.connect(), await one.app.connect()]
            subscribers.append(await two.app.connect())
            for client in subscribers:
                await subscribe(client, "room")
            # One Valkey subscription per instance, not per local subscriber.
            assert await numsub(conn, one.backend.prefix + "room") == 2
            publishers = {"p1": await one.app.connect(), "p2": await two.app.connect()}
            count = 60

            async def run(name: str, client: TestClient[Any]) -> None:
                for seq in range(count):
                    await client.send(PUBLISH, Publish("room", name, seq=seq))
                for _ in range(count):
                    assert (await client.receive()).payload["ok"] is True

            async with trio.open_nursery() as nursery:
                for name, client in publishers.items():
                    nursery.start_soon(run, name, client)
            for client in subscribers:
                got = [await receive_news(client) for _ in range(2 * count)]
                for name in publishers:
                    assert [p["seq"] for p in got if p["text"] == name] == list(range(count))
            # Exactly once: nothing else is on its way; the next frame is a new publish.
            await one.router.publish("room", NEWS, News("end"))
            for client in subscribers:
                assert (await receive_news(client))["text"] == "end"
            # Every instance delivered what it received, the publisher's included.
            for instance in (one, two):
                assert instance.backend.statistics().received == 2 * count + 1
                assert instance.backend.statistics().malformed == 0


async def test_publish_right_after_subscribe_returns_is_delivered(
    valkey_server: ValkeyServerProcess,
) -> None:
    """``subscribe`` returns only once Valkey confirmed it, so a publish that starts
    after it, on another instance, reaches the new subscriber."""
    with trio.fail_after(IO_TIMEOUT):
        async with instances(valkey_server) as (one, two):
            client = await two.app.connect()
            for i in range(30):
                await subscribe(client, f"fresh/{i}")
                await one.router.publish(f"fresh/{i}", NEWS, News("x", i))
                assert await receive_news(client) == {"text": "x", "seq": i}


async def test_exclude_self_across_instances(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with instances(valkey_server) as (one, two):
            me, neighbour = await one.app.connect(), await one.app.connect()
            remote = await two.app.connect()
            for client in (me, neighbour, remote):
                await subscribe(client, "chat")
            await publish(me, "chat", "mine", seq=1, exclude_self=True)
            assert await receive_news(neighbour) == {"text": "mine", "seq": 1}
            assert await receive_news(remote) == {"text": "mine", "seq": 1}
            # I got nothing: my next frame is the remote client's publish.
            await publish(remote, "chat", "theirs", seq=2, exclude_self=True)
            assert await receive_news(me) == {"text": "theirs", "seq": 2}
            assert await receive_news(neighbour) == {"text": "theirs", "seq": 2}
            assert remote.receive_nowait() is None


async def test_unsubscribe_and_disconnect_stop_delivery_everywhere(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with instances(valkey_server) as (one, two), admin(valkey_server) as conn:
            channel = one.backend.prefix + "t"
            a, b = await one.app.connect(), await two.app.connect()
            await subscribe(a, "t")
            await subscribe(a, "other")
            await subscribe(b, "t")
            assert await numsub(conn, channel) == 2

            await a.send(UNSUBSCRIBE, Topic("t"))
            assert (await a.receive()).payload["has"] is False
            # Instance one has no local subscriber left, so it left the channel.
            await wait_until(lambda: _eq(conn, channel, 1))
            await two.router.publish("t", NEWS, News("only b", 1))
            await two.router.publish("other", NEWS, News("for a", 2))
            assert await receive_news(b) == {"text": "only b", "seq": 1}
            assert await receive_news(a) == {"text": "for a", "seq": 2}

            await b.close()
            await wait_until(lambda: _eq(conn, channel, 0))
            pattern = one.backend.prefix + "*"
            assert await conn.execute("PUBSUB", "CHANNELS", pattern) == [
                (one.backend.prefix + "other").encode()
            ]
            assert two.backend.statistics().channels == 0
            assert one.backend.statistics().channels == 1
            result = await one.router.publish("t", NEWS, News("nobody"))
            assert result.ok
            await one.router.publish("other", NEWS, News("still", 3))
            assert await receive_news(a) == {"text": "still", "seq": 3}


async def _eq(conn: ValkeyConnection, channel: str, expected: int) -> bool:
    return await numsub(conn, channel) == expected


async def test_malformed_messages_are_counted_and_skipped(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with instances(valkey_server) as (one, _), admin(valkey_server) as conn:
            client = await one.app.connect()
            await subscribe(client, "room")
            channel = one.backend.prefix + "room"
            await conn.execute("PUBLISH", channel, "not json")
            await conn.execute("PUBLISH", channel, '{"topic": 1}')
            wrong_topic = Envelope("elsewhere", "NEWS", {"text": "x", "seq": 0}, None, "o")
            await conn.execute("PUBLISH", channel, wrong_topic.to_json())
            good = Envelope("room", "NEWS", {"text": "ok", "seq": 4}, {"m": 1}, "o")
            await conn.execute("PUBLISH", channel, good.to_json())
            assert (await client.receive()).raw == {
                "type": "NEWS",
                "payload": {"text": "ok", "seq": 4},
                "meta": {"m": 1},
            }
            assert one.backend.statistics().malformed == 3


# -- Valkey going away -----------------------------------------------------------------


async def test_valkey_down_then_back(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(3 * IO_TIMEOUT):
        async with instances(valkey_server, backoff_max=0.2) as (one, two):
            a, b = await one.app.connect(), await two.app.connect()
            publisher = await two.app.connect()
            await subscribe(a, "room")
            await subscribe(b, "room")
            await publish(publisher, "room", "before", seq=0)
            assert (await receive_news(a))["text"] == "before"
            assert (await receive_news(b))["text"] == "before"

            valkey_server.kill()
            for client in (a, b):
                started = time.monotonic()
                result = (await publish(client, "room", "lost")).payload
                assert time.monotonic() - started < 0.5  # promptly, not a timeout
                assert result == {
                    "ok": False,
                    "error": "UNAVAILABLE",
                    "retryable": True,
                    "capability": "unknown",
                    "matched": None,
                }
            await wait_until(lambda: not one.backend.healthy and not two.backend.healthy)
            # A new subscription cannot be confirmed: UNAVAILABLE, and nothing is kept.
            await a.send(SUBSCRIBE, Topic("new"))
            assert (await a.receive_error()).error_code == "UNAVAILABLE"
            await a.send(UNSUBSCRIBE, Topic("never"))  # answers with a's topics
            assert set((await a.receive()).payload["topics"]) <= {"room"}

            await trio.to_thread.run_sync(valkey_server.restart)
            async with admin(valkey_server) as conn:
                for instance in (one, two):
                    await instance.backend.wait_healthy()
                    # Healthy again means re-subscribed already.
                    assert await numsub(conn, one.backend.prefix + "room") >= 1
                assert await numsub(conn, one.backend.prefix + "room") == 2
                # ... to the local topics, which "new" is not.
                assert await numsub(conn, one.backend.prefix + "new") == 0
            # "new" reaches nobody: a's next frame is the later "room" one.
            await publish(publisher, "new", "nobody", seq=9)
            await publish(publisher, "room", "after", seq=1)
            assert await receive_news(a) == {"text": "after", "seq": 1}
            assert await receive_news(b) == {"text": "after", "seq": 1}
            stats = one.backend.statistics()
            assert stats.connects == 2
            assert stats.healthy
            assert stats.publish_failures == 1


async def test_hung_valkey_times_out_and_recovers(valkey_server: ValkeyServerProcess) -> None:
    """A Valkey that accepts but never answers (SIGSTOP): publishes report failure
    within ``command_timeout``, and the instance recovers when it answers again."""
    with trio.fail_after(3 * IO_TIMEOUT):
        async with instances(valkey_server, command_timeout=0.3, backoff_max=0.1) as (
            one,
            two,
        ):
            a, b = await one.app.connect(), await two.app.connect()
            publisher = await one.app.connect()
            await subscribe(a, "room")
            await subscribe(b, "room")
            valkey_server.pause()
            try:
                started = time.monotonic()
                result = (await publish(publisher, "room", "stuck")).payload
                assert 0.25 < time.monotonic() - started < 1.5
                assert (result["ok"], result["error"], result["retryable"]) == (
                    False,
                    "UNAVAILABLE",
                    True,
                )
                await wait_until(lambda: not one.backend.healthy)
            finally:
                valkey_server.resume()
            await one.backend.wait_healthy()
            await two.backend.wait_healthy()
            await publish(publisher, "room", "unstuck", seq=5)
            for client in (a, b):
                # The one published while hung may have been delivered late, or not.
                got = await receive_news(client)
                if got["text"] == "stuck":
                    got = await receive_news(client)
                assert got == {"text": "unstuck", "seq": 5}


async def test_health_check_notices_a_hung_valkey_and_heals_drift(
    valkey_server: ValkeyServerProcess,
) -> None:
    # close_timeout=0: a closing connection gives up on its UNSUBSCRIBEs at once.
    with trio.fail_after(3 * IO_TIMEOUT):
        async with (
            instances(
                valkey_server,
                limits=Limits(close_timeout=0),
                health_interval=0.25,
                command_timeout=0.2,
                backoff_max=0.05,
            ) as (one, _),
            admin(valkey_server) as conn,
        ):
            client = await one.app.connect()
            await subscribe(client, "kept")
            # Drift: a channel nobody here wants, left by a lost UNSUBSCRIBE (its only
            # subscriber closed, and the UNSUBSCRIBE was given up on).
            leaving = await one.app.connect()
            await subscribe(leaving, "stray")
            await leaving.close()
            await wait_until(lambda: one.app.server.statistics().connections == 1)
            assert await numsub(conn, one.backend.prefix + "stray") == 1
            await wait_until(lambda: _eq(conn, one.backend.prefix + "stray", 0))
            assert await numsub(conn, one.backend.prefix + "kept") == 1

            # No publish needed to find out that Valkey stopped answering.
            valkey_server.pause()
            try:
                await wait_until(lambda: not one.backend.healthy)
            finally:
                valkey_server.resume()
            await one.backend.wait_healthy()
            await one.router.publish("kept", NEWS, News("back"))
            assert (await receive_news(client))["text"] == "back"


async def test_starts_at_once_and_backs_off_while_valkey_is_down(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[float] = []

    async def refuse(cls: Any, *args: Any, **kwargs: Any) -> ValkeyConnection:
        attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        raise ValkeyUnavailable("refused")

    monkeypatch.setattr(ValkeyConnection, "connect", classmethod(refuse))
    backoff = ValkeyPubSubOptions(backoff_initial=0.1, backoff_max=1.0)
    backend = ValkeyPubSub("127.0.0.1", free_port(), options=backoff)
    router = make_router(backend)
    with trio.fail_after(60):
        async with open_test_app(router) as app:
            assert trio.current_time() == 0  # serving did not wait for Valkey
            client = await app.connect()
            result = (await publish(client, "room", "x")).payload
            assert (result["ok"], result["retryable"]) == (False, True)
            await client.send(SUBSCRIBE, Topic("room"))
            assert (await client.receive_error()).error_code == "UNAVAILABLE"
            assert trio.current_time() == 0  # and answered at once
            await trio.sleep(8)
    assert not backend.healthy
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] == 0  # a lost connection is retried at once...
    expected = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # ...then exponential, capped
    for gap, ceiling in zip(gaps[1:], expected, strict=False):
        assert ceiling / 2 <= gap <= ceiling  # with jitter
    assert len(attempts) >= 8
    stats = backend.statistics()
    assert stats.connect_failures == len(attempts)
    assert stats.connects == 0
    assert stats.last_error is not None and "refused" in stats.last_error


async def test_run_twice_is_refused(valkey_server: ValkeyServerProcess) -> None:
    backend = ValkeyPubSub.from_url(valkey_server.url)
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            with pytest.raises(RuntimeError):
                await backend.run()
            await backend.wait_healthy()
            nursery.cancel_scope.cancel()
    assert not backend.healthy


# -- two OS processes ------------------------------------------------------------------


async def _start_instance(url: str, prefix: str) -> tuple[trio.Process, int]:
    script = Path(__file__).with_name("valkey_instance.py")
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script), url, prefix], stdout=-1
    )
    return process, await ready_port(process)


async def test_two_processes_see_each_others_publishes(valkey_server: ValkeyServerProcess) -> None:
    prefix = f"proc-{uuid.uuid4().hex[:8]}:"
    with trio.fail_after(20):
        (p1, port1), (p2, port2) = await _start_both(valkey_server.url, prefix)
        try:
            c1 = await open_client(f"ws://127.0.0.1:{port1}/")
            c2 = await open_client(f"ws://127.0.0.1:{port2}/")
            for client in (c1, c2):
                await _send(client, "SUBSCRIBE", {"topic": "lobby"})
                assert (await client.recv_json())["type"] == "TOPICS"
            await _send(
                c1, "PUBLISH", {"topic": "lobby", "text": "from 1", "seq": 1, "meta": {"a": "b"}}
            )
            await _send(c2, "PUBLISH", {"topic": "lobby", "text": "from 2", "seq": 2})
            for client in (c1, c2):
                frames = [await client.recv_json() for _ in range(3)]
                news = [f for f in frames if f["type"] == "NEWS"]
                assert sorted(news, key=lambda f: f["payload"]["seq"]) == [
                    {"type": "NEWS", "payload": {"text": "from 1", "seq": 1}, "meta": {"a": "b"}},
                    {"type": "NEWS", "payload": {"text": "from 2", "seq": 2}},
                ]
                published = [f for f in frames if f["type"] == "PUBLISHED"]
                assert len(published) == 1 and published[0]["payload"]["ok"] is True
            await c1.close()
            await c2.close()
        finally:
            for process in (p1, p2):
                process.terminate()  # SIGTERM: graceful shutdown
            for process in (p1, p2):
                assert await process.wait() == 0


async def _start_both(url: str, prefix: str) -> list[tuple[trio.Process, int]]:
    started: list[tuple[trio.Process, int]] = []

    async def one() -> None:
        started.append(await _start_instance(url, prefix))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    except BaseException:
        for process, _ in started:
            process.kill()
        raise
    return started


async def _send(client: WsClient, msg_type: str, payload: dict[str, Any]) -> None:
    await client.send(json.dumps({"type": msg_type, "meta": {}, "payload": payload}))


async def test_a_long_outage_never_overflows_the_backoff(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a thousand failed reconnects in a row (an hour of outage at the 5 s cap):
    the delay stays at ``backoff_max`` and the reconnect loop keeps going."""
    backend = ValkeyPubSub("127.0.0.1", 1)
    attempts: list[float] = []
    enough = trio.Event()

    async def failing_session() -> bool:
        attempts.append(trio.current_time())
        if len(attempts) == 1100:
            enough.set()
        await trio.lowlevel.checkpoint()
        return False

    monkeypatch.setattr(backend, "_session", failing_session)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        await enough.wait()
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(attempts[-100:], attempts[-99:], strict=False)]
    assert all(backend.backoff_max / 2 <= gap <= backend.backoff_max for gap in gaps)


def test_from_url_takes_the_options_as_keywords() -> None:
    backend = ValkeyPubSub.from_url("valkey://:pw@cache:7000/2", prefix="app:", backoff_max=1.0)
    assert backend.options == ValkeyPubSubOptions(prefix="app:", backoff_max=1.0)
    assert (backend.host, backend.port, backend.db) == ("cache", 7000, 2)
    assert (backend.prefix, backend.backoff_max, backend.command_timeout) == ("app:", 1.0, 2.0)
    assert ValkeyPubSub().options == ValkeyPubSubOptions()
