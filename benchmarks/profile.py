"""Where the time of an echo and of an RPC goes, in the server.

    python -m benchmarks.profile [--seconds S] [--rpc-count N] [--out FILE]

For each scenario a fresh ``wskit`` server (:mod:`benchmarks.servers`, the wsproto
transport) runs under :mod:`cProfile` while the load process (:mod:`benchmarks.load`)
drives it exactly as the suite does (echo: 100 messages in flight on one
connection; RPC: one request at a time); the server is then interrupted, writes
its statistics, and this module sums the functions' own time (cProfile's
``tottime``) into groups: the transport and its frames, socket I/O, JSON,
validation, router and connection, pub/sub, trio's scheduling, task start, and
what remains. The result goes to ``benchmarks/results/profile.md``.

cProfile makes every Python call slower by about the same amount, so the
absolute microseconds are inflated (the suite's ``server CPU µs/msg`` column is the
unprofiled figure); the shares and the counts per message (calls, scheduler
rounds, tasks started) are what to read. The time the server spent waiting in
``epoll`` is left out of everything (idle, not work).
"""

from __future__ import annotations

import argparse
import pstats
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .run import ECHO_MESSAGE, ROOT, RPC_TEMPLATE, Load, Process, _url, machine_info

__all__ = ["GROUPS", "Profile", "main", "profile_scenario", "render"]

RESULTS = Path(__file__).resolve().parent / "results"

#: A function as pstats names it: (file, line, name).
Function = tuple[str, int, str]
#: Two builtins counted per message: a task step (trio runs each step of a task
#: in the task's context), a send system call.
TASK_STEP = "<method 'run' of '_contextvars.Context' objects>"
#: The transport writes a plain socket with ``os.write`` (and reads it with
#: ``os.read``): in this server those are socket I/O.
SOCKET_SENDS = ("<method 'send' of '_socket.socket' objects>", "<built-in method posix.write>")

IDLE = "waiting for I/O (idle; left out)"
TASK_START = "task start (nursery.start_soon, spawn, task exit)"
SCHEDULING = "trio scheduling (run loop, reschedule, checkpoints, cancel scopes)"
SOCKET = "socket I/O (trio streams, send/recv system calls)"
TRANSPORT = "transport: WebSocket frames, upgrade, outbound queue (wskit_trio)"
JSON = "JSON (orjson, wskit_trio/_protocol/_json.py)"
VALIDATION = "validation (cattrs, attrs, frames' envelope and schema checks)"
PUBSUB = "pub/sub (hub, backends)"
RUNTIME = "router, middleware, connection, session, contexts (wskit_trio)"
APP = "the benchmark app's handlers"
OTHER = "other (builtins, stdlib)"
GROUPS = (
    IDLE,
    TASK_START,
    SCHEDULING,
    SOCKET,
    TRANSPORT,
    JSON,
    VALIDATION,
    PUBSUB,
    RUNTIME,
    APP,
    OTHER,
)

#: trio/_core/_run.py's functions that start a task or see it end (``start`` and
#: ``started``: ``nursery.start``, as an RPC's task is started).
_TASK_START = {
    "start_soon",
    "start",
    "started",
    "spawn_impl",
    "task_exited",
    "_child_finished",
    "_add_exc",
}
_SCHEDULING_BUILTINS = {
    TASK_STEP,
    "<method 'send' of 'coroutine' objects>",
    "<method 'throw' of 'coroutine' objects>",
    "<built-in method _contextvars.copy_context>",
    "<method 'run' of '_contextvars.Context' objects>",
}
_SOCKET_BUILTINS = {
    *(
        f"<method '{call}' of '_socket.socket' objects>"
        for call in ("send", "recv", "recv_into", "sendmsg", "accept")
    ),
    *SOCKET_SENDS,
    "<built-in method posix.read>",
}
_VALIDATION_FILES = ("_protocol/validation.py", "_protocol/frames.py", "wskit_trio/_schema.py")


def group_of(function: Function) -> str:
    """The group of :data:`GROUPS` a function's own time counts in."""
    file, _, name = function
    if name == "<method 'poll' of 'select.epoll' objects>":
        return IDLE
    if "trio/_core/_run.py" in file and name in _TASK_START:
        return TASK_START
    if file.endswith("trio/_util.py") and name == "coroutine_or_error":
        return TASK_START
    if "/outcome/" in file or name in _SCHEDULING_BUILTINS or file.endswith("trio/_util.py"):
        return SCHEDULING
    if file.startswith(("<attrs generated methods trio.", "<attrs generated methods outcome.")):
        return SCHEDULING
    if "/trio/" in file and ("/_core/" in file or file.endswith(("_timeouts.py", "_sync.py"))):
        return SCHEDULING
    if name in _SOCKET_BUILTINS or file.endswith(("trio/_highlevel_socket.py", "trio/_socket.py")):
        return SOCKET
    if "wskit_trio/_transport/" in file or file.endswith("wskit_trio/_outbound.py"):
        return TRANSPORT
    if "orjson" in name or file.endswith("_protocol/_json.py"):
        return JSON
    if any(part in file for part in ("/cattrs/", "/attr/", "/attrs/")):
        return VALIDATION
    if file.startswith("<cattrs generated") or file.endswith(_VALIDATION_FILES):
        return VALIDATION
    if "wskit_trio/pubsub/" in file or file.endswith("_protocol/pubsub.py"):
        return PUBSUB
    if "wskit_trio/" in file or file.startswith("<attrs generated methods wskit_trio."):
        return RUNTIME
    if "benchmarks/app" in file:
        return APP
    if file.startswith("<attrs generated methods"):
        # A payload class's __init__ and the like: structuring builds the instances.
        return VALIDATION
    return OTHER


@dataclass
class Profile:
    """One scenario's profile."""

    scenario: str
    #: Messages (echo) or requests (RPC) the server answered while profiled.
    messages: int
    #: Each function's (calls, own seconds, cumulative seconds).
    functions: dict[Function, tuple[int, float, float]]
    #: What the load process reported.
    load: dict[str, Any]
    #: Tasks resumed by trio's run loop (its ``Context.run`` calls: the connection's
    #: reader also calls ``Context.run`` to run a handler inline, which is no step).
    task_steps: int = 0

    @property
    def busy(self) -> float:
        """Own time of everything but the wait in epoll, seconds."""
        return sum(
            own for function, (_, own, _) in self.functions.items() if group_of(function) != IDLE
        )

    def per_message(self, seconds: float) -> float:
        return seconds / max(1, self.messages) * 1e6

    def calls_per_message(self, name: str, file_part: str = "") -> float:
        calls = sum(
            n
            for (file, _, function), (n, _, _) in self.functions.items()
            if function == name and file_part in file
        )
        return calls / max(1, self.messages)

    def groups(self) -> list[tuple[str, float]]:
        totals: dict[str, float] = {}
        for function, (_, own, _) in self.functions.items():
            group = group_of(function)
            totals[group] = totals.get(group, 0.0) + own
        return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def _drive(load: Load, server: Process, scenario: str, amount: float) -> dict[str, Any]:
    """Echo for ``amount`` seconds, or ``amount`` RPCs, as the suite does."""
    if scenario == "echo":
        return load(
            60 + amount,
            op="echo",
            url=_url(server),
            message=ECHO_MESSAGE,
            window=100,
            duration=amount,
            warmup=0,
            expect="ECHOED",
        )
    return load(
        300,
        op="rpc",
        url=_url(server),
        template=RPC_TEMPLATE,
        count=int(amount),
        warmup=0,
        expect="ITEM",
        timeout=240,
    )


def profile_scenario(load: Load, scenario: str, amount: float) -> Profile:
    """Profile a fresh server during ``scenario`` (``echo`` for ``amount`` seconds or
    ``rpc`` for ``amount`` requests), after a warm-up that is not profiled."""
    with tempfile.TemporaryDirectory(prefix="wskit-profile-") as folder:
        stats_file = Path(folder) / f"{scenario}.prof"
        argv = [sys.executable, "-m", "benchmarks.servers", "wskit", "--profile", str(stats_file)]
        server = Process(argv, cwd=ROOT).wait_ready()
        try:
            warmup = _drive(load, server, scenario, 0.3 if scenario == "echo" else 300)
            if "error" in warmup:
                raise RuntimeError(f"{scenario} warm-up: {warmup['error']}")
            time.sleep(0.2)  # for the server to finish with the warm-up's connection
            server.send_signal(signal.SIGUSR1)
            time.sleep(0.1)
            result = _drive(load, server, scenario, amount)
            if "error" in result:
                raise RuntimeError(f"{scenario}: {result['error']}")
            time.sleep(0.2)  # for the server to finish with the connection
        finally:
            server.interrupt()
        raw: Any = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    functions = {
        function: (int(calls), float(own), float(cumulative))
        for function, (_, calls, own, cumulative, _) in raw.items()
    }
    steps = sum(
        int(counts[1])
        for (_, _, name), (*_, callers) in raw.items()
        if name == TASK_STEP
        for (caller_file, _, caller), counts in callers.items()
        if caller == "unrolled_run" and "trio" in caller_file
    )
    messages = int(result["total"] if scenario == "echo" else result["count"])
    return Profile(scenario, messages, functions, result, steps)


def _name(function: Function) -> str:
    file, line, name = function
    if file == "~":
        return f"`{name}`"
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"`{name}` ({file}:{line})"


def render_profile(profile: Profile, top: int = 15) -> list[str]:
    busy = profile.busy
    groups = [(group, own) for group, own in profile.groups() if group != IDLE]
    per = profile.per_message
    title = "echo" if profile.scenario == "echo" else "RPC"
    lines = [
        f"## {title}",
        "",
        f"{profile.messages:,} {'messages' if title == 'echo' else 'requests'} answered; "
        f"{per(busy):,.1f} µs of profiled server CPU each (cProfile inflates it; see the "
        f"suite's table for the real figure). Per {title}: "
        f"{profile.calls_per_message('get_events', 'trio/_core'):.2f} scheduler rounds "
        f"(epoll waits), "
        f"{profile.calls_per_message('spawn_impl', 'trio/_core'):.2f} tasks started, "
        f"{profile.task_steps / max(1, profile.messages):.2f} task steps (a task resumed), "
        f"{sum(map(profile.calls_per_message, SOCKET_SENDS)):.2f} socket sends.",
        "",
        "Most of it: "
        + "; ".join(f"{group.split(' (')[0]} {own / busy:.0%}" for group, own in groups[:3])
        + ".",
        "",
        f"| where ({title}) | share of server CPU | µs per {title} (profiled) |",
        "|---|---:|---:|",
    ]
    for group, own in groups:
        lines.append(f"| {group} | {own / busy:.1%} | {per(own):.2f} |")
    ranked = sorted(
        (
            (function, stats)
            for function, stats in profile.functions.items()
            if group_of(function) != IDLE
        ),
        key=lambda item: item[1][1],
        reverse=True,
    )
    lines += [
        "",
        f"Top {top} functions by own time:",
        "",
        f"| function | group | calls per {title} | own µs per {title} | share |",
        "|---|---|---:|---:|---:|",
    ]
    for function, (calls, own, _) in ranked[:top]:
        lines.append(
            f"| {_name(function)} | {group_of(function).split(' (')[0]} | "
            f"{calls / max(1, profile.messages):.2f} | {per(own):.2f} | {own / busy:.1%} |"
        )
    ours = sorted(
        (
            (function, stats)
            for function, stats in profile.functions.items()
            if "wskit_trio/" in function[0] or "benchmarks/app" in function[0]
        ),
        key=lambda item: item[1][2],
        reverse=True,
    )
    lines += [
        "",
        "wskit_trio's functions by cumulative time (a coroutine's counts each resumption "
        "as a call, and its time up to each suspension):",
        "",
        f"| function | calls per {title} | cumulative µs per {title} |",
        "|---|---:|---:|",
    ]
    for function, (calls, _, cumulative) in ours[:top]:
        lines.append(
            f"| {_name(function)} | {calls / max(1, profile.messages):.2f} | "
            f"{per(cumulative):.2f} |"
        )
    return lines


def render(profiles: list[Profile]) -> str:
    machine = machine_info()
    lines = [
        "# Where the server's time goes: echo and RPC",
        "",
        f"`python -m benchmarks.profile` on {machine['cpu']}; {machine['python']}; "
        f"{machine['date']}. The wsproto transport and the benchmark app "
        "(benchmarks/app.py), the server under cProfile, the load from picows clients in "
        "another process. Own time (cProfile's tottime) summed by group; idle time in "
        "epoll left out. cProfile adds about the same cost to every Python call, so "
        "groups of many small calls (trio's scheduling) look bigger than they are and C "
        "calls (system calls, orjson) smaller: read the shares as an order, the calls "
        "per message as exact.",
        "",
    ]
    for profile in profiles:
        lines += [*render_profile(profile), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="echo: seconds profiled")
    parser.add_argument("--rpc-count", type=int, default=5000, help="RPC: requests profiled")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.md")
    args = parser.parse_args(argv)
    load = Load()
    try:
        profiles = []
        for scenario in ("echo", "rpc"):
            print(f"profiling the server during {scenario}", file=sys.stderr, flush=True)
            amount = args.seconds if scenario == "echo" else args.rpc_count
            profiles.append(profile_scenario(load, scenario, amount))
    finally:
        load.close()
    text = render(profiles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
