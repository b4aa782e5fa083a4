"""The public harness fixtures (wskit_trio.testing's pytest plugin), as a user's tests
use them."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from conftest import PING, PONG, Conn, Ping, Pong

from wskit_trio import Context, Limits, Router
from wskit_trio.testing import TestApp, TestClient


@pytest.fixture
def wskit_router() -> Router[Conn]:
    router: Router[Conn] = Router()

    @router.on(PING)
    async def ping(ctx: Context[Ping, Conn]) -> None:
        await trio.sleep(1)  # virtual time under autojump_clock
        user = ctx.data.user_id if ctx.data is not None else None
        await ctx.send(PONG, Pong(reply=f"{ctx.payload.text}:{user}"))

    return router


@pytest.fixture
def wskit_app_options() -> dict[str, object]:
    return {"limits": Limits(max_message_bytes=64)}


async def test_wskit_app_serves_the_router_in_memory(
    wskit_app: TestApp[Conn], autojump_clock: trio.testing.MockClock
) -> None:
    client = await wskit_app.connect(Conn(user_id="u1"))
    start = trio.current_time()
    await client.send(PING, Ping("hi"))
    assert await client.receive_payload(PONG) == Pong("hi:u1")
    assert trio.current_time() - start == 1


async def test_wskit_app_options_reach_the_app(wskit_client: TestClient[Conn]) -> None:
    await wskit_client.send_raw('{"type":"PING","payload":{"text":"' + "x" * 100 + '"}}')
    assert await wskit_client.wait_closed() == (1009, "Message too big")


async def test_wskit_client_is_connected(
    wskit_app: TestApp[Conn],
    wskit_client: TestClient[Conn],
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert wskit_client.connection in wskit_app.server.connections
    await wskit_client.send(PING, Ping("x"))
    assert await wskit_client.receive_payload(PONG) == Pong("x:None")
