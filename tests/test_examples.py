"""The quick-start chat does what its README promises, end to end; and the examples'
one commands (``python -m examples.<name>.server``) serve and stop cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from _example_cmd import example_server
from _net import net_clock

from examples.quickstart import server as chat
from examples.quickstart.client import Chat, open_chat
from examples.rate_limiting import server as limits
from wskit_trio import ErrorCode, Server, UpgradeRejected, serve
from wskit_trio.client import ConnectError, InboundMessage, RpcError, open_client
from wskit_trio.testing import open_test_app

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

# -- in memory, under the mock clock -------------------------------------------------


async def test_quickstart_chat_in_memory(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(5):
        await _chat_scenario()


async def _chat_scenario() -> None:
    async with open_test_app(chat.build_router(), authenticate=chat.authenticate) as app:
        alice = await app.connect(path="/?access_token=alice")
        bob = await app.connect(path="/", subprotocols=["bearer.bob"])
        await alice.send(chat.JOIN_ROOM, chat.JoinRoom("lobby"))
        assert await alice.receive_payload(chat.USER_JOINED) == chat.RoomEvent("lobby", "alice")
        await bob.send(chat.JOIN_ROOM, chat.JoinRoom("lobby"))
        assert await alice.receive_payload(chat.USER_JOINED) == chat.RoomEvent("lobby", "bob")
        assert await bob.receive_payload(chat.USER_JOINED) == chat.RoomEvent("lobby", "bob")

        await bob.send(chat.SEND_MESSAGE, chat.SendMessage("hi"))
        expected = chat.RoomMessage("lobby", "bob", "hi")
        assert await alice.receive_payload(chat.ROOM_MESSAGE) == expected
        assert await bob.receive_payload(chat.ROOM_MESSAGE) == expected

        cid = await alice.request(chat.WHO, None)
        reply = await alice.receive()
        assert reply.type == "MEMBERS" and reply.correlation_id == cid
        assert reply.payload == {"roomId": "lobby", "users": ["alice", "bob"]}

        await bob.close()
        assert await alice.receive_payload(chat.USER_LEFT) == chat.RoomEvent("lobby", "bob")

        await alice.send(chat.LEAVE_ROOM)  # unsubscribed first: her own USER_LEFT skips her
        await alice.send(chat.SEND_MESSAGE, chat.SendMessage("anyone?"))
        error = await alice.receive_error()
        assert error.error_code == "FAILED_PRECONDITION"

        with pytest.raises(UpgradeRejected) as rejected:
            await app.connect(path="/?access_token=no%20spaces")
        assert rejected.value.status == 401


async def test_quickstart_rate_limit_in_memory(autojump_clock: trio.testing.MockClock) -> None:
    """Per user: a burst of ``capacity`` passes, the next is refused with a hint that
    is exactly long enough; another user (even in the same room) is unaffected."""
    with trio.fail_after(5):
        router = chat.build_router(capacity=2, tokens_per_second=1)
        async with open_test_app(router, authenticate=chat.authenticate) as app:
            alice = await app.connect(path="/?access_token=alice")
            bob = await app.connect(path="/?access_token=bob")
            await alice.send(chat.JOIN_ROOM, chat.JoinRoom("lobby"))
            await alice.receive_payload(chat.USER_JOINED)
            await bob.send(chat.JOIN_ROOM, chat.JoinRoom("lobby"))
            await alice.receive_payload(chat.USER_JOINED)
            await bob.receive_payload(chat.USER_JOINED)
            for i in range(3):
                await alice.send(chat.SEND_MESSAGE, chat.SendMessage(f"a{i}"))
            assert (await alice.receive_payload(chat.ROOM_MESSAGE)).text == "a0"
            assert (await alice.receive_payload(chat.ROOM_MESSAGE)).text == "a1"
            error = await alice.receive_error()
            assert error.error_code == "RESOURCE_EXHAUSTED"
            payload = error.payload
            assert payload["details"] == {"cost": 1, "capacity": 2, "remaining": 0}
            assert payload["retryable"] is True
            assert payload["retryAfterMs"] == 1000
            await bob.send(chat.SEND_MESSAGE, chat.SendMessage("b0"))  # bob's own bucket
            seen = [(await bob.receive_payload(chat.ROOM_MESSAGE)).text for _ in range(3)]
            assert seen == ["a0", "a1", "b0"]  # a2 was refused: its handler never ran

            await trio.sleep(payload["retryAfterMs"] / 1000)
            await alice.send(chat.SEND_MESSAGE, chat.SendMessage("a2"))
            assert (await bob.receive_payload(chat.ROOM_MESSAGE)).text == "a2"


# -- over real sockets, with the typed client ---------------------------------------


@asynccontextmanager
async def chat_server(capacity: int, tokens_per_second: float) -> AsyncIterator[Server[object]]:
    router = chat.build_router(capacity=capacity, tokens_per_second=tokens_per_second)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(
                router,
                host="127.0.0.1",
                port=0,
                authenticate=chat.authenticate,
                handle_signals=False,
            )
        )
        yield server
        await server.aclose(grace=0)


async def test_quickstart_two_clients_see_each_other_in_order() -> None:
    """Alice and Bob talk at the same time: each sees all of both's messages, exactly
    once, each sender's in the order sent, and both see the one same order."""
    n = 15
    with trio.fail_after(10):
        async with (
            chat_server(capacity=100, tokens_per_second=100) as server,
            open_chat(server.url, "alice") as alice,
            open_chat(server.url, "bob") as bob,
        ):
            await alice.join("lobby")
            await bob.join("lobby")
            assert await alice.who() == chat.Members("lobby", ["alice", "bob"])
            assert ("joined", chat.RoomEvent("lobby", "bob")) in alice.events

            async def talk(member: Chat) -> None:
                for i in range(n):
                    echo = await member.say(f"{member.user} {i}")
                    assert echo == chat.RoomMessage("lobby", member.user, f"{member.user} {i}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(talk, alice)
                nursery.start_soon(talk, bob)
            # A last word from each after all that: whatever was on its way has arrived.
            await alice.say("bye")
            await bob.say("bye")
            await alice.wait_until(lambda: len(alice.messages) >= 2 * n + 2)

            assert alice.messages == bob.messages  # one room, one order
            for name in ("alice", "bob"):
                said = [m.text for m in alice.messages if m.user == name]
                assert said == [f"{name} {i}" for i in range(n)] + ["bye"]  # all, once, in order
            assert len(alice.messages) == 2 * n + 2
            assert alice.refusals == bob.refusals == []


async def test_quickstart_rate_limit_hint_is_on_the_wire_and_obeyed(
    net_clock: trio.testing.MockClock,
) -> None:
    """Over the per-user limit the server answers RESOURCE_EXHAUSTED with retryAfterMs;
    waiting that long is enough; ``Chat.say`` obeys it and loses nothing."""
    capacity, rate = 3, 5.0  # a token every 200 ms
    with trio.fail_after(10):
        async with chat_server(capacity, rate) as server, open_chat(server.url, "bob") as bob:
            await bob.join("lobby")
            errors: list[Exception] = []
            got_error = trio.Event()

            def on_error(exc: Exception) -> None:
                errors.append(exc)
                got_error.set()

            # Alice on a bare typed client: four messages at once, one bucket of three.
            async with open_client(server.url, auth=lambda: "alice", on_error=on_error) as alice:
                joined = trio.Event()

                def on_joined(msg: InboundMessage[chat.RoomEvent]) -> None:
                    if msg.payload.user == "alice":
                        joined.set()

                alice.on(chat.USER_JOINED, on_joined)
                await alice.send(chat.JOIN_ROOM, chat.JoinRoom("lobby"))
                await joined.wait()
                for i in range(capacity + 1):
                    await alice.send(chat.SEND_MESSAGE, chat.SendMessage(f"a{i}"))
                await got_error.wait()
                [error] = errors
                assert isinstance(error, RpcError)
                assert error.code == ErrorCode.RESOURCE_EXHAUSTED and error.retryable
                assert error.details == {"cost": 1, "capacity": capacity, "remaining": 0}
                assert error.retry_after_ms is not None
                assert 0 < error.retry_after_ms <= 1000 / rate
                # Alice's burst did not touch Bob's bucket.
                for i in range(capacity):
                    await bob.say(f"b{i}")
                assert bob.refusals == []

                await trio.sleep(error.retry_after_ms / 1000)  # as told, and no longer
                await alice.send(chat.SEND_MESSAGE, chat.SendMessage(f"a{capacity}"))
                await bob.wait_until(lambda: f"a{capacity}" in [m.text for m in bob.messages])
                assert errors == [error]  # the one wait was enough

            # Chat.say obeys the hint by itself: twice the burst, all delivered, in order.
            async with open_chat(server.url, "carol") as carol:
                await carol.join("lobby")
                for i in range(2 * capacity):
                    await carol.say(f"c{i}")
                assert len(carol.refusals) >= capacity - 1
                assert all(r.code == ErrorCode.RESOURCE_EXHAUSTED for r in carol.refusals)
                said = [m.text for m in carol.messages if m.user == "carol"]
                assert said == [f"c{i}" for i in range(2 * capacity)]

            texts = [m.text for m in bob.messages if m.user == "alice"]
            assert texts == [f"a{i}" for i in range(capacity + 1)]  # a3 once: after the wait


async def test_quickstart_rejects_a_bad_token() -> None:
    with trio.fail_after(10):
        async with chat_server(5, 1) as server:
            for token in ("no spaces", ""):
                with pytest.raises(ConnectError) as refused:
                    async with open_chat(server.url, token):
                        pass  # pragma: no cover
                assert refused.value.status == 401


# -- the README's one command ------------------------------------------------------


async def _talk_quickstart(url: str) -> None:
    async with open_chat(url, "carol") as carol:
        await carol.join("r1")
        assert await carol.say("hello") == chat.RoomMessage("r1", "carol", "hello")
        assert await carol.who() == chat.Members("r1", ["carol"])


async def _talk_rate_limiting(url: str) -> None:
    async with open_client(url, auth=lambda: "carol") as client:
        posted = await client.request(limits.POST, limits.Post("hello"), timeout=5)
        assert posted == limits.Posted(user="carol", text="hello")


@pytest.mark.parametrize(
    ("module", "name", "talk"),
    [
        ("examples.quickstart.server", "quickstart", _talk_quickstart),
        ("examples.rate_limiting.server", "rate-limiting", _talk_rate_limiting),
    ],
)
async def test_example_runs_with_its_one_command(
    module: str, name: str, talk: Callable[[str], Awaitable[None]]
) -> None:
    """``python -m <module>`` serves, talks, and stops cleanly on Ctrl-C (exit 0)."""
    async with example_server(module, name) as url:
        with trio.fail_after(20):
            await talk(url)
