"""Throttling: rapid client updates coalesced server-side into one batch per window.

Cursors (or typing indicators, or any "latest state wins" stream) change far
more often than anyone needs to see. Each client sends every ``MOVE``; the
server keeps only the latest one per user and, once per time window
(:data:`WINDOW`), broadcasts one ``CURSORS`` batch to the room with each user's
latest cursor and how many moves it stands for (``merged``). A window starts
with the first move after a quiet spell, so an idle room costs nothing and a
lone move is delivered at most one window late. The last move of every user is
always in some batch: nothing is lost at the end, only intermediate states.

Run it:   python -m examples.throttling.server            (PORT=3050 by default)
Then:     python -m examples.throttling.client alice      (and bob, in another terminal)

A client authenticates with ``?access_token=<name>`` (demo rule: the token is the
user name).
"""

from __future__ import annotations

import os
import re
from typing import Generic, TypeVar

import attrs
import trio

from wskit_trio import (
    Context,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
)

#: One batch per room per window, at most.
WINDOW = 0.05

K = TypeVar("K")
V = TypeVar("V")


@attrs.define
class User:
    """Per-connection data."""

    name: str
    room: str | None = None


@attrs.frozen
class Move:
    x: int
    y: int
    seq: int  # the sender's own counter: 1, 2, 3, ...


@attrs.frozen
class Cursor:
    user: str
    x: int
    y: int
    seq: int
    #: How many moves of this user this entry stands for (this one and those it replaced).
    merged: int


@attrs.frozen
class CursorBatch:
    room: str
    #: The server's window counter (increases with every batch).
    window: int
    cursors: list[Cursor]


@attrs.frozen
class Join:
    room: str


@attrs.frozen
class Joined:
    room: str
    user: str
    window_ms: int


MOVE = message("MOVE", Move)
CURSORS = message("CURSORS", CursorBatch)
#: Join a room; the reply comes once the subscription is confirmed.
JOIN = rpc("JOIN", Join, "JOINED", Joined)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def authenticate(request: UpgradeRequest) -> User | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade (401)."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return User(name=token)


class Coalescer(Generic[K, V]):
    """The latest value per key, and how many values it replaced, until taken."""

    def __init__(self) -> None:
        self._latest: dict[K, tuple[V, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._latest)

    def put(self, key: K, value: V) -> None:
        _, count = self._latest.get(key, (value, 0))
        self._latest[key] = (value, count + 1)

    def take(self) -> dict[K, tuple[V, int]]:
        latest, self._latest = self._latest, {}
        return latest


class Throttle:
    """Collects moves per room and publishes one batch per room per window.

    ``run`` is the flushing task: start it next to the server
    (``await nursery.start(throttle.run)``).
    """

    def __init__(self, router: Router[User], window: float = WINDOW) -> None:
        self.router = router
        self.window = window
        self.rooms: dict[str, Coalescer[str, Move]] = {}
        #: Moves received, and batches published, so far.
        self.updates = 0
        self.batches = 0
        self._windows = 0
        self._pending = trio.Event()

    def update(self, room: str, user: str, move: Move) -> None:
        self.rooms.setdefault(room, Coalescer()).put(user, move)
        self.updates += 1
        self._pending.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._pending.wait()  # a quiet room costs nothing
            await trio.sleep(self.window)  # collect for one window...
            self._pending = trio.Event()
            await self.flush()  # ...then send what it coalesced

    async def flush(self) -> None:
        for room, pending in list(self.rooms.items()):
            if not pending:
                continue
            latest = pending.take()  # moves arriving from now on go to the next window
            self._windows += 1
            cursors = [
                Cursor(user, move.x, move.y, move.seq, merged)
                for user, (move, merged) in sorted(latest.items())
            ]
            await self.router.publish(
                f"room:{room}", CURSORS, CursorBatch(room, self._windows, cursors)
            )
            self.batches += 1


def build_app(window: float = WINDOW) -> tuple[Router[User], Throttle]:
    """The router and its throttle (run ``throttle.run`` next to the server)."""
    router: Router[User] = Router()
    throttle = Throttle(router, window)

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[Join, Joined, User]) -> None:
        if ctx.data.room is not None:
            await ctx.topics.unsubscribe(f"room:{ctx.data.room}")
        room = ctx.payload.room
        await ctx.topics.subscribe(f"room:{room}")
        ctx.assign_data(room=room)
        await ctx.reply(Joined(room, ctx.data.name, round(throttle.window * 1000)))

    @router.on(MOVE)
    async def move(ctx: Context[Move, User]) -> None:
        if ctx.data.room is None:
            raise WsKitError("FAILED_PRECONDITION", "Join a room first")
        throttle.update(ctx.data.room, ctx.data.name, ctx.payload)

    return router, throttle


async def main(port: int) -> None:
    router, throttle = build_app()
    async with trio.open_nursery() as nursery:
        await nursery.start(throttle.run)
        async with trio.open_nursery() as serving:
            server = await serving.start(
                serve(router, host="127.0.0.1", port=port, authenticate=authenticate)
            )
            print(f"throttling server listening on {server.url}", flush=True)
        nursery.cancel_scope.cancel()  # the server stopped (Ctrl-C): so does the throttle


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", "3050")))
