"""Browser chat: the page and the WebSocket from one process, no build step.

Run it:   python -m examples.browser_chat.server        (PORT=3040 by default)
Open:     http://127.0.0.1:3040/ in two browser tabs

``GET /`` answers the page (``static/index.html``, which loads ``/chat.js``); the
page opens a native browser ``WebSocket`` on ``/ws`` on the same origin and
speaks the wire protocol (docs/protocol.md) itself: plain messages, RPCs with a
``correlationId``, progress frames, errors. The contract is the schemas below;
``chat.js`` mirrors them in its comments.

* ``JOIN`` (an RPC, answered ``JOINED`` with who is in the room) subscribes the
  connection to the room; the others get ``USER_JOINED``.
* ``SAY`` publishes a ``ROOM_MESSAGE`` to everyone in the room, the sender too.
* ``ROLL`` (an RPC) rolls dice one by one, a progress frame as each lands, then
  answers ``ROLLED`` with all of them and the total.
* Closing the tab (or losing the connection) leaves the room: ``USER_LEFT``.

The page reconnects by itself, with jittered exponential backoff, when the
connection drops (a server restart closes it with 1001) and joins its room
again. A client authenticates with ``?access_token=<name>`` (demo rule: the
token is the user name; browsers cannot set headers on a WebSocket, hence the
query).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import attrs
import trio

from wskit_trio import (
    ConnectionContext,
    Context,
    Page,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
)

DEFAULT_PORT = 3040
#: Where the page opens its WebSocket.
WS_PATH = "/ws"
STATIC = Path(__file__).resolve().parent / "static"
MAX_TEXT = 500
MAX_DICE = 10
#: How long each die takes to land: long enough to see the progress in the page.
ROLL_STEP = 0.12


@attrs.define
class ChatUser:
    """Per-connection data: who this is and which room they are in."""

    name: str
    room_id: str | None = None


@attrs.frozen
class Join:
    room_id: str


@attrs.frozen
class Joined:
    room_id: str
    user: str
    members: list[str]


@attrs.frozen
class Say:
    text: str


@attrs.frozen
class RoomMessage:
    room_id: str
    user: str
    text: str


@attrs.frozen
class Presence:
    """Someone joined or left ``room_id``; ``members`` is who is there now."""

    room_id: str
    user: str
    members: list[str]


@attrs.frozen
class Roll:
    dice: int


@attrs.frozen
class Rolled:
    """The dice landed so far (a progress frame) or all of them (the reply)."""

    rolls: list[int]
    total: int


JOIN = rpc("JOIN", Join, "JOINED", Joined)
SAY = message("SAY", Say)
ROOM_MESSAGE = message("ROOM_MESSAGE", RoomMessage)
USER_JOINED = message("USER_JOINED", Presence)
USER_LEFT = message("USER_LEFT", Presence)
ROLL = rpc("ROLL", Roll, "ROLLED", Rolled)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def room_topic(room_id: str) -> str:
    return f"room:{room_id}"


def authenticate(request: UpgradeRequest) -> ChatUser | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return ChatUser(name=token)


def pages() -> dict[str, Page]:
    """The page and its script, read once at start (``serve(pages=...)``)."""
    return {
        "/": Page((STATIC / "index.html").read_bytes()),
        "/chat.js": Page(
            (STATIC / "chat.js").read_bytes(), content_type="text/javascript; charset=utf-8"
        ),
    }


def build_router(*, roll_step: float = ROLL_STEP) -> Router[ChatUser]:
    router: Router[ChatUser] = Router()
    #: Who is in each room: client id -> name (one process, one tab = one entry).
    rooms: dict[str, dict[str, str]] = {}

    def members(room: str) -> list[str]:
        return sorted(set(rooms.get(room, {}).values()))

    async def leave(ctx: ConnectionContext[ChatUser]) -> None:
        room = ctx.data.room_id
        if room is None:
            return
        await ctx.topics.unsubscribe(room_topic(room))
        rooms.get(room, {}).pop(ctx.client_id, None)
        ctx.assign_data(room_id=None)
        left = Presence(room, ctx.data.name, members(room))
        await router.publish(room_topic(room), USER_LEFT, left)

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[Join, Joined, ChatUser]) -> None:
        room = ctx.payload.room_id
        if not _NAME.fullmatch(room):
            raise WsKitError("INVALID_ARGUMENT", "Room names are 1-32 letters, digits, _ or -")
        if ctx.data.room_id is not None:
            await leave(ctx)
        # Subscribed (confirmed) before anyone hears of us: nothing said after the
        # reply can miss us.
        await ctx.topics.subscribe(room_topic(room))
        rooms.setdefault(room, {})[ctx.client_id] = ctx.data.name
        ctx.assign_data(room_id=room)
        here = members(room)
        joined = Presence(room, ctx.data.name, here)
        await ctx.publish(room_topic(room), USER_JOINED, joined, exclude_self=True)
        await ctx.reply(Joined(room, ctx.data.name, here))

    @router.on(SAY)
    async def say(ctx: Context[Say, ChatUser]) -> None:
        room = ctx.data.room_id
        if room is None:
            raise WsKitError("FAILED_PRECONDITION", "Join a room first")
        text = ctx.payload.text.strip()
        if not text or len(text) > MAX_TEXT:
            raise WsKitError("INVALID_ARGUMENT", f"A message is 1-{MAX_TEXT} characters")
        await ctx.publish(room_topic(room), ROOM_MESSAGE, RoomMessage(room, ctx.data.name, text))

    @router.rpc(ROLL)
    async def roll(ctx: RpcContext[Roll, Rolled, ChatUser]) -> None:
        if not 1 <= ctx.payload.dice <= MAX_DICE:
            raise WsKitError("INVALID_ARGUMENT", f"Roll 1 to {MAX_DICE} dice")
        rolls: list[int] = []
        for _ in range(ctx.payload.dice):
            await trio.sleep(roll_step)
            rolls.append(random.randint(1, 6))
            await ctx.progress(Rolled(list(rolls), sum(rolls)))
        await ctx.reply(Rolled(rolls, sum(rolls)))

    @router.on_close
    async def gone(ctx: ConnectionContext[ChatUser]) -> None:
        await leave(ctx)  # a closed tab leaves its room

    return router


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(
                build_router(),
                host="127.0.0.1",
                port=port,
                authenticate=authenticate,
                path=WS_PATH,
                pages=pages(),
            )
        )
        print(f"browser-chat server listening on {server.url}", flush=True)
        print(f"open http://127.0.0.1:{server.port}/ in a browser", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", str(DEFAULT_PORT))))
