"""Backoff and error recovery: work that survives restarts and transient errors.

A client works through a list of items (``APPLY``: add an amount to a total),
each with an idempotency key. This server misbehaves on purpose, like real ones
do now and then (:class:`Faults`):

* ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED`` with ``retryAfterMs``: nothing was
  applied; the client waits at least that long (jittered backoff on top) and
  sends the item again.
* a crash: the item is applied, then the server goes down before the reply goes
  out, and comes back on the same port a little later. The client reconnects
  with jittered backoff and sends the item again; the server recognises the key
  and answers with the result it already has instead of applying it twice.

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

from wskit_trio import Router, RpcContext, Server, WsKitError, rpc, serve

#: The hint each injected error carries.
RETRY_AFTER_MS: dict[str, int] = {"UNAVAILABLE": 80, "RESOURCE_EXHAUSTED": 150}
#: How long the demo server stays down after a crash.
DOWNTIME = 1.0

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


APPLY = rpc("APPLY", Work, "DONE", Done)


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


def build_router(store: Store, faults: Faults | None = None) -> Router[None]:
    faults = faults or Faults()
    router: Router[None] = Router()

    @router.rpc(APPLY)
    async def apply(ctx: RpcContext[Work, Done, None]) -> None:
        work = ctx.payload
        fault = faults.next()
        if fault == "UNAVAILABLE" or fault == "RESOURCE_EXHAUSTED":
            hint = RETRY_AFTER_MS[fault]
            faults.record(work.key, fault, hint)
            raise WsKitError(fault, "Injected: try again later", retry_after_ms=hint)
        done = store.apply(work)  # idempotent: a key seen before is not applied again
        if fault == "CRASH":
            # Applied, and then the server dies before it can answer.
            faults.record(work.key, "crash")
            faults.crashed.set()
            await trio.sleep_forever()
        faults.record(work.key, "duplicate" if done.duplicate else "applied")
        await ctx.reply(done)

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
