"""The server's door over real sockets on 127.0.0.1: path, health check, Origin,
connection caps, trusted proxies, malformed requests, bind failures, the start line.

Requests are written out byte by byte on a raw TCP stream and the answer is read
back as bytes; where a whole WebSocket is needed, the third-party ``websockets``
client connects. Every test runs once on each transport (``transport`` fixture).

Time here is real (the ``websockets`` client runs in threads, which virtual time
cannot see), but no test sleeps: each waits for an event, a server counter or
``wait_all_tasks_blocked``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.testing
from _net import net_clock, running_server
from conftest import ECHO, PING, PONG, Conn, Ping, Pong
from wsclient import HandshakeRefused, WsClient, open_client

from wskit_trio import (
    ConnectionContext,
    Context,
    Limits,
    Page,
    Router,
    RpcContext,
    Server,
    UpgradeRequest,
    serve,
    with_pubsub,
)
from wskit_trio.pubsub import MemoryPubSub

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.usefixtures("transport")

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: RFC 6455 section 1.3: the accept value for KEY.
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- raw HTTP ----------------------------------------------------------------------------


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def upgrade_bytes(
    target: str = "/",
    *,
    headers: Sequence[tuple[str, str]] = (),
    http_version: str = "1.1",
    key: str = KEY,
) -> bytes:
    lines = [
        f"GET {target} HTTP/{http_version}",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def plain_bytes(method: str, target: str, http_version: str = "1.1") -> bytes:
    host = "Host: 127.0.0.1\r\n" if http_version == "1.1" else ""
    return f"{method} {target} HTTP/{http_version}\r\n{host}\r\n".encode("ascii")


async def read_reply(stream: trio.SocketStream, *, to_head: bool = False) -> Reply:
    """The response head; for anything but a 101, the body too (everything up to the
    server's close, which must be ``content-length`` bytes unless answering a HEAD)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a complete response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    http_version, status, _reason = status_line.split(" ", 2)
    assert http_version == "HTTP/1.1", status_line
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        assert sep, f"not a header line: {line!r}"
        name, value = name.strip().lower(), value.strip()
        # Repeated fields are one comma-separated list (RFC 9110 section 5.3).
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if int(status) != 101:
        # Read to the server's close: a clean one, even when the server left bytes of
        # ours unread (a head over the limit) — it drains them rather than reset.
        while chunk := await stream.receive_some(65536):
            body += chunk
        if not to_head:
            assert len(body) == int(headers.get("content-length", "0"))
    return Reply(int(status), headers, body)


async def exchange(port: int, data: bytes) -> Reply:
    """Send ``data`` on a new connection and read the whole answer."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        return await read_reply(stream, to_head=data.startswith(b"HEAD "))


async def held_upgrade(
    stack: AsyncExitStack, port: int, target: str = "/", headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    """Upgrade on a new connection left open until ``stack`` closes."""
    stream = await stack.enter_async_context(await trio.open_tcp_stream("127.0.0.1", port))
    await stream.send_all(upgrade_bytes(target, headers=headers))
    return await read_reply(stream)


def tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Until ``predicate()`` holds, then until the server's tasks have settled."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()


async def ping_pong(client: WsClient, text: str = "hi") -> None:
    await client.send(json.dumps({"type": "PING", "payload": {"text": text}}))
    assert await client.recv_json() == {"type": "PONG", "meta": {}, "payload": {"reply": text}}


@attrs.define
class Spy:
    """What app code ran: ``authenticate`` and ``on_open``."""

    requests: list[UpgradeRequest] = attrs.Factory(list)
    opened: list[str] = attrs.Factory(list)

    def authenticate(self, request: UpgradeRequest) -> Conn:
        self.requests.append(request)
        return Conn()

    def router(self) -> Router[Conn]:
        router: Router[Conn] = Router()

        @router.on(PING)
        async def ping(ctx: Context[Ping, Conn]) -> None:
            await ctx.send(PONG, Pong(ctx.payload.text))

        @router.on_open
        def on_open(ctx: ConnectionContext[Conn]) -> None:
            self.opened.append(ctx.client_id)

        return router

    @property
    def client_ips(self) -> list[str | None]:
        return [request.client_ip for request in self.requests]


# -- path ----------------------------------------------------------------------------


async def test_path_other_than_the_endpoint_is_404_before_any_app_code() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(spy.router(), path="/ws", authenticate=spy.authenticate) as srv:
            for target in ("/other", "/", "/ws/", "/wsx", "/other?x=/ws"):
                reply = await exchange(srv.port, upgrade_bytes(target))
                assert reply.status == 404, target
                assert "sec-websocket-accept" not in reply.headers
            assert spy.requests == [] and spy.opened == []
            assert srv.statistics().rejected == 5
            client = await open_client(srv.url + "/ws?x=1")
            await ping_pong(client)
            assert [(r.path, dict(r.query)) for r in spy.requests] == [("/ws", {"x": "1"})]
            assert len(spy.opened) == 1
            await client.close()


async def test_raw_upgrade_on_the_endpoint_gets_the_rfc_accept() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(spy.router(), path="/ws") as srv, AsyncExitStack() as stack:
            reply = await held_upgrade(stack, srv.port, "/ws?x=1")
            assert reply.status == 101
            assert reply.headers["sec-websocket-accept"] == ACCEPT
            assert reply.headers["upgrade"].lower() == "websocket"


# -- health check ------------------------------------------------------------------------


class UnhealthyPubSub(MemoryPubSub):
    healthy = False


async def test_health_get_head_and_other_methods() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(
            spy.router(), health_path="/healthz", authenticate=spy.authenticate
        ) as srv:
            reply = await exchange(srv.port, plain_bytes("GET", "/healthz"))
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("application/json")
            assert reply.headers["cache-control"] == "no-store"
            assert int(reply.headers["content-length"]) == len(reply.body)
            body = reply.json()
            assert body["status"] == "ok"
            assert body["connections"] == 0
            assert body["pubsub"] == {"backend": "MemoryPubSub", "healthy": True}
            # Query strings are fine (cache busters).
            assert (await exchange(srv.port, plain_bytes("GET", "/healthz?t=1"))).status == 200

            head = await exchange(srv.port, plain_bytes("HEAD", "/healthz"))
            assert head.status == 200 and head.body == b""
            assert head.headers["content-length"] == reply.headers["content-length"]

            for method in ("POST", "PUT", "DELETE"):
                refused = await exchange(srv.port, plain_bytes(method, "/healthz"))
                assert refused.status == 405, method
                assert "GET" in refused.headers["allow"]

            # Load balancers speak HTTP/1.0, without Host.
            old = await exchange(srv.port, plain_bytes("GET", "/healthz", "1.0"))
            assert old.status == 200 and old.json()["status"] == "ok"

            # The count of connections is live.
            client = await open_client(srv.url)
            await ping_pong(client)
            reply = await exchange(srv.port, plain_bytes("GET", "/healthz"))
            assert reply.json()["connections"] == 1
            await client.close()

            # Other paths are not a health check: a plain GET there is no upgrade.
            assert (await exchange(srv.port, plain_bytes("GET", "/"))).status == 426
            assert len(spy.requests) == 1  # only the WebSocket client's


async def test_health_is_503_while_draining() -> None:
    release = trio.Event()
    router = Spy().router()

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Conn]) -> None:
        await release.wait()
        await ctx.reply(Pong(ctx.payload.text))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            srv: Server[Conn] = await nursery.start(
                serve(
                    router,
                    host="127.0.0.1",
                    port=0,
                    handle_signals=False,
                    health_path="/healthz",
                    transport=_net.TRANSPORT,
                )
            )
            client = await open_client(srv.url)
            await client.send(
                '{"type": "ECHO", "meta": {"correlationId": "held"}, "payload": {"text": "x"}}'
            )
            await ping_pong(client)  # the RPC is in flight
            # A connection accepted while serving, asking only once draining began. The
            # health check on a later connection proves it was accepted (in order).
            async with await trio.open_tcp_stream("127.0.0.1", srv.port) as early:
                serving = await exchange(srv.port, plain_bytes("GET", "/healthz"))
                assert serving.status == 200 and serving.json()["status"] == "ok"

                nursery.start_soon(partial(srv.aclose, grace=60.0))
                await trio.testing.wait_all_tasks_blocked()
                # Draining: the listener is closed, the RPC holds the server open.
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", srv.port)

                await early.send_all(plain_bytes("GET", "/healthz"))
                reply = await read_reply(early)
            assert reply.status == 503
            assert reply.json()["status"] == "draining"
            assert reply.json()["connections"] == 1
            release.set()
            assert await client.recv_json() == {
                "type": "ECHOED",
                "meta": {"correlationId": "held"},
                "payload": {"reply": "x"},
            }
            code, _ = await client.wait_closed()
            assert code == 1001
        assert srv.connections == set()


async def test_health_is_503_while_the_pubsub_backend_is_unhealthy() -> None:
    router = Spy().router()
    router.plugin(with_pubsub(UnhealthyPubSub()))
    with trio.fail_after(TIMEOUT):
        async with running_server(router, health_path="/healthz") as srv:
            reply = await exchange(srv.port, plain_bytes("GET", "/healthz"))
            assert reply.status == 503
            body = reply.json()
            assert body["status"] == "degraded"
            assert body["pubsub"] == {"backend": "UnhealthyPubSub", "healthy": False}
            head = await exchange(srv.port, plain_bytes("HEAD", "/healthz", "1.0"))
            assert head.status == 503 and head.body == b""
            # WebSockets are still served.
            client = await open_client(srv.url)
            await ping_pong(client)
            await client.close()


# -- pages -------------------------------------------------------------------------------


async def test_pages_answer_plain_get_and_head_beside_the_endpoint() -> None:
    spy = Spy()
    html = "<!doctype html><p>h\u00e9llo</p>"
    pages = {"/": Page(html), "/app.js": Page(b"let x = 1;", content_type="text/javascript")}
    with trio.fail_after(TIMEOUT):
        async with running_server(
            spy.router(),
            path="/ws",
            health_path="/healthz",
            pages=pages,
            authenticate=spy.authenticate,
        ) as srv:
            reply = await exchange(srv.port, plain_bytes("GET", "/?name=alice"))
            assert reply.status == 200 and reply.body == html.encode("utf-8")
            assert reply.headers["content-type"] == "text/html; charset=utf-8"
            script = await exchange(srv.port, plain_bytes("GET", "/app.js"))
            assert script.status == 200 and script.body == b"let x = 1;"
            assert script.headers["content-type"] == "text/javascript"

            head = await exchange(srv.port, plain_bytes("HEAD", "/"))
            assert head.status == 200 and head.body == b""
            assert head.headers["content-length"] == reply.headers["content-length"]
            assert (await exchange(srv.port, plain_bytes("GET", "/", "1.0"))).status == 200
            refused = await exchange(srv.port, plain_bytes("POST", "/"))
            assert refused.status == 405 and "GET" in refused.headers["allow"]

            # Other paths are as before: no page, no upgrade; the health check is its own.
            assert (await exchange(srv.port, plain_bytes("GET", "/app.js/x"))).status == 426
            assert (await exchange(srv.port, plain_bytes("GET", "/healthz"))).json()[
                "status"
            ] == "ok"
            # A page's path is no endpoint: upgrades are taken on ``path`` only.
            assert (await exchange(srv.port, upgrade_bytes("/"))).status == 404
            assert spy.requests == []
            client = await open_client(srv.url + "/ws")
            await ping_pong(client)
            await client.close()


async def test_an_upgrade_on_a_pages_path_is_still_an_upgrade() -> None:
    with trio.fail_after(TIMEOUT):
        async with running_server(Spy().router(), pages={"/": Page("the app")}) as srv:
            assert (await exchange(srv.port, plain_bytes("GET", "/"))).body == b"the app"
            client = await open_client(srv.url + "/")
            await ping_pong(client)
            await client.close()


@pytest.mark.parametrize(
    ("where", "problem"), [("app", "starts with /"), ("/?x=1", "no query"), ("/h", "health")]
)
def test_a_page_needs_a_path_of_its_own(where: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        serve(Spy().router(), health_path="/h", pages={where: Page("x")})


# -- Origin --------------------------------------------------------------------------------


async def test_allowed_origins() -> None:
    spy = Spy()
    origins = ["https://app.example.com", "https://*.example.com"]
    with trio.fail_after(TIMEOUT):
        async with running_server(
            spy.router(), allowed_origins=origins, authenticate=spy.authenticate
        ) as srv:
            for origin in ("https://evil.com", "https://example.com", "http://app.example.com"):
                reply = await exchange(srv.port, upgrade_bytes(headers=[("Origin", origin)]))
                assert reply.status == 403, origin
            with pytest.raises(HandshakeRefused) as refused:
                await open_client(srv.url, headers=[("Origin", "https://evilexample.com")])
            assert refused.value.status == 403
            assert spy.requests == [] and spy.opened == []

            for allowed in ("https://app.example.com", "https://x.example.com", None):
                headers = [("Origin", allowed)] if allowed is not None else []
                client = await open_client(srv.url, headers=headers)
                await ping_pong(client)
                await client.close()
            assert [r.header("origin") for r in spy.requests] == [
                "https://app.example.com",
                "https://x.example.com",
                None,
            ]
            assert len(spy.opened) == 3


# -- connection caps -----------------------------------------------------------------------


async def test_max_connections_503_then_a_freed_slot_admits() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(
            spy.router(), limits=Limits(max_connections=2), authenticate=spy.authenticate
        ) as srv:
            first = await open_client(srv.url)
            second = await open_client(srv.url)
            await ping_pong(first)
            await ping_pong(second)
            reply = await exchange(srv.port, upgrade_bytes())
            assert reply.status == 503
            assert reply.headers["retry-after"] == "1"
            with pytest.raises(HandshakeRefused) as refused:
                await open_client(srv.url)
            assert refused.value.status == 503
            assert len(spy.requests) == 2  # refused before authenticate

            await first.close()
            await wait_until(lambda: srv.statistics().connections == 1)
            third = await open_client(srv.url)
            await ping_pong(third)
            assert srv.statistics().connections == 2
            assert (await exchange(srv.port, upgrade_bytes())).status == 503
            await second.close()
            await third.close()


async def test_max_connections_per_ip_429() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(Spy().router(), limits=Limits(max_connections_per_ip=1)) as srv,
            AsyncExitStack() as stack,
        ):
            assert (await held_upgrade(stack, srv.port)).status == 101
            reply = await exchange(srv.port, upgrade_bytes())
            assert reply.status == 429
            assert reply.headers["retry-after"] == "1"
            with pytest.raises(HandshakeRefused) as refused:
                await open_client(srv.url)
            assert refused.value.status == 429


async def test_a_refused_upgrade_by_authenticate_gives_its_slot_back() -> None:
    seen: list[str | None] = []

    def authenticate(request: UpgradeRequest) -> Conn | None:
        seen.append(request.query.get("who"))
        return Conn() if request.query.get("who") == "ok" else None

    with trio.fail_after(TIMEOUT):
        async with running_server(
            Spy().router(), limits=Limits(max_connections=1), authenticate=authenticate
        ) as srv:
            for _ in range(3):
                assert (await exchange(srv.port, upgrade_bytes("/?who=bad"))).status == 401
            client = await open_client(srv.url + "/?who=ok")
            await ping_pong(client)
            await client.close()
    assert seen == ["bad", "bad", "bad", "ok"]


# -- trusted proxies -----------------------------------------------------------------------


async def test_trusted_proxy_forwarded_addresses_count() -> None:
    spy = Spy()
    limits = Limits(max_connections_per_ip=1)
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(
                spy.router(),
                limits=limits,
                authenticate=spy.authenticate,
                trusted_proxies=["127.0.0.1"],
            ) as srv,
            AsyncExitStack() as stack,
        ):
            one = [("X-Forwarded-For", "203.0.113.1")]
            two = [("X-Forwarded-For", "198.51.100.66, 203.0.113.2")]
            assert (await held_upgrade(stack, srv.port, headers=one)).status == 101
            assert (await held_upgrade(stack, srv.port, headers=two)).status == 101
            again = await exchange(srv.port, upgrade_bytes(headers=one))
            assert again.status == 429 and again.headers["retry-after"] == "1"
            # Forwarded wins over X-Forwarded-For.
            forwarded = [("Forwarded", 'for="[2001:db8::1]:4711"'), *one]
            assert (await held_upgrade(stack, srv.port, headers=forwarded)).status == 101
            # No header: the proxy's own address.
            assert (await held_upgrade(stack, srv.port)).status == 101
            assert spy.client_ips == ["203.0.113.1", "203.0.113.2", "2001:db8::1", "127.0.0.1"]
            assert all(str(r.remote).startswith("127.0.0.1:") for r in spy.requests)


async def test_proxy_headers_ignored_without_trusted_proxies() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(
                spy.router(),
                limits=Limits(max_connections_per_ip=1),
                authenticate=spy.authenticate,
            ) as srv,
            AsyncExitStack() as stack,
        ):
            one = [("X-Forwarded-For", "203.0.113.1")]
            two = [("X-Forwarded-For", "203.0.113.2"), ("Forwarded", "for=203.0.113.3")]
            assert (await held_upgrade(stack, srv.port, headers=one)).status == 101
            reply = await exchange(srv.port, upgrade_bytes(headers=two))
            assert reply.status == 429 and reply.headers["retry-after"] == "1"
            assert spy.client_ips == ["127.0.0.1"]


async def test_untrusted_peer_headers_ignored_even_with_trusted_proxies() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with (
            running_server(
                spy.router(),
                limits=Limits(max_connections_per_ip=1),
                authenticate=spy.authenticate,
                trusted_proxies=["10.0.0.0/8", "2001:db8::/32"],
            ) as srv,
            AsyncExitStack() as stack,
        ):
            assert (
                await held_upgrade(stack, srv.port, headers=[("X-Forwarded-For", "203.0.113.1")])
            ).status == 101
            reply = await exchange(
                srv.port, upgrade_bytes(headers=[("X-Forwarded-For", "203.0.113.2")])
            )
            assert reply.status == 429
            assert spy.client_ips == ["127.0.0.1"]


# -- malformed requests ----------------------------------------------------------------------


def padded(count: int, value_size: int) -> list[tuple[str, str]]:
    return [(f"X-Pad-{i}", "a" * value_size) for i in range(count)]


MALFORMED: dict[str, tuple[bytes, int]] = {
    "http-1.0-upgrade": (upgrade_bytes(http_version="1.0"), 400),
    "bad-key": (upgrade_bytes(key="not-sixteen-bytes"), 400),
    "short-key": (upgrade_bytes(key="c2hvcnQ="), 400),
    "40-kib-of-headers": (upgrade_bytes(headers=padded(40, 1000)), 431),
    "150-headers": (upgrade_bytes(headers=padded(150, 4)), 431),
    "garbage": (b"\x00\xffthis is not http at all\r\n\r\n", 400),
    "tls-hello-on-plain": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40), 400),
    "post-upgrade": (upgrade_bytes().replace(b"GET", b"POST", 1), 405),
    "no-upgrade": (plain_bytes("GET", "/"), 426),
}


async def test_malformed_requests_answered_and_the_server_keeps_serving() -> None:
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(spy.router(), authenticate=spy.authenticate) as srv:
            for name, (data, status) in MALFORMED.items():
                reply = await exchange(srv.port, data)
                assert reply.status == status, name
                assert "close" in tokens(reply.headers["connection"]), name
                assert int(reply.headers["content-length"]) == len(reply.body), name

            # All at once, too.
            results: dict[str, int] = {}

            async def one(name: str, data: bytes) -> None:
                results[name] = (await exchange(srv.port, data)).status

            async with trio.open_nursery() as nursery:
                for name, (data, _) in MALFORMED.items():
                    nursery.start_soon(one, name, data)
            assert results == {name: status for name, (_, status) in MALFORMED.items()}

            assert spy.requests == []
            client = await open_client(srv.url)
            await ping_pong(client)
            await client.close()
            assert len(spy.requests) == 1


async def test_20_kib_of_headers_is_431() -> None:
    data = upgrade_bytes(headers=padded(20, 1000))
    assert 16 * 1024 < len(data) < 32 * 1024
    spy = Spy()
    with trio.fail_after(TIMEOUT):
        async with running_server(spy.router(), authenticate=spy.authenticate) as srv:
            async with await trio.open_tcp_stream("127.0.0.1", srv.port) as stream:
                await stream.send_all(data)
                reply = await read_reply(stream)
            assert reply.status == 431
            assert spy.requests == []


async def test_a_request_that_never_completes_is_dropped_after_handshake_timeout(
    net_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with running_server(Spy().router(), limits=Limits(handshake_timeout=10)) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                start = trio.current_time()
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                assert await stream.receive_some(100) == b""  # closed without a word
                assert trio.current_time() - start == pytest.approx(10, abs=0.1)


async def test_a_socket_that_sent_nothing_does_not_hold_shutdown(
    net_clock: trio.testing.MockClock,
) -> None:
    """Browsers open spare sockets ahead of need: one still silent once shutdown has
    drained the connections is closed then, not ``close_timeout`` later."""
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            srv: Server[Conn] = await nursery.start(
                serve(
                    Spy().router(),
                    host="127.0.0.1",
                    port=0,
                    handle_signals=False,
                    health_path="/healthz",
                    transport=_net.TRANSPORT,
                )
            )
            async with await trio.open_tcp_stream("127.0.0.1", srv.port) as spare:
                # A later connection's answer proves the spare one was accepted (in order).
                assert (await exchange(srv.port, plain_bytes("GET", "/healthz"))).status == 200
                start = trio.current_time()
                await srv.aclose()
                assert trio.current_time() - start < srv.limits.close_timeout / 10
                assert await spare.receive_some(100) == b""


async def test_an_accept_short_of_file_descriptors_is_logged_and_retried(
    net_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As ``trio.serve_listeners`` does: out of file descriptors (or memory), the
    server says so and accepts again a moment later; the client waits, then is served."""
    accept = trio.SocketListener.accept
    failures = [OSError(errno.EMFILE, "Too many open files")]

    async def short(self: trio.SocketListener) -> trio.SocketStream:
        if failures:
            await trio.lowlevel.checkpoint()
            raise failures.pop()
        return await accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", short)
    with trio.fail_after(100):
        async with running_server(Spy().router(), health_path="/healthz") as srv:
            start = trio.current_time()
            assert (await exchange(srv.port, plain_bytes("GET", "/healthz"))).status == 200
            assert trio.current_time() - start == pytest.approx(0.1, abs=0.05)
    assert "accept failed (EMFILE)" in caplog.text


# -- bind failure --------------------------------------------------------------------------


async def test_bind_failure_is_one_oserror_naming_the_address() -> None:
    router: Router[Any] = Router()
    with trio.fail_after(TIMEOUT):
        async with running_server(router) as first:
            port = first.port
            again = serve(
                router, host="127.0.0.1", port=port, handle_signals=False, transport=_net.TRANSPORT
            )
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError) as started:
                    await nursery.start(again)
            # As ``trio.run(serve(...))`` runs it.
            with pytest.raises(OSError) as awaited:
                await again()
            for exc in (started.value, awaited.value):
                assert type(exc) is OSError, repr(exc)
                assert exc.errno == errno.EADDRINUSE
                assert f"127.0.0.1:{port}" in str(exc)
                assert exc.__cause__ is None
            # The first server is unharmed.
            assert (await exchange(port, plain_bytes("GET", "/"))).status == 426


# -- TLS -------------------------------------------------------------------------------------
# Neither ``trustme`` nor ``cryptography`` is installed here, so the TLS case (``wss://``
# URL, a client over TLS) is not covered by this file.


# -- the start line ---------------------------------------------------------------------------

START_SCRIPT = (
    "import trio\n"
    "from wskit_trio import Router, serve\n"
    "trio.run(serve(Router(), port=0, handle_signals=False, transport={transport!r}))\n"
)


async def test_start_line_on_stderr_without_logging_configured() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = START_SCRIPT.format(transport=_net.TRANSPORT)
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stderr is not None
        output = b""
        try:
            while b"\n" not in output.partition(b"listening on ")[2]:
                chunk = await proc.stderr.receive_some()
                assert chunk, f"server exited early: {output!r}"
                output += chunk
            text = output.decode()
            assert "listening on ws://127.0.0.1:" in text
            line = next(x for x in text.splitlines() if "listening on" in x)
            port = int(line.rsplit(":", 1)[1])
            assert port > 0
            # The announced address answers.
            assert (await exchange(port, plain_bytes("GET", "/"))).status == 426
        finally:
            proc.kill()
            await proc.wait()
