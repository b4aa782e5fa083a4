"""Soak: many connect → RPC → abrupt disconnect cycles leave nothing behind.

After the cycles the trio task tree is back to its starting size, the server
tracks no connection, and no Connection or RPC context is still alive.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import trio
import trio.testing
import wsproto.events as ws_events
from _net import RawClient, net_clock, running_server
from conftest import ECHO, Conn, Ping, Pong

from wskit_trio import ConnectionContext, Router, RpcContext
from wskit_trio._connection import Connection
from wskit_trio._outbound import Outbox
from wskit_trio._transport._memory import MemoryTransport
from wskit_trio.testing import open_test_app

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

CYCLES = 1000
NET_CYCLES = 100


def count_tasks() -> int:
    """Every task in the run, found by walking the tree from the root task."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def live(*classes: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, classes))


def soak_router(stats: dict[str, int]) -> Router[Any]:
    router: Router[Any] = Router()

    @router.rpc(ECHO)
    async def echo(ctx: RpcContext[Ping, Pong, Any]) -> None:
        stats["started"] += 1
        if ctx.payload.text == "forever":
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                stats["cancelled"] += 1
                raise
        await ctx.progress(Pong("half"))
        await ctx.reply(Pong(ctx.payload.text))

    @router.on_close
    def on_close(ctx: ConnectionContext[Any]) -> None:
        stats["closed"] += 1

    return router


async def test_soak_in_memory(autojump_clock: trio.testing.MockClock) -> None:
    stats = {"started": 0, "cancelled": 0, "closed": 0}
    tracked = (Connection, ConnectionContext, Outbox, MemoryTransport)
    with trio.fail_after(600):
        async with open_test_app(soak_router(stats)) as app:
            await trio.testing.wait_all_tasks_blocked()
            tasks_before = count_tasks()
            objects_before = live(*tracked)
            connections: list[weakref.ref[Connection[Conn]]] = []
            peak_tasks = 0
            for i in range(CYCLES):
                client = await app.connect()
                connections.append(weakref.ref(client.connection))
                await client.request(ECHO, Ping(str(i)))
                assert (await client.receive()).type == "$ws:rpc-progress"
                assert (await client.receive()).payload == {"reply": str(i)}
                await client.request(ECHO, Ping("forever"))  # in flight at the drop
                await trio.testing.wait_all_tasks_blocked()
                peak_tasks = max(peak_tasks, count_tasks())
                client.drop()
                del client
            await trio.testing.wait_all_tasks_blocked()
            tasks_after = count_tasks()
            assert app.server.connections == set()
            assert stats == {"started": 2 * CYCLES, "cancelled": CYCLES, "closed": CYCLES}
            assert tasks_after == tasks_before, (tasks_before, peak_tasks, tasks_after)
            gc.collect()
            assert [ref for ref in connections if ref() is not None] == []
            assert live(*tracked) == objects_before
            print(
                f"\nsoak in memory: {CYCLES} cycles; tasks before={tasks_before} "
                f"peak={peak_tasks} after={tasks_after}; live objects {objects_before}"
            )


async def test_soak_over_real_sockets(net_clock: trio.testing.MockClock) -> None:
    stats = {"started": 0, "cancelled": 0, "closed": 0}
    with trio.fail_after(600):
        async with running_server(soak_router(stats)) as server:
            await trio.sleep(1)
            tasks_before = count_tasks()
            connections: list[weakref.ref[Connection[Any]]] = []
            peak_tasks = 0
            for i in range(NET_CYCLES):
                client = await RawClient.connect(server.port)
                await client.send_text(
                    json.dumps(
                        {
                            "type": "ECHO",
                            "meta": {"correlationId": "a"},
                            "payload": {"text": str(i)},
                        }
                    )
                )
                await client.send_text(
                    json.dumps(
                        {
                            "type": "ECHO",
                            "meta": {"correlationId": "b"},
                            "payload": {"text": "forever"},
                        }
                    )
                )
                types: list[str] = []
                while len(types) < 2:
                    event = await client.next_event()
                    assert isinstance(event, ws_events.TextMessage), event
                    types.append(json.loads(event.data)["type"])
                assert types == ["$ws:rpc-progress", "ECHOED"]
                (conn,) = server.connections
                connections.append(weakref.ref(conn))
                del conn
                peak_tasks = max(peak_tasks, count_tasks())
                await client.stream.aclose()  # no close handshake: abrupt
            await trio.sleep(1)
            assert server.connections == set()
            assert stats == {
                "started": 2 * NET_CYCLES,
                "cancelled": NET_CYCLES,
                "closed": NET_CYCLES,
            }
            tasks_after = count_tasks()
            assert tasks_after == tasks_before, (tasks_before, peak_tasks, tasks_after)
            gc.collect()
            assert [ref for ref in connections if ref() is not None] == []
            print(
                f"\nsoak over sockets: {NET_CYCLES} cycles; tasks before={tasks_before} "
                f"peak={peak_tasks} after={tasks_after}"
            )
