"""The wsproto transport (``serve()``'s default) over real sockets, from the bytes up:
the upgrade (authenticate, subprotocols, refusals), frames that arrive with the
request, pings, the close handshake both ways, protocol violations, TLS.

The client is wsproto's, driven by hand in the same trio run, so each test says
exactly what goes on the wire.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.connection
import wsproto.events as ev
from conftest import ECHO, PING, PONG, Ping, Pong

from wskit_trio import (
    ConnectionContext,
    Context,
    Heartbeat,
    Limits,
    Router,
    RpcContext,
    Server,
    UpgradeRejected,
    UpgradeRequest,
    message,
    serve,
)
from wskit_trio._errors import ConnectionClosed, MessageTooBig
from wskit_trio._transport import Headers
from wskit_trio._transport._http import RequestHead
from wskit_trio._transport._wsproto import RECEIVE_SIZE, WsprotoTransport

TIMEOUT = 10


@pytest.fixture
def net_clock() -> trio.testing.MockClock:
    """Virtual time over real sockets (see ``_net``); this module is wsproto only."""
    return trio.testing.MockClock(autojump_threshold=0.01)


def echo_router(gone: trio.Event | None = None) -> Router[Any]:
    """PING answers PONG (``close:<reason>`` closes with 4001); ``gone`` is set once a
    connection has ended (``on_close``)."""
    router: Router[Any] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Any]) -> None:
        if ctx.payload.text.startswith("close:"):
            await ctx.close(4001, ctx.payload.text[6:])
            return
        await ctx.send(PONG, Pong(reply=ctx.payload.text))

    if gone is not None:

        @router.on_close
        def on_close(ctx: ConnectionContext[Any]) -> None:
            gone.set()

    return router


@asynccontextmanager
async def running(router: Router[Any], **options: Any) -> AsyncIterator[Server[Any]]:
    # Clients left open at the end do not answer the server's 1001: do not wait long.
    options.setdefault("limits", Limits(close_timeout=0.2))
    options.setdefault("transport", "wsproto")
    async with trio.open_nursery() as nursery:
        server: Server[Any] = await nursery.start(
            serve(router, host="127.0.0.1", port=0, handle_signals=False, **options)
        )
        try:
            yield server
        finally:
            await server.aclose(grace=0)


PING_FRAME = '{"type": "PING", "payload": {"text": "%s"}}'


class Client:
    """wsproto's client on a trio stream; answers pings unless told not to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.answer_pings = True
        self.pongs: list[bytes] = []

    @classmethod
    async def connect(
        cls,
        server: Server[Any],
        target: str = "/",
        *,
        subprotocols: list[str] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> tuple[Client, ev.Event | None]:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="localhost")
        client = cls(stream)
        request = ev.Request(
            host=f"127.0.0.1:{server.port}",
            target=target,
            subprotocols=subprotocols or [],
            extra_headers=headers or [],
        )
        await client.send_raw(client.ws.send(request))
        return client, await client.next_event()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, event: ev.Event) -> None:
        await self.send_raw(self.ws.send(event))

    async def next_event(self) -> ev.Event | None:
        """The next event that is not a ping (pings are answered) nor a pong (kept);
        ``None`` once the server closed TCP."""
        while True:
            for event in self.ws.events():
                if isinstance(event, ev.Ping):
                    if self.answer_pings:
                        await self.send(event.response())
                    continue
                if isinstance(event, ev.Pong):
                    self.pongs.append(bytes(event.payload))
                    continue
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(bytes(data))

    async def text(self) -> str:
        event = await self.next_event()
        assert isinstance(event, ev.TextMessage), event
        return event.data

    async def closed(self) -> tuple[int, str]:
        """Read until the server's close frame; answer it; see TCP closed."""
        event = await self.next_event()
        assert isinstance(event, ev.CloseConnection), event
        if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
            await self.send(event.response())
        assert await self.next_event() is None  # then TCP closed
        return event.code, event.reason or ""

    async def eof(self) -> bytes:
        """Everything the server sends until it closes TCP."""
        received = b""
        while data := await self.stream.receive_some(65536):
            received += data
        return received


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + body


async def http(server: Server[Any], request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(request)
    answer = b""
    with trio.move_on_after(5):
        while data := await stream.receive_some(65536):
            answer += data
    await stream.aclose()
    return answer


# -- the upgrade ----------------------------------------------------------------------


async def test_authenticate_sees_the_whole_request() -> None:
    seen: list[UpgradeRequest] = []

    def authenticate(request: UpgradeRequest) -> str:
        seen.append(request)
        return "alice"

    with trio.fail_after(TIMEOUT):
        async with running(echo_router(), authenticate=authenticate) as server:
            client, accepted = await Client.connect(
                server,
                "/chat?access_token=t0k&room=a&room=b",
                subprotocols=["bearer.abc"],
                headers=[(b"X-Trace", b"42")],
            )
            assert isinstance(accepted, ev.AcceptConnection)
            assert accepted.subprotocol == "bearer.abc"  # the only one offered
            await client.send(ev.TextMessage(PING_FRAME % "hi"))
            assert '"reply":"hi"' in await client.text()
    (request,) = seen
    assert request.path == "/chat"
    assert request.query == {"access_token": "t0k", "room": "a"}
    assert request.token == "t0k"
    assert request.header("host") == f"127.0.0.1:{server.port}"
    assert request.header("x-trace") == "42"
    assert request.subprotocols == ("bearer.abc",)
    assert request.remote is not None and request.remote.startswith("127.0.0.1:")


async def test_an_open_connection_keeps_nothing_of_the_request_head() -> None:
    """Once the 101 is out, the head (its raw bytes, the key) is let go: a connection
    keeps its request, whose headers are one string (``Headers``)."""
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            client, _ = await Client.connect(server, headers=[(b"X-Trace", b"42")])
            await client.send(ev.TextMessage(PING_FRAME % "hi"))
            assert '"reply":"hi"' in await client.text()
            gc.collect()
            assert not [obj for obj in gc.get_objects() if isinstance(obj, RequestHead)]
            (conn,) = server.connections
            headers = conn.transport.request.headers
            assert isinstance(headers, Headers) and headers.get("x-trace") == "42"


@pytest.mark.parametrize(
    ("authenticate", "status", "body"),
    [
        (lambda request: None, 401, b"Unauthorized"),
        (lambda request: (_ for _ in ()).throw(UpgradeRejected(403, "no way")), 403, b"no way"),
        (lambda request: 1 / 0, 500, b"Internal Server Error"),
    ],
)
async def test_a_refusal_is_an_http_answer_with_a_body(
    authenticate: Any, status: int, body: bytes
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router(), authenticate=authenticate) as server:
            client, refused = await Client.connect(server)
            assert isinstance(refused, ev.RejectConnection)
            assert refused.status_code == status
            headers = dict(refused.headers)
            assert headers[b"content-type"].startswith(b"text/plain")
            data = b""
            while True:
                event = await client.next_event()
                assert isinstance(event, ev.RejectData)
                data += event.data
                if event.body_finished:
                    break
            assert data == body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP, no upgrade
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",  # not HTTP at all
        "GET /caf\u00e9 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    ],
)
async def test_anything_but_a_websocket_upgrade_gets_400_and_the_server_goes_on(
    request_bytes: bytes,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            answer = await http(server, request_bytes)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
            _, accepted = await Client.connect(server)
            assert isinstance(accepted, ev.AcceptConnection)


async def test_frames_sent_with_the_request_are_not_lost() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            client = Client(stream)
            request = client.ws.send(ev.Request(host="x", target="/"))
            # The client does not wait for the 101 (RFC 6455 says it should; some don't).
            await client.send_raw(request + masked_frame(1, (PING_FRAME % "early").encode()))
            assert isinstance(await client.next_event(), ev.AcceptConnection)
            assert '"reply":"early"' in await client.text()


# -- pings and closing -------------------------------------------------------------------


async def test_a_client_ping_gets_its_pong() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.Ping(b"are you there"))
            await client.send(ev.TextMessage(PING_FRAME % "after"))
            assert '"reply":"after"' in await client.text()
            assert client.pongs == [b"are you there"]


async def test_heartbeat_pings_answered_keep_the_connection(
    net_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with running(echo_router(), heartbeat=Heartbeat(interval=5, timeout=2)) as server:
            client, _ = await Client.connect(server)
            async with trio.open_nursery() as nursery:
                # Keep reading (and answering pings) for a while of virtual time.
                nursery.start_soon(client.next_event)
                await trio.sleep(30)
                nursery.cancel_scope.cancel()
            await client.send(ev.TextMessage(PING_FRAME % "still here"))
            assert '"reply":"still here"' in await client.text()

            quiet, _ = await Client.connect(server)
            quiet.answer_pings = False
            assert await quiet.closed() == (1008, "heartbeat timeout")


async def test_the_client_closes_and_the_server_echoes() -> None:
    gone = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with running(echo_router(gone)) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.TextMessage(PING_FRAME % "hi"))
            assert '"reply":"hi"' in await client.text()
            (conn,) = server.connections
            await client.send(ev.CloseConnection(4000, "done"))
            event = await client.next_event()
            assert isinstance(event, ev.CloseConnection) and event.code == 4000
            assert await client.next_event() is None  # then TCP closed
            await gone.wait()
    # How the server saw it end (no public API tells; ``on_close`` gets no code).
    assert conn.closed == (4000, "done")


async def test_the_server_closes_with_code_and_reason() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.TextMessage(PING_FRAME % "close:see you"))
            assert await client.closed() == (4001, "see you")


async def test_a_client_that_just_goes_away_ends_the_connection() -> None:
    gone = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with running(echo_router(gone)) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.TextMessage(PING_FRAME % "hi"))
            assert '"reply":"hi"' in await client.text()
            (conn,) = server.connections
            await client.stream.aclose()
            await gone.wait()
    assert conn.closed == (1006, "")  # as the server saw it end


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes((0x81, 5)) + b"hello", 1002),  # not masked
        (masked_frame(1, b"\xff\xfe"), 1007),  # not UTF-8
        (masked_frame(0, b"x"), 1002),  # continuation of nothing
        (masked_frame(8, b"\x03"), 1002),  # one-byte close payload
    ],
)
async def test_a_protocol_violation_fails_the_connection(frame: bytes, code: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.TextMessage(PING_FRAME % "before"))
            assert '"reply":"before"' in await client.text()
            await client.send_raw(frame)
            rest = await client.eof()
            assert rest[:1] == b"\x88"  # a close frame ...
            assert int.from_bytes(rest[2:4], "big") == code  # ... with the code


async def test_a_message_over_the_limit_closes_1009() -> None:
    limits = Limits(max_message_bytes=100, close_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        async with running(echo_router(), limits=limits) as server:
            client, _ = await Client.connect(server)
            await client.send(ev.TextMessage(PING_FRAME % "fits"))
            assert '"reply":"fits"' in await client.text()
            # Refused from its header: the rest of it is skipped, and the close
            # handshake completes (the client learns the code).
            await client.send_raw(
                client.ws.send(ev.TextMessage(PING_FRAME % ("x" * 5000)))
                + client.ws.send(ev.TextMessage(PING_FRAME % "ignored"))
            )
            assert await client.closed() == (1009, "Message too big")


async def test_a_message_over_the_limit_is_reported_without_closing() -> None:
    # The transport alone, on a memory stream: ``receive`` raises MessageTooBig once
    # the message before it is taken and closes nothing, so answers can still be
    # sent, then the close handshake with 1009 completes.
    server_stream, client_stream = trio.testing.memory_stream_pair()
    transport = WsprotoTransport(server_stream, UpgradeRequest(), 100, close_timeout=5)
    client = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
    await client_stream.send_all(
        client.send(ev.TextMessage("first"))
        + client.send(ev.TextMessage("x" * 5000))
        + client.send(ev.Ping(b"p"))
        + client.send(ev.TextMessage("ignored"))
    )
    events: list[ev.Event] = []

    async def read_until(kind: type[ev.Event]) -> None:
        while not any(isinstance(event, kind) for event in events):
            data = await client_stream.receive_some()
            assert data, "the server closed the stream"
            client.receive_data(bytes(data))
            events.extend(client.events())

    with trio.fail_after(TIMEOUT):
        assert await transport.receive() == "first"
        with pytest.raises(MessageTooBig) as raised:
            await transport.receive()
        assert isinstance(raised.value, ConnectionClosed)
        assert (raised.value.code, raised.value.reason) == (1009, "Message too big")
        await transport.send(["answer"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.close, 1009, "Message too big")
            await read_until(ev.CloseConnection)
            await client_stream.send_all(client.send(ev.CloseConnection(1009)))
        assert await client_stream.receive_some() == b""  # then the stream closed
    assert [type(event) for event in events] == [ev.Pong, ev.TextMessage, ev.CloseConnection]
    assert isinstance(events[1], ev.TextMessage) and events[1].data == "answer"
    assert isinstance(events[2], ev.CloseConnection)
    assert (events[2].code, events[2].reason) == (1009, "Message too big")


async def test_answers_before_a_message_over_the_limit_go_out_before_the_1009() -> None:
    # All in one write, so the server reads them at once: the transport reports the
    # big one without closing, and the answers the reader has just queued for the
    # messages before it still go out, then the close handshake (with a ping
    # answered on the way: the framing is intact after the skipped payload).
    limits = Limits(max_message_bytes=100, close_timeout=5)
    errors: list[str] = []
    router = echo_router()
    router.on_error(lambda err, ctx: errors.append(f"{err.code} {err.message}"))
    with trio.fail_after(TIMEOUT):
        async with running(router, limits=limits) as server:
            client, _ = await Client.connect(server)
            await client.send_raw(
                client.ws.send(ev.TextMessage(PING_FRAME % "one"))
                + client.ws.send(ev.TextMessage(PING_FRAME % "two"))
                + client.ws.send(ev.TextMessage(PING_FRAME % ("x" * 5000)))
                + client.ws.send(ev.Ping(b"still framed"))
                + client.ws.send(ev.TextMessage(PING_FRAME % "ignored"))
            )
            assert '"reply":"one"' in await client.text()
            assert '"reply":"two"' in await client.text()
            assert await client.closed() == (1009, "Message too big")
            assert client.pongs == [b"still framed"]
    assert errors == ["RESOURCE_EXHAUSTED Message too big"]


# -- writing at once ---------------------------------------------------------------------


async def test_send_nowait_writes_at_once_and_what_the_socket_refuses_goes_first_next() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        peer = await trio.open_tcp_stream("127.0.0.1", port)
        stream = await listeners[0].accept()
        await listeners[0].aclose()
        assert isinstance(stream, trio.SocketStream)
        transport = WsprotoTransport(stream, UpgradeRequest(), 1 << 20)
        client = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
        texts: list[str] = []
        part = ""

        async def read(count: int) -> None:
            nonlocal part
            while len(texts) < count:
                data = await peer.receive_some()
                assert data, "the server closed the stream"
                client.receive_data(bytes(data))
                for event in client.events():
                    assert isinstance(event, ev.TextMessage)
                    part += event.data
                    if event.message_finished:
                        texts.append(part)
                        part = ""

        assert transport.can_send_nowait()
        assert transport.send_nowait(["hello"])  # all of it, with no schedule point
        await read(1)
        # 4 MB: more than the socket buffers hold while the peer reads nothing.
        big = [f"{i:03d}" + "x" * 40_000 for i in range(100)]
        assert not transport.send_nowait(big)  # the socket took a part
        assert not transport.can_send_nowait()  # until the rest is out
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, 103)
            await transport.send(["after"])
            await transport.send(["last"])
        assert transport.can_send_nowait()
        await peer.aclose()
        await transport.close()
    assert texts == ["hello", *big, "after", "last"]


async def test_send_nowait_needs_a_plain_socket() -> None:
    """A TLS stream (or any stream but a plain socket) is written by the writer only."""
    server_stream, _ = trio.testing.memory_stream_pair()
    transport = WsprotoTransport(server_stream, UpgradeRequest(), 100)
    assert not transport.can_send_nowait()


async def test_an_answer_the_socket_takes_in_part_goes_out_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader writes a reply itself when it can; what the socket does not take at
    once is left to the writer, and goes out before the answers that follow."""
    results: list[bool] = []
    send_nowait = WsprotoTransport.send_nowait

    def recording(self: WsprotoTransport, messages: list[str]) -> bool:
        whole = send_nowait(self, messages)
        results.append(whole)
        return whole

    monkeypatch.setattr(WsprotoTransport, "send_nowait", recording)
    router = echo_router()
    size = 4 << 20  # more than the socket buffers hold while the client reads nothing

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        await ctx.reply(Pong(ctx.payload.text * size))

    with trio.fail_after(TIMEOUT):
        async with running(router) as server:
            client, _ = await Client.connect(server)
            request = '{"type": "ECHO", "meta": {"correlationId": "%s"}, "payload": {"text": "%s"}}'
            await client.send(ev.TextMessage(request % ("small", "")))
            assert '"correlationId":"small"' in await client.text()
            assert results == [True]  # a small answer: written by the reader, whole
            await client.send(ev.TextMessage(request % ("big", "y")))
            # Alone (not in one read with what follows), so the reader writes it itself;
            # the socket takes part, the writer waits to write the rest.
            await trio.testing.wait_all_tasks_blocked()
            assert results == [True, False]
            await client.send(ev.TextMessage(PING_FRAME % "after"))
            reply = await client.text()
            while not reply.endswith("}"):  # (wsproto hands a big message over in parts)
                reply += await client.text()
            assert json.loads(reply)["payload"] == {"reply": "y" * size}
            assert '"reply":"after"' in await client.text()
            # The writer ran while the socket drained, and ended with the queue empty:
            # the connection is its one task again.
            await trio.testing.wait_all_tasks_blocked()
            assert [child_tasks(conn) for conn in server.connections] == [[]]


async def test_a_burst_of_requests_and_events_is_answered_in_order_through_a_tiny_queue() -> None:
    """The reader writes its RPCs' replies itself at the end of a burst, and nobody
    starts the writer inside it: a handler that must wait for room in the queue
    starts it itself, so it never waits for a writer nobody started."""
    router = echo_router()

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        await ctx.reply(Pong(ctx.payload.text))

    request = '{"type": "ECHO", "meta": {"correlationId": "%s"}, "payload": {"text": "%s"}}'
    with trio.fail_after(TIMEOUT):
        async with running(router, limits=Limits(outbound_queue=1, close_timeout=0.2)) as server:
            client, _ = await Client.connect(server)
            burst = b"".join(
                client.ws.send(ev.TextMessage(request % (f"c{i}", f"r{i}")))
                + client.ws.send(ev.TextMessage(PING_FRAME % f"p{i}"))
                for i in range(20)
            )
            await client.send_raw(burst)  # one write: the server reads it at once
            replies = [json.loads(await client.text())["payload"]["reply"] for _ in range(40)]
    assert replies == [text for i in range(20) for text in (f"r{i}", f"p{i}")]


async def test_an_event_handler_that_blocks_in_a_burst_lets_the_bursts_answers_go() -> None:
    """In a burst the reader's answers wait for its one write at the end; a handler
    that then blocks (here until the client has seen them) must not hold them back:
    what the burst queued, and what the handler sends while it waits, go out then."""
    router = echo_router()
    release = trio.Event()

    @router.on(message("WAIT", Ping))
    async def wait_for_the_client(ctx: Context[Ping, Any]) -> None:
        await ctx.send(PONG, Pong(reply="before"))
        await release.wait()
        await ctx.send(PONG, Pong(reply="after"))

    wait = '{"type": "WAIT", "payload": {"text": "x"}}'
    with trio.fail_after(TIMEOUT):
        async with running(router) as server:
            client, _ = await Client.connect(server)
            burst = b"".join(
                client.ws.send(ev.TextMessage(text))
                for text in (PING_FRAME % "p1", PING_FRAME % "p2", wait, PING_FRAME % "p3")
            )
            await client.send_raw(burst)  # one write: the server reads it at once
            seen = [json.loads(await client.text())["payload"]["reply"] for _ in range(3)]
            assert seen == ["p1", "p2", "before"]  # while the handler still waits
            release.set()
            seen = [json.loads(await client.text())["payload"]["reply"] for _ in range(2)]
            assert seen == ["after", "p3"]


async def test_binary_frames_holding_json_are_messages_too() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(echo_router()) as server:
            client, _ = await Client.connect(server)
            data = (PING_FRAME % "bin").encode()
            await client.send(ev.BytesMessage(data[:10], message_finished=False))
            await client.send(ev.BytesMessage(data[10:]))
            assert '"reply":"bin"' in await client.text()


# -- reading a plain socket directly ---------------------------------------------------


@asynccontextmanager
async def plain_socket(
    receive_buffer: int | None = None,
) -> AsyncIterator[tuple[WsprotoTransport, trio.SocketStream]]:
    """A transport on a TCP socket (read with ``os.read``, not ``receive_some``) and
    its peer's stream, which the tests write to; both closed at the end."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    if receive_buffer is not None:  # (set before connecting: it sets the TCP window)
        listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    port = listeners[0].socket.getsockname()[1]
    peer = await trio.open_tcp_stream("127.0.0.1", port)
    stream = await listeners[0].accept()
    await listeners[0].aclose()
    assert isinstance(stream, trio.SocketStream)
    transport = WsprotoTransport(stream, UpgradeRequest(), 1 << 20, close_timeout=1)
    try:
        yield transport, peer
    finally:
        await peer.aclose()
        await stream.aclose()


def text_frame(text: str) -> bytes:
    return wsproto.connection.Connection(wsproto.ConnectionType.CLIENT).send(ev.TextMessage(text))


async def test_a_plain_socket_is_read_directly_until_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def not_this_way(self: trio.SocketStream, max_bytes: int | None = None) -> bytes:
        raise AssertionError("a plain socket is read with os.read")

    with trio.fail_after(TIMEOUT):
        async with plain_socket() as (transport, peer):
            monkeypatch.setattr(trio.SocketStream, "receive_some", not_this_way)
            await peer.send_all(text_frame("one") + text_frame("two"))
            assert await transport.receive() == "one"
            assert await transport.receive() == "two"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.send_all, text_frame("three"))
                assert await transport.receive() == "three"  # (waited for it)
            await peer.send_eof()
            with pytest.raises(ConnectionClosed) as ended:
                await transport.receive()
            assert ended.value.code == 1006


async def test_a_reset_ends_a_plain_socket_with_1006() -> None:
    with trio.fail_after(TIMEOUT):
        async with plain_socket() as (transport, peer):
            await peer.send_all(text_frame("hello"))
            assert await transport.receive() == "hello"
            # Closing with SO_LINGER 0 sends a reset, not a FIN: read() fails.
            peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.socket.close()
            with pytest.raises(ConnectionClosed) as ended:
                await transport.receive()
            assert ended.value.code == 1006


async def test_receiving_is_a_cancel_point_even_with_data_waiting() -> None:
    with trio.fail_after(TIMEOUT):
        async with plain_socket() as (transport, peer):
            await peer.send_all(text_frame("kept"))
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await transport.receive()
            assert scope.cancelled_caught
            assert await transport.receive() == "kept"  # nothing read was lost


async def test_a_socket_closed_under_a_waiting_reader_ends_it(
    net_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with plain_socket() as (transport, _):
            ended: list[int] = []

            async def reader() -> None:
                with pytest.raises(ConnectionClosed) as closed:
                    await transport.receive()
                ended.append(closed.value.code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                # The peer never answers the close frame: after a while, TCP is closed
                # under the reader still waiting in receive.
                with trio.move_on_after(1):
                    await transport.close()
            assert ended == [1006]


async def test_a_stream_closed_behind_the_transport_is_not_read_through_its_old_number() -> None:
    """The file descriptor is asked for at each read: once the stream is closed, its
    number soon belongs to another socket, which must not be read."""
    with trio.fail_after(TIMEOUT):
        async with plain_socket() as (transport, _), plain_socket() as (other, other_peer):
            stream = transport._stream
            assert isinstance(stream, trio.SocketStream)
            number = stream.socket.fileno()
            await stream.aclose()
            other_stream = other._stream
            assert isinstance(other_stream, trio.SocketStream)
            os.dup2(other_stream.socket.fileno(), number)  # the number, reused
            try:
                await other_peer.send_all(text_frame("not yours"))
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(ConnectionClosed) as ended:
                    await transport.receive()
                assert ended.value.code == 1006
                assert await other.receive() == "not yours"
            finally:
                os.close(number)


async def test_a_peer_that_floods_does_not_starve_another_connection() -> None:
    """Data there at once is read at once, but each read is a schedule point all the
    same: another connection gets its message while a flood is still being read."""
    with trio.fail_after(TIMEOUT):
        async with (
            plain_socket(receive_buffer=4 << 20) as (flooded, flooder),
            plain_socket() as (other, other_peer),
        ):
            # About a megabyte of messages, there before anything reads (the socket
            # buffer holds it): some 16 reads of RECEIVE_SIZE, none of them waiting.
            frame = text_frame("x" * 1000)
            written = 0
            with contextlib.suppress(BlockingIOError):
                while written < 1 << 20:
                    written += os.write(flooder.socket.fileno(), frame * 64)
            whole = written // len(frame)
            assert whole * len(frame) > 8 * RECEIVE_SIZE
            taken = 0
            taken_when_other_got_its: list[int] = []

            async def read_flood() -> None:
                nonlocal taken
                for _ in range(whole):
                    await flooded.receive()
                    taken += 1
                    if taken == 1:
                        # The other connection's message arrives during the flood.
                        os.write(other_peer.socket.fileno(), text_frame("hi"))

            async def read_other() -> None:
                assert await other.receive() == "hi"
                taken_when_other_got_its.append(taken)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_other)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(read_flood)
            assert taken == whole
            assert taken_when_other_got_its[0] < whole // 2


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a throwaway self-signed certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    with trio.fail_after(TIMEOUT):
        async with running(echo_router(), ssl_context=server_ctx) as server:
            assert server.url == f"wss://127.0.0.1:{server.port}"
            client, accepted = await Client.connect(server, tls=client_ctx)
            assert isinstance(accepted, ev.AcceptConnection)
            for text in ("one", "two", "three"):
                await client.send(ev.TextMessage(PING_FRAME % text))
                assert f'"reply":"{text}"' in await client.text()
            # Only a writer can write to a TLS stream: the connection keeps one, waiting
            # for frames, rather than start a task for each answer.
            await trio.testing.wait_all_tasks_blocked()
            assert [child_tasks(conn) for conn in server.connections] == [["_write_loop"]]
            await client.send(ev.CloseConnection(1000))
            event = await client.next_event()
            assert isinstance(event, ev.CloseConnection) and event.code == 1000


def child_tasks(conn: Any) -> list[str]:
    """The tasks of a connection's nursery, by their function's name."""
    return sorted(task.name.rsplit(".", 1)[-1] for task in conn._nursery.child_tasks)


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        serve(Router(), transport="nope")  # type: ignore[arg-type]
