"""examples/backoff_recovery: the work gets done exactly once, whatever the server does.

A client works through twelve items while the server answers some requests with
UNAVAILABLE / RESOURCE_EXHAUSTED (with retryAfterMs), and crashes once right
after applying an item, before the reply: the test then stops the server,
waits until the client has failed to reconnect, and starts a new server on the
same port with the same store. Real sockets, virtual time (``net_clock``).
"""

from __future__ import annotations

import trio
import trio.testing
from _example_cmd import example_server
from _net import net_clock

from examples.backoff_recovery.client import RECONNECT, WorkRunner, make_work
from examples.backoff_recovery.server import (
    RETRY_AFTER_MS,
    Done,
    Fault,
    Faults,
    Store,
    build_router,
)
from wskit_trio import Server, serve
from wskit_trio.client import ConnectError, open_client

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

HOST = "127.0.0.1"
ITEMS = 12
#: Server request number -> fault. Item 1 goes through; item 2 is refused twice;
#: item 3 is applied but its reply is lost to the crash (request 5), so request 6
#: is its retry on the new server; item 5 is refused twice; item 9 once.
PLAN: dict[int, Fault] = {
    2: "UNAVAILABLE",
    3: "RESOURCE_EXHAUSTED",
    5: "CRASH",
    8: "RESOURCE_EXHAUSTED",
    9: "UNAVAILABLE",
    14: "UNAVAILABLE",
}


async def test_work_survives_restart_and_transient_errors_exactly_once(
    net_clock: trio.testing.MockClock,
) -> None:
    store = Store()  # the "database": outlives the server
    faults = Faults(PLAN)
    work = make_work(ITEMS, run="job")
    results: list[Done] = []
    failed_reconnects: list[ConnectError] = []
    knocking = trio.Event()

    def on_error(exc: Exception) -> None:
        if isinstance(exc, ConnectError):  # a reconnect attempt found nobody
            failed_reconnects.append(exc)
            knocking.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first: Server[None] = await nursery.start(
                serve(build_router(store, faults), host=HOST, port=0, handle_signals=False)
            )
            port = first.port
            async with open_client(first.url, reconnect=RECONNECT, on_error=on_error) as client:
                runner = WorkRunner(client)

                async def work_through() -> None:
                    results.extend(await runner.run(work))

                async with trio.open_nursery() as job:
                    job.start_soon(work_through)
                    await faults.crashed.wait()  # item 3 applied, its reply not sent
                    await first.aclose(grace=0)  # the server goes down mid-request
                    await knocking.wait()  # the client is backing off and trying again
                    second: Server[None] = await nursery.start(  # same port, same store
                        serve(
                            build_router(store, faults), host=HOST, port=port, handle_signals=False
                        )
                    )
                connects = client.statistics().connects
            await second.aclose()

    amounts = [item.amount for item in work]
    # Every item applied exactly once: no loss, no duplicate.
    assert store.applied == dict.fromkeys((item.key for item in work), 1)
    assert store.total == sum(amounts)
    assert [done.key for done in results] == [item.key for item in work]
    assert [done.total for done in results] == [sum(amounts[: n + 1]) for n in range(ITEMS)]
    # The crashed item was sent again and answered from the store, not re-applied.
    crashed = work[2].key
    assert [a.outcome for a in faults.log if a.key == crashed] == ["crash", "duplicate"]
    assert [done.key for done in results if done.duplicate] == [crashed]

    # It survived the restart by reconnecting, after at least one failed attempt.
    assert connects == 2
    assert failed_reconnects
    assert (second.port, first.port) == (port, port)

    # Every transient error was retried, no sooner than the server's hint.
    reasons = [(retry.key, retry.reason) for retry in runner.retries]
    assert reasons == [
        (work[1].key, "UNAVAILABLE"),
        (work[1].key, "RESOURCE_EXHAUSTED"),
        (crashed, "connection lost"),
        (work[4].key, "RESOURCE_EXHAUSTED"),
        (work[4].key, "UNAVAILABLE"),
        (work[8].key, "UNAVAILABLE"),
    ]
    refused = [a for a in faults.log if a.retry_after_ms is not None]
    assert len(refused) == 5
    for attempt in refused:
        assert attempt.retry_after_ms == RETRY_AFTER_MS[attempt.outcome]
        later = [a.at for a in faults.log if a.key == attempt.key and a.at > attempt.at]
        assert later, f"{attempt.key} was refused and never sent again"
        # (to within float rounding of the clock's readings)
        assert later[0] - attempt.at >= attempt.retry_after_ms / 1000 - 1e-9
    # ... with jitter on top of the hint where the backoff was longer.
    for retry in runner.retries:
        if retry.retry_after_ms is not None:
            assert retry.delay >= retry.retry_after_ms / 1000


async def test_runs_with_its_one_command() -> None:
    """``python -m examples.backoff_recovery.server`` serves (injecting its faults);
    the work still gets done; Ctrl-C stops it cleanly."""
    async with example_server("examples.backoff_recovery.server", "backoff-recovery") as url:
        with trio.fail_after(20):
            async with open_client(url, reconnect=RECONNECT) as client:
                results = await WorkRunner(client).run(make_work(5))
    assert [done.total for done in results] == [1, 3, 6, 10, 15]
