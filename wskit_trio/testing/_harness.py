"""The in-memory test harness: a router served without sockets, fake clients, capture.

Everything runs in the test's own trio run, on the same connection runtime as
``serve()``, so ``autojump_clock`` drives deadlines, heartbeats and rate limits.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Generic, TypeVar, overload

import attrs
import trio

from .._config import DEFAULT_HEARTBEAT, Heartbeat, Limits
from .._connection import Connection
from .._context import ConnectionContext
from .._errors import ConnectionClosed, UpgradeRejected, WsKitError
from .._groups import single_exception
from .._protocol import _json, frames
from .._protocol.validation import unstructure
from .._router import Router
from .._schema import MessageSchema, RpcSchema
from .._server import Authenticate, Server
from .._transport import Rejected, UpgradeRequest
from .._transport._memory import MemoryTransport, memory_pair

__all__ = ["Frame", "TestApp", "TestClient", "open_test_app"]

D = TypeVar("D")
P = TypeVar("P")


@attrs.frozen
class Frame:
    """One frame the server sent, parsed."""

    type: str
    meta: dict[str, Any]
    payload: Any
    raw: dict[str, Any]

    @property
    def correlation_id(self) -> str | None:
        return self.meta.get("correlationId")

    @property
    def error_code(self) -> str | None:
        """The code of an ``ERROR``/``RPC_ERROR`` frame, else ``None``."""
        if self.type in (frames.ERROR_TYPE, frames.RPC_ERROR_TYPE):
            return str(self.payload["code"])
        return None


class TestClient(Generic[D]):
    """A fake client connected to a :class:`TestApp`: send frames, read what came back."""

    __test__ = False  # not a pytest test class

    def __init__(self, transport: MemoryTransport, connection: Connection[D]) -> None:
        self._transport = transport
        #: The server side of this connection (for state assertions).
        self.connection = connection
        #: Every frame received so far, in order.
        self.received: list[Frame] = []
        self._next_id = 0

    @property
    def client_id(self) -> str:
        return self.connection.client_id

    @property
    def data(self) -> D:
        return self.connection.data

    @property
    def closed(self) -> tuple[int, str] | None:
        """``(code, reason)`` once the connection closed."""
        marker = self._transport.closed
        return None if marker is None else (marker.code, marker.reason)

    @property
    def responsive(self) -> bool:
        """Whether this client answers protocol pings (switch off to play dead)."""
        return self._transport.responsive

    @responsive.setter
    def responsive(self, value: bool) -> None:
        self._transport.responsive = value

    async def send_raw(self, data: str | bytes) -> None:
        """Send one WebSocket message exactly as given."""
        await self._transport.send_one(data)

    async def send_json(self, frame: Any) -> None:
        await self.send_raw(_json.dumps(frame))

    @overload
    async def send(
        self,
        schema: MessageSchema[None],
        payload: None = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None: ...
    @overload
    async def send(
        self, schema: MessageSchema[P], payload: P, *, meta: Mapping[str, Any] | None = None
    ) -> None: ...
    async def send(
        self,
        schema: MessageSchema[Any],
        payload: Any = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Send a message of ``schema`` (payload unstructured to wire JSON)."""
        frame: dict[str, Any] = {"type": schema.type, "meta": dict(meta or {})}
        if schema.payload_cls is not None:
            frame["payload"] = unstructure(payload)
        await self.send_json(frame)

    async def request(
        self,
        schema: RpcSchema[P, Any],
        payload: P,
        *,
        correlation_id: str | None = None,
        timeout_ms: float | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Send an RPC request; returns its correlationId (read the answers with
        :meth:`receive`)."""
        if correlation_id is None:
            self._next_id += 1
            correlation_id = f"c-{self._next_id}"
        wire_meta = {**(meta or {}), "correlationId": correlation_id}
        if timeout_ms is not None:
            wire_meta["timeoutMs"] = timeout_ms
        await self.send(schema.request, payload, meta=wire_meta)
        return correlation_id

    async def abort(self, correlation_id: str) -> None:
        await self.send_json({"type": frames.ABORT_TYPE, "meta": {"correlationId": correlation_id}})

    async def receive(self) -> Frame:
        """The next frame. Raises ``ConnectionClosed`` once closed and drained."""
        return self._parse(await self._transport.receive())

    def _parse(self, data: str | bytes) -> Frame:
        raw = _json.loads(data if isinstance(data, str) else data.decode("utf-8"))
        frame = Frame(raw["type"], raw.get("meta", {}), raw.get("payload"), raw)
        self.received.append(frame)
        return frame

    async def receive_payload(self, schema: MessageSchema[P]) -> P:
        """The next frame, which must be of ``schema``; its payload, structured."""
        frame = await self.receive()
        if frame.type != schema.type:
            raise AssertionError(f"expected a {schema.type} frame, got {frame.raw!r}")
        if schema.structure_payload is None:
            return None  # type: ignore[return-value]
        return schema.structure_payload(frame.payload)  # type: ignore[no-any-return]

    async def receive_error(self) -> Frame:
        """The next frame, which must be ``ERROR`` or ``RPC_ERROR``."""
        frame = await self.receive()
        if frame.error_code is None:
            raise AssertionError(f"expected an error frame, got {frame.raw!r}")
        return frame

    def receive_nowait(self) -> Frame | None:
        """The next frame if one is already here, else ``None``."""
        try:
            data = self._transport._inbound.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None
        return self._parse(data)

    async def wait_closed(self) -> tuple[int, str]:
        """Read (and keep) frames until the server closes; returns ``(code, reason)``."""
        try:
            while True:
                await self.receive()
        except ConnectionClosed as exc:
            return exc.code, exc.reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close from the client side (the server runs ``on_close``)."""
        await self._transport.close(code, reason)

    def drop(self) -> None:
        """Vanish without a close handshake, like a dropped TCP connection: the
        server sees close code 1006."""
        self._transport.drop()


class TestApp(Generic[D]):
    """A router served in memory. Connect clients with :meth:`connect`."""

    __test__ = False

    def __init__(
        self, server: Server[D], nursery: trio.Nursery, errors: list[WsKitError] | None = None
    ) -> None:
        self.server = server
        self._nursery = nursery
        #: Every error reported to ``on_error`` (answered to a client or closing one).
        self.errors: list[WsKitError] = [] if errors is None else errors

    async def connect(
        self,
        data: Any = None,
        *,
        path: str = "/",
        headers: Sequence[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        client_buffer: float = math.inf,
        client_ip: str = "127.0.0.1",
    ) -> TestClient[D]:
        """Open a connection through the server's own door: the request (``path`` with
        its query, ``headers``, ``subprotocols``, from ``client_ip``) meets the path,
        Origin and caps checks and ``authenticate``; a refusal raises
        ``UpgradeRejected``. Without ``authenticate`` the connection gets ``data``."""
        request = UpgradeRequest.from_target(
            path, headers, subprotocols, remote="memory", client_ip=client_ip
        )
        opened: list[MemoryTransport] = []
        refused: list[Rejected] = []
        answered = trio.Event()

        @asynccontextmanager
        async def open_transport(subprotocol: str | None) -> AsyncIterator[MemoryTransport]:
            server_end, client_end = memory_pair(
                request,
                max_message_bytes=self.server.limits.max_message_bytes,
                client_buffer=client_buffer,
            )
            opened.append(client_end)
            answered.set()
            yield server_end

        async def reject(refusal: Rejected) -> None:
            refused.append(refusal)
            answered.set()

        # The server's own path for a connection: admission, authenticate, guards.
        self._nursery.start_soon(
            partial(self.server.handle, request, open_transport, reject, default_data=data)
        )
        await answered.wait()
        if refused:
            raise UpgradeRejected(refused[0].status, refused[0].body, refused[0].headers)
        client_end = opened[0]
        assert client_end.peer is not None
        for conn in self.server.connections:
            if conn.transport is client_end.peer:
                return TestClient(client_end, conn)
        raise ConnectionClosed(1001, "server shutting down")

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful shutdown of every connection, as ``Server.aclose`` does: new RPCs
        are refused, in-flight ones get ``grace`` seconds (default
        ``limits.shutdown_grace``), then every connection closes with 1001. Returns
        once every connection has ended and its ``on_close`` hooks ran."""
        await self.server.shutdown_connections(grace)


@asynccontextmanager
async def open_test_app(
    router: Router[D],
    *,
    authenticate: Authenticate[D] | None = None,
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
    path: str | None = None,
    allowed_origins: Sequence[str] | None = None,
) -> AsyncIterator[TestApp[D]]:
    """Serve ``router`` in memory for the duration of the block, with ``serve()``'s
    options and defaults (the heartbeat on, ``None`` turns it off).

    On exit every connection is closed and every task of it has ended.
    """
    errors: list[WsKitError] = []

    def capture(error: WsKitError, ctx: ConnectionContext[D]) -> None:
        errors.append(error)

    server: Server[D] = Server(
        router,
        authenticate=authenticate,
        subprotocols=subprotocols,
        limits=limits or Limits(),
        heartbeat=heartbeat,
        path=path,
        allowed_origins=allowed_origins,
        error_hooks=[capture],
    )
    with single_exception():
        async with trio.open_nursery() as services:
            await services.start(server.run_services)
            async with trio.open_nursery() as nursery:
                app = TestApp(server, nursery, errors)
                try:
                    yield app
                finally:
                    for conn in list(server.connections):
                        conn.abort(1001, "test app closed")
            services.cancel_scope.cancel()
