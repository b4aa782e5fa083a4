"""A real WebSocket client for tests: the third-party ``websockets`` sync client,
driven from trio through worker threads.

``websockets`` is asyncio-only for async use, so its blocking client runs in
``trio.to_thread.run_sync``. Every blocking call carries its own timeout and the
thread is abandoned on cancellation, so a test's ``trio.fail_after`` always wins.
Frames are sent and received as raw text: the tests write the JSON by hand, from
docs/protocol.md, so the wire format is checked from outside the package.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

__all__ = ["HandshakeRefused", "WsClient", "open_client"]

T = TypeVar("T")

#: Per blocking call; tests bound the whole test with ``trio.fail_after`` as well.
IO_TIMEOUT = 5.0

#: websockets >= 16 wants ``connect()`` as a context manager unless told ``legacy=True``.
_LEGACY: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)


async def _in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body!r}")


class WsClient:
    """One open connection. ``recv`` returns raw text (or bytes) exactly as received."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    async def send(self, data: str | bytes) -> None:
        await _in_thread(lambda: self.ws.send(data))

    async def recv(self) -> str | bytes:
        return await _in_thread(lambda: self.ws.recv(timeout=IO_TIMEOUT))

    async def recv_json(self) -> Any:
        data = await self.recv()
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        return json.loads(data)

    async def wait_closed(self) -> tuple[int | None, str | None]:
        """Read until the server closes; returns its ``(code, reason)``. Fails if a
        frame arrives first."""

        def run() -> tuple[int | None, str | None]:
            try:
                data = self.ws.recv(timeout=IO_TIMEOUT)
            except ConnectionClosed:
                return self.ws.close_code, self.ws.close_reason
            raise AssertionError(f"expected the connection to close, got {data!r}")

        return await _in_thread(run)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await _in_thread(lambda: self.ws.close(code, reason))


async def open_client(
    url: str,
    *,
    subprotocols: Sequence[str] | None = None,
    headers: Sequence[tuple[str, str]] | None = None,
) -> WsClient:
    """Connect; raises :class:`HandshakeRefused` when the upgrade is refused."""

    def run() -> WsClient:
        try:
            ws = connect(
                url,
                subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
                additional_headers=list(headers) if headers else None,
                compression=None,
                proxy=None,
                open_timeout=IO_TIMEOUT,
                close_timeout=IO_TIMEOUT,
                **_LEGACY,
            )
        except InvalidStatus as exc:
            raise HandshakeRefused(
                exc.response.status_code, bytes(exc.response.body or b"")
            ) from None
        return WsClient(ws)

    return await _in_thread(run)
