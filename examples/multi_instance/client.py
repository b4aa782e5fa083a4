"""A chat member: connect to one instance, join, talk, see the whole chat.

    python -m examples.multi_instance.client alice [ws://127.0.0.1:3081]
    python -m examples.multi_instance.client bob ws://127.0.0.1:3082

Each line shows the instance the speaker is connected to, so you can see lines
cross from one instance to the other. :func:`open_member` and :class:`ChatMember`
are the reusable part.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from wskit_trio.client import Client, InboundMessage, open_client

from .server import CHAT_LINE, JOIN, SAY, ChatLine, Say, Welcome

__all__ = ["ChatMember", "open_member"]


class ChatMember:
    """One member's view of the chat: every ``CHAT_LINE`` in arrival order."""

    def __init__(self, client: Client, on_line: Callable[[ChatLine], None] | None) -> None:
        self.client = client
        #: The ``JOIN`` answer: who we are and which instance we are on.
        self.welcome: Welcome | None = None
        self.lines: list[ChatLine] = []
        self._on_line = on_line
        self._changed = trio.Event()
        client.on(CHAT_LINE, self._received)

    def _received(self, msg: InboundMessage[ChatLine]) -> None:
        self.lines.append(msg.payload)
        if self._on_line is not None:
            self._on_line(msg.payload)
        self._changed.set()
        self._changed = trio.Event()

    async def join(self) -> Welcome:
        """Join the chat; from the answer on, every line said anywhere reaches us."""
        self.welcome = await self.client.request(JOIN, timeout=10)
        return self.welcome

    async def say(self, text: str) -> None:
        await self.client.send(SAY, Say(text))

    async def wait_until(self, ready: Callable[[list[ChatLine]], bool]) -> None:
        """Return once ``ready(lines)`` holds (checked after each line arrives)."""
        while not ready(self.lines):
            await self._changed.wait()


@asynccontextmanager
async def open_member(
    url: str, user: str, *, on_line: Callable[[ChatLine], None] | None = None
) -> AsyncIterator[ChatMember]:
    """Connect to the instance at ``url`` as ``user`` and join the chat, for the block."""
    async with open_client(url, auth=lambda: user) as client:
        member = ChatMember(client, on_line)
        await member.join()
        yield member


async def main(user: str, url: str) -> None:
    def show(line: ChatLine) -> None:
        print(f"{line.user}@{line.via}: {line.text}", flush=True)

    async with open_member(url, user, on_line=show) as member:
        assert member.welcome is not None
        print(f"joined via instance {member.welcome.instance}; type to talk", flush=True)
        async for line in trio.wrap_file(sys.stdin):
            if text := line.strip():
                await member.say(text)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "ws://127.0.0.1:3081",
    )
