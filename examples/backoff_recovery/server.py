"""Backoff and error recovery: work that survives restarts and transient errors.

A client works through a list of items (``APPLY``: add an amount to a total),
each with an idempotency key. This server misbehaves on purpose, like real ones
do now and then (:class:`Faults`):

* ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED`` with ``retryAfterMs``: nothing was
  applied; the client waits at least that long (jittered backoff on top) and
  sends the item again.
* a crash: the item is applied, then the server goes down before it announces
  it or replies, and comes back on the same port a little later. The client
  reconnects with jittered backoff and sends the item again; the server
  recognises the key and answers with the result it already has instead of
  applying it twice.

Every item applied is also announced on the ``ledger`` topic (``APPLIED``), which
keeps a history (``with_pubsub(history=History(...))``). Clients follow it
(``FOLLOW {since}``): after a dropped connection the toolkit replays what they
missed, with no gap and no duplicate (``recovered: true``). A restarted server
has lost that history (it lived in the old process's memory: the topic's epoch
is new), so a client that comes back gets ``recovered: false`` and a
``LEDGER_SNAPSHOT`` read from the store, and reloads its view from it.

What must survive a restart (the applied items) lives in a :class:`Store`
passed to :func:`build_router`, outside the router, as a real app keeps it in
its database.

Run it:   python -m examples.backoff_recovery.server     (PORT=3060, FAULT_RATE=0.3)
Then:     python -m examples.backoff_recovery.client
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import Mapping
from typing import Literal, TypeAlias

import attrs
import trio

from wskit_trio import (
    History,
    Position,
    Router,
    RpcContext,
    Server,
    WsKitError,
    message,
    rpc,
    serve,
    with_pubsub,
)

#: The hint each injected error carries.
RETRY_AFTER_MS: dict[str, int] = {"UNAVAILABLE": 80, "RESOURCE_EXHAUSTED": 150}
#: How long the demo server stays down after a crash.
DOWNTIME = 1.0

#: The topic every applied item is announced on.
LEDGER = "ledger"

Fault: TypeAlias = Literal["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CRASH"]


@attrs.frozen
class Work:
    key: str  # idempotency key: the same key is applied at most once
    amount: int


@attrs.frozen
class Done:
    key: str
    #: The running total right after this item was applied.
    total: int
    #: True when the key had been applied before (this answer is the stored result).
    duplicate: bool


@attrs.frozen
class Applied:
    """Server → ledger followers: ``key`` was applied, adding ``amount``; ``total`` is
    the running total right after it (a follower checks its own sum against it).
    Its place in the ledger is its position (``meta.offset``), stamped by the toolkit."""

    key: str
    amount: int
    total: int


@attrs.frozen
class Follow:
    """Client → server, on every connection: follow the ledger from ``since``, the
    last position the client received (``None``: from now, with a snapshot)."""

    since: Position | None = None


@attrs.frozen
class Following:
    """The subscription's :class:`~wskit_trio.Recovery`: whether what was missed was
    replayed (``replayed`` messages, just before this answer), and the position the
    subscription is live from."""

    recovered: bool
    position: Position
    replayed: int


@attrs.frozen
class LedgerSnapshot:
    """Server → a follower that could not recover: the store's ``total`` and number
    of ``items`` as of ``position`` (what comes after it arrives live)."""

    total: int
    items: int
    position: Position


APPLY = rpc("APPLY", Work, "DONE", Done)
FOLLOW = rpc("FOLLOW", Follow, "FOLLOWING", Following)
APPLIED = message("APPLIED", Applied)
LEDGER_SNAPSHOT = message("LEDGER_SNAPSHOT", LedgerSnapshot)


class Store:
    """The applied items: stands in for the app's database, so it outlives any one
    server (give the same store to every server you start)."""

    def __init__(self) -> None:
        self.total = 0
        self.results: dict[str, int] = {}
        #: How many times each key was applied (the promise: never more than once).
        self.applied: Counter[str] = Counter()

    def apply(self, work: Work) -> Done:
        known = self.results.get(work.key)
        if known is not None:
            return Done(work.key, known, duplicate=True)
        self.total += work.amount
        self.results[work.key] = self.total
        self.applied[work.key] += 1
        return Done(work.key, self.total, duplicate=False)

    @property
    def items(self) -> int:
        """How many items have been applied."""
        return len(self.results)


@attrs.frozen
class Attempt:
    """One APPLY request as the server saw it."""

    key: str
    at: float  # trio.current_time() on arrival
    #: "applied", "duplicate", "crash" (applied, never answered), or the error code.
    outcome: str
    retry_after_ms: int | None = None


class Faults:
    """Which requests fail, and how: ``plan`` maps request numbers (1, 2, ...) to a
    fault; other requests fail at random with probability ``rate``. Keeps a log of
    every request; ``crashed`` is set when a crash happens."""

    def __init__(
        self, plan: Mapping[int, Fault] | None = None, *, rate: float = 0.0, seed: int = 0
    ) -> None:
        self.plan = dict(plan or {})
        self.rate = rate
        self._random = random.Random(seed)
        self.log: list[Attempt] = []
        self.requests = 0
        self.crashed = trio.Event()

    def next(self) -> Fault | None:
        self.requests += 1
        fault = self.plan.get(self.requests)
        if fault is None and self._random.random() < self.rate:
            faults: list[Fault] = ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CRASH"]
            fault = self._random.choices(faults, weights=[4, 4, 1])[0]
        return fault

    def record(self, key: str, outcome: str, retry_after_ms: int | None = None) -> None:
        self.log.append(Attempt(key, trio.current_time(), outcome, retry_after_ms))


def build_router(
    store: Store, faults: Faults | None = None, history_size: int = 1000
) -> Router[None]:
    """The router of one server process. Each call has its own (memory) pub/sub,
    so a server started after a crash has a new, empty ledger history: a new epoch."""
    faults = faults or Faults()
    router: Router[None] = Router()
    router.plugin(with_pubsub(history=History(size=history_size, ttl=3600.0)))
    #: Held while an item is applied and announced, and while a client starts
    #: following: a snapshot is then exactly the store at its position.
    ledger_lock = trio.Lock()

    @router.rpc(APPLY)
    async def apply(ctx: RpcContext[Work, Done, None]) -> None:
        work = ctx.payload
        fault = faults.next()
        if fault == "UNAVAILABLE" or fault == "RESOURCE_EXHAUSTED":
            hint = RETRY_AFTER_MS[fault]
            faults.record(work.key, fault, hint)
            raise WsKitError(fault, "Injected: try again later", retry_after_ms=hint)
        async with ledger_lock:
            done = store.apply(work)  # idempotent: a key seen before is not applied again
            if not done.duplicate and fault != "CRASH":
                # (The memory backend always takes it; with one that may fail, a real
                # app would announce from an outbox kept in its database.)
                await ctx.publish(LEDGER, APPLIED, Applied(work.key, work.amount, done.total))
        if fault == "CRASH":
            # Applied, and then the server dies before it can announce it or answer.
            faults.record(work.key, "crash")
            faults.crashed.set()
            await trio.sleep_forever()
        faults.record(work.key, "duplicate" if done.duplicate else "applied")
        await ctx.reply(done)

    @router.rpc(FOLLOW)
    async def follow(ctx: RpcContext[Follow, Following, None]) -> None:
        async with ledger_lock:  # nothing is applied meanwhile
            # Replays what was missed since ``since`` (before returning), or, when the
            # history cannot (it was lost in a restart), says so: then the store's
            # state goes out instead.
            recovery = await ctx.topics.subscribe(LEDGER, positions=True, since=ctx.payload.since)
            if not recovery.recovered:
                snapshot = LedgerSnapshot(store.total, store.items, recovery.position)
                await ctx.send(LEDGER_SNAPSHOT, snapshot)
        await ctx.reply(Following(recovery.recovered, recovery.position, recovery.replayed))

    return router


async def serve_until_crash(
    store: Store, faults: Faults, port: int, *, first: bool = True
) -> int | None:
    """Serve until a crash (then stop at once, and return the port to come back on)
    or until Ctrl-C (return ``None``)."""
    faults.crashed = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run_server(*, task_status: trio.TaskStatus[Server[None]]) -> None:
            await serve(build_router(store, faults), host="127.0.0.1", port=port)(
                task_status=task_status
            )
            nursery.cancel_scope.cancel()  # stopped by Ctrl-C

        server: Server[None] = await nursery.start(run_server)
        if first:
            print(f"backoff-recovery server listening on {server.url}", flush=True)
        else:
            print(f"back up on {server.url}", flush=True)
        await faults.crashed.wait()
        await server.aclose(grace=0)  # down, mid-request: that client gets no reply
        return server.port
    return None


async def main(port: int) -> None:
    store = Store()
    faults = Faults(rate=float(os.environ.get("FAULT_RATE", "0.3")))
    first = True
    while True:
        crashed_on = await serve_until_crash(store, faults, port, first=first)
        if crashed_on is None:
            return
        port, first = crashed_on, False
        print(f"crashed (total so far {store.total}); down for {DOWNTIME:g} s", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with trio.move_on_after(DOWNTIME):
                async for _ in signals:
                    return  # Ctrl-C while down


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", "3060")))
