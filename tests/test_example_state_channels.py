"""examples/state_channels: a dropped connection loses nothing and applies nothing twice.

Real sockets end to end; Alice talks to the server through a :class:`FlakyLink`
that the test cuts at chosen moments, Bob directly. What Alice missed comes back
through the topic's history (``recovered``) or, when the history no longer
covers it, as a snapshot of the state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from _example_cmd import example_server
from _flaky_link import FlakyLink

from examples.state_channels.client import StateChannel, open_state_channel
from examples.state_channels.server import (
    JOIN,
    STATE_ACK,
    STATE_UPDATE,
    Channel,
    Join,
    Joined,
    StateAck,
    StateSync,
    StateUpdate,
    Update,
    authenticate,
    build_app,
)
from wskit_trio import Position, Server, serve
from wskit_trio.client import Backoff, InboundMessage, Reconnect, RpcError, open_client

#: Reconnect at once (with jitter) so the scenario takes milliseconds, not seconds.
FAST = Reconnect(backoff=Backoff(initial=0.01, max=0.05))


@asynccontextmanager
async def channel_server(
    history_size: int = 1000,
) -> AsyncIterator[tuple[Server[object], Channel]]:
    router, channel = build_app(history_size)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(
                router,
                host="127.0.0.1",
                port=0,
                handle_signals=False,
                authenticate=authenticate,
            )
        )
        yield server, channel
        await server.aclose(grace=0)


class Tally:
    """What the test asked for, and every broadcast one observer saw."""

    def __init__(self) -> None:
        self.expected: Counter[str] = Counter()
        #: (author, client seq) of every update Bob applied, in order.
        self.seen: list[tuple[str, int]] = []

    async def update(self, ch: StateChannel, key: str, delta: int) -> int:
        self.expected[key] += delta
        return await ch.update(key, delta)

    def saw(self, entry: StateSync, position: Position) -> None:
        self.seen.append((entry.author, entry.client_seq))


async def test_reconnect_mid_stream_recovers_the_gap_and_applies_each_update_once() -> None:
    tally = Tally()
    update = tally.update
    with trio.fail_after(10):
        async with channel_server() as (server, channel), trio.open_nursery() as nursery:
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_state_channel(server.url, "bob", reconnect=FAST, on_apply=tally.saw) as bob,
                open_state_channel(link.url, "alice", reconnect=FAST) as alice,
            ):
                assert await update(alice, "apples", 1) == 1
                assert await update(alice, "pears", 2) == 2
                assert await update(bob, "apples", 10) == 1
                await alice.wait_applied(3)
                await bob.wait_applied(3)
                assert alice.position is not None
                epoch = alice.position.epoch

                # Alice's 3rd update reaches the server (Bob sees it applied as #4),
                # but her link drops before the ack and the broadcast come back.
                link.hold_downstream()
                assert await update(alice, "apples", 100) == 3
                await bob.wait_applied(4)
                link.cut()
                await alice.wait_until(lambda ch: not ch.live)

                # While she is away Bob moves on, and Alice keeps editing offline.
                for delta in (20, 30, 40):
                    await update(bob, "pears", delta)
                assert await update(alice, "pears", 5) == 4
                assert await update(alice, "plums", 7) == 5
                await bob.wait_applied(7)
                assert alice.position == Position(3, epoch)
                assert alice.client.position("state") == Position(3, epoch)
                assert alice.unacked == [3, 4, 5]  # 3 was applied, but she cannot know

                link.restore()
                # Once nothing is unacknowledged every answer has arrived.
                await alice.wait_until(lambda ch: not ch.unacked)
                await alice.wait_applied(9)
                await bob.wait_applied(9)

                # She re-joined from #3: the server replayed #4..#7, then she was live.
                # #4 was her update 3: its broadcast acknowledged it, so only 4 and 5
                # were sent again.
                assert alice.joins == [
                    Joined(recovered=False, position=Position(0, epoch), replayed=0),
                    Joined(recovered=True, position=Position(7, epoch), replayed=4),
                ]
                assert alice.reloads == [Position(0, epoch)]  # the first join only
                # Every update applied exactly once, in server order, by everyone.
                assert alice.applied == bob.applied == [Position(n, epoch) for n in range(1, 10)]
                assert alice.totals == bob.totals == channel.totals == dict(tally.expected)
                assert channel.accepted == 9  # 3 + 1 + 3 + 2
                assert alice.duplicate_acks == [] and channel.duplicates == 0
                assert sorted(tally.seen) == [("alice", n) for n in range(1, 6)] + [
                    ("bob", n) for n in range(1, 5)
                ]
                # Bob never fell behind.
                assert bob.joins == [Joined(False, Position(0, epoch), 0)]
                assert bob.reloads == [Position(0, epoch)]
                assert link.accepted >= 2  # Alice really reconnected
            nursery.cancel_scope.cancel()


async def test_a_gap_beyond_the_history_reloads_the_state_and_still_applies_each_once() -> None:
    """The topic keeps two updates; Alice misses five: she cannot recover, so the
    server sends her the state as of where her subscription goes live. Her update
    whose answer was lost is in that state: re-sent, it is acknowledged as a
    duplicate, not applied again."""
    tally = Tally()
    update = tally.update
    with trio.fail_after(10):
        async with (
            channel_server(history_size=2) as (server, channel),
            trio.open_nursery() as nursery,
        ):
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_state_channel(server.url, "bob", reconnect=FAST) as bob,
                open_state_channel(link.url, "alice", reconnect=FAST) as alice,
            ):
                await update(alice, "apples", 1)
                await alice.wait_applied(1)
                assert alice.position is not None
                epoch = alice.position.epoch

                link.hold_downstream()
                assert await update(alice, "apples", 2) == 2  # #2: its answer is lost
                await bob.wait_applied(2)
                link.cut()
                await alice.wait_until(lambda ch: not ch.live)
                for delta in (10, 20, 30, 40):  # #3..#6: the history keeps #5 and #6
                    await update(bob, "pears", delta)
                assert await update(alice, "apples", 3) == 3  # offline: sent once back
                await bob.wait_applied(6)
                assert alice.unacked == [2, 3]

                link.restore()
                await alice.wait_until(lambda ch: not ch.unacked)
                await alice.wait_applied(7)
                await bob.wait_applied(7)

                assert alice.joins[1] == Joined(False, Position(6, epoch), 0)
                assert alice.reloads == [Position(0, epoch), Position(6, epoch)]
                # #2..#6 reached her only as part of the snapshot; #7 (her 3) live.
                assert alice.applied == [Position(1, epoch), Position(7, epoch)]
                assert bob.applied == [Position(n, epoch) for n in range(1, 8)]
                assert alice.totals == bob.totals == channel.totals == dict(tally.expected)
                # Her update 2 was in the snapshot; re-sent, it was not applied again.
                assert alice.duplicate_acks == [2]
                assert (channel.accepted, channel.duplicates) == (7, 1)
            nursery.cancel_scope.cancel()


async def test_server_refuses_a_client_seq_gap_and_acks_duplicates() -> None:
    errors: list[Exception] = []
    acks_in, acks = trio.open_memory_channel[StateAck](10)

    async def on_ack(msg: InboundMessage[StateAck]) -> None:
        await acks_in.send(msg.payload)

    with trio.fail_after(10):
        async with (
            channel_server() as (server, channel),
            open_client(server.url, auth=lambda: "erin", on_error=errors.append) as client,
        ):
            client.on(STATE_ACK, on_ack)
            await client.send(STATE_UPDATE, StateUpdate(2, Update("k", 1)))  # 1 is missing
            joined = await client.request(JOIN, Join())  # a round trip: 2 was handled
            assert (joined.recovered, joined.position.offset, joined.replayed) == (False, 0, 0)
            assert len(errors) == 1
            assert isinstance(errors[0], RpcError)
            assert errors[0].code == "FAILED_PRECONDITION"
            assert errors[0].details == {"expectedSeq": 1, "receivedSeq": 2}
            assert channel.accepted == 0

            for _ in range(2):
                await client.send(STATE_UPDATE, StateUpdate(1, Update("k", 5)))
            assert [await acks.receive() for _ in range(2)] == [
                StateAck(1, duplicate=False),
                StateAck(1, duplicate=True),
            ]
            assert channel.totals == {"k": 5}
            assert (channel.accepted, channel.duplicates) == (1, 1)


async def test_state_channels_runs_with_its_one_command() -> None:
    async with example_server("examples.state_channels.server", "state-channels") as url:
        with trio.fail_after(10):
            async with open_state_channel(url, "probe") as probe:
                [joined] = probe.joins
                assert (joined.recovered, joined.position.offset) == (False, 0)
                await probe.update("apples", 3)
                await probe.wait_applied(1)
                assert probe.totals == {"apples": 3}
                assert probe.applied == [Position(1, joined.position.epoch)]
