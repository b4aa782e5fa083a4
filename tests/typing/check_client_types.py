"""The client's types flow from schemas: checked by mypy --strict (``tests/test_typing.py``
and the project's ``mypy`` run), never executed.

Every ``assert_type`` is an inference that must hold. The mistakes carry
``# type: ignore[<code>]``: strict mode reports an ignore that suppresses nothing,
so each of those lines proves mypy catches that mistake.
"""

from __future__ import annotations

from typing import assert_type

import attrs

from wskit_trio import message, rpc
from wskit_trio.client import (
    Client,
    ClientOptions,
    ClientState,
    InboundMessage,
    RequestStream,
    RpcError,
    open_client,
)


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


PING = message("PING", Ping)
PONG = message("PONG", Pong)
LEAVE = message("LEAVE")
GET_USER = rpc("GET_USER", GetUser, "USER", User)
STATUS = rpc("STATUS", None, "STATUS_OK", Pong)


async def requests(client: Client) -> None:
    user = await client.request(GET_USER, GetUser(id="u1"))
    assert_type(user, User)
    assert_type(user.name, str)
    assert_type(await client.request(STATUS), Pong)
    assert_type(await client.request(GET_USER, GetUser("u1"), timeout=None), User)

    def on_progress(progress: User) -> None: ...

    await client.request(GET_USER, GetUser("u1"), on_progress=on_progress)

    async with client.stream(GET_USER, GetUser(id="u1")) as call:
        assert_type(call, RequestStream[User])
        async for progress in call:
            assert_type(progress, User)
        assert_type(await call.result(), User)

    try:
        await client.request(GET_USER, GetUser("u1"))
    except RpcError as err:
        assert_type(err.retryable, bool)
        assert_type(err.should_retry, bool)


async def messages(client: Client) -> None:
    assert_type(await client.send(PING, Ping("hi")), bool)
    assert_type(await client.send(LEAVE), bool)

    def on_pong(msg: InboundMessage[Pong]) -> None:
        assert_type(msg.payload, Pong)

    async def on_pong_async(msg: InboundMessage[Pong]) -> None: ...

    off = client.on(PONG, on_pong)
    client.on(PONG, on_pong_async)
    off()

    @client.on(PONG)
    async def decorated(msg: InboundMessage[Pong]) -> None:
        assert_type(msg.payload.reply, str)

    assert_type(client.state, ClientState)


async def mistakes(client: Client) -> None:
    await client.request(GET_USER, Ping("x"))  # type: ignore[misc]
    wrong: Pong = await client.request(GET_USER, GetUser("u1"))  # type: ignore[arg-type]
    print(wrong)
    await client.request(GET_USER)  # type: ignore[arg-type]
    await client.send(PING, Pong("x"))  # type: ignore[misc]
    await client.send(PING)  # type: ignore[arg-type]

    def on_ping(msg: InboundMessage[Ping]) -> None: ...

    client.on(PONG, on_ping)  # type: ignore[arg-type]
    client.on(GET_USER, on_ping)  # type: ignore[call-overload]


async def opening() -> None:
    async with open_client("ws://127.0.0.1:3000", auth=lambda: "token") as client:
        assert_type(client, Client)
    # The keywords are ClientOptions' fields, checked by name and type.
    open_client("ws://h", reconnect=False, subprotocols=["chat"], queue="off", retry=None)
    open_client("ws://h", reconect=False)  # type: ignore[call-arg]
    open_client("ws://h", queue="sometimes")  # type: ignore[arg-type]
    open_client("ws://h", queue_size="10")  # type: ignore[arg-type]
    assert_type(Client("ws://h", ClientOptions(reconnect=False)).options, ClientOptions)
