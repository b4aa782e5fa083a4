"""``ValkeyPubSub`` and ``ValkeyRateLimiter`` on a real Valkey Cluster (3 primaries,
3 replicas, from ``tests/valkey_cluster.py``), delivery guarantees included
(delivery.md §10 to §12).

Topics are chosen so they spread over every shard (``topics_per_shard``): a
topic's channel and history keys carry it as hash tag, so all three live in its
slot. Instances are harness apps on their own ``ValkeyPubSub`` (one cluster, one
fresh prefix: one deployment), or servers in their own OS processes
(``valkey_instance.run_delivery``). The failover test SIGKILLs a primary of a
cluster of its own and checks that publishes, subscriptions and rate limits on
that shard fail promptly and retryably during the switch (the other shards go
on), resume afterwards, and that no subscriber misses an acknowledged message
silently: each got every one, in order, or was cut off, and recovery from before
the failover says ``recovered=False``. The resharding test moves a topic's slot to
another primary under a subscriber. Real time throughout, every test bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _net import ready_port
from _raw import RawSocket
from test_delivery import (
    ALL_TOPICS,
    JOIN,
    NEWS,
    Join,
    Joined,
    Said,
    Say,
    app_of,
    join,
    make_router,
    news,
)
from test_delivery_valkey import offsets, published, seqs
from valkey_cluster import ClusterNode, ValkeyClusterProcess, slot_of

from wskit_trio import (
    ConfigurationError,
    ConnectionClosed,
    ErrorCode,
    History,
    Position,
    Router,
    RpcContext,
    WsKitError,
    rpc,
)
from wskit_trio.testing import TestApp, TestClient
from wskit_trio.valkey import ValkeyCluster, ValkeyPubSub, ValkeyRateLimiter
from wskit_trio.valkey._commands import Layout

TESTS = Path(__file__).parent


def cluster_backend(cluster: ValkeyClusterProcess, prefix: str, **options: Any) -> ValkeyPubSub:
    options.setdefault("backoff_max", 0.05)
    return ValkeyPubSub.from_url(cluster.url, prefix=prefix, **options)


def topics_per_shard(
    cluster: ValkeyClusterProcess, name: str, per_shard: int = 1
) -> dict[ClusterNode, list[str]]:
    """``per_shard`` topics named ``<name><i>`` whose slot each primary owns."""
    ranges = cluster.slot_map()
    wanted: dict[ClusterNode, list[str]] = {primary: [] for _, _, primary, _ in ranges}
    i = 0
    while any(len(topics) < per_shard for topics in wanted.values()):
        topic, i = f"{name}{i}", i + 1
        slot = slot_of(topic)  # the hash tag: the topic itself
        for first, last, primary, _ in ranges:
            if first <= slot <= last and len(wanted[primary]) < per_shard:
                wanted[primary].append(topic)
    return wanted


@attrs.frozen
class Tried:
    seq: int
    ok: bool
    error: str | None
    retryable: bool


#: Publishes and answers with what the publish reported (PUB always says ok).
TRY = rpc("TRY", Say, "TRIED", Tried)


def failover_router(backend: ValkeyPubSub) -> Router[Any]:
    router = make_router(ALL_TOPICS, backend=backend)
    add_try(router)
    return router


def add_try(router: Router[Any]) -> None:
    """The TRY RPC on ``router``."""

    @router.rpc(TRY)
    async def try_publish(ctx: RpcContext[Say, Tried, Any]) -> None:
        result = await ctx.publish(ctx.payload.topic, NEWS, Said(ctx.payload.seq))
        await ctx.reply(Tried(ctx.payload.seq, result.ok, result.error, result.retryable))


@asynccontextmanager
async def instances(
    cluster: ValkeyClusterProcess,
    count: int = 2,
    *,
    history: History | None = ALL_TOPICS,
    prefix: str | None = None,
) -> AsyncIterator[list[TestApp[Any]]]:
    """``count`` app instances, each on its own ``ValkeyPubSub`` on the cluster (one
    fresh prefix), connected before the block starts."""
    prefix = prefix or f"cl-{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as stack:
        apps = []
        for _ in range(count):
            router = make_router(history, backend=cluster_backend(cluster, prefix))
            add_try(router)
            apps.append(await stack.enter_async_context(app_of(router)))
        yield apps


def test_a_topic_s_channel_and_history_keys_share_its_slot() -> None:
    layout = Layout("app:", cluster=True)
    for topic in ["room", "a/b.c", "x" * 128, "", "odd}topic", "{curly}", "}"]:
        channel = layout.channel(topic)
        stream, meta = layout.history_keys(topic)
        assert len({slot_of(channel), slot_of(stream), slot_of(meta)}) == 1, topic
        assert len({channel, stream, meta}) == 3
    # A plain topic is its own hash tag: topics spread over the slots like keys.
    assert layout.channel("room") == "app:{room}"
    assert slot_of(layout.channel("room")) == slot_of("room")
    # Distinct topics never share names, even one that looks like another's digest.
    odd = layout.channel("odd}topic")
    assert odd.startswith("app:{#") and odd.endswith("}:odd}topic")
    assert layout.channel(odd[len("app:{") : odd.index("}")]) != odd
    # One node: the names as they always were.
    assert Layout("app:").channel("room") == "app:room"
    assert Layout("app:").history_keys("room") == ("app:h:room", "app:hm:room")


def test_a_cluster_prefix_may_not_hold_a_hash_tag() -> None:
    with pytest.raises(ConfigurationError, match="braces"):
        ValkeyPubSub.from_url("valkey+cluster://127.0.0.1:7000", prefix="app{1}:")


# -- delivery across shards ----------------------------------------------------------------


async def test_topics_on_every_shard_reach_subscribers_on_the_other_instance(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    spread = topics_per_shard(valkey_cluster, "spread-", per_shard=2)
    topics = [topic for shard in spread.values() for topic in shard]
    with trio.fail_after(20):
        async with instances(valkey_cluster) as (a, b):
            readers = {topic: await b.connect() for topic in topics}
            epochs: dict[str, str] = {}
            for i, (topic, reader) in enumerate(readers.items()):
                joined = await join(reader, topic, positions=i % 2 == 0)
                if i % 2 == 0:
                    assert joined.position.offset == 0 and joined.position.epoch
                    epochs[topic] = joined.position.epoch
            publisher = await a.connect()
            for topic in topics:
                await published(publisher, topic, *range(5))
            for i, (topic, reader) in enumerate(readers.items()):
                got = await news(reader, 5)
                assert seqs(got) == list(range(5)), topic
                if i % 2 == 0:
                    assert offsets(got) == [1, 2, 3, 4, 5]
            # Each topic's history is in its slot: recovery works from any instance.
            for topic, epoch in epochs.items():
                again = await a.connect()
                assert await join(again, topic, since=Position(2, epoch)) == Joined(
                    True, Position(5, epoch), 3
                )
                assert seqs(await news(again, 3)) == [2, 3, 4]
            backend = b.server.pubsub.backend
            assert isinstance(backend, ValkeyPubSub)
            assert backend.statistics().channels == len(topics)


async def test_topics_without_history_are_sharded_too(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    spread = topics_per_shard(valkey_cluster, "plain-")
    topics = [topic for shard in spread.values() for topic in shard]
    with trio.fail_after(20):
        async with instances(valkey_cluster, history=None) as (a, b):
            readers = {topic: await b.connect() for topic in topics}
            for topic, reader in readers.items():
                await join(reader, topic)
            publisher = await a.connect()
            for topic in topics:
                await published(publisher, topic, *range(3))
            for topic, reader in readers.items():
                assert seqs(await news(reader, 3)) == [0, 1, 2], topic


# -- rate limits ---------------------------------------------------------------------------


async def test_rate_limit_buckets_spread_over_the_shards_and_are_shared(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    prefix = f"rl-{uuid.uuid4().hex[:8]}:"
    spread = topics_per_shard(valkey_cluster, prefix + "user-", per_shard=2)
    keys = [name[len(prefix) :] for shard in spread.values() for name in shard]
    options: dict[str, Any] = {"capacity": 5, "tokens_per_second": 0.001, "prefix": prefix}
    with trio.fail_after(10):
        async with (
            ValkeyRateLimiter.from_url(valkey_cluster.url, **options) as a,
            ValkeyRateLimiter.from_url(valkey_cluster.url, **options) as b,
        ):
            for key in keys:
                decisions = [await limiter.consume(key) for _ in range(4) for limiter in (a, b)]
                assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3, key
                assert decisions[-1].retry_after_ms is not None
            # Each bucket is on the primary owning its slot: every shard holds some.
            for node, names in spread.items():
                for name in names:
                    assert await trio.to_thread.run_sync(node.call, "EXISTS", name) == 1
            assert a.statistics().allowed + b.statistics().allowed == 5 * len(keys)
            assert a.statistics().unavailable == b.statistics().unavailable == 0


async def test_a_rate_limiter_on_a_given_cluster_client(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    with trio.fail_after(10):
        async with await ValkeyCluster.connect(valkey_cluster.url) as cluster:
            limiter = ValkeyRateLimiter(
                cluster, capacity=2, tokens_per_second=0.001, prefix=f"rl-{uuid.uuid4().hex}:"
            )
            assert [(await limiter.consume("k")).allowed for _ in range(3)] == [
                True,
                True,
                False,
            ]
            await limiter.aclose()  # not ours: the cluster client stays open
            assert not cluster.closed


# -- three app processes ---------------------------------------------------------------------


@asynccontextmanager
async def processes(url: str, prefix: str, count: int) -> AsyncIterator[list[int]]:
    """``count`` servers (``valkey_instance.run_delivery``: history on every topic),
    each in its own OS process on the cluster; their ports."""
    code = "import valkey_instance; valkey_instance.run_delivery()"
    started: list[trio.Process] = []
    try:
        for _ in range(count):  # all at once: they take a while to import
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", code, url, prefix], stdout=subprocess.PIPE, cwd=TESTS
            )
            started.append(process)
        yield [await ready_port(process) for process in started]
    finally:
        with trio.CancelScope(shield=True):
            for process in started:
                process.kill()  # (a graceful stop would wait for the clients' grace)
                await process.wait()


async def raw_join(port: int, topic: str) -> tuple[RawSocket, str]:
    client = await RawSocket.connect(port)
    await client.send_json({"type": "JOIN", "payload": {"topic": topic, "positions": True}})
    answer = await client.receive_json()
    assert answer["type"] == "JOINED", answer
    return client, answer["payload"]["position"]["epoch"]


async def test_fan_out_across_three_processes_over_every_shard(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    prefix = f"fan-{uuid.uuid4().hex[:8]}:"
    spread = topics_per_shard(valkey_cluster, "fan-", per_shard=2)
    topics = [topic for shard in spread.values() for topic in shard]
    count = 50
    with trio.fail_after(30):
        async with processes(valkey_cluster.url, prefix, 3) as ports:
            # Every process has a subscriber of every topic; each topic has one publisher.
            subscribers = {
                (port, topic): await raw_join(port, topic) for port in ports for topic in topics
            }
            # One publisher per topic (publish order is per publisher), spread over the
            # processes: topics are published to from every process at once.
            publishers = [await RawSocket.connect(ports[i % 3]) for i in range(len(topics))]
            got: dict[tuple[int, str], list[dict[str, Any]]] = {key: [] for key in subscribers}

            async def publish(i: int, topic: str) -> None:
                publisher = publishers[i]
                for seq in range(count):
                    await publisher.send_json(
                        {
                            "type": "PUB",
                            "meta": {"correlationId": f"{topic}-{seq}"},
                            "payload": {"topic": topic, "seq": seq},
                        }
                    )
                for _ in range(count):
                    assert (await publisher.receive_json())["type"] == "PUB_OK"

            async def read(key: tuple[int, str], client: RawSocket) -> None:
                while len(got[key]) < count:
                    frame = await client.receive_json()
                    assert frame["type"] == NEWS.type, frame
                    got[key].append(frame)

            async with trio.open_nursery() as nursery:
                for key, (client, _) in subscribers.items():
                    nursery.start_soon(read, key, client)
                for i, topic in enumerate(topics):
                    nursery.start_soon(publish, i, topic)
            for (port, topic), frames in got.items():
                assert seqs(frames) == list(range(count)), (port, topic)
                assert offsets(frames) == list(range(1, count + 1)), (port, topic)
                assert {f["meta"]["epoch"] for f in frames} == {subscribers[port, topic][1]}


# -- failover ---------------------------------------------------------------------------------


@attrs.define
class Attempts:
    """One publisher's tries: ``(seq, ok, error, retryable, seconds it took)``."""

    tried: list[tuple[int, bool, str | None, bool, float]] = attrs.Factory(list)

    @property
    def acked(self) -> list[int]:
        return [seq for seq, ok, *_ in self.tried if ok]

    @property
    def failed(self) -> list[tuple[int, bool, str | None, bool, float]]:
        return [attempt for attempt in self.tried if not attempt[1]]


async def keep_publishing(client: TestClient[Any], topic: str, attempts: Attempts) -> None:
    """TRY after TRY (each waits for its answer), until cancelled."""
    for seq in itertools.count():
        start = trio.current_time()
        await client.request(TRY, Say(topic, seq))
        frame = await client.receive()
        assert frame.type == "TRIED", frame.raw
        p = frame.payload
        attempts.tried.append(
            (seq, p["ok"], p["error"], p["retryable"], trio.current_time() - start)
        )
        await trio.sleep(0.005)


@attrs.define
class Watcher:
    """A subscriber of the doomed topic and everything it saw."""

    client: TestClient[Any]
    positions: bool
    frames: list[dict[str, Any]] = attrs.Factory(list)
    closed: tuple[int, str] | None = None

    async def read(self) -> None:
        try:
            while True:
                frame = await self.client.receive()
                assert frame.type == NEWS.type, frame.raw
                self.frames.append(frame.raw)
        except ConnectionClosed as exc:
            self.closed = (exc.code, exc.reason)

    def has(self, seq: int) -> bool:
        return any(frame["payload"]["seq"] == seq for frame in self.frames)


async def test_a_primary_killed_fails_publishes_over_retryably_with_no_silent_gap(
    fresh_valkey_cluster: ValkeyClusterProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wskit_trio.valkey")
    cluster = fresh_valkey_cluster
    prefix = f"fo-{uuid.uuid4().hex[:8]}:"
    spread = topics_per_shard(cluster, "fo-", per_shard=2)
    doomed_node, (doomed, unheard) = next(iter(spread.items()))
    safe = [topics[0] for node, topics in spread.items() if node is not doomed_node]
    # Commands bounded at 0.5 s (retries included): a failover takes 1.4 to 2 s here.
    backends = [cluster_backend(cluster, prefix, command_timeout=0.5) for _ in range(2)]
    limiter = ValkeyRateLimiter.from_url(
        cluster.url, capacity=1000, tokens_per_second=1, prefix=prefix, command_timeout=0.5
    )
    with trio.fail_after(40):
        async with (
            limiter,
            app_of(failover_router(backends[0])) as a,
            app_of(failover_router(backends[1])) as b,
        ):
            # Subscribers of the doomed topic on both instances, plain and positioned.
            watchers = []
            for app in (a, b):
                for positions in (False, True):
                    client = await app.connect()
                    await join(client, doomed, positions=positions)
                    watchers.append(Watcher(client, positions))
            # And one of each other shard's topic.
            safe_readers = [Watcher(await b.connect(), positions=True) for _ in safe]
            for reader, topic in zip(safe_readers, safe, strict=True):
                await join(reader.client, topic, positions=True)
            before = Position(0, "")
            doomed_attempts, safe_attempts = Attempts(), [Attempts() for _ in safe]

            async with trio.open_nursery() as nursery:
                for watcher in [*watchers, *safe_readers]:
                    nursery.start_soon(watcher.read)
                publisher = await a.connect()
                nursery.start_soon(keep_publishing, publisher, doomed, doomed_attempts)
                for topic, attempts in zip(safe, safe_attempts, strict=True):
                    nursery.start_soon(keep_publishing, await b.connect(), topic, attempts)
                with trio.fail_after(5):
                    while len(doomed_attempts.acked) < 20:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                before = await last_position(watchers)
                killed = await trio.to_thread.run_sync(cluster.kill_primary, doomed_node)
                killed_at = len(doomed_attempts.tried)
                # A new subscription of the failed shard's topics fails promptly too.
                newcomer = await b.connect()
                started = trio.current_time()
                await newcomer.send(JOIN, Join(unheard, positions=True))
                assert (await newcomer.receive_error()).error_code == "UNAVAILABLE"
                assert trio.current_time() - started < 1.5
                # So does a rate limit whose bucket is there (it fails closed); one
                # on another shard is served.
                started = trio.current_time()
                with pytest.raises(WsKitError) as refused:
                    await limiter.consume("{" + doomed + "}")
                assert refused.value.code == ErrorCode.UNAVAILABLE
                assert trio.current_time() - started < 1.5
                assert (await limiter.consume("{" + safe[0] + "}")).allowed
                await cluster.wait_promoted(killed)
                promoted_at = len(doomed_attempts.tried)
                # After the switch it works.
                assert (await join(newcomer, unheard, positions=True)).position.offset == 0
                assert (await limiter.consume("{" + doomed + "}")).allowed
                # Publishing resumes: 20 acknowledged after the promotion, then stop.
                with trio.fail_after(10):
                    while len([t for t in doomed_attempts.tried[promoted_at:] if t[1]]) < 20:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                for backend in backends:
                    with trio.fail_after(5):
                        await backend.wait_healthy()
                # Every acknowledged message reaches every watcher still connected.
                last = doomed_attempts.acked[-1]
                with trio.fail_after(5):
                    while not all(w.closed or w.has(last) for w in watchers):  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    for reader, attempts in zip(safe_readers, safe_attempts, strict=True):
                        while not reader.has(attempts.acked[-1]):  # noqa: ASYNC110
                            await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

            # During the switch publishes failed, each promptly and retryably...
            switch = doomed_attempts.tried[killed_at:]
            assert any(not ok for _, ok, *_ in switch)
            for seq, _, error, retryable, took in doomed_attempts.failed:
                assert (error, retryable) == ("UNAVAILABLE", True), seq
                assert took < 1.0, (seq, took)  # within command_timeout (0.5 s)
            # ...the other shards' topics went on (a brief CLUSTERDOWN is retryable too)...
            for attempts in safe_attempts:
                assert all(t[2:4] == ("UNAVAILABLE", True) for t in attempts.failed)
                assert len(attempts.acked) > 20
            # ...subscriptions followed the promoted replica (an outage logged once,
            # and its end, per instance)...
            for backend in backends:
                assert backend.statistics().resubscribed >= 1
            messages = [r.getMessage() for r in caplog.records]
            for what, count in (("pub/sub", 2), ("rate limiter", 1)):
                mine = [m for m in messages if f"({what})" in m]
                assert len([m for m in mine if "unreachable" in m]) == count, messages
                assert len([m for m in mine if "recovered after" in m]) == count, messages
            # ...and after it every publish went through.
            assert all(ok for _, ok, *_ in doomed_attempts.tried[-20:])

            # No silent gap: each watcher got every acknowledged message, once, in order,
            # or was cut off visibly.
            acked = doomed_attempts.acked
            for i, watcher in enumerate(watchers):
                got = [f["payload"]["seq"] for f in watcher.frames]
                assert len(got) == len(set(got)), i
                if watcher.closed is None:
                    assert [seq for seq in got if seq in set(acked)] == acked, i
                else:
                    assert watcher.closed[0] == 1013, (i, watcher.closed)
                if watcher.positions:
                    # Offsets run on within each epoch; the promoted replica started a
                    # new one (it cannot prove it had every message).
                    epochs = [f["meta"]["epoch"] for f in watcher.frames]
                    assert len(set(epochs)) == 2, i
                    for epoch in set(epochs):
                        run = [
                            f["meta"]["offset"]
                            for f in watcher.frames
                            if f["meta"]["epoch"] == epoch
                        ]
                        assert run == list(range(run[0], run[0] + len(run))), i

            # Recovery from before the failover reports recovered=False (never a silent
            # skip); from a position after it, it replays.
            late = await b.connect()
            joined = await join(late, doomed, since=before)
            assert not joined.recovered and joined.replayed == 0
            assert joined.position.epoch != before.epoch
            now = joined.position
            again = await a.connect()
            since = Position(now.offset - 5, now.epoch)
            assert await join(again, doomed, since=since) == Joined(True, now, 5)
            assert [f["meta"]["offset"] for f in await news(again, 5)] == list(
                range(now.offset - 4, now.offset + 1)
            )
            # The other shards' subscribers got every acknowledged message, in one epoch.
            for reader, attempts in zip(safe_readers, safe_attempts, strict=True):
                assert reader.closed is None
                assert seqs(reader.frames)[: len(attempts.acked)] == attempts.acked
                assert offsets(reader.frames) == list(range(1, len(reader.frames) + 1))
                assert len({f["meta"]["epoch"] for f in reader.frames}) == 1


async def last_position(watchers: list[Watcher]) -> Position:
    """The latest position a positioned watcher has seen."""
    frames = next(w for w in watchers if w.positions and w.frames).frames
    return Position(frames[-1]["meta"]["offset"], frames[-1]["meta"]["epoch"])


# -- resharding -------------------------------------------------------------------------------


def move_slot(cluster: ValkeyClusterProcess, slot: int, target: ClusterNode) -> None:
    """Move ``slot`` (and its keys) to ``target``, as ``valkey-cli --cluster reshard``
    does: IMPORTING / MIGRATING, MIGRATE the keys, then SETSLOT NODE everywhere."""
    source = cluster.node_for_slot(slot)
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.call("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
    for node in [target, source, *(n for n in cluster.primaries() if n not in (target, source))]:
        node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)


async def test_a_topic_moved_to_another_shard_is_followed_with_no_silent_gap(
    fresh_valkey_cluster: ValkeyClusterProcess,
) -> None:
    cluster = fresh_valkey_cluster
    spread = topics_per_shard(cluster, "mv-")
    (source, (topic,)), (target, _) = list(spread.items())[:2]
    with trio.fail_after(20):
        async with instances(cluster) as (a, b):
            watcher, plain = await b.connect(), await b.connect()
            epoch = (await join(watcher, topic, positions=True)).position.epoch
            await join(plain, topic)
            publisher = await a.connect()
            await published(publisher, topic, *range(5))
            assert offsets(await news(watcher, 5)) == [1, 2, 3, 4, 5]
            assert seqs(await news(plain, 5)) == list(range(5))

            await trio.to_thread.run_sync(move_slot, cluster, slot_of(topic), target)
            assert cluster.node_for_key(topic) is target and source is not target
            # The first publish after the move may meet the old map (MOVED): retryable.
            seq = 5
            while seq < 10:
                await publisher.request(TRY, Say(topic, seq))
                tried = (await publisher.receive()).payload
                if tried["ok"]:
                    seq += 1
                else:
                    assert (tried["error"], tried["retryable"]) == ("UNAVAILABLE", True)
            # B's subscription followed the slot (the source said sunsubscribe); what
            # was published meanwhile came from the history: nothing is missing.
            assert seqs(await news(plain, 5)) == list(range(5, 10))
            moved = await news(watcher, 5)
            assert seqs(moved) == list(range(5, 10))
            new_epoch = moved[0]["meta"]["epoch"]
            assert new_epoch != epoch and offsets(moved) == [1, 2, 3, 4, 5]
            backend = b.server.pubsub.backend
            assert isinstance(backend, ValkeyPubSub)
            with trio.fail_after(5):
                await backend.wait_healthy()
            stats = backend.statistics()
            assert stats.channels == 1 and stats.resubscribed == 1, stats
            # A position from before the move: recovered=False, never a silent skip.
            late = await a.connect()
            assert await join(late, topic, since=Position(5, epoch)) == Joined(
                False, Position(5, new_epoch), 0
            )


# -- a password ---------------------------------------------------------------------------------


async def test_a_cluster_with_a_password(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr/t@pw"
    cluster = ValkeyClusterProcess(password=secret)
    await trio.to_thread.run_sync(cluster.start)
    try:
        topic = next(iter(topics_per_shard(cluster, "pw-").values()))[0]
        with trio.fail_after(15):
            async with instances(cluster) as (a, b):
                reader = await b.connect()
                await join(reader, topic, positions=True)
                await published(await a.connect(), topic, 1, 2)
                assert offsets(await news(reader, 2)) == [1, 2]
                limiter = ValkeyRateLimiter.from_url(cluster.url, capacity=1, tokens_per_second=1)
                async with limiter:
                    assert (await limiter.consume("k")).allowed
        # A wrong password never becomes healthy, and the logs never show the secret.
        wrong = cluster.url.replace("s3cr", "nope")
        backend = ValkeyPubSub.from_url(wrong, backoff_max=0.05)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(backend.run)
                while backend.statistics().connect_failures < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                assert not backend.healthy
                nursery.cancel_scope.cancel()
        assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)
        assert all("nope" not in r.getMessage() for r in caplog.records)
    finally:
        await trio.to_thread.run_sync(cluster.stop)


async def test_many_topics_of_a_failed_shard_are_all_subscribed_again(
    fresh_valkey_cluster: ValkeyClusterProcess,
) -> None:
    # More topics than are re-subscribed at once (``_RESUBSCRIBE_AT_ONCE``): each is
    # subscribed again on the promoted replica, and caught up, exactly once.
    cluster = fresh_valkey_cluster
    spread = topics_per_shard(cluster, "many-", per_shard=40)
    doomed_node, doomed = next(iter(spread.items()))
    other = [topics[0] for node, topics in spread.items() if node is not doomed_node]
    with trio.fail_after(30):
        async with instances(cluster) as (a, b):
            readers = {topic: await b.connect() for topic in [*doomed, *other]}
            for topic, reader in readers.items():
                await join(reader, topic)
            publisher = await a.connect()
            for topic in readers:
                await published(publisher, topic, 0)
            killed = await trio.to_thread.run_sync(cluster.kill_primary, doomed_node)
            await cluster.wait_promoted(killed)
            for topic in readers:  # (a first try may meet the old map)
                for seq in (1, 2):
                    while True:
                        await publisher.request(TRY, Say(topic, seq))
                        if (await publisher.receive()).payload["ok"]:
                            break
            for topic, reader in readers.items():
                assert seqs(await news(reader, 3)) == [0, 1, 2], topic
            backend = b.server.pubsub.backend
            assert isinstance(backend, ValkeyPubSub)
            with trio.fail_after(5):
                await backend.wait_healthy()
            stats = backend.statistics()
            assert stats.channels == len(readers)
            assert stats.resubscribed == len(doomed), stats
