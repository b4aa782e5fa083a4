"""Fault injection: a failure in any phase of one connection's life (head, door,
authenticate, upgrade, on_open, dispatch, handler, on_close, close) is logged, that
client gets its answer (HTTP 500 before the upgrade, 1011 after), and the server
serves the next client with nothing of the failed one left behind. Also: the
heartbeat is on by default and closes a peer that stopped answering pings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from _net import RawClient, net_clock, running_server
from _raw import RawSocket, upgrade_request
from test_hostile import assert_serves, echo_router, wait_connections
from test_soak import count_tasks

import wskit_trio._server as server_module
from wskit_trio import Router, UpgradeRequest
from wskit_trio._connection import Connection
from wskit_trio._transport import Rejected
from wskit_trio._transport._http import RequestHead, check_upgrade
from wskit_trio._transport._trio_websocket import TrioWebsocketTransport
from wskit_trio._transport._wsproto import WsprotoTransport
from wskit_trio.testing import open_test_app

__all__ = ["net_clock"]


class Boom(RuntimeError):
    """The injected fault."""


class Once:
    """Once armed, raises :class:`Boom` the first time it is called."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self.armed:
            self.armed = False
            raise Boom("injected")


def inject(
    phase: str, router: Router[Any], monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> Once:
    """Make ``phase`` fail once, for the first connection after the fault is armed."""
    boom = Once()
    if phase == "head":

        def failing_check(head: RequestHead) -> Rejected | None:
            boom()
            return check_upgrade(head)

        monkeypatch.setattr(server_module, "check_upgrade", failing_check)
    elif phase == "authenticate":

        def authenticate(request: UpgradeRequest) -> object:
            boom()
            return object()

        options["authenticate"] = authenticate
    elif phase == "upgrade":
        for name in ("open_wsproto", "open_trio_websocket"):
            opener = getattr(server_module, name)

            def failing_open(*args: Any, _opener: Any = opener, **kwargs: Any) -> Any:
                boom()
                return _opener(*args, **kwargs)

            monkeypatch.setattr(server_module, name, failing_open)
    elif phase == "on_open":
        router.on_open(lambda ctx: boom())
    elif phase == "dispatch":
        dispatch = Connection.dispatch

        async def failing_dispatch(self: Connection[Any], data: str | bytes) -> None:
            boom()
            await dispatch(self, data)

        monkeypatch.setattr(Connection, "dispatch", failing_dispatch)
    elif phase == "on_close":
        router.on_close(lambda ctx: boom())
    elif phase == "close":
        for cls in (WsprotoTransport, TrioWebsocketTransport):
            close = cls.close

            async def failing_close(
                self: Any, code: int = 1000, reason: str = "", _close: Any = close
            ) -> None:
                boom()
                await _close(self, code, reason)

            monkeypatch.setattr(cls, "close", failing_close)
    else:  # pragma: no cover
        raise AssertionError(phase)
    return boom


async def http_status(port: int) -> int:
    """Try an upgrade; the HTTP status of the answer."""
    raw = RawSocket(await trio.open_tcp_stream("127.0.0.1", port))
    await raw.stream.send_all(upgrade_request(port))
    head = await raw.read_head()
    await raw.stream.aclose()
    return int(head.split()[1])


async def faulty_client(phase: str, port: int) -> None:
    """What the client of the failing connection sees."""
    if phase in ("head", "authenticate", "upgrade"):
        assert await http_status(port) == 500
        return
    client = await RawSocket.connect(port)
    if phase == "on_open":
        assert await client.close_code() == 1011
    elif phase == "dispatch":
        await client.send_json({"type": "ECHO", "payload": {"text": "x"}})
        assert await client.close_code() == 1011
    elif phase == "on_close":
        await client.send_json({"type": "ECHO", "payload": {"text": "x"}})
        assert (await client.receive_json())["type"] == "ECHOED"
        await client.stream.aclose()
    elif phase == "close":
        # The server's close fails after this client vanished: nothing for it to see.
        client.reset()


PHASES = ["head", "authenticate", "upgrade", "on_open", "dispatch", "on_close", "close"]


@pytest.mark.parametrize("phase", PHASES)
async def test_a_fault_in_any_phase_stays_in_its_connection(
    phase: str,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = echo_router()
    options: dict[str, Any] = {}
    boom = inject(phase, router, monkeypatch, options)
    with trio.fail_after(20):
        async with running_server(router, **options) as server:
            tasks = count_tasks()
            await assert_serves(server)
            await wait_connections(server, 0)
            boom.armed = True
            await faulty_client(phase, server.port)
            while boom.armed:  # noqa: ASYNC110 (a server close may come after the client left)
                await trio.sleep(0.001)
            await wait_connections(server, 0)
            await assert_serves(server)
            await wait_connections(server, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert count_tasks() == tasks
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "the fault was not logged"
    assert any(isinstance(r.exc_info and r.exc_info[1], Boom | BaseExceptionGroup) for r in errors)
    assert all("127.0.0.1" in r.getMessage() for r in errors if "connection" in r.getMessage())


# -- heartbeat on by default -----------------------------------------------------------


async def test_serve_pings_by_default_and_closes_a_peer_that_stopped_answering(
    net_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with running_server(echo_router()) as server:
            client = await RawClient.connect(server.port)
            start = trio.current_time()
            event = await client.next_event()
            # A ping at 30 s, no pong (RawClient never answers), stale 10 s later.
            assert client.pings and 30 <= client.pings[0] - start < 30.5
            assert getattr(event, "code", None) == 1008
            assert 40 <= trio.current_time() - start < 41


async def test_the_harness_pings_by_default_too(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_app(echo_router()) as app:
        client = await app.connect()
        client.responsive = False
        start = trio.current_time()
        assert (await client.wait_closed())[0] == 1008
        assert 40 <= trio.current_time() - start < 41


async def test_heartbeat_none_turns_it_off(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_app(echo_router(), heartbeat=None) as app:
        client = await app.connect()
        client.responsive = False
        await trio.sleep(1000)
        assert client.closed is None
