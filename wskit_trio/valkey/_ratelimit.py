"""Token buckets shared by every instance, in Valkey: one Lua script per consume.

Each bucket is a hash ``<prefix><key>`` with fields ``tokens``, ``anchor`` and
``count`` (the state of :class:`wskit_trio._protocol.ratelimit.TokenBucket`), and
a TTL refreshed on every consume. The script reads the server's ``TIME``, refills,
checks and debits in one atomic step, so any number of instances can draw from
one bucket and together never grant more than ``capacity + rate * window``.

The script follows the in-memory bucket operation for operation (same IEEE
doubles, same order), so both limiters give the same decisions on the same
schedule. Unlike WS-Kit's Redis script it keeps the fraction of a token earned
between consumes instead of losing it on every call.

On a Valkey Cluster (``from_url("valkey+cluster://host1:port,host2:port", ...)``)
each consume goes to the primary owning its bucket's slot (the script touches that
one key), so buckets spread over the shards and every instance still shares each.

When Valkey cannot be reached the limiter **fails closed** by default: the
message is refused with ``UNAVAILABLE`` (retryable; the client retries after
the suggested backoff) rather than let through unlimited. ``fail_open=True``
lets messages through instead while Valkey is down. An outage (from the first
consume that could not reach Valkey to the next one that did) is logged once on
``wskit_trio.valkey``: a WARNING when it begins, an INFO with its length when it
ends (see ``_outage``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Self

import attrs
import trio

from .._errors import ValkeyError, ValkeyUnavailable, WsKitError
from .._protocol.codes import ErrorCode
from .._protocol.ratelimit import MICROS, Decision, check_cost, check_parameters
from ._cluster import ValkeyCluster, is_cluster_url, parse_cluster_url
from ._commands import Commands, NodeCommands, commands_of
from ._connection import TRANSIENT_ERRORS, ValkeyConnection, parse_url
from ._outage import Outage, redact_url, valkey_url

__all__ = ["ValkeyRateLimiter", "ValkeyRateLimiterStatistics"]

#: KEYS[1] = bucket; ARGV = capacity, rate, cost, ttl_ms, now_us ("" = server TIME).
#: Returns {allowed (0/1), tokens left, retry_after_ms (-1 = never)}.
#: Mirrors TokenBucket.refill / consume line by line; numbers are written back with
#: %.0f because Lua's default number format keeps only 14 digits (µs need 16).
SCRIPT: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[5] ~= "" then
  now = tonumber(ARGV[5])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local state = redis.call("HMGET", KEYS[1], "tokens", "anchor", "count")
local tokens = tonumber(state[1])
local anchor = tonumber(state[2])
local count = tonumber(state[3])
if tokens == nil or anchor == nil or count == nil then
  tokens = capacity
  anchor = now
  count = 0
end
if tokens >= capacity then
  tokens = capacity
  anchor = now
  count = 0
else
  local total = math.floor((now - anchor) * rate / 1000000)
  if total < count then
    anchor = now
    count = 0
  elseif total > count then
    tokens = tokens + (total - count)
    if tokens >= capacity then
      tokens = capacity
      anchor = now
      count = 0
    else
      count = total
    end
  end
end
local allowed = 0
local retry = 0
if cost > capacity then
  retry = -1
elseif tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  local deficit = cost - tokens
  retry = math.ceil(deficit / rate * 1000)
  for _ = 1, 3 do
    if math.floor((now + retry * 1000 - anchor) * rate / 1000000) - count >= deficit then
      break
    end
    retry = retry + 1
  end
end
redis.call("HSET", KEYS[1], "tokens", string.format("%.0f", tokens),
  "anchor", string.format("%.0f", anchor), "count", string.format("%.0f", count))
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return {allowed, tokens, retry}
"""
SCRIPT_SHA: Final = hashlib.sha1(SCRIPT.encode()).hexdigest()


@attrs.frozen
class ValkeyRateLimiterStatistics:
    """A limiter's counters since it was created. ``unavailable`` counts consumes
    that could not reach Valkey (refused, or let through with ``fail_open``)."""

    allowed: int
    limited: int
    unavailable: int
    connects: int
    last_error: str | None


class ValkeyRateLimiter:
    """A :class:`~wskit_trio.ratelimit.RateLimiter` whose buckets live in Valkey.

    >>> limiter = ValkeyRateLimiter.from_url("valkey://host:6379", capacity=10,
    ...                                      tokens_per_second=2)
    >>> router.use(rate_limit(limiter=limiter))

    ``from_url`` connects on first use and again after a lost connection (at most
    once per ``reconnect_interval``; meanwhile consumes fail at once); a ``connect``
    factory does the same with connections you open. Given a ``connection``
    instead, the limiter uses it as is and never closes it. Either may be a
    :class:`~wskit_trio.valkey.ValkeyCluster` instead of a node's connection.

    Every consume is bounded by ``command_timeout``. ``ttl_ms`` (default: twice the
    time to refill an empty bucket, at least 60 s) only lets idle buckets go:
    a bucket idle that long is full again, so nothing changes for its key.
    ``clock`` (seconds) replaces the server's ``TIME``, for tests and replays only:
    instances with different clocks must not share buckets.
    """

    def __init__(
        self,
        connection: ValkeyConnection | ValkeyCluster | None = None,
        *,
        capacity: int,
        tokens_per_second: float,
        prefix: str = "wskit:",
        ttl_ms: int | None = None,
        command_timeout: float = 2.0,
        fail_open: bool = False,
        clock: Callable[[], float] | None = None,
        connect: Callable[[], Awaitable[ValkeyConnection | ValkeyCluster]] | None = None,
        reconnect_interval: float = 0.5,
    ) -> None:
        check_parameters(capacity, tokens_per_second)
        if connection is None and connect is None:
            raise TypeError("ValkeyRateLimiter needs a connection (or use from_url)")
        self._capacity = capacity
        self._rate = float(tokens_per_second)
        self._rate_arg = repr(self._rate)  # round-trips exactly through Lua's tonumber
        self.prefix = prefix
        if ttl_ms is None:
            ttl_ms = math.ceil(max(2 * capacity / self._rate, 60.0) * 1000)
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be positive")
        self.ttl_ms = ttl_ms
        self._timeout = command_timeout
        self.fail_open = fail_open
        self._clock = clock
        self._conn: Commands | None = None if connection is None else commands_of(connection)
        self._connect = connect
        self._reconnect_interval = reconnect_interval
        self._connect_lock = trio.Lock()
        self._retry_connect_at = -math.inf
        self._allowed = self._limited = self._unavailable = self._connects = 0
        self._last_error: str | None = None
        self._outage = Outage("rate limiter", _where(connection))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        capacity: int,
        tokens_per_second: float,
        prefix: str = "wskit:",
        ttl_ms: int | None = None,
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
        fail_open: bool = False,
        reconnect_interval: float = 0.5,
    ) -> ValkeyRateLimiter:
        """From ``valkey://[:password@]host[:port][/db]``, or
        ``valkey+cluster://[:password@]host1:port1,host2:port2`` (seed nodes of a Valkey
        Cluster); connects on first use."""
        connect: Callable[[], Awaitable[ValkeyConnection | ValkeyCluster]]
        if is_cluster_url(url):
            seeds = parse_cluster_url(url)
            password = seeds.password

            async def connect() -> ValkeyCluster:
                return await ValkeyCluster.connect(
                    seeds, connect_timeout=connect_timeout, command_timeout=command_timeout
                )

        else:
            address = parse_url(url)
            password = address.password

            async def connect() -> ValkeyConnection:
                return await ValkeyConnection.connect(
                    address.host,
                    address.port,
                    password=address.password,
                    db=address.db,
                    connect_timeout=connect_timeout,
                )

        limiter = cls(
            capacity=capacity,
            tokens_per_second=tokens_per_second,
            prefix=prefix,
            ttl_ms=ttl_ms,
            command_timeout=command_timeout,
            fail_open=fail_open,
            connect=connect,
            reconnect_interval=reconnect_interval,
        )
        limiter._outage.where = redact_url(url)
        limiter._outage.secret = password
        return limiter

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def tokens_per_second(self) -> float:
        return self._rate

    def statistics(self) -> ValkeyRateLimiterStatistics:
        return ValkeyRateLimiterStatistics(
            self._allowed, self._limited, self._unavailable, self._connects, self._last_error
        )

    async def consume(self, key: str, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them, atomically
        across every instance.

        Raises ``WsKitError(UNAVAILABLE)`` when Valkey cannot answer within
        ``command_timeout`` (with ``fail_open``: returns an allowed decision with
        ``remaining=0`` instead).
        """
        check_cost(cost)
        now = "" if self._clock is None else str(round(self._clock() * MICROS))
        bucket = self.prefix + key
        args: tuple[str | int, ...] = (
            1, bucket, self._capacity, self._rate_arg, cost, self.ttl_ms, now,
        )  # fmt: skip
        reply: Any = None
        try:
            with trio.move_on_after(self._timeout):
                conn = await self._connection()
                try:
                    reply = await conn.execute("EVALSHA", SCRIPT_SHA, *args, key=bucket)
                except ValkeyError as exc:
                    if exc.kind != "NOSCRIPT":
                        raise
                    reply = await conn.execute("EVAL", SCRIPT, *args, key=bucket)
            if reply is None:
                reason = f"no answer from Valkey within {self._timeout}s"
                if self._connect is not None and isinstance(self._conn, NodeCommands):
                    # Ours: a stalled connection would hold up every later consume.
                    # (A cluster client bounds and replaces its nodes' connections
                    # itself: one shard failing over is no reason to drop the others.)
                    conn, self._conn = self._conn, None
                    await conn.aclose()
                raise ValkeyUnavailable(reason)
        except ValkeyUnavailable as exc:
            return self._unavailable_decision(str(exc))
        except ValkeyError as exc:
            if exc.kind not in TRANSIENT_ERRORS:
                raise
            return self._unavailable_decision(exc.message)
        self._outage.ok()
        allowed, remaining, retry = (int(v) for v in reply)
        if allowed:
            self._allowed += 1
            return Decision(True, remaining, 0)
        self._limited += 1
        return Decision(False, remaining, None if retry < 0 else retry)

    def _unavailable_decision(self, reason: str) -> Decision:
        self._unavailable += 1
        self._last_error = reason
        self._outage.failed(reason)
        if self.fail_open:
            return Decision(True, 0, 0)
        raise WsKitError(ErrorCode.UNAVAILABLE, "Rate limiter unavailable")

    async def _connection(self) -> Commands:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connect is None:
            raise ValkeyUnavailable("the rate limiter's Valkey connection is closed")
        async with self._connect_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn  # another task connected meanwhile
            if trio.current_time() < self._retry_connect_at:
                raise ValkeyUnavailable(self._last_error or "Valkey unavailable")
            try:
                self._conn = commands_of(await self._connect())
            except (ValkeyUnavailable, ValkeyError):
                self._retry_connect_at = trio.current_time() + self._reconnect_interval
                raise
            self._connects += 1
            return self._conn

    async def aclose(self) -> None:
        """Close the connection, if this limiter opened it."""
        if self._connect is not None and self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _where(connection: ValkeyConnection | ValkeyCluster | None) -> str:
    """The address to name in outage logs when no URL is known (``from_url`` sets
    that): the given connection's peer, else where the connections come from."""
    if isinstance(connection, ValkeyCluster):
        host, port = connection.address.seeds[0].host, connection.address.seeds[0].port
        return valkey_url(host, port).replace("valkey://", "valkey+cluster://")
    if connection is not None:
        try:
            peer = connection._stream.socket.getpeername()
        except OSError:  # closed already
            peer = None
        if isinstance(peer, tuple):
            return valkey_url(peer[0], peer[1])
        return "<the given connection>"
    return "<from the connect factory>"
