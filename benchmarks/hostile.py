"""Hostile clients: does one client's latency hold while the server carries thousands
of idle connections and a slowloris attack?

    python -m benchmarks.hostile [--quick] [--transport trio-websocket]

The claim measured: "5,000 idle connections and a 500-connection slowloris held
together while one client's ECHO p99 stays within 2x its idle p99".

* The server is the suite's (``python -m benchmarks.servers wskit``, the benchmark
  app of :mod:`benchmarks.app`) in a process of its own.
* The probe (this process, picows on uvloop) sends ``ECHO`` and waits for each
  ``ECHOED`` before the next, the round trips paced evenly over ``--window``
  seconds; first with nothing else connected (idle), then under attack (loaded).
* The attackers run in one more process (``--attacker``, picows and asyncio
  streams): ``--idle`` WebSocket connections, upgraded then silent (picows answers
  pings by itself), and ``--slowloris`` TCP connections each sending an HTTP
  upgrade request one byte a second, never finishing it. The server cuts those
  after its handshake timeout; each is reopened as soon as it is cut, so the
  number held stays the same throughout.
* Then, the attackers closed and the server's RSS settled, the slow readers: a few
  raw TCP connections from this process (``--slow-readers``, 20; 5 with
  ``--quick``), each upgraded, then sending ~1 MiB ``ECHO`` frames as fast as its
  socket takes them and never reading a byte. The server's bounded outbound queue
  (``Limits.outbound_queue_bytes``) makes it stop reading them; once every one has
  stalled, the RSS is read (the second claim: "each slow reader costs about that
  bound, and the RSS comes back once they are gone"), then they are all reset
  (RST, no close frame), the RSS is polled until it stops dropping, and a new
  client must still get its ``ECHO`` answered.

Prints a Markdown table (and PASS/MISS against the 2x target), writes it to
``benchmarks/results/hostile.md`` and the numbers to ``hostile.json``. Exits 0
either way; a server that died on the way is reported as such. All traffic goes
to 127.0.0.1, every loop is bounded, and the whole run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from wskit_trio import Limits

from .load import Idle
from .run import ECHO_MESSAGE, ROOT, Process, _raise_fd_limit, fd_limit, machine_info

__all__ = ["FULL", "QUICK", "Settings", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
#: The target: loaded p99 at most this many times the idle p99.
TARGET_RATIO = 2.0
#: The attacker process gives up on its own after this long, whatever happens.
ATTACKER_MAX_SECONDS = 600.0
#: A slowloris connection sends one byte every this many seconds.
SLOWLORIS_INTERVAL = 1.0
#: A slowloris connection refused (server gone?) tries again after this long.
SLOWLORIS_RETRY = 1.0

TRANSPORTS = {
    "wsproto": ("wskit", "wskit_trio, wsproto transport"),
    "trio-websocket": ("wskit-trio-websocket", "wskit_trio, trio-websocket adapter"),
}


@dataclass(frozen=True)
class Settings:
    #: ECHO round trips measured per phase (idle, then loaded).
    round_trips: int
    #: Round trips sent back to back before the idle phase, not measured.
    warmup: int
    #: Seconds each phase's round trips are spread over (same pacing both phases).
    window: float
    idle: int
    slowloris: int
    #: Seconds the attack runs before the loaded phase starts.
    settle: float
    #: Seconds one round trip may take before the probe gives up.
    reply_timeout: float = 5.0
    #: Slow readers (connections sending ~1 MiB ECHOs and reading nothing), opened
    #: once the idle and slowloris connections are closed; 0: no such phase.
    slow_readers: int = 20
    #: Each slow reader stops sending after this many MiB (if the server never
    #: stops reading it), and all of them after ``slow_reader_push`` seconds.
    slow_reader_max_mib: int = 64
    slow_reader_push: float = 30.0


FULL = Settings(round_trips=2000, warmup=200, window=15.0, idle=5000, slowloris=500, settle=1.0)
#: Small counts; the loaded phase still outlasts a 10 s handshake timeout, so the
#: server cuts (and the attacker reopens) every slowloris connection at least once.
QUICK = Settings(
    round_trips=500, warmup=100, window=12.0, idle=500, slowloris=50, settle=1.0, slow_readers=5
)


# -- the attacker process -----------------------------------------------------------------


def _slowloris_request(port: int) -> bytes:
    """A WebSocket upgrade request without its final blank line: the attacker sends
    it, then pads the last header forever, one byte at a time."""
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nX-Slowloris: "
    ).encode("ascii")


def _status_line(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0][:60]
    return line.decode("ascii", "replace") or "empty answer"


class Slowloris:
    """``count`` connections, each sending one byte a second of a request it never
    finishes, reopened as soon as the server drops it."""

    def __init__(self, port: int, count: int, deadline: float) -> None:
        self.port = port
        self.count = count
        self.deadline = deadline
        self.request = _slowloris_request(port)
        self.open = 0
        #: Connections that reached the server at least once (or failed to).
        self.started = 0
        self.drops = 0
        self.connect_failures = 0
        #: How each drop looked: "closed" (EOF), "reset", or the server's status line.
        self.outcomes: Counter[str] = Counter()
        #: Seconds each dropped connection lived.
        self.lifetimes: list[float] = []
        self.samples: list[int] = []
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._all_started = asyncio.Event()

    def _byte(self, index: int) -> bytes:
        return self.request[index : index + 1] if index < len(self.request) else b"a"

    async def start(self, ramp: float) -> dict[str, Any]:
        """Open them all, spread over ``ramp`` seconds (so they are not all cut in
        the same instant); returns once every one has connected or failed once."""
        for index in range(self.count):
            delay = ramp * index / max(1, self.count)
            self._tasks.add(asyncio.create_task(self._run(delay)))
        self._tasks.add(asyncio.create_task(self._sample()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_started.wait(), ramp + 30)
        result: dict[str, Any] = {"open": self.open, "started": self.started}
        if self.open < self.count:
            result["error"] = f"only {self.open} of {self.count} slowloris connections open"
        return result

    def _started_one(self) -> None:
        self.started += 1
        if self.started >= self.count:
            self._all_started.set()

    async def _sample(self) -> None:
        while not self._stopping and time.monotonic() < self.deadline:
            self.samples.append(self.open)
            await asyncio.sleep(0.1)

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        first = True
        while not self._stopping and time.monotonic() < self.deadline:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 5)
            except (OSError, TimeoutError):
                self.connect_failures += 1
                if first:
                    first = False
                    self._started_one()
                await asyncio.sleep(SLOWLORIS_RETRY)
                continue
            self.open += 1
            if first:
                first = False
                self._started_one()
            opened = time.monotonic()
            outcome = "closed"
            try:
                sent = 0
                while not self._stopping and time.monotonic() < self.deadline:
                    writer.write(self._byte(sent))
                    sent += 1
                    try:
                        data = await asyncio.wait_for(reader.read(4096), SLOWLORIS_INTERVAL)
                    except TimeoutError:
                        continue
                    if data:
                        outcome = _status_line(data)
                    break
            except OSError:
                outcome = "reset"
            finally:
                self.open -= 1
                writer.transport.abort()
            if not self._stopping and time.monotonic() < self.deadline:
                self.drops += 1
                self.outcomes[outcome] += 1
                self.lifetimes.append(time.monotonic() - opened)

    def status(self, reset: bool) -> dict[str, Any]:
        samples = self.samples or [self.open]
        result: dict[str, Any] = {
            "open": self.open,
            "drops": self.drops,
            "connect_failures": self.connect_failures,
            "outcomes": dict(self.outcomes),
            "cut_after_median": statistics.median(self.lifetimes) if self.lifetimes else None,
            "held_min": min(samples),
            "held_mean": statistics.fmean(samples),
        }
        if reset:
            self.samples = []
        return result

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


async def _attacker_commands(max_seconds: float) -> None:
    """The attacker process: one JSON command a line on stdin, one JSON answer a line
    on stdout (like :mod:`benchmarks.load`). Stops at EOF, ``quit`` or
    ``max_seconds``, whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + max_seconds
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    idle = Idle()
    slowloris: Slowloris | None = None

    async def idle_status(cmd: dict[str, Any]) -> dict[str, Any]:
        return {"opened": len(idle.clients), "open": sum(not c.closed for c in idle.clients)}

    async def start_slowloris(cmd: dict[str, Any]) -> dict[str, Any]:
        nonlocal slowloris
        if slowloris is not None:
            return {"error": "slowloris already running"}
        slowloris = Slowloris(cmd["port"], cmd["count"], deadline)
        return await slowloris.start(cmd.get("ramp", 1.0))

    async def status(cmd: dict[str, Any]) -> dict[str, Any]:
        result = {"idle": await idle_status(cmd)}
        if slowloris is not None:
            result["slowloris"] = slowloris.status(bool(cmd.get("reset")))
        return result

    async def stop(cmd: dict[str, Any]) -> dict[str, Any]:
        if slowloris is not None:
            await slowloris.stop()
        return await idle.close(cmd)

    ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
        "idle": idle.open,
        "slowloris": start_slowloris,
        "status": status,
        "stop": stop,
    }
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(stdin.readline(), left)
            except TimeoutError:
                break
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                result = await asyncio.wait_for(ops[cmd["op"]](cmd), max(1.0, left))
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)
    finally:
        await stop({})


class Attacker:
    """The attacker process, seen from the probe's side."""

    def __init__(self, process: asyncio.subprocess.Process, log: Any) -> None:
        self._process = process
        self._log = log

    @classmethod
    async def start(cls, max_seconds: float) -> Attacker:
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.hostile",
            "--attacker",
            "--attacker-max-seconds",
            str(max_seconds),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=_raise_fd_limit,
        )
        return cls(process, log)

    async def __call__(self, wait: float, **cmd: Any) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write((json.dumps(cmd) + "\n").encode())
            await stdin.drain()
            line = await asyncio.wait_for(stdout.readline(), wait)
        except TimeoutError:
            return {"error": f"attacker command {cmd['op']!r} took more than {wait:g}s"}
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if not line:
            return {"error": f"the attacker process exited: {self.stderr_tail()}"}
        result: dict[str, Any] = json.loads(line)
        return result

    def stderr_tail(self) -> str:
        self._log.seek(0)
        return str(self._log.read()[-1000:]).strip()

    async def close(self) -> None:
        stdin = self._process.stdin
        if stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.write(b'{"op": "quit"}\n')
                stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 15)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        self._log.close()


# -- the probe ------------------------------------------------------------------------------


class ProbeError(Exception):
    pass


class Probe(WSListener):
    """One picows connection doing one ECHO round trip at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.sent_at = 0
        self.lost: str | None = None
        #: ``time.monotonic()`` when the connection was lost.
        self.lost_at: float | None = None
        self.message = ECHO_MESSAGE.encode()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.perf_counter_ns()
        if frame.msg_type is WSMsgType.TEXT:
            waiter = self.waiter
            if waiter is None or waiter.done():
                return
            data = frame.get_payload_as_bytes()
            if b'"ECHOED"' in data:
                waiter.set_result(now - self.sent_at)
            else:
                waiter.set_exception(ProbeError(f"expected ECHOED, got {data[:80]!r}"))
        elif frame.msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self._fail(f"the server closed the probe's connection ({code})")
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._fail("the probe's connection was lost")

    def _fail(self, why: str) -> None:
        if self.lost is None:
            self.lost, self.lost_at = why, time.monotonic()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ProbeError(why))

    async def round_trip(self, patience: float) -> int:
        """One ECHO → ECHOED, nanoseconds (measured in the frame callback)."""
        if self.lost is not None:
            raise ProbeError(self.lost)
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.sent_at = time.perf_counter_ns()
        self.transport.send(WSMsgType.TEXT, self.message)
        try:
            return await asyncio.wait_for(self.waiter, patience)
        except TimeoutError:
            raise ProbeError(f"no ECHOED within {patience:g}s") from None

    def close(self) -> None:
        if self.transport is not None and self.lost is None:
            self.transport.disconnect()


async def open_probe(url: str) -> Probe:
    _, probe = await ws_connect(Probe, url, websocket_handshake_timeout=30)
    assert isinstance(probe, Probe)
    return probe


async def fresh_client(url: str, patience: float) -> str | None:
    """Can a new client still connect and get an ECHO answered? ``None`` if so,
    else what went wrong."""
    try:
        probe = await asyncio.wait_for(open_probe(url), patience)
    except Exception as exc:
        return f"connect failed: {type(exc).__name__}: {exc}".rstrip(": ")
    try:
        await probe.round_trip(patience)
    except ProbeError as exc:
        return str(exc)
    finally:
        probe.close()
    return None


@dataclass
class Phase:
    """One phase's round trips."""

    count: int = 0
    seconds: float = 0.0
    p50_us: float | None = None
    p99_us: float | None = None
    max_us: float | None = None
    mean_us: float | None = None
    error: str | None = None


async def measure(probe: Probe, count: int, window: float, patience: float) -> Phase:
    """``count`` round trips, one after the other, started evenly over ``window``
    seconds (each one as soon as the previous one is answered if that is later)."""
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    phase = Phase()
    start = loop.time()
    gap = window / max(1, count)
    for index in range(count):
        delay = start + index * gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            latencies.append(await probe.round_trip(patience))
        except ProbeError as exc:
            phase.error = f"after {len(latencies)} round trips: {exc}"
            break
    phase.seconds = loop.time() - start
    if latencies:
        ordered = sorted(latencies)
        phase.count = len(ordered)
        phase.p50_us = ordered[len(ordered) // 2] / 1000
        phase.p99_us = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
        phase.max_us = ordered[-1] / 1000
        phase.mean_us = statistics.fmean(ordered) / 1000
    return phase


# -- the server -----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def rss_kib(server: Process) -> int | None:
    try:
        return server.rss_kib()
    except (OSError, RuntimeError):
        return None


def crash_line(log: str) -> str | None:
    """The last exception line of a traceback in the server's stderr, if any."""
    if "Traceback" not in log:
        return None
    for line in reversed(log.splitlines()):
        line = line.strip().lstrip("|+ ").strip()
        if line and ("Error" in line or "Exception" in line) and not line.startswith("File "):
            return line[:300]
    return log.strip().splitlines()[-1][:300]


# -- the slow readers -----------------------------------------------------------------------


#: A slow reader gives up sending once its socket has taken nothing for this long.
SLOW_STALL = 2.0
#: Bytes of the ECHO message each slow reader sends over and over: as large as the
#: server's inbound limit allows (``Limits.max_message_bytes``), less a margin.
SLOW_MESSAGE_BYTES = Limits().max_message_bytes - 256
#: The server's bound on what it queues for one client (the default it runs with).
OUTBOUND_QUEUE_BYTES = Limits().outbound_queue_bytes
#: RSS back "near" its level before the slow readers: within this share of what they
#: added, or within ``RECOVERY_SLACK_KIB``, whichever is larger.
RECOVERY_SHARE = 0.25
RECOVERY_SLACK_KIB = 32 * 1024
#: RSS settling: sampled this often; settled once it has dropped by less than
#: ``SETTLE_DROP_KIB`` over ``SETTLE_SPAN`` seconds (giving up after ``SETTLE_MAX``).
SETTLE_EVERY = 0.2
SETTLE_SPAN = 2.0
SETTLE_DROP_KIB = 1024
SETTLE_MAX = 10.0


def _echo_frame(size: int) -> bytes:
    """A masked client text frame carrying an ``ECHO`` message of ``size`` bytes. The
    mask is all zeros (valid, RFC 6455 §5.3), so the payload goes as it is."""
    head, tail = '{"type":"ECHO","payload":{"text":"', '","n":1}}'
    text = "x" * (size - len(head) - len(tail))
    payload = (head + text + tail).encode()
    return bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big") + bytes(4) + payload


def _upgrade_request(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


class SlowReader:
    """One raw TCP connection, upgraded, then sending ``ECHO`` frames as fast as the
    socket takes them and never reading a byte of the answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        #: Bytes the socket took (written into the kernel), upgrade request excluded.
        self.sent = 0
        #: How the sending ended: "stalled", "capped", "out of time", or an error.
        self.outcome = "not started"

    @classmethod
    async def open(cls, port: int, patience: float) -> SlowReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(patience):
                await loop.sock_connect(sock, (HOST, port))
                await loop.sock_sendall(sock, _upgrade_request(port))
                answer = b""
                while b"\r\n\r\n" not in answer and len(answer) < 16384:
                    data = await loop.sock_recv(sock, 4096)
                    if not data:
                        break
                    answer += data
        except BaseException:
            sock.close()
            raise
        if not answer.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise ProbeError(f"upgrade refused: {_status_line(answer)}")
        return cls(sock)

    async def push(self, frame: bytes, cap: int, stall: float, deadline: float) -> None:
        """Send ``frame`` over and over until the socket takes nothing for ``stall``
        seconds, ``cap`` bytes are sent, or ``deadline`` (``time.monotonic()``)."""
        loop = asyncio.get_running_loop()
        view = memoryview(frame)
        offset = 0
        self.outcome = "capped"
        while self.sent < cap:
            try:
                taken = self.sock.send(view[offset:])
            except BlockingIOError:
                left = min(stall, deadline - time.monotonic())
                if left <= 0:
                    self.outcome = "out of time"
                    return
                writable: asyncio.Future[None] = loop.create_future()

                def ready(future: asyncio.Future[None] = writable) -> None:
                    if not future.done():
                        future.set_result(None)

                loop.add_writer(self.sock.fileno(), ready)
                try:
                    await asyncio.wait_for(writable, left)
                except TimeoutError:
                    self.outcome = "stalled" if left >= stall else "out of time"
                    return
                finally:
                    loop.remove_writer(self.sock.fileno())
                continue
            except OSError as exc:
                self.outcome = f"send failed: {type(exc).__name__}"
                return
            self.sent += taken
            offset = (offset + taken) % len(frame)

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0, so the kernel sends an RST (no close frame)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def tcp_queues(port: int) -> dict[tuple[int, int], tuple[int, int]]:
    """The IPv4 TCP sockets with ``port`` at one end: (local port, remote port) →
    (send queue, receive queue) in bytes, from ``/proc/net/tcp`` (empty if it cannot
    be read). Send queue: written, not yet acknowledged; receive queue: not read."""
    found: dict[tuple[int, int], tuple[int, int]] = {}
    try:
        with open("/proc/net/tcp") as table:
            next(table, None)
            for line in table:
                parts = line.split()
                if len(parts) < 5:
                    continue
                local = int(parts[1].rsplit(":", 1)[1], 16)
                remote = int(parts[2].rsplit(":", 1)[1], 16)
                if port in (local, remote):
                    tx, rx = (int(n, 16) for n in parts[4].split(":"))
                    found[local, remote] = (tx, rx)
    except (OSError, ValueError):
        return {}
    return found


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class SlowPhase:
    """The slow-reader phase: connections sending ~1 MiB ECHOs, reading nothing."""

    count: int = 0
    connected: int = 0
    message_bytes: int = 0
    #: How each connection's sending ended ("stalled": the socket took nothing for
    #: ``SLOW_STALL`` seconds).
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Seconds from the first byte sent until every connection stopped sending.
    push_s: float = 0.0
    rss_before_kib: int | None = None
    #: The peak while they pushed and sat stalled (sampled every 0.1 s).
    rss_during_kib: int | None = None
    rss_after_kib: int | None = None
    #: Seconds after the resets until the RSS stopped dropping.
    settle_s: float | None = None
    fds_before: int | None = None
    fds_during: int | None = None
    fds_after: int | None = None
    #: Bytes the slow readers' sockets took (all of them).
    sent_bytes: int = 0
    #: Of those, what reached the server's sockets, and what the server read
    #: (from ``/proc/net/tcp`` queues; ``None`` if it could not be read).
    delivered_bytes: int | None = None
    read_bytes: int | None = None
    #: ECHOED bytes the server wrote that sit in kernel buffers (both ends).
    answered_in_kernel_bytes: int | None = None
    #: The probe's ECHO round trips while the slow readers sat stalled.
    probe_p50_us: float | None = None
    probe_p99_us: float | None = None
    probe_error: str | None = None
    #: A new client after the resets: ``None`` if served, else what went wrong.
    fresh_client_error: str | None = None
    serving_after: bool | None = None
    error: str | None = None

    @property
    def growth_kib(self) -> int | None:
        if self.rss_before_kib is None or self.rss_during_kib is None:
            return None
        return self.rss_during_kib - self.rss_before_kib

    @property
    def per_connection_kib(self) -> float | None:
        growth = self.growth_kib
        return None if growth is None or not self.connected else growth / self.connected

    @property
    def held_per_connection(self) -> float | None:
        """Bytes the server read and has not answered into its socket yet, per
        connection: what it holds in its own memory for each slow reader (≈)."""
        if self.read_bytes is None or self.answered_in_kernel_bytes is None:
            return None
        if not self.connected:
            return None
        return (self.read_bytes - self.answered_in_kernel_bytes) / self.connected

    @property
    def residue_kib(self) -> int | None:
        """RSS after the resets less RSS before the slow readers."""
        if self.rss_before_kib is None or self.rss_after_kib is None:
            return None
        return self.rss_after_kib - self.rss_before_kib

    def allowed_residue_kib(self) -> float:
        return max(RECOVERY_SHARE * max(0, self.growth_kib or 0), RECOVERY_SLACK_KIB)

    def misses(self) -> list[str]:
        """Why "the RSS comes back after the slow readers" does not hold (empty: PASS)."""
        why = []
        if self.error:
            why.append(self.error)
        if self.connected < self.count:
            why.append(f"only {self.connected} of {self.count} slow readers connected")
        residue = self.residue_kib
        if residue is None:
            if not self.error:
                why.append("RSS not measured")
        elif residue > self.allowed_residue_kib():
            why.append(
                f"RSS after the resets is {residue / 1024:,.1f} MiB above its level before "
                f"(allowed {self.allowed_residue_kib() / 1024:,.1f} MiB)"
            )
        if self.serving_after is False:
            why.append(f"a new client fails after the resets ({self.fresh_client_error})")
        return why


async def settle_rss(server: Process, give_up: float = SETTLE_MAX) -> tuple[int | None, float]:
    """Poll the server's RSS until it stops dropping (bounded by ``give_up`` seconds);
    returns the last reading and the seconds waited."""
    began = time.monotonic()
    readings: list[tuple[float, int]] = []
    while True:
        rss = rss_kib(server)
        now = time.monotonic()
        if rss is None:
            return None, now - began
        readings.append((now, rss))
        if now - began >= give_up:
            break
        older = [kib for at, kib in readings if at <= now - SETTLE_SPAN]
        if older and older[-1] - rss < SETTLE_DROP_KIB:
            break
        await asyncio.sleep(SETTLE_EVERY)
    return readings[-1][1], readings[-1][0] - began


async def slow_readers(
    server: Process, probe: Probe | None, settings: Settings, report: Report
) -> None:
    """Open the slow readers, let them fill everything they can, measure, reset them
    all, measure again, then check a new client is still served."""
    s = settings
    phase = report.slow = SlowPhase(count=s.slow_readers, message_bytes=SLOW_MESSAGE_BYTES)
    say("slow readers: waiting for the server's RSS to settle")
    phase.rss_before_kib, _ = await settle_rss(server)
    phase.fds_before = open_fds(server.pid)
    say(f"slow readers: {s.slow_readers} connections sending ~1 MiB ECHOs, reading nothing")
    opened = await asyncio.gather(
        *(SlowReader.open(server.port, s.reply_timeout) for _ in range(s.slow_readers)),
        return_exceptions=True,
    )
    readers = [r for r in opened if isinstance(r, SlowReader)]
    failures = [r for r in opened if not isinstance(r, SlowReader)]
    phase.connected = len(readers)
    if failures:
        report.notes.append(f"slow readers that failed to connect: {failures[0]!r}")
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            rss = rss_kib(server)
            if rss is not None:
                phase.rss_during_kib = max(phase.rss_during_kib or 0, rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.1)

    sampler = asyncio.create_task(sample())
    try:
        frame = _echo_frame(SLOW_MESSAGE_BYTES)
        began = time.monotonic()
        await asyncio.gather(
            *(
                r.push(frame, s.slow_reader_max_mib << 20, SLOW_STALL, began + s.slow_reader_push)
                for r in readers
            )
        )
        phase.push_s = time.monotonic() - began
        phase.outcomes = dict(Counter(r.outcome for r in readers))
        phase.sent_bytes = sum(r.sent for r in readers)
        queues = tcp_queues(server.port)
        if queues:
            ports = [r.port for r in readers]
            zero = (0, 0)
            client_unsent = sum(queues.get((p, server.port), zero)[0] for p in ports)
            server_unread = sum(queues.get((server.port, p), zero)[1] for p in ports)
            phase.delivered_bytes = phase.sent_bytes - client_unsent
            phase.read_bytes = phase.delivered_bytes - server_unread
            phase.answered_in_kernel_bytes = sum(
                queues.get((server.port, p), zero)[0] + queues.get((p, server.port), zero)[1]
                for p in ports
            )
        rss = rss_kib(server)
        if rss is not None:
            phase.rss_during_kib = max(phase.rss_during_kib or 0, rss)
        phase.fds_during = open_fds(server.pid)
        if probe is not None:
            stalled = await measure(probe, 100, 1.0, s.reply_timeout)
            phase.probe_p50_us, phase.probe_p99_us = stalled.p50_us, stalled.p99_us
            phase.probe_error = stalled.error
    finally:
        stop_sampling.set()
        await sampler
        for r in readers:
            r.reset()
    if not alive(server.pid):
        phase.error = "the server died during the slow readers"
        return
    say("slow readers: reset; waiting for the server's RSS to settle")
    phase.rss_after_kib, phase.settle_s = await settle_rss(server)
    phase.fds_after = open_fds(server.pid)
    phase.fresh_client_error = await fresh_client(f"ws://{HOST}:{server.port}/", s.reply_timeout)
    phase.serving_after = phase.fresh_client_error is None


# -- the run --------------------------------------------------------------------------------


@dataclass
class Report:
    settings: Settings
    transport: str
    server: str
    idle_phase: Phase = field(default_factory=Phase)
    loaded_phase: Phase = field(default_factory=Phase)
    rss_before_kib: int | None = None
    rss_during_kib: int | None = None
    idle_opened: int = 0
    idle_open_at_end: int = 0
    slowloris_open_at_start: int = 0
    slowloris_held_min: int | None = None
    slowloris_held_mean: float | None = None
    slowloris_drops: int = 0
    slowloris_outcomes: dict[str, int] = field(default_factory=dict)
    slowloris_cut_after_s: float | None = None
    slowloris_connect_failures: int = 0
    #: The server's process still runs at the end.
    server_alive: bool = True
    #: A new client could still connect and get an ECHO answered, after the loaded phase.
    serving_at_end: bool | None = None
    fresh_client_error: str | None = None
    #: When the probe's own connection was lost (seconds into the attack), and how.
    probe_lost_after_s: float | None = None
    probe_lost: str | None = None
    attack_started: float | None = None
    #: Seconds from the start of the attack to the server's death, if it died.
    server_died_after_s: float | None = None
    server_error: str | None = None
    #: The slow-reader phase, if it ran.
    slow: SlowPhase | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        idle, loaded = self.idle_phase.p99_us, self.loaded_phase.p99_us
        if idle is None or loaded is None or not idle:
            return None
        return loaded / idle

    def misses(self) -> list[str]:
        """Why the claim does not hold (empty: PASS)."""
        s = self.settings
        why = []
        if not self.server_alive:
            when = (
                f" {self.server_died_after_s:.1f}s into the attack"
                if self.server_died_after_s is not None
                else ""
            )
            why.append(f"the server died{when}")
        elif self.serving_at_end is False:
            error = self.fresh_client_error
            if error is None and self.slow is not None:
                error = self.slow.fresh_client_error
            why.append(f"the server no longer serves new clients ({error})")
        if self.idle_phase.error or self.idle_phase.count < s.round_trips:
            why.append(f"idle phase incomplete ({self.idle_phase.error or 'no round trips'})")
        if self.loaded_phase.error or self.loaded_phase.count < s.round_trips:
            why.append(f"loaded phase incomplete ({self.loaded_phase.error or 'not run'})")
        if self.ratio is not None and self.ratio > TARGET_RATIO:
            why.append(f"loaded p99 is {self.ratio:.2f}x the idle p99 (target ≤ {TARGET_RATIO})")
        if self.idle_open_at_end < s.idle:
            why.append(f"only {self.idle_open_at_end} of {s.idle} idle connections held")
        if self.slowloris_held_min is None or self.slowloris_held_min < 0.95 * s.slowloris:
            why.append(
                f"slowloris connections held fell to {self.slowloris_held_min} of {s.slowloris}"
            )
        return why


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def watch(server: Process, report: Report, since: float, stop: asyncio.Event) -> None:
    """Until ``stop``: note the server's death and its peak RSS, every 0.2 s."""
    while not stop.is_set():
        if not alive(server.pid):
            report.server_alive = False
            report.server_died_after_s = time.monotonic() - since
            say(f"!! the server process died {report.server_died_after_s:.1f}s into the attack")
            return
        rss = rss_kib(server)
        if rss is not None:
            report.rss_during_kib = max(report.rss_during_kib or 0, rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def attack(server: Process, settings: Settings, report: Report) -> None:
    s = settings
    url = f"ws://{HOST}:{server.port}/"
    attacker = await Attacker.start(ATTACKER_MAX_SECONDS)
    probe: Probe | None = None
    stop_watching = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        probe = await open_probe(url)
        say(f"warm-up: {s.warmup} round trips")
        await measure(probe, s.warmup, 0.0, s.reply_timeout)
        say(f"idle phase: {s.round_trips} ECHO round trips over {s.window:g}s")
        report.idle_phase = await measure(probe, s.round_trips, s.window, s.reply_timeout)
        report.rss_before_kib = rss_kib(server)

        started = report.attack_started = time.monotonic()
        watcher = asyncio.create_task(watch(server, report, started, stop_watching))
        say(f"opening {s.idle:,} idle connections")
        opened = await attacker(180, op="idle", url=url, count=s.idle)
        report.idle_opened = int(opened.get("opened", 0))
        if "error" in opened:
            report.notes.append(f"idle connections: {opened['error']}")
        say(f"starting {s.slowloris:,} slowloris connections (one byte a second)")
        result = await attacker(60, op="slowloris", port=server.port, count=s.slowloris, ramp=1.0)
        report.slowloris_open_at_start = int(result.get("open", 0))
        if "error" in result:
            report.notes.append(f"slowloris: {result['error']}")
        await asyncio.sleep(s.settle)
        await attacker(10, op="status", reset=True)  # held counts: from here on
        if report.server_alive and alive(server.pid):
            say(f"loaded phase: {s.round_trips} ECHO round trips over {s.window:g}s")
            report.loaded_phase = await measure(probe, s.round_trips, s.window, s.reply_timeout)
        else:
            report.loaded_phase.error = "not run: the server is dead"
        status = await attacker(10, op="status")
        if "error" in status:
            report.notes.append(f"attacker status: {status['error']}")
        idle = status.get("idle", {})
        report.idle_open_at_end = int(idle.get("open", 0))
        slow = status.get("slowloris")
        if slow is not None:
            report.slowloris_held_min = slow["held_min"]
            report.slowloris_held_mean = slow["held_mean"]
            report.slowloris_drops = slow["drops"]
            report.slowloris_outcomes = slow["outcomes"]
            report.slowloris_cut_after_s = slow["cut_after_median"]
            report.slowloris_connect_failures = slow["connect_failures"]
        if probe.lost_at is not None:
            report.probe_lost_after_s = probe.lost_at - started
            report.probe_lost = probe.lost
        report.fresh_client_error = await fresh_client(url, s.reply_timeout)
        report.serving_at_end = report.fresh_client_error is None
        stop_watching.set()
        await watcher
        say("closing the attackers")
        await attacker(60, op="stop")
        if s.slow_readers > 0 and alive(server.pid):
            await slow_readers(server, probe, s, report)
            assert report.slow is not None
            if report.slow.serving_after is False:
                report.serving_at_end = False
            if not alive(server.pid):
                report.server_alive = False
                report.server_died_after_s = time.monotonic() - started
    finally:
        stop_watching.set()
        if watcher is not None:
            await watcher
        if probe is not None:
            probe.close()
        await attacker.close()


def run(settings: Settings, transport: str) -> Report:
    kind, label = TRANSPORTS[transport]
    report = Report(settings, transport, label, machine=machine_info())
    _raise_fd_limit()
    limit = fd_limit()
    if settings.idle + settings.slowloris + 200 > limit:
        idle = max(10, limit - settings.slowloris - 200)
        report.notes.append(f"idle connections cut to {idle} (open-file limit {limit})")
        settings = report.settings = Settings(**{**asdict(settings), "idle": idle})
    began = time.monotonic()
    say(f"starting the server: {label}")
    try:
        server = Process([sys.executable, "-m", "benchmarks.servers", kind]).wait_ready()
    except RuntimeError as exc:
        report.server_alive = False
        report.notes.append(str(exc))
        report.seconds = time.monotonic() - began
        return report
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(attack(server, settings, report))
        else:
            uvloop.run(attack(server, settings, report))
    except Exception as exc:
        report.notes.append(f"the run stopped early: {type(exc).__name__}: {exc}")
    finally:
        failing = report.serving_at_end is False or report.probe_lost is not None
        if failing and report.server_alive:
            # Probably shutting down after a crash (closing its connections first):
            # give it the time to finish, to tell a crash from a survivable hiccup.
            say("the server looks unwell: waiting up to 15s to see whether it exits")
            give_up = time.monotonic() + 15
            while alive(server.pid) and time.monotonic() < give_up:
                time.sleep(0.2)
            if not alive(server.pid):
                report.server_alive = False
                if report.attack_started is not None:
                    report.server_died_after_s = time.monotonic() - report.attack_started
        report.server_alive = report.server_alive and alive(server.pid)
        log = server.stderr_tail()
        report.server_error = crash_line(log)
        if report.server_error is not None and report.server_alive:
            report.notes.append(
                f"the server logged an error and kept running: {report.server_error}"
            )
        server.stop()
    report.seconds = time.monotonic() - began
    return report


# -- the report -----------------------------------------------------------------------------


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:,.1f} MiB"


def _bytes_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / (1 << 20):,.1f} MiB"


def slow_rows(phase: SlowPhase) -> list[str]:
    """The slow-reader phase's rows of the table."""
    n = phase.connected
    outcomes = ", ".join(f"{count} {what}" for what, count in sorted(phase.outcomes.items()))
    per = phase.per_connection_kib
    residue = phase.residue_kib

    def each(total: float | None) -> float | None:
        return None if total is None or not n else total / n

    settled = "" if phase.settle_s is None else f", settled in {phase.settle_s:.1f}s"
    return [
        f"| slow readers: connections sending {phase.message_bytes / (1 << 20):.2f} MiB ECHOs, "
        f"never reading (of {phase.count}) | {n} ({outcomes or 'none sent'}) |",
        f"| server RSS before the slow readers / during (peak) / after the resets | "
        f"{_mib(phase.rss_before_kib)} / {_mib(phase.rss_during_kib)} / "
        f"{_mib(phase.rss_after_kib)} |",
        f"| RSS per slow reader, (during - before) / {n} "
        f"(outbound queue bound {OUTBOUND_QUEUE_BYTES >> 20} MiB + one frame) | "
        f"{'n/a' if per is None else f'{per / 1024:,.1f} MiB'} |",
        f"| pushed by the slow readers in {phase.push_s:.1f}s: taken by TCP / "
        f"read by the server, total (each) | {_bytes_mib(phase.sent_bytes)} "
        f"({_bytes_mib(each(phase.sent_bytes))}) / {_bytes_mib(phase.read_bytes)} "
        f"({_bytes_mib(each(phase.read_bytes))}) |",
        f"| held in the server per slow reader: read, not yet answered into its socket (≈) | "
        f"{_bytes_mib(phase.held_per_connection)} |",
        f"| RSS after the resets - before (allowed ≤ "
        f"{phase.allowed_residue_kib() / 1024:,.1f} MiB) | "
        f"{'n/a' if residue is None else f'{residue / 1024:+,.1f} MiB'}{settled} |",
        f"| server open files before / during / after the slow readers | "
        f"{phase.fds_before} / {phase.fds_during} / {phase.fds_after} |",
    ]


def render(report: Report) -> str:
    s = report.settings
    idle, loaded = report.idle_phase, report.loaded_phase
    misses = report.misses()
    verdict = "PASS" if not misses else "MISS"
    slow = report.slow
    ratio = "n/a" if report.ratio is None else f"{report.ratio:.2f}"
    outcomes = ", ".join(f"{n} {what}" for what, n in sorted(report.slowloris_outcomes.items()))
    cut = (
        ""
        if report.slowloris_cut_after_s is None
        else f", cut after {report.slowloris_cut_after_s:.1f}s (median)"
    )
    held = (
        "n/a"
        if report.slowloris_held_min is None or report.slowloris_held_mean is None
        else f"{report.slowloris_held_min:,} / {report.slowloris_held_mean:,.1f}"
    )
    if not report.server_alive:
        when = (
            ""
            if report.server_died_after_s is None
            else f", had exited {report.server_died_after_s:.1f}s into the attack"
        )
        alive_text = f"**no** (process dead{when})"
    elif report.serving_at_end is False:
        alive_text = "**process alive, but a new client fails**"
    elif report.serving_at_end is None:
        alive_text = "process alive (new-client check not run)"
    else:
        alive_text = "yes (a new client connects and gets its ECHO answered)"
    machine = report.machine
    lines = [
        f"Server: {report.server} (`python -m benchmarks.servers "
        f"{TRANSPORTS[report.transport][0]}`). Machine: {machine.get('cpu', '?')}; "
        f"{machine.get('python', '?')}; {machine.get('date', '')}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| ECHO round trips per phase (one at a time, paced over {s.window:g}s) | "
        f"{s.round_trips:,} |",
        f"| idle p50 / p99 (µs) | {_us(idle.p50_us)} / {_us(idle.p99_us)} |",
        f"| loaded p50 / p99 (µs) | {_us(loaded.p50_us)} / {_us(loaded.p99_us)} |",
        f"| loaded p99 / idle p99 (target ≤ {TARGET_RATIO:g}) | {ratio} |",
        f"| server RSS before / during (peak) | {_mib(report.rss_before_kib)} / "
        f"{_mib(report.rss_during_kib)} |",
        f"| idle WebSocket connections opened / still open at the end (of {s.idle:,}) | "
        f"{report.idle_opened:,} / {report.idle_open_at_end:,} |",
        f"| slowloris connections held, min / mean while loaded (of {s.slowloris:,}) | {held} |",
        f"| slowloris connections the server dropped | {report.slowloris_drops:,}{cut} |",
        *([] if slow is None else slow_rows(slow)),
        f"| server alive at the end | {alive_text} |",
        "",
        f"**{verdict}**"
        + (
            f": loaded p99 within {TARGET_RATIO:g}x of idle p99 with every connection held."
            if not misses
            else ": " + "; ".join(misses) + "."
        ),
    ]
    if slow is not None:
        slow_misses = slow.misses()
        lines += [
            "",
            f"**{'PASS' if not slow_misses else 'MISS'}** (slow readers)"
            + (
                f": the server's RSS came back to within "
                f"{slow.allowed_residue_kib() / 1024:,.1f} MiB of its level before "
                f"{slow.connected} slow readers, once they were reset, and it still serves."
                if not slow_misses
                else ": " + "; ".join(slow_misses) + "."
            ),
        ]
    notes = list(report.notes)
    if report.server_error is not None and not report.server_alive:
        notes.append(f"the server's last error (its stderr): `{report.server_error}`")
    if report.probe_lost is not None and report.probe_lost_after_s is not None:
        notes.append(
            f"{report.probe_lost_after_s:.1f}s into the attack: {report.probe_lost.lower()}"
        )
    if report.fresh_client_error is not None:
        notes.append(f"a new client after the loaded phase: {report.fresh_client_error}")
    if slow is not None:
        if slow.fresh_client_error is not None:
            notes.append(f"a new client after the slow readers: {slow.fresh_client_error}")
        if slow.probe_error is not None:
            notes.append(f"the probe while the slow readers sat stalled: {slow.probe_error}")
        elif slow.probe_p99_us is not None:
            notes.append(
                f"probe ECHO p50 / p99 while the slow readers sat stalled: "
                f"{_us(slow.probe_p50_us)} / {_us(slow.probe_p99_us)} µs"
            )
    if outcomes:
        notes.append(f"how slowloris connections ended: {outcomes}")
    if report.slowloris_connect_failures:
        notes.append(f"slowloris connects refused/failed: {report.slowloris_connect_failures:,}")
    if idle.max_us is not None and loaded.max_us is not None:
        notes.append(f"max round trip: idle {_us(idle.max_us)} µs, loaded {_us(loaded.max_us)} µs")
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    lines += [
        "",
        f"Probe: one picows connection in its own process; attackers (idle picows "
        f"connections, slowloris TCP connections sending one byte a second and reopened "
        f"when cut) in another. Run took {report.seconds:.0f}s.",
    ]
    if slow is not None:
        lines += [
            "",
            f"Slow readers (after the attackers are closed and the RSS has settled): raw TCP "
            f"connections from the probe's process, each sending masked ECHO frames until its "
            f"socket takes nothing for {SLOW_STALL:g}s (at most "
            f"{report.settings.slow_reader_max_mib} MiB each), never reading; then all reset "
            f"(SO_LINGER 0: RST, no close frame) and the RSS polled until it stops dropping "
            f"(at most {SETTLE_MAX:g}s). Bytes read by the server come from the kernel's "
            f"socket queues (`/proc/net/tcp`).",
        ]
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, Any]:
    data = asdict(report)
    del data["attack_started"]  # a monotonic clock reading, meaningless elsewhere
    data["ratio"] = report.ratio
    data["target_ratio"] = TARGET_RATIO
    data["misses"] = report.misses()
    data["verdict"] = "PASS" if not data["misses"] else "MISS"
    if report.slow is not None:
        slow = data["slow"]
        slow["growth_kib"] = report.slow.growth_kib
        slow["per_connection_kib"] = report.slow.per_connection_kib
        slow["held_per_connection_bytes"] = report.slow.held_per_connection
        slow["residue_kib"] = report.slow.residue_kib
        slow["allowed_residue_kib"] = report.slow.allowed_residue_kib()
        slow["outbound_queue_bytes"] = OUTBOUND_QUEUE_BYTES
        slow["misses"] = report.slow.misses()
        slow["verdict"] = "PASS" if not slow["misses"] else "MISS"
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="500 idle + 50 slowloris, 500 round trips, 5 slow readers",
    )
    parser.add_argument("--transport", choices=list(TRANSPORTS), default="wsproto")
    parser.add_argument("--round-trips", type=int, help="ECHO round trips per phase")
    parser.add_argument("--idle", type=int, help="idle WebSocket connections")
    parser.add_argument("--slowloris", type=int, help="slowloris connections")
    parser.add_argument("--window", type=float, help="seconds each phase is spread over")
    parser.add_argument(
        "--slow-readers", type=int, help="connections sending ~1 MiB ECHOs, reading nothing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--attacker-max-seconds", type=float, default=ATTACKER_MAX_SECONDS, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.attacker:
        _raise_fd_limit()
        try:
            import uvloop
        except ImportError:
            asyncio.run(_attacker_commands(args.attacker_max_seconds))
        else:
            uvloop.run(_attacker_commands(args.attacker_max_seconds))
        return 0
    settings = QUICK if args.quick else FULL
    overrides = {
        "round_trips": args.round_trips,
        "idle": args.idle,
        "slowloris": args.slowloris,
        "window": args.window,
        "slow_readers": args.slow_readers,
    }
    settings = Settings(
        **{**asdict(settings), **{k: v for k, v in overrides.items() if v is not None}}
    )
    report = run(settings, args.transport)
    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.md").write_text(f"# wskit_trio under hostile clients\n\n{table}\n")
    (args.out / "hostile.json").write_text(json.dumps(to_json(report), indent=2) + "\n")
    print(f"\nwritten to {args.out / 'hostile.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
