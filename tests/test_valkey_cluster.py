"""The Valkey Cluster client (wskit_trio.valkey._cluster) against a real 3+3 cluster.

Slot hashing against known vectors and the server's own ``CLUSTER KEYSLOT``; routing
(each key lands on the primary owning its slot, one pipelined connection per
primary); ``MOVED`` and ``ASK`` after a slot is moved by hand; sharded pub/sub
across the shards; and a primary SIGKILLed: retryable failures while its replica
takes over, then commands and re-subscribed channels work again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from valkey_cluster import ClusterNode, ValkeyClusterProcess, keys_per_node
from valkey_server import ValkeyServerProcess, free_port

from wskit_trio.valkey import (
    ValkeyCluster,
    ValkeyError,
    ValkeySubscriber,
    ValkeyUnavailable,
    is_cluster_url,
    key_slot,
    parse_cluster_url,
)
from wskit_trio.valkey._cluster import parse_shards
from wskit_trio.valkey._connection import TRANSIENT_ERRORS

#: Bound on each test (a cluster starts in ~2 s; a failover takes 1.4-2 s).
LIMIT = 30


@pytest.fixture
async def cluster(valkey_cluster: ValkeyClusterProcess) -> AsyncIterator[ValkeyCluster]:
    client = await ValkeyCluster.connect(valkey_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


class Inbox:
    """What a ShardedSubscriber hands its owner: messages and lost channels."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.lost: list[frozenset[bytes]] = []
        self._changed = trio.Event()

    async def on_message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))
        self._wake()

    async def on_lost(self, channels: frozenset[bytes]) -> None:
        self.lost.append(channels)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_message(self, channel: bytes, data: bytes) -> None:
        while (channel, data) not in self.messages:
            await self._changed.wait()

    async def wait_lost(self, channel: bytes) -> None:
        while not any(channel in lost for lost in self.lost):
            await self._changed.wait()


def node_address(node: ClusterNode) -> tuple[str, int]:
    return (node.host, node.port)


# -- slots and URLs ----------------------------------------------------------------------


def test_key_slot_known_values() -> None:
    assert key_slot("foo") == 12182
    assert key_slot(b"foo") == 12182
    assert key_slot("123456789") == 0x31C3  # CRC16-XMODEM's check value
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")  # the first { to the next }
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot("") == 0


def test_key_slot_agrees_with_the_server(valkey_cluster: ValkeyClusterProcess) -> None:
    node = valkey_cluster.nodes[0]
    keys = ["a", "topic:chat", "{room:1}:h", "ünïcode", "x{}y", "{{a}}", "t{9}", "k" * 300]
    keys += [f"key-{i}" for i in range(50)]
    for key in keys:
        assert key_slot(key) == node.call("CLUSTER", "KEYSLOT", key), key


def test_parse_cluster_url() -> None:
    address = parse_cluster_url("valkey+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2,host3:7002")
    assert [(s.host, s.port) for s in address.seeds] == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 6379),
        ("host3", 7002),
    ]
    assert address.password == "s@cret"
    assert all(seed.password == "s@cret" for seed in address.seeds)
    plain = parse_cluster_url("redis+cluster://127.0.0.1:1234?db=0")
    assert plain.password is None and [(s.host, s.port) for s in plain.seeds] == [
        ("127.0.0.1", 1234)
    ]
    assert is_cluster_url("valkey+cluster://h:1") and not is_cluster_url("valkey://h:1")
    for bad in (
        "valkey://h:1",
        "valkey+cluster://h:1/2",
        "valkey+cluster://h:1,,h:2",
        "valkey+cluster://h:port",
        "valkey+cluster://user:pw@h:1",
    ):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


def test_cluster_errors_are_transient() -> None:
    assert {"CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN"} <= TRANSIENT_ERRORS


def test_parse_shards_leaves_out_failed_replicas() -> None:
    def node(port: int, role: bytes, health: bytes) -> list[object]:
        ip = b"10.0.0.9"
        return [b"port", port, b"ip", ip, b"endpoint", ip, b"role", role, b"health", health]

    reply = [
        [b"slots", [0, 99, 200, 299], b"nodes", [node(1, b"master", b"online"),
                                                node(2, b"replica", b"failed"),
                                                node(3, b"replica", b"online")]],
        [b"slots", [], b"nodes", [node(4, b"master", b"online")]],
    ]  # fmt: skip
    [shard] = parse_shards(reply, "10.0.0.1")
    assert shard.slots == ((0, 99), (200, 299))
    assert shard.primary == ("10.0.0.9", 1)
    assert shard.replicas == (("10.0.0.9", 3),)
    # A lone node does not know its ip: it is where we asked.
    lone = [
        [
            b"slots",
            [0, 16383],
            b"nodes",
            [[b"port", 5, b"ip", b"", b"endpoint", b"", b"role", b"master", b"health", b"online"]],
        ]
    ]
    assert parse_shards(lone, "10.0.0.1")[0].primary == ("10.0.0.1", 5)


# -- routing -----------------------------------------------------------------------------


async def test_commands_land_on_the_primary_owning_the_slot(
    valkey_cluster: ValkeyClusterProcess, cluster: ValkeyCluster
) -> None:
    with trio.fail_after(LIMIT):
        assert sorted(cluster.primaries()) == sorted(
            node_address(n) for n in valkey_cluster.primaries()
        )
        spread = keys_per_node(valkey_cluster, "route-", per_node=4)
        for node, keys in spread.items():
            for key in keys:
                assert await cluster.execute("SET", key, f"v-{key}", key=key) == b"OK"
                assert cluster.slot_owner(key_slot(key)) == node_address(node)
        for node, keys in spread.items():
            for key in keys:
                # The owner has it; every other primary redirects.
                assert node.call("GET", key) == f"v-{key}"
                for other in spread:
                    if other is not node:
                        with pytest.raises(Exception, match="MOVED"):
                            other.call("GET", key)
                assert await cluster.execute("GET", key, key=key) == f"v-{key}".encode()
        stats = cluster.statistics()
        assert stats.shards == 3
        assert stats.connections == 3  # one pipelined connection per primary
        assert stats.redirects == 0 and stats.failures == 0


async def test_concurrent_commands_pipeline_per_primary(
    valkey_cluster: ValkeyClusterProcess, cluster: ValkeyCluster
) -> None:
    keys = [key for keys in keys_per_node(valkey_cluster, "incr-").values() for key in keys]
    for key in keys:
        await cluster.execute("DEL", key, key=key)

    async def bump(key: str) -> None:
        await cluster.execute("INCR", key, key=key)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                for key in keys:
                    nursery.start_soon(bump, key)
        for key in keys:
            assert await cluster.execute("GET", key, key=key) == b"100"
    assert cluster.statistics().connections == 3


async def test_error_replies_and_keyless_commands(cluster: ValkeyCluster) -> None:
    with trio.fail_after(LIMIT):
        await cluster.execute("SET", "err-string", "x", key="err-string")
        with pytest.raises(ValkeyError) as caught:
            await cluster.execute("LPUSH", "err-string", "y", key="err-string")
        assert caught.value.kind == "WRONGTYPE"
        with pytest.raises(ValkeyError) as caught:
            await cluster.execute("MSET", "{a}1", "1", "{b}2", "2", key="{a}1")
        assert caught.value.kind == "CROSSSLOT"
        assert await cluster.execute("PING", key=None) == b"PONG"
        for primary in cluster.primaries():
            role = await cluster.execute_on(primary, "ROLE")
            assert role[0] == b"master"
        assert cluster.statistics().failures == 0  # answered at once, not retried


async def test_connect_fails_promptly_when_no_seed_answers() -> None:
    with trio.fail_after(LIMIT):
        with pytest.raises(ValkeyUnavailable):
            await ValkeyCluster.connect(f"valkey+cluster://127.0.0.1:{free_port()}")


async def test_a_single_node_is_not_a_cluster(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(LIMIT):
        with pytest.raises(ValkeyError, match="cluster support disabled"):
            await ValkeyCluster.connect(f"valkey+cluster://127.0.0.1:{valkey_server.port}")


async def test_closed_client_refuses(cluster: ValkeyCluster) -> None:
    await cluster.aclose()
    assert cluster.closed
    with pytest.raises(ValkeyUnavailable):
        await cluster.execute("GET", "k", key="k")


@pytest.fixture
def password_cluster() -> Iterator[ValkeyClusterProcess]:
    with ValkeyClusterProcess(password="s3cret@/") as cluster:
        yield cluster


async def test_a_password_protected_cluster(password_cluster: ValkeyClusterProcess) -> None:
    """Every node wants the password: the map, the command connections and the
    subscriber connections all give it; a wrong one is refused at connect."""
    assert ":s3cret%40%2F@" in password_cluster.url
    with trio.fail_after(LIMIT):
        async with await ValkeyCluster.connect(password_cluster.url) as cluster:
            inbox = Inbox()
            sub = cluster.sharded_subscriber()
            async with trio.open_nursery() as nursery:
                await nursery.start(sub.listen, inbox.on_message, inbox.on_lost)
                for keys in keys_per_node(password_cluster, "pw-").values():
                    key = keys[0]
                    assert await cluster.execute("SET", key, "1", key=key) == b"OK"
                    await sub.ssubscribe(key)
                    assert await cluster.execute("SPUBLISH", key, b"x", key=key) == 1
                    await inbox.wait_message(key.encode(), b"x")
                nursery.cancel_scope.cancel()
        wrong = password_cluster.url.replace("s3cret%40", "wrong")
        with pytest.raises(ValkeyError) as caught:
            await ValkeyCluster.connect(wrong)
        assert caught.value.kind == "WRONGPASS"


# -- slots that move ---------------------------------------------------------------------


def move_slot(cluster: ValkeyClusterProcess, slot: int, to: ClusterNode) -> None:
    """Give an empty ``slot`` to ``to``: the new owner first, then everyone else."""
    for node in [to, *(n for n in cluster.primaries() if n is not to)]:
        node.call("CLUSTER", "SETSLOT", slot, "NODE", to.node_id)


async def test_moved_after_resharding(fresh_valkey_cluster: ValkeyClusterProcess) -> None:
    with trio.fail_after(LIMIT):
        cluster = await ValkeyCluster.connect(fresh_valkey_cluster.url)
        inbox = Inbox()
        sub = cluster.sharded_subscriber()
        key = "moving-key"
        channel = b"moving-channel"
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sub.listen, inbox.on_message, inbox.on_lost)
                [source, target, *_] = fresh_valkey_cluster.primaries()
                # A key and a channel of their own slots, owned by ``source``.
                key = next(
                    k
                    for k in (f"moving-key-{i}" for i in range(10_000))
                    if fresh_valkey_cluster.node_for_key(k) is source
                )
                channel = next(
                    c
                    for c in (f"moving-channel-{i}".encode() for i in range(10_000))
                    if fresh_valkey_cluster.node_for_key(c) is source
                    and key_slot(c) != key_slot(key)
                )
                await sub.ssubscribe(channel)

                # One attempt only (retry=False): MOVED is raised, and the map read again.
                once = next(
                    k
                    for k in (f"once-key-{i}" for i in range(10_000))
                    if fresh_valkey_cluster.node_for_key(k) is source
                    and key_slot(k) not in (key_slot(key), key_slot(channel))
                )
                await trio.to_thread.run_sync(
                    move_slot, fresh_valkey_cluster, key_slot(once), target
                )
                with pytest.raises(ValkeyError) as caught:
                    await cluster.execute("SET", once, "x", key=once, retry=False)
                assert caught.value.kind == "MOVED"
                assert caught.value.kind in TRANSIENT_ERRORS
                assert cluster.slot_owner(key_slot(once)) == node_address(target)
                assert await cluster.execute("SET", once, "y", key=once, retry=False) == b"OK"

                for slot in (key_slot(key), key_slot(channel)):
                    await trio.to_thread.run_sync(move_slot, fresh_valkey_cluster, slot, target)
                # The client's map still says ``source``: MOVED, followed.
                assert cluster.slot_owner(key_slot(key)) == node_address(source)
                redirects = cluster.statistics().redirects
                assert await cluster.execute("SET", key, "moved", key=key) == b"OK"
                assert cluster.statistics().redirects == redirects + 1
                assert cluster.slot_owner(key_slot(key)) == node_address(target)
                assert target.call("GET", key) == "moved"

                # ``source`` dropped the channel (sunsubscribe push): reported, resubscribed.
                await inbox.wait_lost(channel)
                assert channel not in sub.channels
                await sub.ssubscribe(channel)
                assert channel in sub.channels
                receivers = await cluster.execute("SPUBLISH", channel, b"hi", key=channel)
                assert receivers == 1
                await inbox.wait_message(channel, b"hi")
                nursery.cancel_scope.cancel()
        finally:
            await cluster.aclose()


async def test_ask_during_a_migration(fresh_valkey_cluster: ValkeyClusterProcess) -> None:
    with trio.fail_after(LIMIT):
        async with await ValkeyCluster.connect(fresh_valkey_cluster.url) as cluster:
            key = "asked-key"
            slot = key_slot(key)
            source = fresh_valkey_cluster.node_for_slot(slot)
            target = next(n for n in fresh_valkey_cluster.primaries() if n is not source)
            target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            # Not on the source: it answers ASK, the client asks the target.
            assert await cluster.execute("SET", key, "there", key=key) == b"OK"
            assert await cluster.execute("GET", key, key=key) == b"there"
            assert cluster.statistics().redirects == 2
            assert target.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            assert source.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            # The map did not change: the slot is still the source's until the move ends.
            assert cluster.slot_owner(slot) == node_address(source)


# -- sharded pub/sub ---------------------------------------------------------------------


async def test_sharded_pubsub_across_all_shards(
    valkey_cluster: ValkeyClusterProcess, cluster: ValkeyCluster
) -> None:
    spread = keys_per_node(valkey_cluster, "spread-channel-", per_node=2)
    channels = [c.encode() for keys in spread.values() for c in keys]
    inbox = Inbox()
    sub = cluster.sharded_subscriber()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            before = cluster.statistics().connections
            nursery.start_soon(sub.listen, inbox.on_message, inbox.on_lost)
            for channel in channels:
                await sub.ssubscribe(channel)  # waits for listen() to run
            assert sub.channels == frozenset(channels)
            assert cluster.statistics().connections == before + 3  # one per shard
            for channel in channels:
                receivers = await cluster.execute("SPUBLISH", channel, b"m-" + channel, key=channel)
                assert receivers == 1
            for channel in channels:
                await inbox.wait_message(channel, b"m-" + channel)
            await sub.sunsubscribe(channels[0])
            assert channels[0] not in sub.channels
            assert await cluster.execute("SPUBLISH", channels[0], b"gone", key=channels[0]) == 0
            nursery.cancel_scope.cancel()
    assert inbox.lost == []
    assert sub.channels == frozenset()
    assert cluster.statistics().connections == 3  # listen() closed its connections


async def test_subscriber_errors_answer_their_request(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    """On one node's subscriber connection an error reply (MOVED, CROSSSLOT) is raised
    by the request it answers, and later requests still work."""
    spread = keys_per_node(valkey_cluster, "err-channel-", per_node=2)
    [(node, mine), (_, theirs), *_] = spread.items()
    with trio.fail_after(LIMIT):
        sub = await ValkeySubscriber.connect(node.host, node.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sub.listen, lambda c, d: None)
            with pytest.raises(ValkeyError) as caught:
                await sub.ssubscribe(theirs[0])
            assert caught.value.kind == "MOVED"
            with pytest.raises(ValkeyError) as caught:
                await sub.ssubscribe(*mine)  # two slots
            assert caught.value.kind == "CROSSSLOT"
            await sub.ssubscribe(mine[0])
            assert sub.channels == {mine[0].encode()}
            await sub.sunsubscribe(mine[0])
            assert sub.channels == frozenset()
            nursery.cancel_scope.cancel()


async def test_subscribe_needs_a_listener(valkey_cluster: ValkeyClusterProcess) -> None:
    """Without listen() running, ssubscribe waits for it (up to command_timeout), then
    refuses: nobody would read the confirmation."""
    with trio.fail_after(LIMIT):
        async with await ValkeyCluster.connect(valkey_cluster.url, command_timeout=0.05) as cluster:
            sub = cluster.sharded_subscriber()
            with pytest.raises(RuntimeError):
                await sub.ssubscribe(b"nobody-listens")


# -- failover ----------------------------------------------------------------------------


async def test_primary_killed_retryable_failures_then_service_again(
    fresh_valkey_cluster: ValkeyClusterProcess,
) -> None:
    """SIGKILL one primary: while its replica takes over, commands for its slots fail
    with retryable errors within ``command_timeout``, its channels are reported lost;
    afterwards commands work and the channels can be subscribed again. The other
    shards keep serving."""
    spread = keys_per_node(fresh_valkey_cluster, "fo-", per_node=1)
    victim = fresh_valkey_cluster.primaries()[0]
    [victim_key] = spread[victim]
    other_keys = [keys[0] for node, keys in spread.items() if node is not victim]
    channels = {node: keys[0].encode() for node, keys in spread.items()}
    inbox = Inbox()
    failures: list[Exception] = []
    with trio.fail_after(LIMIT):
        cluster = await ValkeyCluster.connect(fresh_valkey_cluster.url)
        sub = cluster.sharded_subscriber()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sub.listen, inbox.on_message, inbox.on_lost)
                for channel in channels.values():
                    await sub.ssubscribe(channel)
                for key in [victim_key, *other_keys]:
                    await cluster.execute("SET", key, "before", key=key)

                # The other shards keep serving throughout (their CLUSTERDOWN between
                # the FAIL flag and the promotion is retried away).
                others_done = trio.Event()
                others_served = 0

                async def keep_writing() -> None:
                    nonlocal others_served
                    while not others_done.is_set():
                        for key in other_keys:
                            await cluster.execute("SET", key, "during", key=key)
                            others_served += 1
                        await trio.sleep(0.005)

                fresh_valkey_cluster.kill_primary(victim)
                killed_at = trio.current_time()
                nursery.start_soon(keep_writing)
                await inbox.wait_lost(channels[victim])
                assert sub.channels == frozenset(c for n, c in channels.items() if n is not victim)

                # Until the replica took over: prompt, retryable failures; then success.
                while True:
                    started = trio.current_time()
                    try:
                        reply = await cluster.execute("GET", victim_key, key=victim_key)
                        break
                    except ValkeyUnavailable as exc:
                        failures.append(exc)
                    except ValkeyError as exc:
                        assert exc.kind in TRANSIENT_ERRORS, exc
                        failures.append(exc)
                    # Each failed call gave up within its bound (plus a connect).
                    elapsed = trio.current_time() - started
                    assert elapsed < cluster.command_timeout + cluster.connect_timeout + 0.5
                recovered_after = trio.current_time() - killed_at
                assert failures, "the failover went unnoticed"
                assert reply == b"before"  # the replica had it
                promoted = await fresh_valkey_cluster.wait_promoted(victim)
                assert cluster.slot_owner(key_slot(victim_key)) == node_address(promoted)
                others_done.set()
                assert others_served > 0

                for key in other_keys:
                    assert await cluster.execute("GET", key, key=key) == b"during"
                # The lost channel subscribes again on the promoted replica.
                await sub.ssubscribe(channels[victim])
                for channel in channels.values():
                    await cluster.execute("SPUBLISH", channel, b"after", key=channel)
                for channel in channels.values():
                    await inbox.wait_message(channel, b"after")
                nursery.cancel_scope.cancel()
        finally:
            await cluster.aclose()
    print(
        f"failover: {len(failures)} retryable failures, service back after"
        f" {recovered_after:.2f} s; {cluster.statistics()}"
    )


async def test_in_flight_command_on_a_hung_node_is_not_retried(
    valkey_cluster: ValkeyClusterProcess,
) -> None:
    """A node that stops answering (SIGSTOP): the command times out within
    ``command_timeout`` as ValkeyUnavailable (it may have run, so it is not retried)
    and the hung connection is closed."""
    with trio.fail_after(LIMIT):
        cluster = await ValkeyCluster.connect(valkey_cluster.url, command_timeout=0.5)
        try:
            node = valkey_cluster.primaries()[1]
            key = keys_per_node(valkey_cluster, "hung-")[node][0]
            await cluster.execute("SET", key, "1", key=key)
            node.pause()
            try:
                started = trio.current_time()
                with pytest.raises(ValkeyUnavailable):
                    await cluster.execute("INCR", key, key=key)
                assert trio.current_time() - started < 1.0
            finally:
                node.resume()
            assert await cluster.execute("GET", key, key=key) in (b"1", b"2")
        finally:
            await cluster.aclose()


async def test_a_lost_connection_is_retried_only_for_idempotent_commands(
    valkey_cluster: ValkeyClusterProcess, cluster: ValkeyCluster
) -> None:
    """The server closes the connection (CLIENT KILL): the next command goes out on
    it and finds it closed. It may have run, so it raises ValkeyUnavailable; with
    ``idempotent=True`` it is sent again on a new connection."""
    node = valkey_cluster.primaries()[2]
    key = keys_per_node(valkey_cluster, "killed-conn-")[node][0]
    with trio.fail_after(LIMIT):
        await cluster.execute("SET", key, "1", key=key)
        for idempotent in (False, True):
            conn_id = await cluster.execute("CLIENT", "ID", key=key)
            assert node.call("CLIENT", "KILL", "ID", conn_id) == 1
            if idempotent:
                assert await cluster.execute("GET", key, key=key, idempotent=True) == b"1"
            else:
                with pytest.raises(ValkeyUnavailable):
                    await cluster.execute("INCR", key, key=key)
        assert await cluster.execute("GET", key, key=key) == b"1"


async def test_a_shard_without_primary_or_replica_is_clusterdown(
    fresh_valkey_cluster: ValkeyClusterProcess,
) -> None:
    """A shard lost whole (primary and replica killed): with full coverage required the
    cluster refuses keyed commands on every shard with CLUSTERDOWN. The client retries
    it within ``command_timeout``, then raises it as a transient ValkeyError."""
    spread = keys_per_node(fresh_valkey_cluster, "down-")
    victim, survivor = fresh_valkey_cluster.primaries()[:2]
    key = spread[survivor][0]
    with trio.fail_after(LIMIT):
        async with await ValkeyCluster.connect(
            fresh_valkey_cluster.url, command_timeout=0.3
        ) as cluster:
            await cluster.execute("SET", key, "1", key=key)
            for replica in fresh_valkey_cluster.replicas_of(victim):
                replica.kill()
            fresh_valkey_cluster.kill_primary(victim)
            while True:  # until the survivors flag the shard FAIL (node timeout)
                retries = cluster.statistics().retries
                try:
                    await cluster.execute("GET", key, key=key)
                except ValkeyError as exc:
                    assert exc.kind == "CLUSTERDOWN"
                    assert exc.kind in TRANSIENT_ERRORS
                    break
                await trio.sleep(0.05)
            assert cluster.statistics().retries > retries  # retried before giving up
