"""examples/rate_limiting: per-user, per-type buckets with a cost function, in memory
and in Valkey, deciding the same.

Real sockets end to end. Buckets hold ``CAPACITY`` (5) tokens and refill 2 a second,
so a token comes back every 500 ms: every burst below takes a few milliseconds, far
inside that, and the only waits are the ones the server's ``retryAfterMs`` asks for.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from _example_cmd import ROOT
from valkey_server import ValkeyServerProcess

from examples.rate_limiting.client import Outcome, request_obeying_hints, try_request
from examples.rate_limiting.server import (
    CAPACITY,
    POST,
    SEARCH,
    TOKENS_PER_SECOND,
    Post,
    Posted,
    Results,
    Search,
    authenticate,
    build_router,
    make_limiter,
)
from wskit_trio import MemoryRateLimiter, RateLimiter, Server, serve
from wskit_trio.client import Client, RpcError, open_client
from wskit_trio.valkey import ValkeyConnection, ValkeyRateLimiter, parse_url

#: The longest wait for one token, ms.
TOKEN_MS = 1000 / TOKENS_PER_SECOND


@asynccontextmanager
async def limited_server(limiter: RateLimiter) -> AsyncIterator[Server[object]]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(
                build_router(limiter),
                host="127.0.0.1",
                port=0,
                authenticate=authenticate,
                handle_signals=False,
            )
        )
        yield server
        await server.aclose(grace=0)


@pytest.fixture(params=["memory", "valkey"])
def valkey_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the in-memory limiter; the URL of a fresh real Valkey for the
    ``--valkey`` flavour."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("valkey_server").url
    return url


def describe(outcome: Outcome[Any]) -> str:
    """A decision, without its timing: what must be the same for both limiters."""
    if outcome.allowed:
        return "allowed"
    return f"{outcome.code} cost={outcome.detail('cost')} remaining={outcome.detail('remaining')}"


def check_hint(outcome: Outcome[Any]) -> int:
    """A RESOURCE_EXHAUSTED refusal is retryable and asks for at most one token's wait."""
    assert outcome.error is not None and outcome.error.retryable
    hint = outcome.retry_after_ms
    assert hint is not None and 0 < hint <= TOKEN_MS, hint
    return hint


async def burst(client: Client, n: int) -> list[Outcome[Posted]]:
    """``n`` POSTs at once; their outcomes."""
    outcomes: list[Outcome[Posted]] = []

    async def post(i: int) -> None:
        outcomes.append(await try_request(client, POST, Post(f"post {i}")))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(post, i)
    return outcomes


EXPECTED = [
    ("alice: 6 POSTs at once", {"allowed": 5, "RESOURCE_EXHAUSTED cost=1 remaining=0": 1}),
    ("bob: 5 POSTs at once (his own buckets)", {"allowed": 5}),
    ("alice: SEARCH limit=30 (own bucket per type)", {"allowed": 1}),
    ("alice: SEARCH limit=30 again", {"RESOURCE_EXHAUSTED cost=3 remaining=2": 1}),
    (
        "alice: SEARCH limit=100 (cost > capacity)",
        {"FAILED_PRECONDITION cost=10 remaining=None": 1},
    ),
    ("alice: POST after its retryAfterMs", {"allowed": 1}),
    ("alice: POST right after that", {"RESOURCE_EXHAUSTED cost=1 remaining=0": 1}),
    ("alice: SEARCH limit=30 after its retryAfterMs", {"allowed": 1}),
]


async def scenario(url: str) -> list[tuple[str, dict[str, int]]]:
    """Alice and Bob meet the limits; returns every decision, step by step."""
    log: list[tuple[str, dict[str, int]]] = []

    def record(step: str, outcomes: list[Outcome[Any]]) -> None:
        log.append((step, dict(Counter(describe(o) for o in outcomes))))

    async with (
        open_client(url, auth=lambda: "alice") as alice,
        open_client(url, auth=lambda: "bob") as bob,
    ):
        posts = await burst(alice, CAPACITY + 1)
        record("alice: 6 POSTs at once", posts)
        [refused_post] = [o for o in posts if not o.allowed]
        post_hint = check_hint(refused_post)

        record("bob: 5 POSTs at once (his own buckets)", await burst(bob, CAPACITY))

        first = await try_request(alice, SEARCH, Search("trio", limit=30))
        assert first.result == Results("trio", [f"trio #{i}" for i in range(1, 31)])
        record("alice: SEARCH limit=30 (own bucket per type)", [first])
        again = await try_request(alice, SEARCH, Search("trio", limit=30))
        record("alice: SEARCH limit=30 again", [again])
        search_hint = check_hint(again)

        huge = await try_request(alice, SEARCH, Search("trio", limit=100))
        record("alice: SEARCH limit=100 (cost > capacity)", [huge])
        assert huge.error is not None and huge.error.details == {"cost": 10, "capacity": 5}
        assert not huge.error.retryable and huge.retry_after_ms is None  # no wait helps

        # Waiting what the server said is enough, for each bucket (both waits at once).
        late: dict[str, list[Outcome[Any]]] = {}

        async def retry_post() -> None:
            await trio.sleep(post_hint / 1000)
            late["post"] = [await try_request(alice, POST, Post("late"))]
            late["post"].append(await try_request(alice, POST, Post("later")))

        async def retry_search() -> None:
            await trio.sleep(search_hint / 1000)
            late["search"] = [await try_request(alice, SEARCH, Search("trio", limit=30))]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(retry_post)
            nursery.start_soon(retry_search)
        record("alice: POST after its retryAfterMs", late["post"][:1])
        record("alice: POST right after that", late["post"][1:])
        check_hint(late["post"][1])
        record("alice: SEARCH limit=30 after its retryAfterMs", late["search"])
    return log


async def test_buckets_per_user_per_type_with_costs(valkey_url: str | None) -> None:
    """The same scenario, the same decisions, whether the buckets are in memory or
    in Valkey (``--valkey``)."""
    limiter = make_limiter(valkey_url)
    assert isinstance(limiter, ValkeyRateLimiter if valkey_url else MemoryRateLimiter)
    try:
        with trio.fail_after(10):
            async with limited_server(limiter) as server:
                assert await scenario(server.url) == EXPECTED
        # The limiter's own count agrees (FAILED_PRECONDITION never reaches it).
        stats = limiter.statistics()
        assert (stats.allowed, stats.limited) == (13, 3)
    finally:
        if isinstance(limiter, ValkeyRateLimiter):
            assert limiter.statistics().unavailable == 0
            await limiter.aclose()


async def test_the_client_gets_a_whole_burst_through_by_obeying_the_hints() -> None:
    limiter = MemoryRateLimiter(capacity=2, tokens_per_second=20)  # a token every 50 ms
    with trio.fail_after(10):
        async with (
            limited_server(limiter) as server,
            open_client(server.url, auth=lambda: "alice") as alice,
        ):
            posted = [await request_obeying_hints(alice, POST, Post(f"p{i}")) for i in range(6)]
            assert [p.text for p in posted] == [f"p{i}" for i in range(6)]
            stats = limiter.statistics()
            assert stats.allowed == 6 and stats.limited >= 3  # refused, waited, then passed
            with pytest.raises(RpcError) as never:  # no hint makes this one pass
                await request_obeying_hints(alice, SEARCH, Search("x", limit=30))
            assert never.value.code == "FAILED_PRECONDITION"


async def test_the_valkey_flag_keeps_the_buckets_in_valkey(
    valkey_server: ValkeyServerProcess,
) -> None:
    """``python -m examples.rate_limiting.server --valkey URL``: serves, its buckets are
    in that Valkey, and Ctrl-C stops it cleanly."""
    env = {**os.environ, "PORT": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "examples.rate_limiting.server", "--valkey", valkey_server.url]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, "server exited before printing its address"
                output += chunk
        line = output.decode().strip()
        match = re.fullmatch(r"rate-limiting server listening on (ws://127\.0\.0\.1:\d+)", line)
        assert match, line
        with trio.fail_after(10):
            async with open_client(match[1], auth=lambda: "carol") as carol:
                assert await carol.request(POST, Post("hi")) == Posted("carol", "hi")
            address = parse_url(valkey_server.url)
            conn = await ValkeyConnection.connect(address.host, address.port)
            try:
                tokens = await conn.execute("HGET", "wskit:rl:public:carol:POST", "tokens")
            finally:
                await conn.aclose()
            assert tokens == b"4"  # one of five taken, in Valkey
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
