"""Rate limiting: token buckets per key, as middleware.

>>> limiter = MemoryRateLimiter(capacity=10, tokens_per_second=2)
>>> router.use(rate_limit(limiter=limiter))                      # every message
>>> router.on(SEARCH, search, middleware=[rate_limit(limiter=limiter, cost=lambda ctx: 5)])

A message over the limit is answered with ``RESOURCE_EXHAUSTED`` (retryable, with
``retryAfterMs`` and ``details`` ``{cost, capacity, remaining}``); a message whose
cost exceeds the bucket's capacity, which no wait could pay, with
``FAILED_PRECONDITION``. Either way its handler does not run and the connection
stays open. A cost of ``0`` bypasses the limiter.

**Who is who.** The key functions read the user and the tenant from the
connection data (what ``authenticate`` returned): the ``user_id`` and
``tenant_id`` keys of a dict, or attributes of that name on any other object.
A missing or ``None`` user is ``anon``, a missing or ``None`` tenant ``public``
(so every anonymous client of a tenant shares one bucket; key on
``ctx.client_id`` for per-connection limits). ``:`` and ``%`` inside ids are
percent-encoded so that no two (tenant, user) pairs share a key.

Limiters: :class:`MemoryRateLimiter` for one process; ``ValkeyRateLimiter``
(``wskit_trio.valkey``) shares buckets between instances. Both follow the same
bucket rules (``wskit_trio._protocol.ratelimit``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeAlias

import attrs
import trio

from ._context import Context
from ._errors import RateLimited, WsKitError
from ._protocol.codes import ErrorCode
from ._protocol.ratelimit import MICROS, Decision, TokenBucket, check_cost, check_parameters
from ._router import Middleware, Next

__all__ = [
    "CostFunction",
    "KeyFunction",
    "MemoryRateLimiter",
    "RateLimitDecision",
    "RateLimiter",
    "RateLimiterStatistics",
    "key_per_user",
    "key_per_user_per_type",
    "rate_limit",
]

#: The outcome of one consume: ``allowed``, ``remaining`` tokens, ``retry_after_ms``
#: (``0`` when allowed, ``None`` when the cost exceeds the capacity).
RateLimitDecision: TypeAlias = Decision
#: ``key(ctx) -> str``: which bucket a message draws from.
KeyFunction: TypeAlias = Callable[[Context[Any, Any]], str]
#: ``cost(ctx) -> int``: how many tokens a message takes (a non-negative int).
CostFunction: TypeAlias = Callable[[Context[Any, Any]], int]


class RateLimiter(Protocol):
    """What :func:`rate_limit` needs: buckets of one ``capacity`` and rate, by key."""

    @property
    def capacity(self) -> int: ...

    @property
    def tokens_per_second(self) -> float: ...

    async def consume(self, key: str, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them, atomically."""
        ...


# -- who is who ---------------------------------------------------------------------

_ABSENT: Any = object()


def data_field(data: object, name: str) -> object:
    """``data[name]`` for a mapping, ``data.name`` otherwise; ``None`` if absent."""
    if data is None:
        return None
    if type(data) is dict:
        return data.get(name)
    value = getattr(data, name, _ABSENT)
    if value is not _ABSENT:
        return value
    if isinstance(data, Mapping):  # checked last: ABC checks are slow
        return data.get(name)
    return None


def _part(value: object, default: str) -> str:
    if value is None:
        return default
    text = value if isinstance(value, str) else str(value)
    if ":" in text or "%" in text:
        text = text.replace("%", "%25").replace(":", "%3A")
    return text


def key_per_user(ctx: Context[Any, Any]) -> str:
    """``rl:{tenant}:{user}``: one bucket per user across every message type."""
    data = ctx.data
    tenant = _part(data_field(data, "tenant_id"), "public")
    user = _part(data_field(data, "user_id"), "anon")
    return f"rl:{tenant}:{user}"


def key_per_user_per_type(ctx: Context[Any, Any]) -> str:
    """``rl:{tenant}:{user}:{type}``: each user gets a bucket per message type."""
    return f"{key_per_user(ctx)}:{ctx.type}"


def key_per_ip(ctx: Context[Any, Any]) -> str:
    """``rl:ip:{address}``: one bucket per client address, for anonymous traffic.
    Behind a reverse proxy, list it in ``serve(trusted_proxies=...)``, or every
    client shares the proxy's bucket."""
    return f"rl:ip:{_part(ctx.request.client_ip, 'unknown')}"


def _cost_one(ctx: Context[Any, Any]) -> int:
    return 1


# -- the middleware ---------------------------------------------------------------


def rate_limit(
    *,
    limiter: RateLimiter,
    key: KeyFunction = key_per_user_per_type,
    cost: CostFunction = _cost_one,
) -> Middleware[Any]:
    """Middleware taking ``cost(ctx)`` tokens from the bucket ``key(ctx)`` of
    ``limiter`` before the handler runs.

    * Over the limit: ``RESOURCE_EXHAUSTED`` (raised as :class:`RateLimited`),
      details ``{cost, capacity, remaining}``, ``retryAfterMs`` when to try again.
    * Cost above the capacity: ``FAILED_PRECONDITION``, details ``{cost, capacity}``.
    * Cost ``0``: the limiter is not consulted.

    The handler is skipped in both refusals; the connection stays open. ``cost``
    must return a non-negative ``int``; anything else is a bug in the app, answered
    ``INTERNAL``.
    """
    capacity = limiter.capacity

    async def rate_limit_middleware(ctx: Context[Any, Any], next: Next) -> None:
        n = check_cost(cost(ctx))
        if n == 0:
            await next()
            return
        if n > capacity:
            raise WsKitError(
                ErrorCode.FAILED_PRECONDITION,
                f"Cost {n} exceeds the rate limit capacity {capacity}",
                {"cost": n, "capacity": capacity},
            )
        decision = await limiter.consume(key(ctx), n)
        if not decision.allowed:
            raise RateLimited(
                cost=n,
                capacity=capacity,
                remaining=decision.remaining,
                retry_after_ms=decision.retry_after_ms,
            )
        await next()

    return rate_limit_middleware


# -- one process ------------------------------------------------------------------


class _Bucket(TokenBucket):
    __slots__ = ("used",)

    def __init__(self, capacity: int, tokens_per_second: float, now_us: int) -> None:
        super().__init__(capacity, tokens_per_second, now_us)
        #: Last consume, µs.
        self.used = now_us


@attrs.frozen
class RateLimiterStatistics:
    """A limiter's counters since it was created."""

    #: Buckets held right now (idle ones are evicted).
    keys: int
    allowed: int
    limited: int


class MemoryRateLimiter:
    """Token buckets in this process's memory, one per key.

    Time is ``trio.current_time()`` (so ``MockClock`` drives it in tests), read
    in whole microseconds, or ``clock()`` when given (seconds). Each consume is a
    plain function call with no await inside, so check-and-debit is atomic.

    A bucket is forgotten once it has been idle long enough to be full again
    (``(capacity + 1) / tokens_per_second`` seconds): a new bucket starts full, so
    nothing changes for its key, and memory holds only the keys active within that
    window. ``max_keys`` additionally caps the number of buckets by forgetting the
    least recently used (which forgives that key's debt; off by default).
    """

    def __init__(
        self,
        *,
        capacity: int,
        tokens_per_second: float,
        max_keys: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_parameters(capacity, tokens_per_second)
        if max_keys is not None and max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._capacity = capacity
        self._rate = tokens_per_second
        self._max_keys = max_keys
        self._clock = clock or trio.current_time
        #: After this many µs untouched a bucket is surely full again (one token spare
        #: for rounding), so forgetting it changes nothing.
        self._idle_us = math.ceil((capacity + 1) / tokens_per_second * MICROS)
        #: Least recently used first.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: No bucket can be idle long enough to go before this time (µs).
        self._evict_at = math.inf
        self._allowed = 0
        self._limited = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def tokens_per_second(self) -> float:
        return self._rate

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(len(self._buckets), self._allowed, self._limited)

    def consume_nowait(self, key: str, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them (else none)."""
        now = round(self._clock() * MICROS)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if self._max_keys is not None and len(buckets) >= self._max_keys:
                self._evict(now)
                while len(buckets) >= self._max_keys:
                    buckets.popitem(last=False)
            bucket = buckets[key] = _Bucket(self._capacity, self._rate, now)
            if self._evict_at == math.inf:
                self._evict_at = now + self._idle_us
        else:
            buckets.move_to_end(key)
        bucket.used = now
        decision = bucket.consume(now, cost)
        if now >= self._evict_at:
            self._evict(now)
        if decision.allowed:
            self._allowed += 1
        else:
            self._limited += 1
        return decision

    async def consume(self, key: str, cost: int = 1) -> RateLimitDecision:
        """:meth:`consume_nowait` for the :class:`RateLimiter` protocol (it does not
        yield: no I/O, and a middleware's ``next()`` checkpoints soon enough)."""
        return self.consume_nowait(key, cost)

    def peek(self, key: str) -> int:
        """Tokens ``key`` could take right now (without taking any)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self._capacity
        return bucket.refill(round(self._clock() * MICROS))

    def reset(self, key: str | None = None) -> None:
        """Forget ``key``'s bucket (it starts full again), or every bucket."""
        if key is None:
            self._buckets.clear()
        else:
            self._buckets.pop(key, None)

    def _evict(self, now: int) -> None:
        buckets = self._buckets
        horizon = now - self._idle_us
        # Least recently used first: stop at the first one still in use. At most 64 per
        # call, so a mass expiry costs no long stall; each call adds at most one key, so
        # a backlog still drains quickly.
        for _ in range(64):
            if not buckets:
                self._evict_at = math.inf
                return
            key, oldest = next(iter(buckets.items()))
            if oldest.used > horizon:
                self._evict_at = oldest.used + self._idle_us
                return
            del buckets[key]
        # More to go: look again on the next call.

    async def aclose(self) -> None:
        """Nothing to release (for symmetry with ``ValkeyRateLimiter``)."""
        self._buckets.clear()
