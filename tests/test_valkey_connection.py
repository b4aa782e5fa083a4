"""The trio RESP client (wskit_trio.valkey._connection) against a real valkey-server."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
import trio.testing
from valkey_server import ValkeyServerProcess, free_port

from wskit_trio.valkey import (
    ValkeyAddress,
    ValkeyConnection,
    ValkeyError,
    ValkeySubscriber,
    ValkeyUnavailable,
    parse_url,
)
from wskit_trio.valkey._connection import pack_command

IO_TIMEOUT = 5.0


async def connect(server: ValkeyServerProcess, **options: object) -> ValkeyConnection:
    return await ValkeyConnection.connect(server.host, server.port, **options)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll real state (bounded) until ``predicate()`` holds."""
    with trio.fail_after(IO_TIMEOUT):
        while not predicate():  # noqa: ASYNC110 (state that no event announces)
            await trio.sleep(0.002)


async def valkey_sees(
    admin: ValkeyConnection, client_id: int, predicate: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    """Poll (bounded) Valkey's own view of client ``client_id`` (``CLIENT LIST``:
    ``flags`` holds ``b`` while it is blocked in a command, ``tot-net-in`` counts the
    bytes received from it) until ``predicate`` holds; returns that view."""
    with trio.fail_after(IO_TIMEOUT):
        while True:
            reply = await admin.execute("CLIENT", "LIST", "ID", client_id)
            fields = dict(field.split("=", 1) for field in reply.decode().split())
            if predicate(fields):
                return fields
            await trio.sleep(0.002)


def blocked(fields: dict[str, str]) -> bool:
    return "b" in fields["flags"]


def received(total: int) -> Callable[[dict[str, str]], bool]:
    """Whether Valkey has received ``total`` bytes from the client so far."""
    return lambda fields: int(fields["tot-net-in"]) == total


# -- URLs and packing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("valkey://localhost", ValkeyAddress("localhost", 6379, 0, None)),
        ("valkey://127.0.0.1:7000/3", ValkeyAddress("127.0.0.1", 7000, 3, None)),
        ("redis://h:1/2", ValkeyAddress("h", 1, 2, None)),
        ("valkey://:s%40cret@h:6380", ValkeyAddress("h", 6380, 0, "s@cret")),
        ("valkey://default:pw@h?db=5", ValkeyAddress("h", 6379, 5, "pw")),
        ("valkey://[::1]:7001/1", ValkeyAddress("::1", 7001, 1, None)),
    ],
)
def test_parse_url(url: str, expected: ValkeyAddress) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url", ["http://h:1", "valkeys://h", "valkey://h/x", "valkey://alice:pw@h", "valkey://h:x"]
)
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_pack_command_is_resp() -> None:
    assert pack_command(("SET", "k", 1.5, b"v", 3)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\nv\r\n$1\r\n3\r\n"
    )
    assert pack_command(("CONFIG GET", "x")).startswith(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET")
    with pytest.raises(TypeError):
        pack_command(("SET", "k", True))
    with pytest.raises(TypeError):
        pack_command(("SET", "k", None))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pack_command(())


# -- commands --------------------------------------------------------------------------


async def test_execute_returns_replies(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        try:
            assert await conn.execute("SET", "k", "v") == b"OK"
            assert await conn.execute("GET", "k") == b"v"
            assert await conn.execute("GET", "missing") is None
            assert await conn.execute("INCRBY", "n", 5) == 5
            assert await conn.execute("RPUSH", "l", "a", b"b", 3) == 3
            assert await conn.execute("LRANGE", "l", 0, -1) == [b"a", b"b", b"3"]
            big = "x" * 200_000
            assert await conn.execute("ECHO", big) == big.encode()
        finally:
            await conn.aclose()
        assert conn.closed


async def test_error_reply_raises_and_connection_stays_usable(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        with pytest.raises(ValkeyError) as info:
            await conn.execute("EVALSHA", "0" * 40, 0)
        assert info.value.message.startswith("NOSCRIPT")
        assert info.value.kind == "NOSCRIPT"
        with pytest.raises(ValkeyError):
            await conn.execute("NOT_A_COMMAND")
        assert await conn.execute("PING") == b"PONG"
        # An error inside an array reply stays a value (as valkey-py does for EXEC).
        reply = await conn.execute("EVAL", "return {1, redis.error_reply('BOOM x')}", 0)
        assert reply[0] == 1
        assert isinstance(reply[1], ValkeyError)
        assert reply[1].message == "BOOM x"
        await conn.aclose()


async def test_concurrent_callers_get_their_own_replies(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        replies: dict[int, object] = {}

        async def one(i: int) -> None:
            replies[i] = await conn.execute("ECHO", f"reply-{i}")

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
        assert replies == {i: f"reply-{i}".encode() for i in range(300)}
        # Commands run in call order: the INCRs below see each other in sequence.
        results: list[int] = []

        async def incr() -> None:
            results.append(await conn.execute("INCR", "seq"))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(incr)
        assert sorted(results) == list(range(1, 101))
        await conn.aclose()


async def test_cancelled_caller_leaves_its_reply_behind(valkey_server: ValkeyServerProcess) -> None:
    """A caller cancelled after its command went out must not get someone else's reply,
    nor hand its own to the next caller."""
    with trio.fail_after(IO_TIMEOUT):
        admin, conn = await connect(valkey_server), await connect(valkey_server)
        client_id = await conn.execute("CLIENT", "ID")
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def waiting() -> None:
                with scope:
                    await conn.execute("BLPOP", "nothing", "0.2")  # nil after 0.2 s
                    raise AssertionError("not cancelled")

            nursery.start_soon(waiting)
            await valkey_sees(admin, client_id, blocked)  # the command went out
            scope.cancel()
        assert await conn.execute("ECHO", "mine") == b"mine"
        assert await conn.execute("PING") == b"PONG"
        await conn.aclose()
        await admin.aclose()


async def test_cancelled_reader_hands_over_to_the_next_caller(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        admin, conn = await connect(valkey_server), await connect(valkey_server)
        client_id = await conn.execute("CLIENT", "ID")
        replies: list[object] = []
        async with trio.open_nursery() as nursery:
            reader_scope = trio.CancelScope()

            async def reader() -> None:
                with reader_scope:
                    await conn.execute("BLPOP", "nothing", "0.2")

            async def follower() -> None:
                replies.append(await conn.execute("ECHO", "follower"))

            nursery.start_soon(reader)
            # The reader's command is in Valkey (blocking): it waits for the reply.
            before = await valkey_sees(admin, client_id, blocked)
            nursery.start_soon(follower)
            # The follower's command is in Valkey too, queued behind it.
            echo = len(pack_command(("ECHO", "follower")))
            await valkey_sees(admin, client_id, received(int(before["tot-net-in"]) + echo))
            reader_scope.cancel()
        assert replies == [b"follower"]
        await conn.aclose()
        await admin.aclose()


async def test_random_cancellations_never_mix_up_replies(
    valkey_server: ValkeyServerProcess,
) -> None:
    rng = random.Random(1234)
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        wrong: list[tuple[int, object]] = []
        answered = patient = 0

        async def one(i: int, give_up: float | None) -> None:
            nonlocal answered
            with trio.move_on_after(give_up if give_up is not None else IO_TIMEOUT):
                reply = await conn.execute("ECHO", str(i))
                answered += 1
                if reply != str(i).encode():
                    wrong.append((i, reply))

        async with trio.open_nursery() as nursery:
            for i in range(500):
                give_up = rng.choice([None, None, 0, 0.0005, 0.002])
                patient += give_up is None
                nursery.start_soon(one, i, give_up)
                if i % 50 == 0:
                    await trio.sleep(0.001)
        assert wrong == []
        assert answered >= patient > 0
        assert await conn.execute("ECHO", "last") == b"last"
        await conn.aclose()


async def test_password_and_db(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(IO_TIMEOUT):
        admin = await connect(valkey_server)
        await admin.execute("SET", "where", "db0")
        await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
        conn = await connect(valkey_server, password="s3cret", db=2)
        assert await conn.execute("GET", "where") is None
        await conn.execute("SET", "where", "db2")
        other = await connect(valkey_server, password="s3cret")
        assert await other.execute("GET", "where") == b"db0"
        with pytest.raises(ValkeyError) as info:
            await connect(valkey_server, password="wrong")
        assert info.value.kind == "WRONGPASS"
        with pytest.raises(ValkeyError):  # NOAUTH
            await (await connect(valkey_server)).execute("GET", "where")
        for c in (admin, conn, other):
            await c.aclose()


# -- failures --------------------------------------------------------------------------


async def test_refused_connection_is_unavailable() -> None:
    with trio.fail_after(IO_TIMEOUT), pytest.raises(ValkeyUnavailable, match="cannot connect"):
        await ValkeyConnection.connect("127.0.0.1", free_port())


@pytest.fixture
def io_clock() -> trio.testing.MockClock:
    """Virtual time that only jumps when nothing moved for 10 ms of real time, so
    loopback bytes always arrive before a timeout fires."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_connect_timeout_is_unavailable(io_clock: trio.testing.MockClock) -> None:
    """A server that accepts TCP but never answers: AUTH times out (virtual time)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(ValkeyUnavailable, match="timed out"):
        await ValkeyConnection.connect("127.0.0.1", port, password="x", connect_timeout=3.0)
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.1)
    for listener in listeners:
        await listener.aclose()


async def test_lost_server_makes_every_call_unavailable(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        assert await conn.execute("PING") == b"PONG"
        valkey_server.kill()
        with pytest.raises(ValkeyUnavailable):
            await conn.execute("PING")
        assert conn.closed
        with pytest.raises(ValkeyUnavailable):
            await conn.execute("PING")
        await conn.aclose()


async def test_waiters_are_woken_when_the_connection_dies(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        admin, conn = await connect(valkey_server), await connect(valkey_server)
        client_id = await conn.execute("CLIENT", "ID")
        start = int((await valkey_sees(admin, client_id, lambda _: True))["tot-net-in"])
        outcomes: list[str] = []

        async def waiting() -> None:
            try:
                await conn.execute("BLPOP", "nothing", 0)  # would wait forever
            except ValkeyUnavailable:
                outcomes.append("unavailable")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiting)
            # All three commands are in Valkey: the first blocks, two wait behind it.
            sent = 3 * len(pack_command(("BLPOP", "nothing", 0)))
            await valkey_sees(admin, client_id, received(start + sent))
            valkey_server.kill()
        assert outcomes == ["unavailable"] * 3


# -- subscriber mode -------------------------------------------------------------------


async def test_subscriber_confirms_and_receives_in_order(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        conn = await connect(valkey_server)
        sub = await ValkeySubscriber.connect(valkey_server.host, valkey_server.port)
        got: list[tuple[bytes, bytes]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sub.listen, lambda ch, data: got.append((ch, data)))
            await sub.subscribe("a", b"b")
            assert sub.channels == {b"a", b"b"}
            # Confirmed means Valkey knows: a publish right after it is delivered.
            assert await conn.execute("PUBSUB", "NUMSUB", "a", "b") == [b"a", 1, b"b", 1]
            for i in range(20):
                await conn.execute("PUBLISH", "a" if i % 2 else "b", str(i))
            await wait_until(lambda: len(got) == 20)
            assert [int(data) for _, data in got] == list(range(20))
            assert got[1] == (b"a", b"1")
            await sub.unsubscribe("b")
            assert sub.channels == {b"a"}
            assert await conn.execute("PUBSUB", "NUMSUB", "b") == [b"b", 0]
            nursery.cancel_scope.cancel()
        assert sub.closed
        await conn.aclose()


async def test_subscriber_loss_ends_listen_and_wakes_waiters(
    valkey_server: ValkeyServerProcess,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        sub = await ValkeySubscriber.connect(valkey_server.host, valkey_server.port)
        valkey_server.kill()
        with pytest.raises(ValkeyUnavailable):
            await sub.listen(lambda ch, data: None)
        assert sub.channels == frozenset()
        with pytest.raises(ValkeyUnavailable):
            await sub.subscribe("late")
