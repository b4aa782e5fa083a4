"""The load generator: picows clients (Cython, on uvloop when installed) in a process
of their own, so the server under test is what is measured.

    python -m benchmarks.load

reads one JSON command per line on stdin and answers each with one JSON line on
stdout. Commands (``op``):

* ``echo``: one connection keeps ``window`` messages in flight for ``warmup`` +
  ``duration`` seconds, sending another for each answer; ``rate`` is answers/s.
* ``rpc``: one connection, ``count`` requests one after the other (each sent as the
  previous answer arrives); round-trip percentiles in microseconds.
* ``fanout``: ``subscribers`` connections (spread over ``urls``) subscribe to a
  topic; the first one also publishes ``publishes`` messages, keeping at most
  ``window`` of its own publishes unanswered (it is a subscriber too, so a publish
  is answered once its own copy arrives). ``rate`` is deliveries/s, every
  subscriber's copies counted, from the first publish to the last delivery.
* ``open`` / ``close``: open ``count`` idle connections (the runner measures the
  server's memory meanwhile) / close them all.
* ``quit``.

Each result carries ``error`` (a string) if something went wrong, e.g. the first
answer was not of the ``expect``-ed type.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

__all__ = ["main"]

CONNECT_CONCURRENCY = 100


class Client(WSListener):
    """One connection; ``on_text`` gets each text frame's payload."""

    def __init__(self, on_text: Callable[[Client, bytes], None] | None = None) -> None:
        self.transport: WSTransport | None = None
        self.on_text = on_text
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            if self.on_text is not None:
                self.on_text(self, frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            self.closed = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)


async def connect(url: str, on_text: Callable[[Client, bytes], None] | None = None) -> Client:
    _, client = await ws_connect(lambda: Client(on_text), url, websocket_handshake_timeout=30)
    assert isinstance(client, Client)
    return client


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
    subscribe = json.dumps({"type": "SUBSCRIBE", "payload": {"topic": topic}}).encode()
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
            if _type_of(data) != "SUBSCRIBED":
                check.error = f"expected SUBSCRIBED, got {_type_of(data)}"
            waiter.set_result(None)
            return
        check(data)
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

        await asyncio.gather(*(one() for _ in range(count)))
        result: dict[str, Any] = {"opened": len(self.clients)}
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
