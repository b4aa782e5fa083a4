"""Quick-start chat: join a room, talk, leave; rooms are pub/sub topics.

Run it:   python -m examples.quickstart.server        (PORT=3000 by default)
Talk:     python -m examples.quickstart.client alice

A client authenticates at the upgrade with ``?access_token=<name>`` (a demo
rule: the token is the user name; put real verification in ``authenticate``).
Each user may send ``RATE_CAPACITY`` messages in a burst, then
``RATE_PER_SECOND`` a second (one bucket per user, shared by all their
connections); a message over the limit is answered ``RESOURCE_EXHAUSTED`` with
``retryAfterMs``, and the client waits that long and sends it again.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs
import trio

from wskit_trio import (
    ConnectionContext,
    Context,
    MemoryRateLimiter,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rate_limit,
    rpc,
    serve,
)

#: Messages a user may send in a burst ...
RATE_CAPACITY = 5
#: ... and how fast the allowance refills (tokens per second).
RATE_PER_SECOND = 1.0


@attrs.define
class ChatUser:
    """Per-connection data: who this is and which room they are in."""

    name: str
    room_id: str | None = None


@attrs.frozen
class JoinRoom:
    room_id: str


@attrs.frozen
class SendMessage:
    text: str


@attrs.frozen
class RoomMessage:
    room_id: str
    user: str
    text: str


@attrs.frozen
class RoomEvent:
    room_id: str
    user: str


@attrs.frozen
class Members:
    room_id: str
    users: list[str]


JOIN_ROOM = message("JOIN_ROOM", JoinRoom)
SEND_MESSAGE = message("SEND_MESSAGE", SendMessage)
LEAVE_ROOM = message("LEAVE_ROOM")
ROOM_MESSAGE = message("ROOM_MESSAGE", RoomMessage)
USER_JOINED = message("USER_JOINED", RoomEvent)
USER_LEFT = message("USER_LEFT", RoomEvent)
WHO = rpc("WHO", None, "MEMBERS", Members)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def authenticate(request: UpgradeRequest) -> ChatUser | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return ChatUser(name=token)


def per_user(ctx: Context[Any, ChatUser]) -> str:
    """The rate-limit bucket: one per user, whichever connection they send on."""
    return f"chat:{ctx.data.name}"


def build_router(
    *, capacity: int = RATE_CAPACITY, tokens_per_second: float = RATE_PER_SECOND
) -> Router[ChatUser]:
    router: Router[ChatUser] = Router()
    members: dict[str, set[str]] = {}  # presence, per room (one process)
    limiter = MemoryRateLimiter(capacity=capacity, tokens_per_second=tokens_per_second)

    async def leave(ctx: ConnectionContext[ChatUser]) -> None:
        room = ctx.data.room_id
        if room is None:
            return
        await ctx.topics.unsubscribe(f"room:{room}")
        members.get(room, set()).discard(ctx.data.name)
        ctx.assign_data(room_id=None)
        await router.publish(f"room:{room}", USER_LEFT, RoomEvent(room, ctx.data.name))

    @router.on(JOIN_ROOM)
    async def join_room(ctx: Context[JoinRoom, ChatUser]) -> None:
        if ctx.data.room_id is not None:
            await leave(ctx)
        room = ctx.payload.room_id
        await ctx.topics.subscribe(f"room:{room}")  # confirmed before we announce
        members.setdefault(room, set()).add(ctx.data.name)
        ctx.assign_data(room_id=room)
        await ctx.publish(f"room:{room}", USER_JOINED, RoomEvent(room, ctx.data.name))

    # Over the limit, the handler is skipped and the sender gets RESOURCE_EXHAUSTED
    # with retryAfterMs; the connection stays open.
    @router.on(SEND_MESSAGE, middleware=[rate_limit(limiter=limiter, key=per_user)])
    async def send_message(ctx: Context[SendMessage, ChatUser]) -> None:
        room = ctx.data.room_id
        if room is None:
            raise WsKitError("FAILED_PRECONDITION", "Join a room first")
        await ctx.publish(
            f"room:{room}", ROOM_MESSAGE, RoomMessage(room, ctx.data.name, ctx.payload.text)
        )

    @router.on(LEAVE_ROOM)
    async def leave_room(ctx: Context[None, ChatUser]) -> None:
        await leave(ctx)

    @router.rpc(WHO)
    async def who(ctx: RpcContext[None, Members, ChatUser]) -> None:
        room = ctx.data.room_id
        if room is None:
            raise WsKitError("FAILED_PRECONDITION", "Join a room first")
        await ctx.reply(Members(room, sorted(members.get(room, ()))))

    @router.on_close
    async def on_close(ctx: ConnectionContext[ChatUser]) -> None:
        await leave(ctx)  # a vanished client leaves its room too

    return router


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(build_router(), host="127.0.0.1", port=port, authenticate=authenticate)
        )
        print(f"quickstart server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", "3000")))
