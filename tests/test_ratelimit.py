"""Rate limiting: the token-bucket maths, MemoryRateLimiter, and the rate_limit middleware."""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any, cast

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from hypothesis import given, settings
from hypothesis import strategies as st

from wskit_trio import (
    Context,
    MemoryRateLimiter,
    RateLimited,
    Router,
    RpcContext,
    key_per_ip,
    key_per_user,
    key_per_user_per_type,
    rate_limit,
)
from wskit_trio._protocol.ratelimit import MICROS, TokenBucket
from wskit_trio.testing import TestClient, open_test_app

# -- the pure bucket ------------------------------------------------------------------

Schedule = list[tuple[int, int]]


@st.composite
def schedules(draw: st.DrawFn, capacity: int) -> Schedule:
    """(time in µs, cost) pairs, times non-decreasing; costs may exceed the capacity."""
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(st.just(0), st.integers(0, 50_000), st.integers(0, 5 * MICROS)),
                st.integers(0, capacity + 2),
            ),
            min_size=1,
            max_size=60,
        )
    )
    start = draw(st.integers(0, 10**15))
    out: Schedule = []
    now = start
    for delta, cost in steps:
        now += delta
        out.append((now, cost))
    return out


def run(bucket: TokenBucket, schedule: Schedule) -> list[int]:
    """Tokens granted at each step (0 when refused)."""
    return [cost if bucket.consume(now, cost).allowed else 0 for now, cost in schedule]


def assert_window_bound(
    capacity: int, rate: Fraction, schedule: Schedule, granted: list[int]
) -> None:
    # Every window [t_i, t_j] of consecutive events, checked exactly with rationals.
    for i in range(len(schedule)):
        total = 0
        for j in range(i, len(schedule)):
            total += granted[j]
            window = Fraction(schedule[j][0] - schedule[i][0], MICROS)
            assert total <= capacity + rate * window, (i, j, total)


rates_exact = st.fractions(min_value=Fraction(1, 100), max_value=1000, max_denominator=1000)
rates_float = st.floats(min_value=0.001, max_value=10_000, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 20), rates_exact)
def test_exact_rate_never_grants_more_than_capacity_plus_rate_times_window(
    data: st.DataObject, capacity: int, rate: Fraction
) -> None:
    schedule = data.draw(schedules(capacity))
    bucket = TokenBucket(capacity, cast(float, rate), schedule[0][0])
    assert_window_bound(capacity, rate, schedule, run(bucket, schedule))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 20), rates_float)
def test_float_rate_never_grants_more_than_capacity_plus_rate_times_window(
    data: st.DataObject, capacity: int, rate: float
) -> None:
    # The bound checked exactly against the float's true value: IEEE rounding of
    # floor(elapsed * rate / 1e6) must not grant a token before its time.
    schedule = data.draw(schedules(capacity))
    bucket = TokenBucket(capacity, rate, schedule[0][0])
    assert_window_bound(capacity, Fraction(rate), schedule, run(bucket, schedule))


def check_retry_after(bucket: TokenBucket, schedule: Schedule, exact: bool) -> None:
    for now, cost in schedule:
        before = copy.copy(bucket)
        tokens = before.refill(now)
        decision = bucket.consume(now, cost)
        if decision.allowed:
            assert decision.retry_after_ms == 0
            assert decision.remaining == tokens - cost
            continue
        # Refused: nothing debited.
        assert decision.remaining == tokens == bucket.tokens
        if cost > bucket.capacity:
            assert decision.retry_after_ms is None
            continue
        wait = decision.retry_after_ms
        assert wait is not None and wait >= 1
        if exact:
            assert wait == math.ceil((cost - tokens) / Fraction(bucket.rate) * 1000)
        else:
            assert wait >= math.ceil((cost - tokens) / bucket.rate * 1000)
        # A caller that waits retry_after_ms then succeeds.
        later = copy.copy(bucket)
        assert later.consume(now + wait * 1000, cost).allowed, (bucket, cost, wait)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 20), rates_exact)
def test_exact_rate_waiting_retry_after_then_succeeds(
    data: st.DataObject, capacity: int, rate: Fraction
) -> None:
    schedule = data.draw(schedules(capacity))
    check_retry_after(TokenBucket(capacity, cast(float, rate), schedule[0][0]), schedule, True)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 20), rates_float)
def test_float_rate_waiting_retry_after_then_succeeds(
    data: st.DataObject, capacity: int, rate: float
) -> None:
    schedule = data.draw(schedules(capacity))
    check_retry_after(TokenBucket(capacity, rate, schedule[0][0]), schedule, False)


def test_a_new_bucket_starts_full() -> None:
    bucket = TokenBucket(5, 1.0, 123)
    assert [bucket.consume(123).allowed for _ in range(6)] == [True] * 5 + [False]


def test_fractional_refill_time_is_never_lost() -> None:
    # 1 token/s. WS-Kit's script would reset its refill time at 0.6 s and find no
    # whole token at 1.0 s; ours keeps the 0.6 s earned and grants at 1.0 s.
    bucket = TokenBucket(1, 1.0, 0)
    assert bucket.consume(0).allowed
    refused = bucket.consume(600_000)
    assert refused == (False, 0, 1000)
    assert bucket.consume(1_000_000).allowed
    # Polled every 100 ms at 3 tokens/s, an emptied bucket grants every third of a
    # second (a script that restarts its refill clock on every poll never refills).
    bucket = TokenBucket(5, 3.0, 0)
    assert bucket.consume(0, 5).allowed
    granted = [t for t in range(100_000, 3_000_001, 100_000) if bucket.consume(t).allowed]
    assert granted == [k * 100_000 for k in (4, 7, 10, 14, 17, 20, 24, 27, 30)]


def test_a_full_bucket_banks_no_time() -> None:
    bucket = TokenBucket(2, 1.0, 0)
    # Idle for 10.5 s while full, then a burst: only the capacity, then 1 per second.
    assert [bucket.consume(10_500_000).allowed for _ in range(3)] == [True, True, False]
    assert not bucket.consume(11_400_000).allowed
    assert bucket.consume(11_500_000).allowed


def test_cost_above_capacity_is_never_payable_and_debits_nothing() -> None:
    bucket = TokenBucket(3, 1.0, 0)
    assert bucket.consume(0, 4) == (False, 3, None)
    assert bucket.consume(0, 3) == (True, 0, 0)
    assert bucket.consume(0, 0) == (True, 0, 0)


def test_a_clock_going_backwards_grants_nothing_twice() -> None:
    bucket = TokenBucket(1, 1.0, 10 * MICROS)
    assert bucket.consume(10 * MICROS).allowed
    assert not bucket.consume(5 * MICROS).allowed  # jumped back 5 s: re-anchored there
    assert not bucket.consume(5 * MICROS + 999_999).allowed
    assert bucket.consume(6 * MICROS).allowed


@pytest.mark.parametrize(
    ("capacity", "rate", "error"),
    [(0, 1.0, ValueError), (1.5, 1.0, TypeError), (True, 1.0, TypeError), (1, 0, ValueError),
     (1, -1.0, ValueError), (1, math.inf, ValueError), (1, math.nan, ValueError),
     (1, "1", TypeError)],
)  # fmt: skip
def test_bad_parameters_are_refused(capacity: Any, rate: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        TokenBucket(capacity, rate, 0)
    with pytest.raises(error):
        MemoryRateLimiter(capacity=capacity, tokens_per_second=rate)


@pytest.mark.parametrize(("cost", "error"), [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_costs_are_refused(cost: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        TokenBucket(3, 1.0, 0).consume(0, cost)


# -- MemoryRateLimiter ----------------------------------------------------------------


async def test_memory_limiter_waits_retry_after_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = MemoryRateLimiter(capacity=3, tokens_per_second=4)
    assert [(await limiter.consume("k")).allowed for _ in range(3)] == [True] * 3
    refused = await limiter.consume("k", 2)
    assert refused == (False, 0, 500)
    await trio.sleep(0.499)
    assert not limiter.consume_nowait("k", 2).allowed
    await trio.sleep(0.001)
    assert limiter.consume_nowait("k", 2) == (True, 0, 0)
    # Keys are independent.
    assert limiter.consume_nowait("other", 3).allowed
    assert limiter.statistics() == attrs.evolve(limiter.statistics(), allowed=5, limited=2)


async def test_memory_limiter_check_and_debit_is_atomic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = MemoryRateLimiter(capacity=10, tokens_per_second=1)
    granted: list[bool] = []

    async def hammer() -> None:
        for _ in range(5):
            granted.append((await limiter.consume("shared")).allowed)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(hammer)
    assert sum(granted) == 10
    assert len(granted) == 100


async def test_memory_limiter_evicts_idle_buckets(autojump_clock: trio.testing.MockClock) -> None:
    # Full again after (5 + 1) / 10 = 0.6 s idle: such buckets are forgotten.
    limiter = MemoryRateLimiter(capacity=5, tokens_per_second=10)
    assert limiter.consume_nowait("hot", 5).allowed
    sizes = []
    for i in range(20_000):
        limiter.consume_nowait(f"k{i}")
        if i % 100 == 99:
            await trio.sleep(0.01)  # 100 new keys per 10 ms: ~6000 within 0.6 s
            sizes.append(limiter.statistics().keys)
            if i < 3_000:
                # The drained key is still remembered (its debt is not forgiven).
                assert limiter.peek("hot") < 5
    assert max(sizes) <= 6_200
    assert limiter.statistics().keys <= 6_200
    # After a quiet second every old bucket goes, up to 64 per consume.
    await trio.sleep(1)
    for _ in range(100):
        limiter.consume_nowait("last")
    assert limiter.statistics().keys == 1


async def test_memory_limiter_max_keys_forgets_the_least_recently_used(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = MemoryRateLimiter(capacity=1, tokens_per_second=0.001, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.consume_nowait(key).allowed
    assert not limiter.consume_nowait("a").allowed  # a is now the most recent
    assert limiter.consume_nowait("d").allowed  # forgets b
    assert limiter.statistics().keys == 3
    assert limiter.consume_nowait("b").allowed  # b starts over (full); forgets c
    assert not limiter.consume_nowait("a").allowed


# -- keys ---------------------------------------------------------------------------


@attrs.frozen
class Tenanted:
    user_id: str | None
    tenant_id: str | None


class FakeCtx:
    def __init__(self, data: Any, type: str = "PING") -> None:
        self.data = data
        self.type = type


@pytest.mark.parametrize(
    ("data", "per_type", "per_user"),
    [
        (None, "rl:public:anon:PING", "rl:public:anon"),
        (Conn(), "rl:public:anon:PING", "rl:public:anon"),
        (Conn(user_id="u1"), "rl:public:u1:PING", "rl:public:u1"),
        ({"user_id": "u1", "tenant_id": "t1"}, "rl:t1:u1:PING", "rl:t1:u1"),
        ({"user_id": 7}, "rl:public:7:PING", "rl:public:7"),
        (Tenanted(None, "t1"), "rl:t1:anon:PING", "rl:t1:anon"),
        # ':' and '%' are escaped, so ("a:b", "c") and ("a", "b:c") cannot collide.
        (Tenanted("b:c", "a"), "rl:a:b%3Ac:PING", "rl:a:b%3Ac"),
        (Tenanted("c", "a:b"), "rl:a%3Ab:c:PING", "rl:a%3Ab:c"),
        (Tenanted("50%", "t"), "rl:t:50%25:PING", "rl:t:50%25"),
    ],
)
def test_key_functions(data: Any, per_type: str, per_user: str) -> None:
    ctx = cast(Context[Any, Any], FakeCtx(data))
    assert key_per_user_per_type(ctx) == per_type
    assert key_per_user(ctx) == per_user


# -- the middleware -------------------------------------------------------------------


def limited_frame(
    retry_after_ms: int, *, cost: int = 1, capacity: int = 2, remaining: int = 0, cid: str = ""
) -> dict[str, Any]:
    return {
        "type": "RPC_ERROR" if cid else "ERROR",
        "meta": {"correlationId": cid} if cid else {},
        "payload": {
            "code": "RESOURCE_EXHAUSTED",
            "message": "Rate limit exceeded",
            "details": {"cost": cost, "capacity": capacity, "remaining": remaining},
            "retryable": True,
            "retryAfterMs": retry_after_ms,
        },
    }


def pong_router(calls: list[str], *middleware: Any) -> Router[Conn]:
    router: Router[Conn] = Router()
    for mw in middleware:
        router.use(mw)

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        calls.append(ctx.payload.text)
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        calls.append(ctx.payload.text)
        await ctx.reply(Pong(reply=ctx.payload.text))

    return router


async def assert_pong(client: TestClient[Conn], text: str) -> None:
    frame = await client.receive()
    assert frame.raw == {"type": "PONG", "meta": {}, "payload": {"reply": text}}


async def test_over_the_limit_is_resource_exhausted_and_the_connection_stays_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    limiter = MemoryRateLimiter(capacity=2, tokens_per_second=2)
    router = pong_router(calls, rate_limit(limiter=limiter))
    async with open_test_app(router) as app:
        client = await app.connect(Conn(user_id="u1"))
        for text in ("a", "b", "c"):
            await client.send(PING, Ping(text))
        await assert_pong(client, "a")
        await assert_pong(client, "b")
        assert (await client.receive()).raw == limited_frame(500)
        assert calls == ["a", "b"]
        assert isinstance(app.errors[-1], RateLimited)
        # An RPC draws from its own type's bucket (key_per_user_per_type) ...
        for text in ("r1", "r2", "r3"):
            await client.request(ECHO, Ping(text), correlation_id=text)
        # RPCs run concurrently (trio picks their order): any two pass, one is limited.
        answers = {f.correlation_id: f for f in [await client.receive() for _ in range(3)]}
        (limited,) = [cid for cid, f in answers.items() if f.error_code is not None]
        assert answers[limited].raw == limited_frame(500, cid=limited or "")
        passed = sorted({"r1", "r2", "r3"} - {limited})
        for cid in passed:
            assert answers[cid].payload == {"reply": cid}
        # ... and after retryAfterMs the next message goes through.
        await trio.sleep(0.5)
        await client.send(PING, Ping("d"))
        await assert_pong(client, "d")
        assert client.closed is None
        assert calls[:2] == ["a", "b"] and sorted(calls[2:4]) == passed
        assert calls[4:] == ["d"]


async def test_cost_above_capacity_is_failed_precondition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    limiter = MemoryRateLimiter(capacity=2, tokens_per_second=2)
    costs = {"big": 3, "free": 0}
    mw = rate_limit(limiter=limiter, cost=lambda ctx: costs.get(ctx.payload.text, 1))
    async with open_test_app(pong_router(calls, mw)) as app:
        client = await app.connect(Conn(user_id="u1"))
        await client.send(PING, Ping("big"))
        assert (await client.receive()).raw == {
            "type": "ERROR",
            "meta": {},
            "payload": {
                "code": "FAILED_PRECONDITION",
                "message": "Cost 3 exceeds the rate limit capacity 2",
                "details": {"cost": 3, "capacity": 2},
                "retryable": False,
            },
        }
        assert limiter.statistics().keys == 0  # the limiter was not consulted
        # Cost 0 bypasses the limiter altogether, even when the bucket is empty.
        await client.send(PING, Ping("x"))
        await client.send(PING, Ping("y"))
        await client.send(PING, Ping("free"))
        for text in ("x", "y", "free"):
            await assert_pong(client, text)
        assert limiter.statistics().allowed == 2
        assert calls == ["x", "y", "free"]


async def test_a_bad_cost_is_an_internal_error(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []
    limiter = MemoryRateLimiter(capacity=2, tokens_per_second=2)
    mw = rate_limit(limiter=limiter, cost=lambda ctx: -1)
    async with open_test_app(pong_router(calls, mw)) as app:
        client = await app.connect(Conn(user_id="u1"))
        await client.send(PING, Ping("a"))
        frame = await client.receive()
        assert frame.raw["payload"]["code"] == "INTERNAL"
        assert frame.raw["payload"]["message"] == "Internal error"
        assert calls == []
        assert isinstance(app.errors[-1].__cause__, ValueError)


async def test_users_have_their_own_buckets_and_anonymous_clients_share_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    limiter = MemoryRateLimiter(capacity=1, tokens_per_second=1)
    async with open_test_app(pong_router(calls, rate_limit(limiter=limiter))) as app:
        alice = await app.connect(Conn(user_id="alice"))
        bob = await app.connect(Conn(user_id="bob"))
        anon1 = await app.connect(Conn())
        anon2 = await app.connect(None)
        for client in (alice, bob, anon1):
            await client.send(PING, Ping("hi"))
            await assert_pong(client, "hi")
        await anon2.send(PING, Ping("hi"))
        assert (await anon2.receive()).raw == limited_frame(1000, capacity=1)
        await alice.send(PING, Ping("again"))
        assert (await alice.receive()).raw == limited_frame(1000, capacity=1)


async def test_per_route_limit_with_key_per_user(autojump_clock: trio.testing.MockClock) -> None:
    limiter = MemoryRateLimiter(capacity=3, tokens_per_second=1)
    router: Router[Conn] = Router()
    mw = rate_limit(limiter=limiter, key=key_per_user, cost=lambda ctx: 2)

    @router.on(PING, middleware=[mw])
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    @router.rpc(ECHO)  # not limited
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await ctx.reply(Pong(reply=ctx.payload.text))

    async with open_test_app(router) as app:
        client = await app.connect(Conn(user_id="u1"))
        await client.send(PING, Ping("a"))
        await assert_pong(client, "a")
        await client.send(PING, Ping("b"))
        assert (await client.receive()).raw == limited_frame(1000, cost=2, capacity=3, remaining=1)
        for i in range(5):
            await client.request(ECHO, Ping(str(i)))
            assert (await client.receive()).type == "ECHOED"
        assert limiter.peek("rl:public:u1") == 1


async def test_key_per_ip_gives_each_client_address_its_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = MemoryRateLimiter(capacity=1, tokens_per_second=1)
    router: Router[Conn] = Router()
    router.use(rate_limit(limiter=limiter, key=key_per_ip))

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    async with open_test_app(router) as app:
        first = await app.connect(Conn(), client_ip="192.0.2.1")
        same = await app.connect(Conn(), client_ip="192.0.2.1")
        other = await app.connect(Conn(), client_ip="2001:db8::1")
        await first.send(PING, Ping("a"))
        await assert_pong(first, "a")
        await same.send(PING, Ping("b"))
        assert (await same.receive()).error_code == "RESOURCE_EXHAUSTED"
        await other.send(PING, Ping("c"))
        await assert_pong(other, "c")
    assert limiter.peek("rl:ip:192.0.2.1") == 0
    assert limiter.peek("rl:ip:2001%3Adb8%3A%3A1") == 0
