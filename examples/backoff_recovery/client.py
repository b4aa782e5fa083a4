"""Backoff and error recovery, client side: finish the work, whatever the server does.

    python -m examples.backoff_recovery.client [ws://127.0.0.1:3060] [items]

works through a list of items against the misbehaving server (see server.py)
and prints every retry: the error, the server's hint and how long it waited.
At the end the server's total is the sum of all items: each applied once.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable

import attrs
import trio

from wskit_trio.client import (
    Backoff,
    Client,
    ClientState,
    ConnectError,
    ConnectionClosed,
    Reconnect,
    RequestTimeout,
    RpcError,
    open_client,
)

from .server import APPLY, Done, Work

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

    async with open_client(url, reconnect=RECONNECT, on_error=on_error) as client:
        runner = PrintingRunner(client)
        work = make_work(count)
        for item in work:
            done = await runner.apply(item)
            note = " (already applied: the earlier reply was lost)" if done.duplicate else ""
            print(f"{done.key}: +{item.amount} -> total {done.total}{note}", flush=True)
        print(
            f"{count} items done with {len(runner.retries)} retries and "
            f"{client.statistics().connects} connections; their sum is "
            f"{sum(item.amount for item in work)}"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "ws://127.0.0.1:3060",
        int(args[1]) if len(args) > 1 else 30,
    )
