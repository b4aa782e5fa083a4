"""Connection lifecycle: server heartbeat, graceful shutdown, SIGINT/SIGTERM.

Heartbeat: a protocol ping every ``interval``; no pong within ``timeout`` makes
the connection stale (``on_stale``, default close 1008). Graceful shutdown
(``Server.aclose``, ``TestApp.shutdown``, or a signal to ``serve()``): stop
accepting, let in-flight RPCs finish within the grace period, cancel the rest,
close every connection with 1001, run ``on_close`` for each, return.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ws_events
from _net import RawClient, close_of, net_clock, recv_json, running_server, send_json
from _probe import Probe
from conftest import ECHO, PING, PONG, Conn, Ping, Pong

from wskit_trio import ConnectionContext, Context, Heartbeat, Limits, Router, RpcContext, serve
from wskit_trio.testing import open_test_app

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

ROOT = Path(__file__).resolve().parent.parent
EchoCtx = RpcContext[Ping, Pong, Conn]


def lifecycle_router(closed: list[str], cancelled: list[str] | None = None) -> Router[Conn]:
    """ECHO sleeps ``float(text)`` seconds, then replies; PING answers PONG."""
    router: Router[Conn] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: EchoCtx) -> None:
        try:
            await trio.sleep(float(ctx.payload.text))
        except trio.Cancelled:
            if cancelled is not None:
                cancelled.append(ctx.payload.text)
            raise
        await ctx.reply(Pong(ctx.payload.text))

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await ctx.send(PONG, Pong(ctx.payload.text))

    @router.on_close
    def on_close(ctx: ConnectionContext[Conn]) -> None:
        closed.append(ctx.client_id)

    return router


# -- heartbeat -------------------------------------------------------------------------


async def test_responsive_client_stays_connected(autojump_clock: trio.testing.MockClock) -> None:
    closed: list[str] = []
    with trio.fail_after(1000):
        async with open_test_app(
            lifecycle_router(closed), heartbeat=Heartbeat(interval=10, timeout=5)
        ) as app:
            client = await app.connect()
            await trio.sleep(500)  # fifty heartbeats
            assert client.closed is None and closed == []
            await client.send(PING, Ping("alive"))
            assert (await client.receive()).payload == {"reply": "alive"}


async def test_an_idle_connection_is_one_task_between_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server's one schedule starts each ping; a connection waiting for its next
    # one costs no task (a sleeping task each was ~3 KiB per idle connection). Nor
    # does it hold a writer (started when frames wait) or a reader of its own (the
    # connection's task reads): its nursery has no child at all.
    with trio.fail_after(1000):
        async with open_test_app(
            lifecycle_router([]), heartbeat=Heartbeat(interval=10, timeout=5)
        ) as app:
            clients = [await app.connect() for _ in range(3)]
            await trio.sleep(25)  # two pings each, answered
            await trio.testing.wait_all_tasks_blocked()
            for client in clients:
                assert client.closed is None
                nursery = client.connection._nursery
                assert nursery is not None
                assert nursery.child_tasks == frozenset()


async def test_unanswered_ping_closes_with_1008_at_interval_plus_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[str] = []
    cancelled: list[str] = []
    probe = Probe()
    with trio.fail_after(1000):
        async with open_test_app(
            lifecycle_router(closed, cancelled).plugin(probe),
            heartbeat=Heartbeat(interval=10, timeout=5),
        ) as app:
            client = await app.connect()
            healthy = await app.connect()
            start = trio.current_time()
            await client.request(ECHO, Ping("1000"))  # in flight when it goes stale
            await trio.sleep(12)  # one ping answered (at 10)
            assert client.closed is None
            client.responsive = False  # the next ping (at 20) is never answered
            assert await client.wait_closed() == (1008, "heartbeat timeout")
            assert trio.current_time() - start == 25
            await probe.wait_ended(client)
            assert client.connection.closed == (1008, "heartbeat timeout")
            assert cancelled == ["1000"]
            assert closed == [client.client_id]
            assert healthy.closed is None


async def test_on_stale_replaces_the_default_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stale_at: list[tuple[str, float]] = []

    async def on_stale(ctx: ConnectionContext[Any]) -> None:
        stale_at.append((ctx.client_id, trio.current_time()))
        if len(stale_at) == 3:
            await ctx.close(4001, "stale three times")

    closed: list[str] = []
    with trio.fail_after(1000):
        async with open_test_app(
            lifecycle_router(closed), heartbeat=Heartbeat(interval=10, timeout=5, on_stale=on_stale)
        ) as app:
            client = await app.connect()
            client.responsive = False
            start = trio.current_time()
            assert await client.wait_closed() == (4001, "stale three times")
    # Each round: sleep 10, ping unanswered for 5.
    assert [t - start for _, t in stale_at] == [15, 30, 45]
    assert {cid for cid, _ in stale_at} == {client.client_id}


async def test_failing_on_stale_falls_back_to_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def on_stale(ctx: ConnectionContext[Any]) -> None:
        raise RuntimeError("hook bug")

    closed: list[str] = []
    with trio.fail_after(1000):
        async with open_test_app(
            lifecycle_router(closed), heartbeat=Heartbeat(interval=1, timeout=1, on_stale=on_stale)
        ) as app:
            client = await app.connect()
            client.responsive = False
            assert await client.wait_closed() == (1008, "heartbeat timeout")


async def test_net_heartbeat_timeout_closes_with_1008(net_clock: trio.testing.MockClock) -> None:
    closed: list[str] = []
    cancelled: list[str] = []
    heartbeat = Heartbeat(interval=10, timeout=5)
    with trio.fail_after(1000):
        async with (
            running_server(lifecycle_router(closed, cancelled), heartbeat=heartbeat) as srv,
            trio_websocket.open_websocket_url(srv.url) as healthy,
        ):
            raw = await RawClient.connect(srv.port)
            start = trio.current_time()
            await raw.stream.send_all(
                raw.ws.send(
                    ws_events.TextMessage(
                        '{"type":"ECHO","meta":{"correlationId":"c"},"payload":{"text":"1000"}}'
                    )
                )
            )
            event = await raw.next_event()
            assert isinstance(event, ws_events.CloseConnection), event
            assert (event.code, event.reason) == (1008, "heartbeat timeout")
            assert trio.current_time() - start == pytest.approx(15)
            assert [t - start for t in raw.pings] == [pytest.approx(10)]
            await raw.stream.send_all(raw.ws.send(event.response()))
            await raw.stream.aclose()
            # The trio-websocket client answers pings: still connected, six
            # heartbeats later.
            await trio.sleep(60)
            await send_json(healthy, {"type": "PING", "payload": {"text": "ok"}})
            assert (await recv_json(healthy))["payload"] == {"reply": "ok"}
            assert cancelled == ["1000"]
            assert len(closed) == 1 and len(srv.connections) == 1


# -- graceful shutdown, in memory ------------------------------------------------------


async def test_shutdown_lets_rpcs_finish_within_grace_then_cancels_and_closes_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[str] = []
    cancelled: list[str] = []
    with trio.fail_after(100):
        async with open_test_app(lifecycle_router(closed, cancelled)) as app:
            quick, slow, idle = [await app.connect() for _ in range(3)]
            await quick.request(ECHO, Ping("2"), correlation_id="quick")
            await slow.request(ECHO, Ping("60"), correlation_id="slow")
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(app.shutdown, 5)
                await trio.sleep(1)
                # During the grace period: events are served, new RPCs refused.
                await slow.send(PING, Ping("during"))
                assert (await slow.receive()).payload == {"reply": "during"}
                await slow.request(ECHO, Ping("0"), correlation_id="late")
                late = await slow.receive()
                assert (late.type, late.correlation_id) == ("RPC_ERROR", "late")
                assert late.payload["code"] == "UNAVAILABLE"
                assert late.payload["retryable"] is True
            # app.shutdown returned: every connection has ended.
            assert trio.current_time() - start == 5
            assert app.server.connections == set()
            reply = await quick.receive()
            assert (reply.type, reply.correlation_id) == ("ECHOED", "quick")
            for client in (quick, slow, idle):
                assert await client.wait_closed() == (1001, "server shutting down")
            assert slow.received[-1].correlation_id == "late"  # nothing for "slow"
            assert cancelled == ["60"]
            assert sorted(closed) == sorted(c.client_id for c in (quick, slow, idle))


async def test_shutdown_with_nothing_in_flight_is_immediate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[str] = []
    with trio.fail_after(100):
        async with open_test_app(lifecycle_router(closed)) as app:
            clients = [await app.connect() for _ in range(5)]
            start = trio.current_time()
            await app.shutdown(grace=30)
            assert trio.current_time() == start
            for client in clients:
                assert await client.wait_closed() == (1001, "server shutting down")
            assert len(closed) == 5


async def test_shutdown_does_not_wait_forever_for_a_client_that_stopped_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router: Router[Conn] = Router()

    @router.rpc(ECHO)
    async def flood(ctx: EchoCtx) -> None:
        for i in range(1000):
            await ctx.progress(Pong(str(i)))
        await ctx.reply(Pong("done"))

    limits = Limits(outbound_queue=4, close_timeout=3, shutdown_grace=10)
    with trio.fail_after(100):
        async with open_test_app(router, limits=limits) as app:
            stuck = await app.connect(client_buffer=1)
            await stuck.request(ECHO, Ping("x"))
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await app.shutdown()
            # grace (the handler is parked on the full queue), then close_timeout
            # for the writer that cannot drain, then cut off.
            assert trio.current_time() - start == 13
            assert stuck.connection.closed == (1001, "server shutting down")
            assert app.server.connections == set()


# -- graceful shutdown over real sockets -----------------------------------------------


async def test_net_server_aclose_with_rpcs_in_flight(net_clock: trio.testing.MockClock) -> None:
    closed: list[str] = []
    cancelled: list[str] = []
    router = lifecycle_router(closed, cancelled)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                serve(router, port=0, handle_signals=False, limits=Limits(shutdown_grace=5))
            )
            quick = await trio_websocket.connect_websocket_url(nursery, server.url)
            slow = await trio_websocket.connect_websocket_url(nursery, server.url)
            for ws, cid, seconds in ((quick, "quick", "2"), (slow, "slow", "60")):
                await send_json(
                    ws,
                    {"type": "ECHO", "meta": {"correlationId": cid}, "payload": {"text": seconds}},
                )
            await send_json(slow, {"type": "PING", "payload": {"text": "sync"}})
            assert (await recv_json(slow))["type"] == "PONG"
            assert len(server.connections) == 2
            start = trio.current_time()
            await server.aclose()
            assert trio.current_time() - start == pytest.approx(5, abs=0.1)
            assert server.connections == set()
            # The quick RPC finished within the grace period; the slow one was cancelled.
            assert await recv_json(quick) == {
                "type": "ECHOED",
                "meta": {"correlationId": "quick"},
                "payload": {"reply": "2"},
            }
            for ws in (quick, slow):
                with pytest.raises(trio_websocket.ConnectionClosed) as exc:
                    await ws.get_message()
                assert close_of(exc.value)[0] == 1001
            assert cancelled == ["60"]
            assert len(closed) == 2
            # No longer accepting.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", server.port)


# -- signals -----------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import logging, sys

    import attrs
    import trio

    from wskit_trio import Limits, Router, rpc, serve


    @attrs.frozen
    class Req:
        seconds: float


    @attrs.frozen
    class Res:
        ok: bool


    SLOW = rpc("SLOW", Req, "DONE", Res)
    router = Router()


    @router.rpc(SLOW)
    async def slow(ctx):
        await trio.sleep(ctx.payload.seconds)
        await ctx.reply(Res(ok=True))


    @router.on_close
    def on_close(ctx):
        print("on_close", flush=True)


    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    trio.run(serve(router, port=0, limits=Limits(shutdown_grace=10)))
    print("serve returned", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_is_a_graceful_shutdown(tmp_path: Path, signum: signal.Signals) -> None:
    """``trio.run(serve(router))`` in a script: a signal lets the in-flight RPC finish,
    closes the client with 1001, runs on_close, and the process exits 0."""
    script = tmp_path / "server.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(script)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        output = b""
        try:
            while b"listening on ws://" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"server exited early: {output!r}"
                output += chunk
            line = next(x for x in output.decode().splitlines() if "listening on" in x)
            url = line.split("listening on ")[1].strip()
            async with trio_websocket.open_websocket_url(url) as ws:
                await send_json(
                    ws,
                    {"type": "SLOW", "meta": {"correlationId": "s"}, "payload": {"seconds": 0.3}},
                )
                await send_json(
                    ws, {"type": "NOPE", "meta": {}}
                )  # round trip: the RPC is in flight
                assert (await recv_json(ws))["payload"]["code"] == "UNIMPLEMENTED"
                proc.send_signal(signum)
                assert await recv_json(ws) == {
                    "type": "DONE",
                    "meta": {"correlationId": "s"},
                    "payload": {"ok": True},
                }
                with pytest.raises(trio_websocket.ConnectionClosed) as exc:
                    await ws.get_message()
                assert close_of(exc.value)[0] == 1001
            assert await proc.wait() == 0
            while chunk := await proc.stdout.receive_some():
                output += chunk
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode()
    assert "shutting down gracefully" in text
    assert text.count("on_close") == 1
    assert text.rstrip().endswith("serve returned")


async def test_app_close_to_a_client_that_does_not_read_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``ctx.close()`` drains what is queued first, but a client that reads nothing
    more cannot hold the connection open: it is cut off after ``close_timeout``."""
    router: Router[Conn] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        for i in range(5):
            await ctx.send(PONG, Pong(reply=str(i)))
        await ctx.close(4001, "bye")

    limits = Limits(close_timeout=3.0)
    probe = Probe()
    router.plugin(probe)
    with trio.fail_after(30):
        async with open_test_app(router, limits=limits) as app:
            client = await app.connect(Conn(), client_buffer=1)
            start = trio.current_time()
            await client.send(PING, Ping("x"))
            await probe.wait_ended(client)
            assert trio.current_time() - start == pytest.approx(3.0)
            assert client.connection.closed == (4001, "bye")
