"""Run an example's server the way its README says: ``python -m <module>``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = ["ROOT", "example_server"]

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def example_server(module: str, name: str, *, port: int = 0) -> AsyncIterator[str]:
    """Start ``python -m <module>`` with ``PORT=<port>`` (0: any free one), wait for its
    line ``"<name> server listening on ws://..."`` and yield that URL; on exit send
    SIGINT (Ctrl-C) and check that it stops cleanly with exit code 0."""
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, "server exited before printing its address"
                output += chunk
        line = output.decode().partition("\n")[0].strip()  # the first line: more may follow
        prefix = f"{name} server listening on "
        assert line.startswith(prefix + "ws://127.0.0.1:"), line
        yield line.removeprefix(prefix)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
