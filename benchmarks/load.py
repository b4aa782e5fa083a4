"""The load generator: picows clients (Cython, on uvloop when installed) in a process
of their own, so the server under test is what is measured.

    python -m benchmarks.load

reads one JSON command per line on stdin and answers each with one JSON line on
stdout. Commands (``op``):

* ``echo``: one connection keeps ``window`` messages in flight for ``warmup`` +
  ``duration`` seconds, sending another for each answer; ``rate`` is answers/s.
* ``rpc``: one connection, ``count`` requests one after the other (each sent as the
  previous answer arrives); round-trip percentiles in microseconds. The runner
  sends it twice per round: once as it is, once with this process and the server
  pinned to one CPU together (:func:`benchmarks.run.pinned`).
* ``fanout``: ``subscribers`` connections (spread over ``urls``) subscribe to a
  topic; the first one also publishes ``publishes`` messages, keeping at most
  ``window`` of its own publishes unanswered (it is a subscriber too, so a publish
  is answered once its own copy arrives). ``rate`` is deliveries/s, every
  subscriber's copies counted, from the first publish to the last delivery. With
  ``join``, subscribers send ``JOIN`` (a subscription with positions: each frame
  carries ``meta.offset``) instead of ``SUBSCRIBE``.
* ``burst``: ``subscribers`` connections subscribe to a topic, then the first sends
  one ``BURST`` and the server's handler publishes ``count`` messages in a loop.
  ``rate`` is deliveries/s from that ``BURST`` to the last delivery; every
  subscriber must get all ``count``, in order (``error`` says who did not).
* ``replay``: one client joins a topic with positions and leaves; another
  connection has ``count`` messages published to the topic (one ``BURST``); the
  first reconnects and joins ``since`` its last position. ``rate`` is replayed
  messages/s from that ``JOIN`` to the last of the ``count``; the recovery must say
  ``recovered`` and the offsets follow on from the position, one by one.
* ``open`` / ``close``: open ``count`` idle connections, at most
  ``CONNECT_CONCURRENCY`` upgrades in flight (the runner measures the server's
  memory meanwhile; ``rate`` is connections/s, from the first connect to the last
  upgrade completed) / close them all.
* ``quit``.

Each result carries ``error`` (a string) if something went wrong, e.g. the first
answer was not of the ``expect``-ed type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

__all__ = ["main"]

CONNECT_CONCURRENCY = 100


class Client(WSListener):
    """One connection; ``on_text`` gets each text frame's payload, ``on_close`` is
    called once when it closes or is closed."""

    def __init__(
        self,
        on_text: Callable[[Client, bytes], None] | None = None,
        on_close: Callable[[Client], None] | None = None,
    ) -> None:
        self.transport: WSTransport | None = None
        self.on_text = on_text
        self.on_close = on_close
        self.closed = False
        #: The close code the server sent, if it sent one.
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            if self.on_text is not None:
                self.on_text(self, frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code().value)
            self._closed()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closed()

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            if self.on_close is not None:
                self.on_close(self)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)


async def connect(
    url: str,
    on_text: Callable[[Client, bytes], None] | None = None,
    on_close: Callable[[Client], None] | None = None,
) -> Client:
    _, client = await ws_connect(
        lambda: Client(on_text, on_close), url, websocket_handshake_timeout=30
    )
    assert isinstance(client, Client)
    return client


def _frame(type_: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, "payload": payload}, separators=(",", ":")).encode()


#: Deliveries are counted and checked without parsing each one as JSON (the load
#: process must stay faster than the server): the server writes ``type`` first.
_NEWS_PREFIX = b'{"type":"NEWS"'
_SEQ = re.compile(rb'"seq":(\d+)')
_OFFSET = re.compile(rb'"offset":(\d+)')


def _number(pattern: re.Pattern[bytes], data: bytes) -> int | None:
    match = pattern.search(data)
    return int(match.group(1)) if match is not None else None


def _type_of(data: bytes) -> str:
    try:
        return str(json.loads(data)["type"])
    except (ValueError, KeyError, TypeError):
        return repr(data[:80])


class Check:
    """Remembers the first answer whose type is not the expected one."""

    def __init__(self, expect: str | None) -> None:
        self.expect = expect
        self.checked = expect is None
        self.error: str | None = None

    def __call__(self, data: bytes) -> None:
        if not self.checked:
            self.checked = True
            found = _type_of(data)
            if found != self.expect:
                self.error = f"expected {self.expect}, got {found}"


async def echo(cmd: dict[str, Any]) -> dict[str, Any]:
    message = cmd["message"].encode()
    check = Check(cmd.get("expect"))
    count = 0

    def on_text(client: Client, data: bytes) -> None:
        nonlocal count
        count += 1
        check(data)
        client.send(message)

    client = await connect(cmd["url"], on_text)
    for _ in range(cmd["window"]):
        client.send(message)
    await asyncio.sleep(cmd["warmup"])
    start_count, start = count, time.perf_counter()
    await asyncio.sleep(cmd["duration"])
    answered, elapsed = count - start_count, time.perf_counter() - start
    assert client.transport is not None
    client.transport.disconnect()
    result: dict[str, Any] = {
        "rate": answered / elapsed,
        "count": answered,
        "seconds": elapsed,
        "total": count,
    }
    if check.error or client.closed:
        result["error"] = check.error or "connection closed"
    return result


async def rpc(cmd: dict[str, Any]) -> dict[str, Any]:
    warmup, count = cmd["warmup"], cmd["count"]
    template: str = cmd["template"]
    frames = [template.replace("{cid}", f"c-{i}").encode() for i in range(warmup + count)]
    check = Check(cmd.get("expect"))
    latencies: list[int] = []
    done = asyncio.get_running_loop().create_future()
    sent_at = 0
    index = 0

    def on_text(client: Client, data: bytes) -> None:
        nonlocal sent_at, index
        now = time.perf_counter_ns()
        check(data)
        if index >= warmup:
            latencies.append(now - sent_at)
        index += 1
        if index == len(frames):
            if not done.done():
                done.set_result(None)
            return
        sent_at = time.perf_counter_ns()
        client.send(frames[index])

    client = await connect(cmd["url"], on_text)
    sent_at = time.perf_counter_ns()
    client.send(frames[0])
    result: dict[str, Any] = {}
    try:
        await asyncio.wait_for(done, cmd.get("timeout", 60))
    except TimeoutError:
        result["error"] = f"timed out after {len(latencies)} answers"
    assert client.transport is not None
    client.transport.disconnect()
    if latencies:
        ordered = sorted(latencies)
        result.update(
            p50_us=ordered[len(ordered) // 2] / 1000,
            p99_us=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
            mean_us=statistics.fmean(ordered) / 1000,
            count=len(ordered),
        )
    if check.error:
        result["error"] = check.error
    return result


async def _gather_limited(factories: list[Callable[[], Awaitable[Client]]]) -> list[Client]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(factory: Callable[[], Awaitable[Client]]) -> Client:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(one(f) for f in factories)))


async def fanout(cmd: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = cmd["urls"]
    n_subs, publishes, window, topic = (
        cmd["subscribers"],
        cmd["publishes"],
        cmd["window"],
        cmd["topic"],
    )
    loop = asyncio.get_running_loop()
    target = n_subs * publishes
    delivered = 0
    done = loop.create_future()
    subscribed: dict[Client, asyncio.Future[None]] = {}
    received: dict[Client, int] = {}
    check = Check(cmd.get("expect"))
    publisher: Client | None = None
    sent = 0
    join = bool(cmd.get("join", False))
    subscribe = _frame("JOIN" if join else "SUBSCRIBE", {"topic": topic})
    acknowledged = "JOINED" if join else "SUBSCRIBED"
    frames = [
        json.dumps({"type": "PUBLISH", "payload": {"topic": topic, "seq": i}}).encode()
        for i in range(publishes)
    ]

    def pump() -> None:
        nonlocal sent
        assert publisher is not None
        while sent < publishes and sent - received[publisher] < window:
            publisher.send(frames[sent])
            sent += 1

    def on_text(client: Client, data: bytes) -> None:
        nonlocal delivered
        waiter = subscribed.get(client)
        if waiter is not None and not waiter.done():
            if _type_of(data) != acknowledged:
                check.error = f"expected {acknowledged}, got {_type_of(data)}"
            waiter.set_result(None)
            return
        if not check.checked:
            check(data)
            if join and check.error is None and _number(_OFFSET, data) is None:
                check.error = f"a delivery without meta.offset: {data[:120]!r}"
        received[client] += 1
        delivered += 1
        if client is publisher:
            pump()
        if delivered == target and not done.done():
            done.set_result(None)

    async def open_subscriber(url: str) -> Client:
        client = await connect(url, on_text)
        subscribed[client] = loop.create_future()
        received[client] = 0
        client.send(subscribe)
        await subscribed[client]
        return client

    def opener(url: str) -> Callable[[], Awaitable[Client]]:
        return lambda: open_subscriber(url)

    result: dict[str, Any] = {}
    try:
        clients = await asyncio.wait_for(
            _gather_limited([opener(urls[i % len(urls)]) for i in range(n_subs)]),
            cmd.get("timeout", 120),
        )
    except TimeoutError:
        return {"error": f"subscribing timed out ({len(subscribed)} connected)"}
    publisher = clients[0]
    start = time.perf_counter()
    pump()
    try:
        await asyncio.wait_for(done, cmd.get("timeout", 120))
    except TimeoutError:
        result["error"] = f"timed out: {target - delivered} of {target} deliveries missing"
    elapsed = time.perf_counter() - start
    result.update(rate=delivered / elapsed, deliveries=delivered, seconds=elapsed)
    for client in clients:
        assert client.transport is not None
        client.transport.disconnect()
    if check.error:
        result["error"] = check.error
    return result


class Inbox:
    """A control connection's frames, parsed, in order (for the few frames that are
    not counted deliveries)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def put(self, data: bytes) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            frame = {"type": repr(data[:80])}
        self.frames.put_nowait(frame if isinstance(frame, dict) else {"type": repr(frame)})

    async def expect(self, type_: str, within: float) -> dict[str, Any]:
        """The next frame (in ``within`` seconds), which must be of ``type_`` (else
        ``ValueError``)."""
        frame = await asyncio.wait_for(self.frames.get(), within)
        if frame.get("type") != type_:
            raise ValueError(f"expected {type_}, got {json.dumps(frame)[:200]}")
        return frame


def _disconnect(clients: list[Client]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.disconnect()


async def burst(cmd: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = cmd["urls"]
    n_subs, count, topic = cmd["subscribers"], cmd["count"], cmd["topic"]
    timeout: float = cmd.get("timeout", 120)
    loop = asyncio.get_running_loop()
    target = n_subs * count
    delivered = 0
    start = last = 0.0
    subscribed: dict[Client, asyncio.Future[None]] = {}
    #: Each subscriber's next expected seq, and the subscribers not finished yet.
    expected: dict[Client, int] = {}
    pending: set[Client] = set()
    #: What went wrong, per subscriber (the first problem each).
    problems: dict[Client, str] = {}
    done = loop.create_future()
    control = Inbox()
    trigger: Client | None = None

    def finish(client: Client) -> None:
        pending.discard(client)
        if not pending and not done.done():
            done.set_result(None)

    def on_text(client: Client, data: bytes) -> None:
        nonlocal delivered, last
        waiter = subscribed.get(client)
        if waiter is not None and not waiter.done():
            if _type_of(data) != "SUBSCRIBED":
                problems[client] = f"expected SUBSCRIBED, got {_type_of(data)}"
            waiter.set_result(None)
            return
        seq = _number(_SEQ, data) if data.startswith(_NEWS_PREFIX) else None
        if seq is None:
            if client is trigger:
                control.put(data)
            else:
                problems.setdefault(client, f"unexpected frame {data[:120]!r}")
            return
        delivered += 1
        want = expected[client]
        if seq != want and client not in problems:
            problems[client] = f"got seq {seq} when {want} was due"
        expected[client] = seq + 1
        if seq == count - 1:
            last = time.perf_counter()
            finish(client)

    def on_close(client: Client) -> None:
        if client in pending:
            problems.setdefault(client, f"closed (code {client.close_code}) during the burst")
            finish(client)

    async def open_subscriber(url: str) -> Client:
        client = await connect(url, on_text, on_close)
        subscribed[client] = loop.create_future()
        expected[client] = 0
        client.send(_frame("SUBSCRIBE", {"topic": topic}))
        await subscribed[client]
        return client

    def opener(url: str) -> Callable[[], Awaitable[Client]]:
        return lambda: open_subscriber(url)

    try:
        clients = await asyncio.wait_for(
            _gather_limited([opener(urls[i % len(urls)]) for i in range(n_subs)]), timeout
        )
    except TimeoutError:
        _disconnect(list(subscribed))
        return {"error": f"subscribing timed out ({len(subscribed)} connected)"}
    result: dict[str, Any] = {}
    pending.update(clients)
    trigger = clients[0]
    start = time.perf_counter()
    trigger.send(_frame("BURST", {"topic": topic, "count": count}))
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        last = time.perf_counter()
        result["error"] = f"timed out: {target - delivered} of {target} deliveries missing"
    try:
        answer = await control.expect("BURST_DONE", 10)
        if answer["payload"]["ok"] != count:
            result.setdefault(
                "error", f"{count - answer['payload']['ok']} publishes did not report ok"
            )
    except (TimeoutError, ValueError) as exc:
        result.setdefault("error", f"no BURST_DONE: {exc or type(exc).__name__}")
    elapsed = max(last - start, 1e-9)
    result.update(rate=delivered / elapsed, deliveries=delivered, seconds=elapsed)
    short = {c: expected[c] for c in clients if expected[c] != count}
    if (problems or short or delivered != target) and "error" not in result:
        example = next(iter(problems.values()), "")
        result["error"] = (
            f"{len(set(problems) | set(short))} of {n_subs} subscribers did not get all "
            f"{count} in order ({target - delivered} of {target} deliveries missing)"
            + (f"; e.g. {example}" if example else "")
        )
    _disconnect(clients)
    return result


async def replay(cmd: dict[str, Any]) -> dict[str, Any]:
    url, topic, count = cmd["url"], cmd["topic"], cmd["count"]
    timeout: float = cmd.get("timeout", 120)
    loop = asyncio.get_running_loop()

    # 1. Join with positions, remember where the topic stands, leave.
    inbox = Inbox()
    first = await connect(url, lambda _c, data: inbox.put(data))
    first.send(_frame("JOIN", {"topic": topic}))
    joined = (await inbox.expect("JOINED", timeout))["payload"]
    since: dict[str, Any] = joined["position"]
    assert first.transport is not None
    first.transport.send_close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(first.transport.wait_disconnected(), 5)
    first.transport.disconnect()
    await asyncio.sleep(0.05)  # for the server to drop the subscription

    # 2. While it is away, ``count`` messages are published to the topic.
    inbox = Inbox()
    publisher = await connect(url, lambda _c, data: inbox.put(data))
    publisher.send(_frame("BURST", {"topic": topic, "count": count}))
    done_burst = (await inbox.expect("BURST_DONE", timeout))["payload"]
    _disconnect([publisher])
    if done_burst["ok"] != count or done_burst["offset"] != since["offset"] + count:
        return {"error": f"publishing went wrong: {done_burst} after {since}"}

    # 3. Back, from its last position: it must get all ``count``, in offset order.
    received = 0
    want = since["offset"] + 1
    problem: str | None = None
    first_frame: bytes | None = None
    end = 0.0
    complete = loop.create_future()
    inbox = Inbox()

    def on_text(client: Client, data: bytes) -> None:
        nonlocal received, want, problem, first_frame, end
        if not data.startswith(_NEWS_PREFIX):
            inbox.put(data)
            return
        offset = _number(_OFFSET, data)
        if first_frame is None:
            first_frame = data
        if offset != want and problem is None:
            problem = f"offset {offset} when {want} was due"
        want = (offset or want) + 1
        received += 1
        if received == count:
            end = time.perf_counter()
            if not complete.done():
                complete.set_result(None)

    again = await connect(url, on_text)
    start = time.perf_counter()
    again.send(_frame("JOIN", {"topic": topic, "since": since}))
    result: dict[str, Any] = {}
    try:
        await asyncio.wait_for(complete, timeout)
    except TimeoutError:
        end = time.perf_counter()
        result["error"] = f"timed out: {received} of {count} replayed"
    try:
        answer = (await inbox.expect("JOINED", 10))["payload"]
    except (TimeoutError, ValueError) as exc:
        answer = {}
        result.setdefault("error", f"no JOINED: {exc or type(exc).__name__}")
    answered = time.perf_counter()
    _disconnect([again])
    elapsed = max(end - start, 1e-9)
    result.update(
        rate=received / elapsed,
        replayed=received,
        seconds=elapsed,
        joined_seconds=answered - start,
        recovered=answer.get("recovered"),
    )
    if "error" in result:
        return result
    if not answer.get("recovered") or answer.get("replayed") != count:
        result["error"] = f"not recovered: {answer}"
    elif problem is not None:
        result["error"] = f"replayed offsets not consecutive: {problem}"
    elif first_frame is not None:
        meta = json.loads(first_frame).get("meta", {})
        if meta.get("epoch") != since["epoch"] or meta.get("topic") != topic:
            result["error"] = f"replayed frame of another history: {meta} after {since}"
    return result


class Idle:
    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url, count = cmd["url"], cmd["count"]
        failures = 0
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> None:
            nonlocal failures
            async with gate:
                try:
                    self.clients.append(await connect(url))
                except Exception:
                    failures += 1

        start = time.perf_counter()
        before = len(self.clients)
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = max(time.perf_counter() - start, 1e-9)
        opened = len(self.clients) - before
        result: dict[str, Any] = {
            "opened": opened,
            "seconds": elapsed,
            "rate": opened / elapsed,
        }
        if failures:
            result["error"] = f"{failures} connections failed"
        return result

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        clients, self.clients = self.clients, []
        for client in clients:
            if client.transport is not None:
                client.transport.disconnect()
        await asyncio.sleep(0.01)
        return {"closed": len(clients)}


async def serve_commands() -> None:
    loop = asyncio.get_running_loop()
    idle = Idle()
    ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
        "echo": echo,
        "rpc": rpc,
        "fanout": fanout,
        "burst": burst,
        "replay": replay,
        "open": idle.open,
        "close": idle.close,
    }
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return
        try:
            result = await ops[cmd["op"]](cmd)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_commands())
    else:
        uvloop.run(serve_commands())


if __name__ == "__main__":
    main()
