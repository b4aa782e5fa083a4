"""examples/throttling: rapid cursor moves coalesced into one batch per window.

Three users move their cursors in bursts (600 moves in all) while a fourth only
watches; everyone receives the same few batches. Real sockets, virtual time
(``net_clock``), so windows close when the work is done, not when a real timer
happens to fire.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing
from _example_cmd import example_server
from _net import net_clock

from examples.throttling.client import CursorBoard, Mover
from examples.throttling.server import WINDOW, Move, authenticate, build_app
from wskit_trio import serve
from wskit_trio.client import Auth, Client, open_client

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

SENDERS = ("alice", "bob", "carol")
MOVES = 200  # per sender
#: Each sender moves in bursts of its own size, a pause between bursts.
BURST = {"alice": 50, "bob": 30, "carol": 70}
PAUSE = WINDOW * 0.6


def position(user: str, seq: int) -> tuple[int, int]:
    return SENDERS.index(user) * 1000 + seq, -seq


async def test_moves_are_coalesced_per_window_and_none_is_lost(
    net_clock: trio.testing.MockClock,
) -> None:
    router, throttle = build_app()
    boards: dict[str, CursorBoard] = {}
    last: dict[str, Move] = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(throttle.run)
            server = await nursery.start(
                serve(
                    router,
                    host="127.0.0.1",
                    port=0,
                    handle_signals=False,
                    authenticate=authenticate,
                )
            )

            async def user(name: str, joined: trio.Event, go: trio.Event) -> None:
                async with open_client(server.url, auth=Auth(token=lambda: name)) as client:
                    board = boards[name] = CursorBoard(client)
                    await board.join("board")
                    joined.set()
                    await go.wait()
                    if name in SENDERS:
                        await _send(client, name, last)
                    # Everyone ends up seeing every sender's last move.
                    await board.wait_for({sender: MOVES for sender in SENDERS})

            go = trio.Event()
            async with trio.open_nursery() as clients:
                for name in (*SENDERS, "dave"):
                    joined = trio.Event()
                    clients.start_soon(user, name, joined, go)
                    await joined.wait()
                go.set()
            nursery.cancel_scope.cancel()

    sent = len(SENDERS) * MOVES
    assert throttle.updates == sent
    watcher = boards["dave"].batches
    # Far fewer frames than moves: one batch per window, whatever the move rate.
    assert 3 <= len(watcher) <= sent // 20, len(watcher)
    assert len(watcher) == throttle.batches  # every batch reached every client
    for name, board in boards.items():
        assert board.batches == watcher, name  # the same batches, in the same order

    merged: Counter[str] = Counter()
    previous = dict.fromkeys(SENDERS, 0)
    windows = [batch.window for batch in watcher]
    assert windows == sorted(set(windows))
    for batch in watcher:
        names = [cursor.user for cursor in batch.cursors]
        assert len(names) == len(set(names))  # one entry per user per batch
        for cursor in batch.cursors:
            # The latest move of its window: the one after the `merged` moves that
            # came in since the previous batch (each sender's moves arrive in order).
            assert cursor.seq == previous[cursor.user] + cursor.merged
            assert (cursor.x, cursor.y) == position(cursor.user, cursor.seq)
            previous[cursor.user] = cursor.seq
            merged[cursor.user] += cursor.merged
    # Nothing lost: every move is accounted for, and the final state is the last move.
    assert merged == dict.fromkeys(SENDERS, MOVES)
    for board in boards.values():
        for sender in SENDERS:
            cursor = board.cursors[sender]
            assert Move(cursor.x, cursor.y, cursor.seq) == last[sender]


async def _send(client: Client, name: str, last: dict[str, Move]) -> None:
    mover = Mover(client)
    for seq in range(1, MOVES + 1):
        last[name] = await mover.move(*position(name, seq))
        if seq % BURST[name] == 0:
            await trio.sleep(PAUSE)  # so the moves span several windows, unevenly


async def test_runs_with_its_one_command() -> None:
    """``python -m examples.throttling.server`` serves; Ctrl-C stops it cleanly."""
    async with example_server("examples.throttling.server", "throttling") as url:
        with trio.fail_after(20):
            async with open_client(url, auth=Auth(token=lambda: "erin")) as client:
                board = CursorBoard(client)
                joined = await board.join("lobby")
                assert (joined.user, joined.window_ms) == ("erin", WINDOW * 1000)
                mover = Mover(client)
                for seq in range(1, 21):
                    await mover.move(seq, seq)
                await board.wait_for({"erin": 20})
    assert board.cursors["erin"].x == 20
    assert sum(c.merged for b in board.batches for c in b.cursors) == 20
