"""ValkeyRateLimiter against a real valkey-server (started by the ``valkey_server`` fixture).

These tests run on the real clock (the limiter does socket I/O), each bounded by
``trio.fail_after``. Where a schedule must be exact, the limiters share an injected
clock instead of the server's ``TIME``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from conftest import PING, PONG, Conn, Ping, Pong
from valkey_server import ValkeyServerProcess, free_port

from wskit_trio import (
    Context,
    ErrorCode,
    MemoryRateLimiter,
    Router,
    WsKitError,
    rate_limit,
)
from wskit_trio._protocol.ratelimit import MICROS
from wskit_trio.testing import open_test_app
from wskit_trio.valkey import ValkeyConnection, ValkeyRateLimiter
from wskit_trio.valkey._ratelimit import SCRIPT_SHA

IO_TIMEOUT = 10.0


class FakeClock:
    """Seconds, moved by hand: the schedule both limiters see."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def connection(server: ValkeyServerProcess) -> AsyncIterator[ValkeyConnection]:
    conn = await ValkeyConnection.connect(server.host, server.port)
    try:
        yield conn
    finally:
        await conn.aclose()


async def test_agrees_with_the_memory_limiter_on_the_same_schedule(
    valkey_server: ValkeyServerProcess,
) -> None:
    rng = random.Random(20240611)
    with trio.fail_after(IO_TIMEOUT):
        async with connection(valkey_server) as conn:
            # 0.7 and 75/7 are rates where ceil(deficit / rate * 1000) alone comes out
            # a millisecond short; both implementations must correct it alike.
            for capacity, rate in [(1, 1.0), (5, 0.7), (10, 75 / 7), (3, 1000.0), (20, 0.05)]:
                clock = FakeClock(rng.uniform(0, 10_000))
                memory = MemoryRateLimiter(capacity=capacity, tokens_per_second=rate, clock=clock)
                valkey = ValkeyRateLimiter(
                    conn,
                    capacity=capacity,
                    tokens_per_second=rate,
                    clock=clock,
                    prefix=f"agree:{capacity}:{rate}:",
                )
                decisions = []
                for _ in range(300):
                    clock.now += rng.choice([0, 0, 1e-6, rng.uniform(0, 2 / rate)])
                    key = rng.choice(["a", "b", "c"])
                    cost = rng.choice([0, 1, 1, 1, 2, capacity, capacity + 1])
                    expected = memory.consume_nowait(key, cost)
                    got = await valkey.consume(key, cost)
                    assert got == expected, (capacity, rate, clock.now, key, cost)
                    decisions.append(got)
                # The schedule exercised every outcome.
                assert {d.allowed for d in decisions} == {True, False}
                assert any(d.retry_after_ms is None for d in decisions)
                assert any(d.retry_after_ms not in (0, None) for d in decisions)


async def test_waiting_retry_after_then_succeeds(valkey_server: ValkeyServerProcess) -> None:
    clock = FakeClock()
    with trio.fail_after(IO_TIMEOUT):
        async with connection(valkey_server) as conn:
            limiter = ValkeyRateLimiter(conn, capacity=5, tokens_per_second=0.7, clock=clock)
            assert await limiter.consume("k", 5) == (True, 0, 0)
            clock.now += 0.3
            refused = await limiter.consume("k", 3)
            assert refused.allowed is False
            assert refused.retry_after_ms == 4286  # ceil(3 / 0.7 * 1000)
            assert refused.retry_after_ms is not None
            clock.now += refused.retry_after_ms / 1000
            assert (await limiter.consume("k", 3)).allowed


async def test_uses_server_time_a_hash_per_key_and_a_ttl(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with connection(valkey_server) as conn:
            limiter = ValkeyRateLimiter(conn, capacity=3, tokens_per_second=0.01)
            assert limiter.ttl_ms == 600_000  # 2 * 3 / 0.01 s > 60 s
            for _ in range(3):
                assert (await limiter.consume("rl:public:u1:PING")).allowed
            refused = await limiter.consume("rl:public:u1:PING")
            assert refused == (False, 0, 100_000)
            key = "wskit:rl:public:u1:PING"
            state = await conn.execute("HGETALL", key)
            fields = dict(zip(state[::2], state[1::2], strict=True))
            assert set(fields) == {b"tokens", b"anchor", b"count"}
            assert fields[b"tokens"] == b"0"
            # The anchor is the server's TIME in µs, all 16 digits of it.
            seconds, micros = await conn.execute("TIME")
            server_now = int(seconds) * MICROS + int(micros)
            assert 0 <= server_now - int(fields[b"anchor"]) < 5 * MICROS
            assert 590_000 < await conn.execute("PTTL", key) <= 600_000

            short = ValkeyRateLimiter(conn, capacity=1, tokens_per_second=100, prefix="s:")
            assert short.ttl_ms == 60_000  # at least 60 s
            custom = ValkeyRateLimiter(
                conn, capacity=1, tokens_per_second=1, prefix="c:", ttl_ms=5000
            )
            await custom.consume("k")
            assert 0 < await conn.execute("PTTL", "c:k") <= 5000


async def test_falls_back_to_eval_when_the_script_is_not_cached(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with connection(valkey_server) as conn:
            assert await conn.execute("SCRIPT", "EXISTS", SCRIPT_SHA) == [0]
            limiter = ValkeyRateLimiter(conn, capacity=2, tokens_per_second=1)
            assert (await limiter.consume("k")).allowed  # NOSCRIPT → EVAL (which caches)
            assert await conn.execute("SCRIPT", "EXISTS", SCRIPT_SHA) == [1]
            assert (await limiter.consume("k")).allowed  # EVALSHA
            await conn.execute("SCRIPT", "FLUSH")
            assert (await limiter.consume("k")).retry_after_ms == 1000
            assert limiter.statistics().allowed == 2
            assert limiter.statistics().limited == 1


async def test_two_instances_hammering_one_key_never_exceed_the_bound(
    valkey_server: ValkeyServerProcess,
) -> None:
    # Frozen clock: exactly the capacity, whatever the interleaving.
    clock = FakeClock()
    granted = 0
    with trio.fail_after(IO_TIMEOUT):
        async with connection(valkey_server) as c1, connection(valkey_server) as c2:
            limiters = [
                ValkeyRateLimiter(c, capacity=50, tokens_per_second=5, clock=clock)
                for c in (c1, c2)
            ]

            async def hammer(limiter: ValkeyRateLimiter) -> None:
                nonlocal granted
                for _ in range(40):
                    if (await limiter.consume("shared")).allowed:
                        granted += 1

            async with trio.open_nursery() as nursery:
                for limiter in limiters:
                    for _ in range(5):
                        nursery.start_soon(hammer, limiter)
    assert granted == 50


async def test_two_router_instances_share_one_bucket(valkey_server: ValkeyServerProcess) -> None:
    """Two servers, each with its own limiter and connection, on the server's TIME."""
    capacity, rate = 30, 20.0
    calls = 0
    refusals: list[dict[str, Any]] = []

    def make_router() -> tuple[Router[Conn], ValkeyRateLimiter]:
        limiter = ValkeyRateLimiter.from_url(
            valkey_server.url, capacity=capacity, tokens_per_second=rate
        )
        router: Router[Conn] = Router()
        router.use(rate_limit(limiter=limiter))

        @router.on(PING)
        async def ping(ctx: Context[Ping, Conn]) -> None:
            nonlocal calls
            calls += 1
            await ctx.send(PONG, Pong(reply=ctx.payload.text))

        return router, limiter

    (r1, l1), (r2, l2) = make_router(), make_router()
    with trio.fail_after(IO_TIMEOUT):
        async with open_test_app(r1) as app1, open_test_app(r2) as app2, l1, l2:
            clients = [await app.connect(Conn(user_id="u1")) for app in (app1, app2, app1, app2)]
            start = trio.current_time()

            async def hammer(client: Any) -> None:
                for i in range(60):
                    await client.send(PING, Ping(str(i)))
                for _ in range(60):
                    frame = await client.receive()
                    if frame.type != "PONG":
                        refusals.append(frame.raw)

            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(hammer, client)
            elapsed = trio.current_time() - start
            assert all(client.closed is None for client in clients)
    assert calls + len(refusals) == 240
    assert capacity <= calls <= capacity + rate * elapsed + 1e-9
    assert refusals
    for raw in refusals:
        assert raw["type"] == "ERROR"
        payload = raw["payload"]
        assert payload["code"] == "RESOURCE_EXHAUSTED"
        assert payload["details"]["capacity"] == capacity
        assert payload["details"]["cost"] == 1
        assert payload["retryable"] is True
        assert payload["retryAfterMs"] == 50  # ceil(1 / 20 * 1000)
    assert l1.statistics().connects == l2.statistics().connects == 1


async def test_unavailable_valkey_fails_closed_by_default_and_recovers(
    valkey_server: ValkeyServerProcess,
) -> None:
    closed = ValkeyRateLimiter.from_url(
        valkey_server.url, capacity=5, tokens_per_second=1, reconnect_interval=0
    )
    opened = ValkeyRateLimiter.from_url(
        valkey_server.url, capacity=5, tokens_per_second=1, fail_open=True
    )
    with trio.fail_after(IO_TIMEOUT):
        async with closed, opened:
            assert (await closed.consume("k")).allowed
            await trio.to_thread.run_sync(valkey_server.kill)
            with pytest.raises(WsKitError) as info:
                await closed.consume("k")
            assert info.value.code == ErrorCode.UNAVAILABLE
            assert info.value.retryable is None  # the code's default: retryable
            assert await opened.consume("k") == (True, 0, 0)
            assert opened.statistics().unavailable == 1
            await trio.to_thread.run_sync(valkey_server.start)
            assert (await closed.consume("k")).allowed  # reconnected
            assert closed.statistics().connects == 2
            assert closed.statistics().unavailable == 1


async def test_unavailable_valkey_answers_the_client_unavailable() -> None:
    with trio.fail_after(IO_TIMEOUT):
        # Nothing listens on this port: connection refused.
        limiter = ValkeyRateLimiter.from_url(
            f"valkey://127.0.0.1:{free_port()}", capacity=5, tokens_per_second=1
        )
        router: Router[Conn] = Router()
        router.use(rate_limit(limiter=limiter))

        @router.on(PING)
        async def ping(ctx: Context[Ping, Conn]) -> None:
            await ctx.send(PONG, Pong(reply="x"))

        async with open_test_app(router) as app:
            client = await app.connect(Conn(user_id="u1"))
            for _ in range(2):  # the second fails at once (reconnect_interval)
                await client.send(PING, Ping("a"))
                assert (await client.receive()).raw == {
                    "type": "ERROR",
                    "meta": {},
                    "payload": {
                        "code": "UNAVAILABLE",
                        "message": "Rate limiter unavailable",
                        "retryable": True,
                        "retryAfterMs": 100,
                    },
                }
            assert client.closed is None
        assert limiter.statistics().unavailable == 2


async def test_a_stalled_valkey_times_out_as_unavailable(
    valkey_server: ValkeyServerProcess,
) -> None:
    """A server that accepts and never answers: each consume gives up after
    ``command_timeout``, the stalled connection is dropped, the next one is fresh."""

    async def black_hole(stream: trio.SocketStream) -> None:
        async for _ in stream:
            pass

    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, black_hole, 0, host="127.0.0.1")
            )
            stalled_port = listeners[0].socket.getsockname()[1]
            ports = [stalled_port, valkey_server.port]

            async def connect() -> ValkeyConnection:
                return await ValkeyConnection.connect("127.0.0.1", ports.pop(0))

            limiter = ValkeyRateLimiter(
                capacity=5,
                tokens_per_second=1,
                connect=connect,
                command_timeout=0.05,
                reconnect_interval=0,
            )
            async with limiter:
                with pytest.raises(WsKitError) as info:
                    await limiter.consume("k")
                assert info.value.code == ErrorCode.UNAVAILABLE
                assert limiter.statistics().last_error == "no answer from Valkey within 0.05s"
                assert (await limiter.consume("k")).allowed
                assert limiter.statistics().connects == 2
            nursery.cancel_scope.cancel()
