"""The app the chaos test (``test_chaos.py``) runs, one instance per OS process.

    python tests/chaos_app.py VALKEY_URL PREFIX [--port N] [--slow-consumer-timeout S]
        [--outbound-queue N] [--outbound-queue-bytes B] [--close-timeout S]

serves the app below with ``ValkeyPubSub`` (every topic keeps history in Valkey
streams) on 127.0.0.1 (``--port 0``: a free port), prints ``READY <port>`` once it
is listening and connected to Valkey, and shuts down gracefully on SIGTERM.

* ``JOIN {topic, since}`` → ``JOINED {recovered, position, replayed}``: subscribe
  with positions, recovering from ``since`` (delivery.md §12). Replayed ``NEWS``
  frames come before the answer.
* ``PUB {topic, publisher, seq, pad}`` → ``PUBLISHED {ok, position, error}``:
  publish ``NEWS {publisher, seq, pad}`` (``pad`` characters of padding, made
  here, so a publisher can send large messages cheaply) and report whether the
  message is kept (``ok``) and where.
* ``HOLD`` never answers: a request the server cancels when it cuts the
  connection off (counted), so the client learns the close code from its failure.
* ``STATS`` → ``STATS_OK``: this instance's figures (cut-offs, HOLDs cancelled...).
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
import trio

from wskit_trio import (
    History,
    Limits,
    Position,
    Router,
    RpcContext,
    Server,
    message,
    rpc,
    serve,
    with_pubsub,
)
from wskit_trio.valkey import ValkeyPubSub

__all__ = [
    "HOLD",
    "JOIN",
    "NEWS",
    "PUB",
    "STATS",
    "Held",
    "Join",
    "Joined",
    "News",
    "Pub",
    "Published",
    "Stats",
    "make_router",
]

#: Enough for everything one chaos run publishes to a topic: every recovery can
#: be complete.
HISTORY = History(size=50_000, ttl=600.0)


@attrs.frozen
class Join:
    topic: str
    since: Position | None = None


@attrs.frozen
class Joined:
    recovered: bool
    position: Position
    replayed: int


@attrs.frozen
class Pub:
    topic: str
    publisher: str
    seq: int
    pad: int = 0


@attrs.frozen
class Published:
    ok: bool
    position: Position | None = None
    error: str | None = None


@attrs.frozen
class News:
    publisher: str
    seq: int
    pad: str = ""


@attrs.frozen
class Held:
    never: bool = True


@attrs.frozen
class Stats:
    #: Subscribers this instance cut off with 1013 (slow consumers).
    cut_off: int
    #: Frames queued for local subscribers.
    delivered: int
    #: Publishes made through this instance.
    published: int
    #: Connections open now.
    connections: int
    #: Envelopes delivered from history after a re-subscribe to Valkey.
    caught_up: int
    #: Envelopes skipped as already delivered.
    duplicates: int
    #: ``HOLD`` requests cancelled (their connection was cut off, or closed).
    holds_cancelled: int


JOIN = rpc("JOIN", Join, "JOINED", Joined)
PUB = rpc("PUB", Pub, "PUBLISHED", Published)
HOLD = rpc("HOLD", None, "HELD", Held)
STATS = rpc("STATS", None, "STATS_OK", Stats)
NEWS = message("NEWS", News)


@attrs.define
class _Running:
    server: Server[Any] | None = None
    holds_cancelled: int = 0


def make_router(backend: ValkeyPubSub) -> tuple[Router[Any], _Running]:
    """The app on ``backend``; set ``running.server`` once it serves (for ``STATS``)."""
    router: Router[Any] = Router()
    router.plugin(with_pubsub(backend, history=HISTORY))
    running = _Running()

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[Join, Joined, Any]) -> None:
        p = ctx.payload
        recovery = await ctx.topics.subscribe(p.topic, positions=True, since=p.since)
        await ctx.reply(Joined(recovery.recovered, recovery.position, recovery.replayed))

    @router.rpc(PUB)
    async def pub(ctx: RpcContext[Pub, Published, Any]) -> None:
        p = ctx.payload
        result = await ctx.publish(p.topic, NEWS, News(p.publisher, p.seq, "x" * p.pad))
        await ctx.reply(Published(result.ok, result.position, result.error))

    @router.rpc(HOLD)
    async def hold(ctx: RpcContext[None, Held, Any]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            running.holds_cancelled += 1

    @router.rpc(STATS)
    async def stats(ctx: RpcContext[None, Stats, Any]) -> None:
        server = running.server
        assert server is not None
        hub, valkey = server.pubsub.statistics(), backend.statistics()
        await ctx.reply(
            Stats(
                cut_off=hub.cut_off,
                delivered=hub.delivered,
                published=hub.published,
                connections=server.statistics().connections,
                caught_up=valkey.caught_up,
                duplicates=valkey.duplicates,
                holds_cancelled=running.holds_cancelled,
            )
        )

    return router, running


async def main(args: argparse.Namespace) -> None:
    backend = ValkeyPubSub.from_url(args.valkey_url, prefix=args.prefix)
    router, running = make_router(backend)
    limits = Limits(
        slow_consumer_timeout=args.slow_consumer_timeout,
        outbound_queue=args.outbound_queue,
        outbound_queue_bytes=args.outbound_queue_bytes,
        close_timeout=args.close_timeout,
    )
    async with trio.open_nursery() as nursery:
        server: Server[Any] = await nursery.start(
            serve(router, host="127.0.0.1", port=args.port, limits=limits)
        )
        running.server = server
        with trio.fail_after(10):
            await backend.wait_healthy()
        print(f"READY {server.port}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One instance of the chaos test's app.")
    parser.add_argument("valkey_url")
    parser.add_argument("prefix")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slow-consumer-timeout", type=float, default=5.0)
    parser.add_argument("--outbound-queue", type=int, default=1024)
    parser.add_argument("--outbound-queue-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--close-timeout", type=float, default=5.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
