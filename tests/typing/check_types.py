"""Types flow from schemas: checked by mypy --strict (``tests/test_typing.py`` and the
project's ``mypy`` run), never executed. Every ``assert_type`` is an inference that
must hold; the opposite direction (mistakes reported) is in ``tests/test_typing.py``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, assert_type

import attrs

from wskit_trio import (
    ConnectionContext,
    Context,
    MessageSchema,
    Next,
    Router,
    RpcContext,
    RpcSchema,
    WsKitError,
    message,
    rpc,
)
from wskit_trio.testing import Frame, TestClient


@attrs.frozen
class Ping:
    text: str


@attrs.frozen
class Pong:
    reply: str


@attrs.frozen
class GetUser:
    id: str


@attrs.frozen
class User:
    id: str
    name: str


@attrs.define
class Conn:
    user_id: str | None = None


PING = message("PING", Ping)
PONG = message("PONG", Pong)
LEAVE = message("LEAVE")
GET_USER = rpc("GET_USER", GetUser, "USER", User)
SHORTHAND = message("SHORT", {"text": str})

assert_type(PING, MessageSchema[Ping])
assert_type(LEAVE, MessageSchema[None])
assert_type(GET_USER, RpcSchema[GetUser, User])
assert_type(GET_USER.request, MessageSchema[GetUser])
assert_type(GET_USER.response, MessageSchema[User])
assert_type(SHORTHAND, MessageSchema[Any])

router: Router[Conn] = Router()


@router.on(PING)
async def on_ping(ctx: Context[Ping, Conn]) -> None:
    assert_type(ctx.payload, Ping)
    assert_type(ctx.payload.text, str)
    assert_type(ctx.data, Conn)
    assert_type(ctx.data.user_id, str | None)
    assert_type(ctx.meta, dict[str, Any])
    assert_type(ctx.type, str)
    assert_type(ctx.client_id, str)
    assert_type(ctx.received_at, int)
    assert_type(ctx.correlation_id, str | None)
    await ctx.send(PONG, Pong(reply=ctx.payload.text))
    await ctx.send(LEAVE)
    await ctx.send(PONG, Pong("x"), meta={"timestamp": 1}, inherit_correlation_id=True)
    ctx.assign_data(user_id="u1")
    await ctx.error("NOT_FOUND", "nope", {"id": 1}, retryable=False, retry_after_ms=None)


@router.on(LEAVE)
async def on_leave(ctx: Context[None, Conn]) -> None:
    assert_type(ctx.payload, None)


@router.rpc(GET_USER)
async def get_user(ctx: RpcContext[GetUser, User, Conn]) -> None:
    assert_type(ctx.payload, GetUser)
    assert_type(ctx.payload.id, str)
    assert_type(ctx.data, Conn)
    assert_type(ctx.deadline, float)
    await ctx.progress(User(id=ctx.payload.id, name="loading"), throttle_ms=50)
    await ctx.reply(User(id=ctx.payload.id, name="Alice"))


# Decorators give the handler back unchanged.
assert_type(on_ping, Callable[[Context[Ping, Conn]], Awaitable[None]])


@router.use
async def middleware(ctx: Context[Any, Conn], next: Next) -> None:
    assert_type(ctx.data, Conn)
    await next()


@router.on_open
def opened(ctx: ConnectionContext[Conn]) -> None:
    assert_type(ctx.data, Conn)


@router.on_close
async def closed(ctx: ConnectionContext[Conn]) -> None:
    assert_type(ctx.data, Conn)


@router.on_error
def failed(err: WsKitError, ctx: ConnectionContext[Conn]) -> None:
    assert_type(err.code, str)
    assert_type(err.details, dict[str, Any])


async def client_side(client: TestClient[Conn]) -> None:
    assert_type(client.data, Conn)
    assert_type(await client.receive(), Frame)
    assert_type(await client.receive_payload(PONG), Pong)
    assert_type(await client.receive_payload(LEAVE), None)
    assert_type(await client.request(GET_USER, GetUser(id="u1")), str)
    await client.send(PING, Ping("hi"))
    await client.send(LEAVE)
