"""examples/state_channels: a dropped connection loses nothing and applies nothing twice.

Real sockets end to end; Alice talks to the server through a :class:`FlakyLink`
that the test cuts at chosen moments, Bob directly.
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
    CATCH_UP,
    STATE_UPDATE,
    CatchUp,
    CatchUpResult,
    Channel,
    SequenceGap,
    StateSync,
    StateUpdate,
    Update,
    authenticate,
    build_app,
)
from wskit_trio import Server, serve
from wskit_trio.client import Backoff, Reconnect, RpcError, open_client

#: Reconnect at once (with jitter) so the scenario takes milliseconds, not seconds.
FAST = Reconnect(backoff=Backoff(initial=0.01, max=0.05))


@asynccontextmanager
async def channel_server(
    history_size: int = 10_000,
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


async def test_reconnect_mid_stream_recovers_the_gap_and_applies_each_update_once() -> None:
    expected: Counter[str] = Counter()

    async def update(ch: StateChannel, key: str, delta: int) -> int:
        expected[key] += delta
        return await ch.update(key, delta)

    with trio.fail_after(10):
        async with channel_server() as (server, channel), trio.open_nursery() as nursery:
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_state_channel(server.url, "bob", reconnect=FAST) as bob,
                open_state_channel(link.url, "alice", reconnect=FAST) as alice,
            ):
                assert await update(alice, "apples", 1) == 1
                assert await update(alice, "pears", 2) == 2
                assert await update(bob, "apples", 10) == 1
                await alice.wait_applied(3)
                await bob.wait_applied(3)

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
                assert alice.last_seq == 3
                assert alice.unacked == [3, 4, 5]  # 3 was applied, but she cannot know

                link.restore()
                # Her re-sends are answered in order (3 as a duplicate, then 4, 5), so
                # once nothing is unacknowledged every answer has arrived.
                await alice.wait_until(lambda ch: not ch.unacked)
                assert channel.head_seq == 9  # 3 + 1 + 3 + 2: the re-sent 3 not again
                await alice.wait_applied(9)
                await bob.wait_applied(9)

                # She got a gap notice saying where to resume, and caught up from there.
                assert alice.gap_notices == [SequenceGap(expected_seq=4, head_seq=7, resume_from=4)]
                assert alice.gaps_detected >= 1
                assert alice.catch_ups >= 1
                # Every update applied exactly once, in server order, by everyone.
                assert alice.applied == bob.applied == list(range(1, 10))
                assert alice.totals == bob.totals == channel.totals == dict(expected)
                # The re-sent update 3 was acknowledged as a duplicate, not applied again.
                assert alice.duplicate_acks == [3]
                assert channel.duplicates == 1
                authored = Counter((e.author, e.client_seq) for e in channel.history)
                assert sorted(authored) == [("alice", n) for n in range(1, 6)] + [
                    ("bob", n) for n in range(1, 5)
                ]
                assert set(authored.values()) == {1}
                assert [e.server_seq for e in channel.history] == list(range(1, 10))
                # Bob never fell behind.
                assert bob.gap_notices == [] and bob.gaps_detected == 0
                assert link.accepted >= 2  # Alice really reconnected
            nursery.cancel_scope.cancel()


async def test_client_holds_back_a_skipped_seq_until_the_gap_is_filled() -> None:
    """The client-side rules on their own: order, gap detection, duplicates ignored."""
    ch = StateChannel("carol")

    def entry(seq: int, delta: int) -> StateSync:
        return StateSync(seq, "dave", seq, Update("k", delta))

    ch.receive(entry(1, 1))
    ch.receive(entry(3, 100))  # skipped 2: held back, gap detected
    assert ch.applied == [1] and ch.gaps_detected == 1 and ch.totals == {"k": 1}
    ch.receive(entry(4, 1000))  # same gap: not counted again
    assert ch.gaps_detected == 1
    ch.receive(entry(2, 10))  # the gap filled: 2, 3, 4 in order
    assert ch.applied == [1, 2, 3, 4] and ch.totals == {"k": 1111}
    ch.receive(entry(3, 100))  # already applied: ignored
    assert ch.applied == [1, 2, 3, 4] and ch.totals == {"k": 1111} and ch.redundant == 1


async def test_server_refuses_a_client_seq_gap_and_acks_duplicates() -> None:
    errors: list[Exception] = []
    with trio.fail_after(10):
        async with (
            channel_server() as (server, channel),
            open_client(server.url, auth=lambda: "erin", on_error=errors.append) as client,
        ):
            await client.send(STATE_UPDATE, StateUpdate(2, Update("k", 1)))  # 1 is missing
            result = await client.request(CATCH_UP, CatchUp(1))  # a round trip: 2 was handled
            assert result == CatchUpResult([], 0)
            assert len(errors) == 1
            assert isinstance(errors[0], RpcError)
            assert errors[0].code == "FAILED_PRECONDITION"
            assert errors[0].details == {"expectedSeq": 1, "receivedSeq": 2}
            assert channel.head_seq == 0


async def test_catch_up_beyond_the_history_asks_for_a_reload() -> None:
    with trio.fail_after(10):
        async with (
            channel_server(history_size=2) as (server, _),
            open_client(server.url, auth=lambda: "frank") as client,
        ):
            for seq in (1, 2, 3):
                await client.send(STATE_UPDATE, StateUpdate(seq, Update("k", seq)))
            result = await client.request(CATCH_UP, CatchUp(2))
            assert [e.server_seq for e in result.updates] == [2, 3]
            try:
                await client.request(CATCH_UP, CatchUp(1))
            except RpcError as err:
                assert err.code == "FAILED_PRECONDITION"
                assert err.details == {"fromSeq": 1, "oldestSeq": 2}
            else:
                raise AssertionError("expected FAILED_PRECONDITION")


async def test_state_channels_runs_with_its_one_command() -> None:
    async with example_server("examples.state_channels.server", "state-channels") as url:
        with trio.fail_after(10):
            async with open_client(url, auth=lambda: "probe") as client:
                assert await client.request(CATCH_UP, CatchUp(1)) == CatchUpResult([], 0)
