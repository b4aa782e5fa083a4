"""Positions in the typed client (delivery.md §11.4, §12.3).

First the sans-IO :class:`ClientSession`, synchronously: which frames carry a
position, which position it keeps per topic, and that schemas stay strict about
every other meta key. Then the client over real loopback sockets against a
scripted trio-websocket server that stamps ``meta.topic/offset/epoch`` by hand:
``client.position``, and ``on_connect``, which re-joins with it after every
(re)connect, ahead of the offline queue. Last, end to end against ``serve()``
with history: what was published while the client was away is recovered.
Virtual time (a ``MockClock`` that jumps once every task has been idle for 10 ms
of real time); every test is bounded by ``fail_after``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import _net
import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from _net import net_clock
from conftest import PING, Ping, Pong

from wskit_trio import History, Router, RpcContext, message, rpc, with_pubsub
from wskit_trio._errors import InboundValidationError
from wskit_trio._protocol.session import ClientSession, InboundMessage, Problem, Unhandled
from wskit_trio.client import Backoff, Client, ClientState, Position, Reconnect, open_client

__all__ = ["net_clock"]  # the fixture, re-exported so pytest finds it here

ROOM = "room:1"
LOBBY = "lobby"
NEWS = message("NEWS", Pong)


@attrs.frozen
class RoomMeta:
    room_id: str


#: A message whose schema extends meta: still strict about keys it does not declare.
SAID = message("SAID", Pong, meta=RoomMeta)


@attrs.frozen
class Join:
    """An app's JOIN: the room, and where its client left off (``None``: fresh)."""

    room: str
    since: Position | None = None


@attrs.frozen
class Joined:
    recovered: bool


JOIN = rpc("JOIN", Join, "JOINED", Joined)


def stamped(
    type: str,
    offset: Any,
    epoch: Any = "e1",
    topic: Any = ROOM,
    payload: Any = None,
    **meta: Any,
) -> dict[str, Any]:
    """A published frame as a subscription with positions receives it."""
    return {
        "type": type,
        "meta": {"topic": topic, "offset": offset, "epoch": epoch, **meta},
        "payload": payload if payload is not None else {"reply": f"#{offset}"},
    }


def news_session() -> ClientSession[str]:
    session: ClientSession[str] = ClientSession()
    session.listen(NEWS)
    session.listen(SAID)
    return session


def receive(session: ClientSession[str], frame: dict[str, Any]) -> Any:
    return session.receive(json.dumps(frame))


# -- ClientSession: which position it keeps -----------------------------------------------


def test_a_stamped_message_carries_its_position_and_advances_the_topics() -> None:
    session = news_session()
    assert session.position(ROOM) is None
    first = receive(session, stamped("NEWS", 1, timestamp=7))
    assert first == InboundMessage(
        "NEWS",
        Pong("#1"),
        {"timestamp": 7, "topic": ROOM, "offset": 1, "epoch": "e1"},
        ROOM,
        Position(1, "e1"),
    )
    assert session.position(ROOM) == Position(1, "e1")
    receive(session, stamped("NEWS", 2))
    assert session.position(ROOM) == Position(2, "e1")
    # Topics are tracked apart.
    receive(session, stamped("NEWS", 40, epoch="x", topic=LOBBY))
    assert (session.position(ROOM), session.position(LOBBY)) == (
        Position(2, "e1"),
        Position(40, "x"),
    )


def test_an_offset_that_is_not_newer_in_the_same_epoch_leaves_the_position() -> None:
    session = news_session()
    receive(session, stamped("NEWS", 5))
    for old in (5, 3, 0):
        late = receive(session, stamped("NEWS", old))
        # Still delivered, with its own position; the topic's stays.
        assert isinstance(late, InboundMessage)
        assert late.position == Position(old, "e1")
        assert session.position(ROOM) == Position(5, "e1")


def test_a_new_epoch_replaces_the_position() -> None:
    session = news_session()
    receive(session, stamped("NEWS", 900))
    receive(session, stamped("NEWS", 1, epoch="e2"))  # the history was lost: offsets restart
    assert session.position(ROOM) == Position(1, "e2")
    receive(session, stamped("NEWS", 2, epoch="e2"))
    assert session.position(ROOM) == Position(2, "e2")


def test_a_snapshot_position_replaces_what_was_seen_and_later_messages_advance_it() -> None:
    session = news_session()
    receive(session, stamped("NEWS", 900))
    # The app reloaded the topic's state, taken at offset 3 of a new epoch.
    session.set_position(ROOM, Position(3, "e2"))
    assert session.position(ROOM) == Position(3, "e2")
    receive(session, stamped("NEWS", 4, epoch="e2"))
    assert session.position(ROOM) == Position(4, "e2")
    session.set_position(ROOM, None)
    assert session.position(ROOM) is None


def test_a_message_without_position_keys_is_unaffected() -> None:
    session = news_session()
    receive(session, stamped("NEWS", 3))
    plain = receive(session, {"type": "NEWS", "meta": {"timestamp": 1}, "payload": {"reply": "x"}})
    assert plain == InboundMessage("NEWS", Pong("x"), {"timestamp": 1})
    assert (plain.topic, plain.position) == (None, None)
    assert session.position(ROOM) == Position(3, "e1")


MISSING = "required key missing: topic, offset, epoch go together"


@pytest.mark.parametrize(
    ("meta", "errors"),
    [
        (
            {"topic": ROOM, "offset": "5", "epoch": "e"},
            [("$.meta.offset", "expected integer, got string")],
        ),
        (
            {"topic": ROOM, "offset": True, "epoch": "e"},
            [("$.meta.offset", "expected integer, got boolean")],
        ),
        (
            {"topic": ROOM, "offset": 1.0, "epoch": "e"},
            [("$.meta.offset", "expected integer, got number")],
        ),
        ({"topic": ROOM, "offset": -1, "epoch": "e"}, [("$.meta.offset", "must not be negative")]),
        (
            {"topic": 1, "offset": 1, "epoch": None},
            [
                ("$.meta.topic", "expected string, got integer"),
                ("$.meta.epoch", "expected string, got null"),
            ],
        ),
        ({"topic": ROOM, "offset": 1}, [("$.meta.epoch", MISSING)]),
        ({"topic": ROOM}, [("$.meta.offset", MISSING), ("$.meta.epoch", MISSING)]),
    ],
)
def test_malformed_position_keys_are_a_problem(
    meta: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    session = news_session()
    receive(session, stamped("NEWS", 2))
    for type in ("NEWS", "NOBODY_LISTENS"):
        result = receive(session, {"type": type, "meta": meta, "payload": {"reply": "x"}})
        assert isinstance(result, Problem)
        assert isinstance(result.error, InboundValidationError)
        assert (result.error.type, result.error.errors) == (type, errors)
    assert session.position(ROOM) == Position(2, "e1")


def test_schemas_stay_strict_about_every_other_meta_key() -> None:
    session = news_session()
    # Extended meta: the position keys are not the schema's, and not unknown to it.
    said = receive(session, stamped("SAID", 1, roomId="r1"))
    assert isinstance(said, InboundMessage)
    assert said.meta == {"roomId": "r1", "topic": ROOM, "offset": 1, "epoch": "e1"}
    assert said.position == Position(1, "e1")
    for frame, errors in [
        (stamped("SAID", 2, roomId="r1", mood="x"), [("$.meta.mood", "unknown key")]),
        (stamped("SAID", 3), [("$.meta.roomId", "required key missing")]),
        (stamped("NEWS", 4, mood="x"), [("$.meta.mood", "unknown key")]),
        ({**stamped("NEWS", 5), "extra": 1}, [("$.extra", "unknown key")]),
        (
            stamped("NEWS", 6, payload={"reply": 6}),
            [("$.payload.reply", "expected string, got integer")],
        ),
    ]:
        result = receive(session, frame)
        assert isinstance(result, Problem), frame
        assert isinstance(result.error, InboundValidationError)
        assert result.error.errors == errors
    # The server-assigned keys are still dropped from what handlers see.
    spoofed = receive(session, stamped("NEWS", 7, clientId="spoof", timestamp=1))
    assert spoofed.meta == {"timestamp": 1, "topic": ROOM, "offset": 7, "epoch": "e1"}


def test_a_position_is_seen_even_on_a_message_nobody_can_use() -> None:
    """Re-joining from before an unhandled or invalid message would only replay it."""
    session = news_session()
    unhandled = stamped("TYPING", 1, payload={"who": "ann"})
    assert receive(session, unhandled) == Unhandled(unhandled)
    assert session.position(ROOM) == Position(1, "e1")
    assert isinstance(receive(session, stamped("NEWS", 2, payload={"reply": 2})), Problem)
    assert session.position(ROOM) == Position(2, "e1")


def test_a_position_field_goes_on_the_wire_as_offset_and_epoch() -> None:
    request = JOIN.request
    assert request.wire_payload(Join(ROOM, Position(42, "9f1c"))) == {
        "room": ROOM,
        "since": {"offset": 42, "epoch": "9f1c"},
    }
    assert request.wire_payload(Join(ROOM)) == {"room": ROOM, "since": None}
    assert request.wire_payload({"room": ROOM, "since": {"offset": 1, "epoch": "e"}}) == {
        "room": ROOM,
        "since": {"offset": 1, "epoch": "e"},
    }
    assert request.structure_payload is not None
    assert request.structure_payload({"room": ROOM, "since": {"offset": 42, "epoch": "e"}}) == (
        Join(ROOM, Position(42, "e"))
    )


# -- the client over real sockets ------------------------------------------------------------


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time over real loopback sockets (see ``_net.net_clock``); the scripted
    server is trio-websocket whatever the transport, so one run per test."""
    return trio.testing.MockClock(autojump_threshold=_net.AUTOJUMP_THRESHOLD)


#: Reconnect after a fixed second (virtual): time to queue frames while offline.
AFTER_A_SECOND = Reconnect(backoff=Backoff(initial=1.0, max=1.0, jitter="none"))

Script = Callable[[int, trio_websocket.WebSocketConnection], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    """A bare trio-websocket server running ``script(n, ws)`` for its ``n``-th
    connection (from 1); yields its URL."""
    numbers = itertools.count(1)

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with suppress(trio_websocket.ConnectionClosed):
            await script(next(numbers), ws)

    async with trio.open_nursery() as nursery:
        server: trio_websocket.WebSocketServer = await nursery.start(
            trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
        )
        yield f"ws://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def answer_join(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    """Read the next frame, a JOIN request, and answer it; returns the JOIN."""
    join: dict[str, Any] = await _net.recv_json(ws)
    assert join["type"] == "JOIN", join
    recovered = join["payload"]["since"] is not None
    cid = join["meta"]["correlationId"]
    reply = {"type": "JOINED", "meta": {"correlationId": cid}, "payload": {"recovered": recovered}}
    await _net.send_json(ws, reply)
    return join


async def publish(ws: trio_websocket.WebSocketConnection, *offsets: int, epoch: str = "e1") -> None:
    for offset in offsets:
        await _net.send_json(ws, stamped("NEWS", offset, epoch=epoch))


class NewsReader:
    """An ``on(NEWS)`` handler: what arrived, and a way to wait for it."""

    def __init__(self) -> None:
        self.seen: list[InboundMessage[Pong]] = []
        self._arrived = trio.Event()

    def __call__(self, news: InboundMessage[Pong]) -> None:
        self.seen.append(news)
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.seen) < count:
            await self._arrived.wait()


def frame_channel() -> tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]:
    """What the scripted server read, for the test to check in order."""
    return trio.open_memory_channel[Any](100)


async def test_the_client_keeps_the_latest_position_per_topic(
    clock: trio.testing.MockClock,
) -> None:
    async def script(number: int, ws: trio_websocket.WebSocketConnection) -> None:
        await _net.send_json(ws, stamped("NEWS", 7, epoch="x", topic=LOBBY))
        await publish(ws, 1, 2, 3)
        await publish(ws, 2)  # a duplicate: delivered, the position stays
        await trio.sleep_forever()

    news = NewsReader()
    with trio.fail_after(30):
        async with scripted_server(script) as url, open_client(url) as client:
            client.on(NEWS, news)
            await news.wait_for(5)
            assert client.position(ROOM) == Position(3, "e1")
            assert client.position(LOBBY) == Position(7, "x")
            assert client.position("elsewhere") is None
    assert [(m.topic, m.position) for m in news.seen] == [
        (LOBBY, Position(7, "x")),
        (ROOM, Position(1, "e1")),
        (ROOM, Position(2, "e1")),
        (ROOM, Position(3, "e1")),
        (ROOM, Position(2, "e1")),
    ]


async def test_on_connect_rejoins_with_the_position_after_every_connect(
    clock: trio.testing.MockClock,
) -> None:
    """The server cuts the first connection off (1013, a slow consumer); the client
    reconnects, and ``on_connect`` re-joins with where it left off before the
    frames queued while offline go out."""
    to_test, from_server = frame_channel()

    async def script(number: int, ws: trio_websocket.WebSocketConnection) -> None:
        await to_test.send(await answer_join(ws))
        if number == 1:
            await publish(ws, 1, 2, 3)
            await ws.aclose(1013, "slow consumer")
            return
        await to_test.send(await _net.recv_json(ws))  # what was queued while offline
        await publish(ws, 4)
        await trio.sleep_forever()

    hook_saw: list[tuple[ClientState, Position | None, Joined]] = []

    async def rejoin(client: Client) -> None:
        since = client.position(ROOM)
        joined = await client.request(JOIN, Join(ROOM, since), timeout=5)
        hook_saw.append((client.state, since, joined))

    news = NewsReader()
    with trio.fail_after(60):
        async with (
            scripted_server(script) as url,
            open_client(url, reconnect=AFTER_A_SECOND, on_connect=rejoin) as client,
        ):
            client.on(NEWS, news)
            # The first connect joined before the block started.
            assert hook_saw == [(ClientState.CONNECTING, None, Joined(recovered=False))]
            first_join = await from_server.receive()
            assert first_join["payload"] == {"room": ROOM, "since": None}

            await client.wait_state(ClientState.RECONNECTING)
            assert client.position(ROOM) == Position(3, "e1")  # survives the lost connection
            assert await client.send(PING, Ping("queued while offline")) is True

            rejoined = await from_server.receive()
            assert rejoined["payload"] == {"room": ROOM, "since": {"offset": 3, "epoch": "e1"}}
            queued = await from_server.receive()
            assert (queued["type"], queued["payload"]) == ("PING", {"text": "queued while offline"})
            await news.wait_for(4)
            assert client.position(ROOM) == Position(4, "e1")
            assert client.statistics().connects == 2
    assert hook_saw == [
        (ClientState.CONNECTING, None, Joined(recovered=False)),
        (ClientState.CONNECTING, Position(3, "e1"), Joined(recovered=True)),
    ]
    assert [m.position for m in news.seen] == [Position(n, "e1") for n in (1, 2, 3, 4)]


async def test_what_on_connect_and_its_tasks_send_goes_out_before_the_queue(
    clock: trio.testing.MockClock,
) -> None:
    to_test, from_server = frame_channel()

    async def script(number: int, ws: trio_websocket.WebSocketConnection) -> None:
        for _ in range(2):
            await to_test.send(await answer_join(ws))
        await to_test.send(await _net.recv_json(ws))
        await trio.sleep_forever()

    async def join_both(client: Client) -> None:
        async with trio.open_nursery() as nursery:
            for room in (ROOM, LOBBY):
                nursery.start_soon(client.request, JOIN, Join(room))

    with trio.fail_after(30):
        async with (
            scripted_server(script) as url,
            open_client(url, wait_open=False, on_connect=join_both) as client,
        ):
            # Sent before any connection: queued, flushed once on_connect is done.
            assert await client.send(PING, Ping("early")) is True
            joins = [await from_server.receive() for _ in range(2)]
            assert sorted(join["payload"]["room"] for join in joins) == sorted([ROOM, LOBBY])
            queued = await from_server.receive()
            assert (queued["type"], queued["payload"]) == ("PING", {"text": "early"})


async def test_on_connect_cut_off_by_a_lost_connection_runs_again_on_the_next(
    clock: trio.testing.MockClock,
) -> None:
    """Its JOIN is never queued for later: the next connection's hook sends its own."""
    to_test, from_server = frame_channel()
    errors: list[Exception] = []

    async def script(number: int, ws: trio_websocket.WebSocketConnection) -> None:
        if number == 1:
            await to_test.send(await _net.recv_json(ws))
            await ws.aclose(1012, "restarting")  # before answering the JOIN
            return
        await to_test.send(await answer_join(ws))
        await to_test.send(await _net.recv_json(ws))
        await trio.sleep_forever()

    calls = 0

    async def rejoin(client: Client) -> None:
        nonlocal calls
        calls += 1
        await client.request(JOIN, Join(ROOM, client.position(ROOM)), timeout=5)

    with trio.fail_after(60):
        async with (
            scripted_server(script) as url,
            open_client(
                url, reconnect=AFTER_A_SECOND, on_connect=rejoin, on_error=errors.append
            ) as client,
        ):
            assert client.state is ClientState.OPEN
            await client.send(PING, Ping("after"))
            frames = [await from_server.receive() for _ in range(3)]
    assert calls == 2
    assert [frame["type"] for frame in frames] == ["JOIN", "JOIN", "PING"]
    assert errors == []


async def test_an_on_connect_that_fails_is_reported_and_the_client_opens(
    clock: trio.testing.MockClock,
) -> None:
    to_test, from_server = frame_channel()
    errors: list[Exception] = []

    async def script(number: int, ws: trio_websocket.WebSocketConnection) -> None:
        await to_test.send(await _net.recv_json(ws))
        await trio.sleep_forever()

    async def broken(client: Client) -> None:
        raise RuntimeError("cannot re-join")

    with trio.fail_after(30):
        async with (
            scripted_server(script) as url,
            open_client(url, on_connect=broken, on_error=errors.append) as client,
        ):
            assert client.state is ClientState.OPEN
            await client.send(PING, Ping("still works"))
            sent = await from_server.receive()
    assert [str(error) for error in errors] == ["cannot re-join"]
    assert sent["payload"] == {"text": "still works"}


# -- end to end: serve() with history -------------------------------------------------------


@attrs.frozen
class Recovered:
    recovered: bool
    replayed: int


SUBSCRIBE = rpc("SUBSCRIBE", Join, "SUBSCRIBED", Recovered)


def recovering_router() -> Router[Any]:
    """SUBSCRIBE with ``since``: the subscription with positions recovers from it."""
    router: Router[Any] = Router()
    router.plugin(with_pubsub(history=History()))

    @router.rpc(SUBSCRIBE)
    async def subscribe(ctx: RpcContext[Join, Recovered, Any]) -> None:
        since = ctx.payload.since
        recovery = await ctx.topics.subscribe(ctx.payload.room, positions=True, since=since)
        await ctx.reply(Recovered(recovery.recovered, recovery.replayed))

    return router


async def test_a_client_recovers_what_it_missed_while_disconnected(
    net_clock: trio.testing.MockClock,
) -> None:
    """The server drops the connection; what is published meanwhile is kept in the
    topic's history, and ``on_connect`` re-subscribes from ``client.position``: the
    handlers see every message once, in order."""
    recoveries: list[Recovered] = []

    async def resubscribe(client: Client) -> None:
        since = client.position(ROOM)
        recoveries.append(await client.request(SUBSCRIBE, Join(ROOM, since), timeout=5))

    router = recovering_router()
    news = NewsReader()
    with trio.fail_after(60):
        async with (
            _net.running_server(router) as server,
            open_client(server.url, reconnect=AFTER_A_SECOND, on_connect=resubscribe) as client,
        ):
            client.on(NEWS, news)
            for n in (1, 2, 3):
                assert (await server.publish(ROOM, NEWS, Pong(f"#{n}"))).ok
            await news.wait_for(3)
            first = news.seen[0].position
            assert first is not None
            epoch = first.epoch
            assert client.position(ROOM) == Position(3, epoch)

            for conn in list(server.connections):
                await conn.shutdown(0)
            await client.wait_state(ClientState.RECONNECTING)
            for n in (4, 5):
                assert (await server.publish(ROOM, NEWS, Pong(f"#{n}"))).ok
            await news.wait_for(5)
            assert (await server.publish(ROOM, NEWS, Pong("#6"))).ok
            await news.wait_for(6)
            assert client.position(ROOM) == Position(6, epoch)
    assert recoveries == [Recovered(False, 0), Recovered(True, 2)]
    assert [m.payload.reply for m in news.seen] == [f"#{n}" for n in range(1, 7)]
    assert [m.position for m in news.seen] == [Position(n, epoch) for n in range(1, 7)]
