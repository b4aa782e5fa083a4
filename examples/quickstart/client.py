"""The quick-start chat client, on the typed ``wskit_trio.client``.

    python -m examples.quickstart.client alice [room] [ws://127.0.0.1:3000]

joins ``room`` (default ``lobby``) as ``alice``, prints what the room says, and
sends each line you type. :func:`open_chat` and :class:`Chat` are the reusable
part: ``join``, ``say``, ``who`` and ``leave``, with typed handlers for what the
room sends. ``say`` returns once the room has the message; when the server's
per-user rate limit refuses it (``RESOURCE_EXHAUSTED``), ``say`` waits the
``retryAfterMs`` the server asked for and sends it again.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from wskit_trio import ErrorCode
from wskit_trio.client import Auth, Client, InboundMessage, RpcError, open_client

from .server import (
    JOIN_ROOM,
    LEAVE_ROOM,
    ROOM_MESSAGE,
    SEND_MESSAGE,
    USER_JOINED,
    USER_LEFT,
    WHO,
    JoinRoom,
    Members,
    RoomEvent,
    RoomMessage,
    SendMessage,
)

__all__ = ["Chat", "open_chat"]

#: What a :class:`Chat` waits for after sending: the room's answer, or an error.
Answer = RoomMessage | RoomEvent | RpcError


class Chat:
    """One user's chat session on one connection (made by :func:`open_chat`).

    Everything the room sends is kept in order: ``messages`` (``ROOM_MESSAGE``) and
    ``events`` (``("joined" | "left", RoomEvent)``), and passed to ``on_line`` as a
    printable line. One action (join, say, leave) runs at a time, so each answer
    (the room echoing it, or an ``ERROR``) belongs to the action that waits for it:
    a connection's messages are handled in arrival order and answered in order.
    """

    def __init__(self, user: str, on_line: Callable[[str], None] | None = None) -> None:
        self.user = user
        self.room: str | None = None
        self.messages: list[RoomMessage] = []
        self.events: list[tuple[str, RoomEvent]] = []
        #: The rate-limit refusals ``say`` obeyed (each with ``retry_after_ms``).
        self.refusals: list[RpcError] = []
        self._on_line = on_line
        self._client: Client | None = None
        self._turn = trio.Lock()
        self._expect: Callable[[Answer], bool] | None = None
        self._answer: Answer | None = None
        self._changed = trio.Event()

    @property
    def client(self) -> Client:
        assert self._client is not None, "use open_chat()"
        return self._client

    def _attach(self, client: Client) -> None:
        self._client = client
        client.on(ROOM_MESSAGE, self._on_message)
        client.on(USER_JOINED, self._on_joined)
        client.on(USER_LEFT, self._on_left)

    # -- what arrives ---------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _offer(self, answer: Answer) -> None:
        if self._expect is not None and self._answer is None and self._expect(answer):
            self._answer = answer
        self._notify()

    def _line(self, text: str) -> None:
        if self._on_line is not None:
            self._on_line(text)

    def _on_message(self, msg: InboundMessage[RoomMessage]) -> None:
        self.messages.append(msg.payload)
        self._line(f"[{msg.payload.room_id}] {msg.payload.user}: {msg.payload.text}")
        self._offer(msg.payload)

    def _on_joined(self, msg: InboundMessage[RoomEvent]) -> None:
        self.events.append(("joined", msg.payload))
        self._line(f"[{msg.payload.room_id}] {msg.payload.user} joined")
        self._offer(msg.payload)

    def _on_left(self, msg: InboundMessage[RoomEvent]) -> None:
        self.events.append(("left", msg.payload))
        self._line(f"[{msg.payload.room_id}] {msg.payload.user} left")
        self._notify()

    def on_error(self, exc: Exception) -> None:
        """The client's ``on_error``: an ``ERROR`` frame answers the current action."""
        if isinstance(exc, RpcError) and self._expect is not None and self._answer is None:
            self._answer = exc
            self._notify()
        else:
            self._line(f"! {exc}")

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` holds (checked after every message and event)."""
        while not ready():
            await self._changed.wait()

    async def _exchange(
        self, sending: Awaitable[object], expect: Callable[[Answer], bool]
    ) -> RoomMessage | RoomEvent:
        """Send (``sending`` is the un-awaited send), then wait for the answer that
        ``expect`` recognizes, or the error the server answers instead."""
        self._expect, self._answer = expect, None
        try:
            await sending
            await self.wait_until(lambda: self._answer is not None)
        finally:
            self._expect = None
        answer, self._answer = self._answer, None
        if isinstance(answer, RpcError):
            raise answer
        assert answer is not None
        return answer

    # -- actions --------------------------------------------------------------------

    async def join(self, room: str) -> None:
        """Join ``room`` (leaving the current one); returns once the room announced
        us, so everything said in it from then on reaches us."""
        async with self._turn:
            await self._exchange(
                self.client.send(JOIN_ROOM, JoinRoom(room)),
                lambda a: isinstance(a, RoomEvent) and a.user == self.user and a.room_id == room,
            )
            self.room = room

    async def say(self, text: str, *, max_attempts: int = 10) -> RoomMessage:
        """Send ``text`` to the room; returns the room's copy of it.

        Refused by the rate limit (``RESOURCE_EXHAUSTED``), it waits the server's
        ``retryAfterMs`` and sends again, up to ``max_attempts`` sends in all. Other
        errors (``FAILED_PRECONDITION``: not in a room) raise :class:`RpcError`.
        """
        async with self._turn:
            attempt = 1
            while True:
                try:
                    answer = await self._exchange(
                        self.client.send(SEND_MESSAGE, SendMessage(text)),
                        lambda a: (
                            isinstance(a, RoomMessage) and a.user == self.user and a.text == text
                        ),
                    )
                except RpcError as err:
                    if (
                        err.code != ErrorCode.RESOURCE_EXHAUSTED
                        or err.retry_after_ms is None
                        or attempt >= max_attempts
                    ):
                        raise
                    self.refusals.append(err)
                    self._line(f"(rate limited: sending again in {err.retry_after_ms} ms)")
                    await trio.sleep(err.retry_after_ms / 1000)
                    attempt += 1
                    continue
                assert isinstance(answer, RoomMessage)
                return answer

    async def who(self) -> Members:
        """Who is in our room (an RPC: the reply is typed ``Members``)."""
        return await self.client.request(WHO, timeout=5)

    async def leave(self) -> None:
        """Leave the room (the others see ``USER_LEFT``; we get no answer)."""
        async with self._turn:
            await self.client.send(LEAVE_ROOM)
            self.room = None


@asynccontextmanager
async def open_chat(
    url: str, user: str, *, on_line: Callable[[str], None] | None = None
) -> AsyncIterator[Chat]:
    """Connect to the chat at ``url`` as ``user`` (the token) for the block.

    A refused token raises :class:`~wskit_trio.client.ConnectError` with
    ``status == 401``.
    """
    chat = Chat(user, on_line)
    async with open_client(url, auth=Auth(token=lambda: user), on_error=chat.on_error) as client:
        chat._attach(client)
        yield chat


async def main(user: str, room: str, url: str) -> None:
    async with open_chat(url, user, on_line=lambda line: print(line, flush=True)) as chat:
        await chat.join(room)
        print(f"in {room} with {', '.join((await chat.who()).users)}; type to talk", flush=True)
        async for line in trio.wrap_file(sys.stdin):
            if text := line.strip():
                await chat.say(text)
        await chat.leave()


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "lobby",
        args[2] if len(args) > 2 else "ws://127.0.0.1:3000",
    )
