"""examples/backoff_recovery: the work gets done exactly once, whatever the server does.

A client works through twelve items while the server answers some requests with
UNAVAILABLE / RESOURCE_EXHAUSTED (with retryAfterMs), and crashes once right
after applying an item, before announcing it or replying: the test then stops
the server, waits until the client has failed to reconnect, and starts a new
server on the same port with the same store. The client follows the ledger all
along: the new server has lost its history, so it reloads (``recovered: false``).
Then a connection dropped mid-stream with the server up: what was missed is
replayed (``recovered: true``). Real sockets, virtual time (``net_clock``).
"""

from __future__ import annotations

import itertools

import trio
import trio.testing
from _example_cmd import example_server
from _flaky_link import FlakyLink
from _net import net_clock

from examples.backoff_recovery.client import RECONNECT, Ledger, WorkRunner, make_work, open_worker
from examples.backoff_recovery.server import (
    RETRY_AFTER_MS,
    Done,
    Fault,
    Faults,
    Following,
    LedgerSnapshot,
    Store,
    build_router,
)
from wskit_trio import Position, Server, serve
from wskit_trio.client import ConnectError

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
            async with open_worker(first.url, reconnect=RECONNECT, on_error=on_error) as (
                client,
                ledger,
            ):
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
                # The last APPLIED came before the last DONE: wait till it is handled.
                await ledger.wait_until(lambda view: view.items == ITEMS)
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

    # The ledger followed: items 1 and 2 announced by the first server; item 3 was
    # applied but never announced (the crash), and the new server's history is new
    # (another epoch): the client could not recover, and reloaded from the store,
    # which has item 3. Items 4..12 then arrived live: each item counted once.
    first_follow, second_follow = ledger.follows
    old_epoch, new_epoch = first_follow.position.epoch, second_follow.position.epoch
    assert old_epoch != new_epoch
    assert ledger.asked == [None, Position(2, old_epoch)]  # #2 of a history now gone
    assert ledger.follows == [
        Following(recovered=False, position=Position(0, old_epoch), replayed=0),
        Following(recovered=False, position=Position(0, new_epoch), replayed=0),
    ]
    assert ledger.reloads == [
        LedgerSnapshot(total=0, items=0, position=Position(0, old_epoch)),
        LedgerSnapshot(total=sum(amounts[:3]), items=3, position=Position(0, new_epoch)),
    ]
    assert ledger.applied == [Position(n, old_epoch) for n in (1, 2)] + [
        Position(n, new_epoch) for n in range(1, ITEMS - 2)
    ]
    assert ledger.keys == [item.key for item in work if item.key != crashed]
    assert (ledger.total, ledger.items, ledger.mismatches) == (store.total, ITEMS, 0)

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


async def test_a_dropped_connection_replays_what_was_missed_without_gap_or_duplicate(
    net_clock: trio.testing.MockClock,
) -> None:
    """Alice works through a link the test cuts, Bob directly, on one server. Alice's
    third item is applied but her link goes silent, then drops; Bob applies three
    more while she is away. Back, she follows from where she was: the server
    replays the four she missed (her own among them), and her retry of the third
    is answered from the store, not applied again."""
    store = Store()
    alice_work, bob_work = make_work(4, run="a"), make_work(5, run="b")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server: Server[None] = await nursery.start(
                serve(build_router(store), host=HOST, port=0, handle_signals=False)
            )
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_worker(server.url) as (bob, bob_ledger),
                open_worker(link.url) as (alice, alice_ledger),
            ):
                alice_runner, bob_runner = WorkRunner(alice), WorkRunner(bob)
                for item in alice_work[:2]:
                    await alice_runner.apply(item)  # #1, #2
                await bob_runner.apply(bob_work[0])  # #3

                link.hold_downstream()  # what the server sends Alice now is lost
                async with trio.open_nursery() as job:
                    job.start_soon(alice_runner.apply, alice_work[2])  # #4: reply lost
                    await bob_ledger.wait_until(lambda view: view.items == 4)
                    link.cut()
                    for item in bob_work[1:4]:  # #5..#7, while Alice is away
                        await bob_runner.apply(item)
                    link.restore()
                await alice_runner.apply(alice_work[3])  # #8
                await bob_runner.apply(bob_work[4])  # #9
                for ledger in (alice_ledger, bob_ledger):
                    await ledger.wait_until(lambda view: view.items == 9)
            await server.aclose()
            nursery.cancel_scope.cancel()

    first = alice_ledger.follows[0].position
    epoch = first.epoch
    # Alice re-followed from #3 (the last she received): #4..#7 were replayed.
    assert alice_ledger.asked == [None, Position(3, epoch)]
    assert alice_ledger.follows == [
        Following(recovered=False, position=Position(0, epoch), replayed=0),
        Following(recovered=True, position=Position(7, epoch), replayed=4),
    ]
    assert bob_ledger.follows == [Following(False, Position(0, epoch), 0)]
    # No gap, no duplicate: both saw #1..#9, once each, in order; no reload after the
    # first snapshot (the empty ledger).
    every = [Position(n, epoch) for n in range(1, 10)]
    assert alice_ledger.applied == bob_ledger.applied == every
    assert alice_ledger.keys == bob_ledger.keys
    assert sorted(alice_ledger.keys) == sorted(item.key for item in alice_work + bob_work)
    for ledger in (alice_ledger, bob_ledger):
        assert ledger.reloads == [LedgerSnapshot(0, 0, Position(0, epoch))]
        assert (ledger.total, ledger.items, ledger.mismatches) == (store.total, 9, 0)
    # Her third item: sent again after the drop, answered from the store.
    assert [(r.key, r.reason) for r in alice_runner.retries] == [
        (alice_work[2].key, "connection lost")
    ]
    assert store.applied == dict.fromkeys((i.key for i in alice_work + bob_work), 1)
    assert link.accepted >= 2


async def test_runs_with_its_one_command() -> None:
    """``python -m examples.backoff_recovery.server`` serves (injecting its faults,
    crashes and restarts included); the work still gets done, and the ledger the
    client follows agrees with it; Ctrl-C stops it cleanly."""
    count = 12  # with the server's fixed seed, enough for a crash and a restart
    sums = [n * (n + 1) // 2 for n in range(1, count + 1)]
    async with example_server("examples.backoff_recovery.server", "backoff-recovery") as url:
        with trio.fail_after(30):
            async with open_worker(url) as (client, ledger):
                results = await WorkRunner(client).run(make_work(count))
                await ledger.wait_until(lambda view: view.total == sums[-1])
    assert [done.total for done in results] == sums
    assert (ledger.items, ledger.mismatches) == (count, 0)
    # Every new connection was to a restarted server: its history was gone.
    assert [f.recovered for f in ledger.follows] == [False] * client.statistics().connects
    assert len(ledger.reloads) == len(ledger.follows)
    assert_consistent(ledger)


def assert_consistent(ledger: Ledger) -> None:
    """Each load starts a run of consecutive positions in one epoch (no gap, no
    duplicate), and every APPLIED agreed with the view's own sum."""
    assert ledger.mismatches == 0
    assert ledger.follows and ledger.follows[0].recovered is False
    for before, after in itertools.pairwise(ledger.applied):
        if before.epoch == after.epoch:
            assert after.offset == before.offset + 1
