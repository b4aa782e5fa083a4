"""A tiny chat client: joins a room, prints what arrives, sends what you type.

    python -m examples.quickstart.client alice [room] [ws://127.0.0.1:3000]

Frames are written by hand here to show the wire format (protocol.md); typed
clients use ``wskit_trio.client``.
"""

from __future__ import annotations

import json
import sys

import trio
from trio_websocket import ConnectionClosed, open_websocket_url


async def main(user: str, room: str, url: str) -> None:
    async with open_websocket_url(f"{url}/?access_token={user}") as ws:
        await ws.send_message(json.dumps({"type": "JOIN_ROOM", "payload": {"roomId": room}}))

        async def show() -> None:
            try:
                while True:
                    print(await ws.get_message(), flush=True)
            except ConnectionClosed:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            stdin = trio.wrap_file(sys.stdin)
            async for line in stdin:
                text = line.strip()
                if text:
                    frame = {"type": "SEND_MESSAGE", "payload": {"text": text}}
                    await ws.send_message(json.dumps(frame))
            await ws.send_message(json.dumps({"type": "LEAVE_ROOM"}))
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "lobby",
        args[2] if len(args) > 2 else "ws://127.0.0.1:3000",
    )
