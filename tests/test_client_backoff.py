"""The client's reconnect schedule: the pure backoff maths, the offline queue, the
delays the client really waits, and what closing raises (``AlreadyClosed`` after the
client's own ``aclose()``, ``ConnectionClosed`` when the peer is gone), under
``autojump_clock`` (a fake socket opener stands in for the network, so every
attempt takes zero virtual time)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from conftest import ECHO, Ping
from hypothesis import given
from hypothesis import strategies as st

from wskit_trio import message
from wskit_trio.client import (
    AlreadyClosed,
    Backoff,
    Client,
    ClientState,
    ConnectError,
    ConnectionClosed,
    FrameDropped,
    Reconnect,
    open_client,
)
from wskit_trio.client import _supervisor as supervisor_module
from wskit_trio.client._queue import OfflineQueue, Pushed

LEAVE = message("LEAVE")

# -- Backoff ---------------------------------------------------------------------------


def test_default_schedule_doubles_from_300ms_to_a_10s_cap() -> None:
    backoff = Backoff(jitter="none")
    delays = [backoff.delay(n) for n in range(1, 10)]
    assert delays == pytest.approx([0.3, 0.6, 1.2, 2.4, 4.8, 9.6, 10.0, 10.0, 10.0])
    assert [Backoff().ceiling(n) for n in range(1, 10)] == delays


def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    draws = iter([0.0, 0.5, 0.999])
    backoff = Backoff(initial=1.0, max=8.0, random=lambda: next(draws))
    assert [backoff.delay(4) for _ in range(3)] == pytest.approx([0.0, 4.0, 7.992])


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    initial=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
)
def test_jitter_bounds(attempt: int, draw: float, initial: float, cap: float) -> None:
    backoff = Backoff(initial=initial, max=cap, random=lambda: draw)
    ceiling = min(cap, initial * 2.0 ** min(attempt - 1, 64))
    assert backoff.ceiling(attempt) == ceiling
    delay = backoff.delay(attempt)
    assert 0.0 <= delay <= ceiling


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        Backoff().delay(0)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=-1)
    with pytest.raises(ValueError, match="max"):
        Backoff(max=float("nan"))


# -- the offline queue -----------------------------------------------------------------


def test_queue_drop_newest_refuses_when_full() -> None:
    queue: OfflineQueue[str] = OfflineQueue("drop_newest", 2)
    assert [queue.push(x) for x in "abc"] == [Pushed(True), Pushed(True), Pushed(False)]
    assert list(queue) == ["a", "b"]
    assert queue.dropped == 1


def test_queue_drop_oldest_evicts() -> None:
    queue: OfflineQueue[str] = OfflineQueue("drop_oldest", 2)
    assert [queue.push(x) for x in "abcd"] == [
        Pushed(True),
        Pushed(True),
        Pushed(True, "a"),
        Pushed(True, "b"),
    ]
    assert list(queue) == ["c", "d"]
    assert queue.dropped == 2


def test_queue_off_queues_nothing() -> None:
    queue: OfflineQueue[str] = OfflineQueue("off")
    assert queue.push("a") == Pushed(False)
    assert len(queue) == 0


def test_queue_pop_push_front_discard_clear() -> None:
    queue: OfflineQueue[str] = OfflineQueue("drop_newest", 3)
    for x in "abc":
        queue.push(x)
    assert queue.pop() == "a"
    queue.push_front("a")
    queue.discard("b")
    queue.discard("zzz")
    assert queue.clear() == ["a", "c"]
    assert queue.pop() is None
    with pytest.raises(ValueError):
        OfflineQueue("sometimes")  # type: ignore[arg-type]


# -- the delays the client waits ---------------------------------------------------------


class FakeSocket:
    """An open connection that stays open until :meth:`drop`."""

    subprotocol = None
    extensions: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._dropped = trio.Event()

    async def receive(self) -> str:
        await self._dropped.wait()
        raise ConnectionClosed(1006, "dropped")

    async def send(self, message: str) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int = 1000, reason: str = "", *, grace: float = 5.0) -> None:
        self.drop()
        await trio.lowlevel.checkpoint()

    def drop(self) -> None:
        self._dropped.set()


class FakeNetwork:
    """Stands in for ``open_socket``: each attempt fails while ``up`` is false."""

    def __init__(self) -> None:
        self.up = False
        self.attempts: list[float] = []
        self.sockets: list[FakeSocket] = []
        self._attempt = trio.Event()

    async def attempted(self, count: int) -> None:
        while len(self.attempts) < count:
            await self._attempt.wait()

    @asynccontextmanager
    async def open_socket(self, url: str, **options: Any) -> AsyncIterator[FakeSocket]:
        up = self.up
        self.attempts.append(trio.current_time())
        self._attempt.set()
        self._attempt = trio.Event()
        await trio.lowlevel.checkpoint()
        if not up:
            raise ConnectError(url, "refused")
        sock = FakeSocket()
        self.sockets.append(sock)
        yield sock


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> FakeNetwork:
    network = FakeNetwork()
    monkeypatch.setattr(supervisor_module, "open_socket", network.open_socket)
    return network


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_reconnect_waits_the_jittered_schedule_then_gives_up(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    reconnect = Reconnect(max_attempts=5, backoff=Backoff(random=lambda: 0.5))
    states: list[ClientState] = []
    with trio.fail_after(60):
        async with open_client(
            "ws://fake", reconnect=reconnect, wait_open=False, on_state=states.append
        ) as client:
            await client.wait_state(ClientState.CLOSED)
            # Half of 0.3, 0.6, 1.2, 2.4, 4.8 (random = 0.5), then no sixth attempt.
            assert gaps(network.attempts) == pytest.approx([0.15, 0.3, 0.6, 1.2, 2.4])
            assert client.statistics().reconnect_attempt == 5
    assert states[:3] == [ClientState.CONNECTING, ClientState.RECONNECTING, ClientState.CONNECTING]
    assert states.count(ClientState.CONNECTING) == 6
    assert states[-1] == ClientState.CLOSED


async def test_jitter_stays_within_bounds_and_attempts_reset_on_success(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    draws = iter([0.9, 0.1, 0.7, 0.3, 0.99, 0.0])
    reconnect = Reconnect(backoff=Backoff(initial=1.0, max=3.0, random=lambda: next(draws)))
    with trio.fail_after(60):
        async with open_client("ws://fake", reconnect=reconnect, wait_open=False) as client:
            # Unlimited by default: three failures, then the server is back.
            await network.attempted(4)
            network.up = True
            await client.wait_state(ClientState.OPEN)
            first_round = gaps(network.attempts)
            assert first_round == pytest.approx([0.9, 0.2, 2.1, 0.9])  # ceilings 1, 2, 3, 3
            assert client.statistics().reconnect_attempt == 0
            assert client.statistics().connects == 1

            # Lost again: the count starts over at attempt 1 (ceiling 1.0 s).
            lost_at = trio.current_time()
            network.sockets[-1].drop()
            await client.wait_state(ClientState.RECONNECTING)
            await client.wait_state(ClientState.OPEN)
            assert network.attempts[-1] - lost_at == pytest.approx(0.99)
            assert client.statistics().connects == 2


# -- closed by aclose() (AlreadyClosed) or by the peer (ConnectionClosed) ----------------


async def assert_every_use_raises(client: Client, error: type[Exception]) -> None:
    with pytest.raises(error):
        await client.send(LEAVE)
    with pytest.raises(error):
        await client.request(ECHO, Ping("x"))
    with pytest.raises(error):
        async with client.stream(ECHO, Ping("x")):
            raise AssertionError("not reached")


async def request_failure(client: Client, failures: list[Exception]) -> None:
    try:
        await client.request(ECHO, Ping("x"))
    except Exception as exc:
        failures.append(exc)


async def test_after_aclose_no_reconnect_and_every_use_raises_already_closed(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    network.up = True
    with trio.fail_after(60):
        async with open_client("ws://fake") as client:
            await client.aclose()
            assert client.state == ClientState.CLOSED
            await trio.sleep(30)
            assert len(network.attempts) == 1
            await client.aclose()  # idempotent
            await assert_every_use_raises(client, AlreadyClosed)
        async with open_client("ws://fake") as left:
            pass
    await assert_every_use_raises(left, AlreadyClosed)  # leaving the block is an aclose()
    assert not issubclass(AlreadyClosed, ConnectionClosed)  # the caller's fault, not the peer's


async def test_requests_cut_off_by_aclose_raise_already_closed(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    failures: list[Exception] = []
    with trio.fail_after(60):
        for up in (True, False):  # a request sent and unanswered; one in the offline queue
            network.up = up
            async with (
                open_client("ws://fake", wait_open=False) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(request_failure, client, failures)
                await trio.testing.wait_all_tasks_blocked()
                assert client.statistics().pending_requests == 1
                assert client.statistics().queued == (0 if up else 1)
                await client.aclose()
    assert [type(exc) for exc in failures] == [AlreadyClosed, AlreadyClosed]


async def test_a_lost_connection_raises_connection_closed(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    network.up = True
    failures: list[Exception] = []
    with trio.fail_after(60):
        async with open_client("ws://fake", reconnect=False) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(request_failure, client, failures)
                await trio.testing.wait_all_tasks_blocked()
                network.sockets[-1].drop()  # the server is gone, and no reconnect
            await client.wait_state(ClientState.CLOSED)
            await assert_every_use_raises(client, ConnectionClosed)
            with pytest.raises(ConnectionClosed) as info:
                await client.send(LEAVE)
            assert (info.value.code, info.value.reason) == (1006, "dropped")
        # Then the block ended, which is an aclose(): the caller's own doing from now on.
        await assert_every_use_raises(client, AlreadyClosed)
    [failure] = failures
    assert type(failure) is ConnectionClosed
    assert (failure.code, failure.reason) == (1006, "dropped")


async def test_a_frame_the_offline_queue_refuses_is_dropped_not_closed(
    network: FakeNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with open_client("ws://fake", queue="off", wait_open=False) as client:
            assert await client.send(LEAVE) is False
            with pytest.raises(FrameDropped) as info:
                await client.request(ECHO, Ping("x"))
            assert not isinstance(info.value, ConnectionClosed)
            assert client.state != ClientState.CLOSED  # still trying to connect
