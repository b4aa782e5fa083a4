"""Backoff and error recovery, client side: finish the work, whatever the server does.

    python -m examples.backoff_recovery.client [ws://127.0.0.1:3060] [items]

works through a list of items against the misbehaving server (see server.py)
and prints every retry: the error, the server's hint and how long it waited.
At the end the server's total is the sum of all items: each applied once.

Two parts, both reusable:

* :class:`WorkRunner` (the app's job): retries each item until it is done,
  obeying the server's ``retryAfterMs`` and backing off with jitter; the item's
  idempotency key makes a retry after a lost reply safe.
* :class:`Ledger` (the toolkit's recovery): the client's view of every item
  applied, kept by following the server's ``ledger`` topic. Its ``on_connect``
  hook sends ``FOLLOW`` with ``client.position(LEDGER)`` on every (re)connect:
  after a dropped connection the server replays what was missed
  (``recovered: true``); after a server restart the history is gone
  (``recovered: false``) and the view is reloaded from the snapshot the server
  sends.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio

from wskit_trio import Position
from wskit_trio.client import (
    Backoff,
    Client,
    ClientState,
    ConnectError,
    ConnectionClosed,
    InboundMessage,
    Reconnect,
    RequestTimeout,
    RpcError,
    open_client,
)

from .server import (
    APPLIED,
    APPLY,
    FOLLOW,
    LEDGER,
    LEDGER_SNAPSHOT,
    Applied,
    Done,
    Follow,
    Following,
    LedgerSnapshot,
    Work,
)

#: Reconnect after a lost connection: full jitter, 0.1 s doubling up to 2 s, so a
#: crowd of clients that lost the same server does not come back all at once.
RECONNECT = Reconnect(backoff=Backoff(initial=0.1, max=2.0))


@attrs.frozen
class Retried:
    """One retry the runner made: why, the server's hint, and how long it waited."""

    key: str
    attempt: int  # the attempt that failed (1 = the first)
    reason: str  # the error code, or "connection lost" / "timed out"
    retry_after_ms: int | None
    delay: float


class WorkRunner:
    """Applies work items one by one, each until it succeeds.

    * A retryable error (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``, ...): wait the
      server's ``retryAfterMs`` or the jittered backoff, whichever is longer, then
      send the item again. A non-retryable one is raised.
    * The connection lost mid-request (the server went down), or no answer in
      time: send the item again at once; the client queues it until it has
      reconnected (with its own jittered backoff). The reply may have been lost
      after the server applied the item: its idempotency key makes the second
      attempt return the first result instead of applying it twice.
    """

    def __init__(
        self,
        client: Client,
        *,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.backoff = backoff or Backoff(initial=0.05, max=2.0)
        self.timeout = timeout
        self.retries: list[Retried] = []

    async def run(self, items: Iterable[Work]) -> list[Done]:
        return [await self.apply(work) for work in items]

    async def apply(self, work: Work) -> Done:
        attempt = 1
        while True:
            try:
                return await self.client.request(APPLY, work, timeout=self.timeout)
            except RpcError as err:
                if not err.should_retry:
                    raise
                hint = err.retry_after_ms if isinstance(err.retry_after_ms, int) else None
                delay = max((hint or 0) / 1000, self.backoff.delay(attempt))
                retry = Retried(work.key, attempt, str(err.code), hint, delay)
            except (ConnectionClosed, RequestTimeout) as exc:
                if self.client.state is ClientState.CLOSED:
                    raise  # closed for good: nothing to wait for
                reason = "timed out" if isinstance(exc, RequestTimeout) else "connection lost"
                retry = Retried(work.key, attempt, reason, None, 0.0)
            self.retries.append(retry)
            self.on_retry(retry)
            await trio.sleep(retry.delay)
            attempt += 1

    def on_retry(self, retry: Retried) -> None:
        """Called before each retry's wait (the demo prints it)."""


class Ledger:
    """The client's view of the server's ledger: the total and the number of items
    applied, from every ``APPLIED`` once, in order, or from a snapshot when the
    server could not replay what was missed.

    ``open_client(on_connect=ledger.follow)``, then :meth:`attach` first thing in
    the block (``wait_open=False``), so the handlers are in before the first answer.
    """

    def __init__(self, on_follow: Callable[[Following], None] | None = None) -> None:
        self.on_follow = on_follow
        self.total = 0
        self.items = 0
        #: Where the view stands: the last ``APPLIED`` applied, or the snapshot loaded.
        self.position: Position | None = None
        #: The position of every ``APPLIED`` applied, in order.
        self.applied: list[Position] = []
        #: The keys of those ``APPLIED``, in the same order.
        self.keys: list[str] = []
        #: Where every ``FOLLOW`` asked to start from, and the server's answer to it
        #: (one of each per connection).
        self.asked: list[Position | None] = []
        self.follows: list[Following] = []
        #: Every snapshot loaded (the first follow, and each that could not recover).
        self.reloads: list[LedgerSnapshot] = []
        #: ``APPLIED`` messages whose total disagreed with this view's: a message
        #: missed or applied twice would show here.
        self.mismatches = 0
        self._changed = trio.Event()

    def attach(self, client: Client) -> None:
        client.on(APPLIED, self._on_applied)
        client.on(LEDGER_SNAPSHOT, self._on_snapshot)

    async def follow(self, client: Client) -> None:
        """The ``on_connect`` hook: follow the ledger from the last position received."""
        since = client.position(LEDGER)
        self.asked.append(since)
        following = await client.request(FOLLOW, Follow(since), timeout=10)
        self.follows.append(following)
        if self.on_follow is not None:
            self.on_follow(following)
        self._notify()

    async def wait_until(self, predicate: Callable[[Ledger], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    def _on_applied(self, msg: InboundMessage[Applied]) -> None:
        assert msg.position is not None, "followed with positions"
        applied = msg.payload
        self.total += applied.amount
        self.items += 1
        if self.total != applied.total:
            self.mismatches += 1
        self.position = msg.position
        self.applied.append(msg.position)
        self.keys.append(applied.key)
        self._notify()

    def _on_snapshot(self, msg: InboundMessage[LedgerSnapshot]) -> None:
        snapshot = msg.payload
        self.total, self.items, self.position = snapshot.total, snapshot.items, snapshot.position
        self.reloads.append(snapshot)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_worker(
    url: str,
    *,
    reconnect: Reconnect = RECONNECT,
    on_error: Callable[[Exception], None] | None = None,
    on_follow: Callable[[Following], None] | None = None,
) -> AsyncIterator[tuple[Client, Ledger]]:
    """A client that follows the ledger, for the block (it starts once the first
    ``FOLLOW`` is answered): run a :class:`WorkRunner` on it."""
    ledger = Ledger(on_follow)
    # wait_open=False: the handlers go in before the first FOLLOW brings a snapshot.
    async with open_client(
        url, reconnect=reconnect, on_error=on_error, on_connect=ledger.follow, wait_open=False
    ) as client:
        ledger.attach(client)
        await ledger.wait_until(lambda view: bool(view.follows))
        yield client, ledger


def make_work(count: int, run: str | None = None) -> list[Work]:
    """``count`` items with amounts 1..count and keys unique to this run."""
    run = run or uuid.uuid4().hex[:8]
    return [Work(f"{run}-{n}", n) for n in range(1, count + 1)]


class PrintingRunner(WorkRunner):
    def on_retry(self, retry: Retried) -> None:
        hint = f", hint {retry.retry_after_ms} ms" if retry.retry_after_ms is not None else ""
        print(f"  {retry.key}: {retry.reason}{hint}; retrying in {retry.delay:.3f} s", flush=True)


async def main(url: str, count: int) -> None:
    def on_error(exc: Exception) -> None:
        if isinstance(exc, ConnectError):
            print(f"  reconnect failed ({exc}); backing off", flush=True)

    follows = 0

    def on_follow(following: Following) -> None:
        nonlocal follows
        follows += 1
        at = f"#{following.position.offset}"
        if follows == 1:
            how = "loaded from the server's store"
        elif following.recovered:
            how = f"recovered: {following.replayed} missed, replayed"
        else:
            how = "not recovered (a restarted server lost the history): reloaded from its store"
        print(f"  following the ledger at {at}, {how}", flush=True)

    async with open_worker(url, on_error=on_error, on_follow=on_follow) as (client, ledger):
        runner = PrintingRunner(client)
        work = make_work(count)
        total = 0
        for item in work:
            done = await runner.apply(item)
            total = done.total
            note = " (already applied: the earlier reply was lost)" if done.duplicate else ""
            print(f"{done.key}: +{item.amount} -> total {done.total}{note}", flush=True)
        await ledger.wait_until(lambda view: view.total >= total)  # the last APPLIED is in
        print(
            f"{count} items done with {len(runner.retries)} retries and "
            f"{client.statistics().connects} connections; their sum is "
            f"{sum(item.amount for item in work)}; the ledger followed says "
            f"{ledger.total} ({ledger.mismatches} mismatches, {len(ledger.reloads)} loads)"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "ws://127.0.0.1:3060",
        int(args[1]) if len(args) > 1 else 30,
    )
