"""Rate limiting: per-user, per-type token buckets with a cost function.

Run it:   python -m examples.rate_limiting.server                (PORT=3070 by default)
          python -m examples.rate_limiting.server --valkey valkey://127.0.0.1:6379
Try it:   python -m examples.rate_limiting.client alice

Every message draws from its sender's bucket for its type (``key_per_user_per_type``:
Alice's ``POST`` bucket, Alice's ``SEARCH`` bucket, Bob's ``POST`` bucket...). Each
bucket holds ``CAPACITY`` tokens and refills ``TOKENS_PER_SECOND``. ``cost`` says
what a message takes: a ``POST`` one token, a ``SEARCH`` one token per
``RESULTS_PER_TOKEN`` results asked for. The answers:

* enough tokens: the handler runs;
* not enough now: ``RESOURCE_EXHAUSTED`` with ``details {cost, capacity, remaining}``
  and ``retryAfterMs``, the wait after which the same request will pass;
* more than the bucket can ever hold: ``FAILED_PRECONDITION`` (no wait helps).

The buckets live in this process (``MemoryRateLimiter``), or with ``--valkey URL``
in Valkey (``ValkeyRateLimiter``: one atomic Lua script per message, so every
instance sharing that Valkey draws from the same buckets). Same decisions either way.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

import attrs
import trio

from wskit_trio import (
    Context,
    MemoryRateLimiter,
    RateLimiter,
    Router,
    RpcContext,
    UpgradeRequest,
    key_per_user_per_type,
    rate_limit,
    rpc,
    serve,
)
from wskit_trio.valkey import ValkeyRateLimiter

DEFAULT_PORT = 3070
#: Tokens per bucket: the burst a user may send of one type ...
CAPACITY = 5
#: ... and the refill rate, tokens per second.
TOKENS_PER_SECOND = 2.0
#: A search costs one token per this many results asked for.
RESULTS_PER_TOKEN = 10


@attrs.define
class User:
    """Per-connection data. ``user_id`` is what ``key_per_user_per_type`` reads."""

    user_id: str


@attrs.frozen
class Post:
    text: str


@attrs.frozen
class Posted:
    user: str
    text: str


@attrs.frozen
class Search:
    query: str
    limit: int = 10


@attrs.frozen
class Results:
    query: str
    hits: list[str]


POST = rpc("POST", Post, "POSTED", Posted)
SEARCH = rpc("SEARCH", Search, "RESULTS", Results)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def authenticate(request: UpgradeRequest) -> User | None:
    """Demo auth: the token is the user id. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return User(user_id=token)


def cost(ctx: Context[Any, Any]) -> int:
    """Tokens a message takes: a search one per ``RESULTS_PER_TOKEN`` results asked
    for (at least one), anything else one."""
    payload = ctx.payload
    if isinstance(payload, Search):
        return max(1, math.ceil(payload.limit / RESULTS_PER_TOKEN))
    return 1


def make_limiter(valkey_url: str | None = None) -> RateLimiter:
    """The buckets: in memory, or in the Valkey at ``valkey_url``."""
    if valkey_url:
        return ValkeyRateLimiter.from_url(
            valkey_url, capacity=CAPACITY, tokens_per_second=TOKENS_PER_SECOND
        )
    return MemoryRateLimiter(capacity=CAPACITY, tokens_per_second=TOKENS_PER_SECOND)


def build_router(limiter: RateLimiter | None = None) -> Router[User]:
    router: Router[User] = Router()
    if limiter is None:  # (not `limiter or ...`: an empty MemoryRateLimiter is falsy)
        limiter = make_limiter()
    # Before every handler: take cost(ctx) tokens from the sender's bucket for this type.
    router.use(rate_limit(limiter=limiter, key=key_per_user_per_type, cost=cost))

    @router.rpc(POST)
    async def post(ctx: RpcContext[Post, Posted, User]) -> None:
        await ctx.reply(Posted(user=ctx.data.user_id, text=ctx.payload.text))

    @router.rpc(SEARCH)
    async def search(ctx: RpcContext[Search, Results, User]) -> None:
        query, limit = ctx.payload.query, max(0, ctx.payload.limit)
        await ctx.reply(Results(query, [f"{query} #{i + 1}" for i in range(limit)]))

    return router


async def main(port: int, valkey_url: str | None = None) -> None:
    limiter = make_limiter(valkey_url)
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                serve(build_router(limiter), host="127.0.0.1", port=port, authenticate=authenticate)
            )
            print(f"rate-limiting server listening on {server.url}", flush=True)
    finally:
        if isinstance(limiter, ValkeyRateLimiter):
            await limiter.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.rate_limiting.server")
    parser.add_argument("--valkey", metavar="URL", help="keep the buckets in this Valkey")
    args = parser.parse_args()
    trio.run(main, int(os.environ.get("PORT", str(DEFAULT_PORT))), args.valkey)
