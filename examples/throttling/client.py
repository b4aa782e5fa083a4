"""Throttling, client side: send every cursor move, receive batches.

    python -m examples.throttling.client alice [room] [ws://127.0.0.1:3050] [moves]

moves alice's cursor around a circle, about 500 MOVEs a second, and prints the
batches the server sends back: about 20 a second, each with every user's latest
cursor and how many moves it stands for. Start a second one (bob) to see both.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import trio

from wskit_trio.client import Auth, Client, InboundMessage, open_client

from .server import CURSORS, JOIN, MOVE, Cursor, CursorBatch, Join, Joined, Move


class CursorBoard:
    """Everyone's cursor as this client knows it, from the batches it receives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cursors: dict[str, Cursor] = {}
        #: Every batch received, in order.
        self.batches: list[CursorBatch] = []
        self._changed = trio.Event()
        client.on(CURSORS, self._on_batch)

    async def join(self, room: str) -> Joined:
        return await self.client.request(JOIN, Join(room))

    def _on_batch(self, msg: InboundMessage[CursorBatch]) -> None:
        self.batches.append(msg.payload)
        for cursor in msg.payload.cursors:
            known = self.cursors.get(cursor.user)
            if known is None or cursor.seq > known.seq:
                self.cursors[cursor.user] = cursor
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, seqs: Mapping[str, int]) -> None:
        """Wait until each user's cursor has reached at least the given move."""
        while any(
            user not in self.cursors or self.cursors[user].seq < seq for user, seq in seqs.items()
        ):
            await self._changed.wait()


class Mover:
    """Sends this client's cursor moves, numbered 1, 2, 3, ... (every one of them:
    throttling is the server's job)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.last: Move | None = None

    async def move(self, x: int, y: int) -> Move:
        move = self.last = Move(x, y, self.last.seq + 1 if self.last else 1)
        await self.client.send(MOVE, move)
        return move


def on_circle(step: int, steps: int = 100, radius: int = 100) -> tuple[int, int]:
    angle = 2 * math.pi * step / steps
    return round(radius * math.cos(angle)), round(radius * math.sin(angle))


def show(batch: CursorBatch) -> str:
    cursors = ", ".join(
        f"{c.user}@({c.x},{c.y}) #{c.seq} [{c.merged} merged]" for c in batch.cursors
    )
    return f"batch {batch.window}: {cursors}"


async def main(user: str, room: str, url: str, moves: int) -> None:
    async with open_client(url, auth=Auth(token=lambda: user)) as client:
        board = CursorBoard(client)
        client.on(CURSORS, lambda msg: print(show(msg.payload), flush=True))
        joined = await board.join(room)
        print(f"{user} in {joined.room}; the server batches every {joined.window_ms} ms")
        mover = Mover(client)
        for step in range(moves):
            await mover.move(*on_circle(step))
            await trio.sleep(0.002)  # ~500 moves a second: far more than anyone needs
        if mover.last is not None:
            with trio.fail_after(5):
                await board.wait_for({user: mover.last.seq})  # our last move came back
        print(f"sent {moves} moves; received {len(board.batches)} batches")


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "board",
        args[2] if len(args) > 2 else "ws://127.0.0.1:3050",
        int(args[3]) if len(args) > 3 else 500,
    )
