"""The servers the benchmarks measure, one per process.

    python -m benchmarks.servers KIND [--port N] [--valkey URL --prefix P] [--history SIZE]
                                      [--no-delivery] [--profile FILE]

prints ``READY <port>`` once it listens, then serves until killed. Kinds:

* ``wskit`` / ``wskit-trio-websocket``: the benchmark app (:mod:`benchmarks.app`) on
  ``serve()``, with the wsproto transport (the default) or the trio-websocket one;
  ``--valkey`` makes its pub/sub go through Valkey (cross-instance fan-out);
  ``--history SIZE`` keeps every topic's last SIZE messages (``History(size=SIZE)``,
  on the memory backend unless ``--valkey``), for ``JOIN`` with positions and
  recovery; ``--no-delivery`` leaves ``JOIN`` and ``BURST`` out of the app, for a
  wskit_trio from before the delivery guarantees (the ``--baseline-ref`` row, run
  from that commit's source tree with this benchmarks package).
* ``bare-wsproto``: the baseline loop written directly on trio streams and wsproto,
  the way one usually writes it: read, parse, answer each message with its own
  ``send_all``. No router, no validation: it echoes every message as it is.
  ``bare-wsproto-batched`` is the same loop answering all the messages of one read
  with one ``send_all``: the best a wsproto loop without a router does.
* ``bare-trio-websocket``: trio-websocket's server echoing every message.
* ``websockets``: the ``websockets`` asyncio server, echoing every message on ``/``;
  on ``/fanout`` it keeps the connections that sent ``SUBSCRIBE`` and answers each
  ``PUBLISH`` with one ``websockets.broadcast()`` of a ``NEWS`` frame to all of them,
  and a ``BURST`` with ``count`` of them in a loop, then ``BURST_DONE``.

``--profile FILE`` runs the server with :mod:`cProfile` ready: it starts on SIGUSR1
(after a warm-up) and its statistics go to FILE when the server is interrupted
(SIGINT), for :mod:`benchmarks.profile`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
import trio_websocket
import websockets
from websockets.asyncio.server import ServerConnection, broadcast
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from wskit_trio import Server, serve
from wskit_trio.valkey import ValkeyPubSub

from .app import make_router

__all__ = ["KINDS", "main"]

KINDS = (
    "wskit",
    "wskit-trio-websocket",
    "bare-wsproto",
    "bare-wsproto-batched",
    "bare-trio-websocket",
    "websockets",
)


def _ready(port: int) -> None:
    print(f"READY {port}", flush=True)


# -- wskit_trio ---------------------------------------------------------------------------


async def run_wskit(
    port: int,
    transport: str,
    valkey: str | None,
    prefix: str,
    history: int | None = None,
    delivery: bool = True,
) -> None:
    backend = ValkeyPubSub.from_url(valkey, prefix=prefix) if valkey is not None else None
    if history is not None:
        # Imported here: a wskit_trio from before the delivery guarantees has no History.
        from wskit_trio import History

        router = make_router(backend, history=History(size=history))
    else:
        router = make_router(backend, delivery=delivery)
    async with trio.open_nursery() as nursery:
        server: Server[None] = await nursery.start(
            serve(
                router,
                host="127.0.0.1",
                port=port,
                transport="trio-websocket" if transport == "trio-websocket" else "wsproto",
            )
        )
        if backend is not None:
            with trio.fail_after(10):
                await backend.wait_healthy()
        _ready(server.port)


# -- bare wsproto on trio streams --------------------------------------------------------


async def _bare_wsproto_connection(stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    out = TextMessage(data=event.data, message_finished=event.message_finished)
                    await stream.send_all(ws.send(out))
                elif isinstance(event, BytesMessage):
                    raw = BytesMessage(data=event.data, message_finished=event.message_finished)
                    await stream.send_all(ws.send(raw))
                elif isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _bare_wsproto_batched_connection(stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            out = bytearray()
            for event in ws.events():
                if isinstance(event, TextMessage):
                    reply = TextMessage(data=event.data, message_finished=event.message_finished)
                    out += ws.send(reply)
                elif isinstance(event, BytesMessage):
                    raw = BytesMessage(data=event.data, message_finished=event.message_finished)
                    out += ws.send(raw)
                elif isinstance(event, Request):
                    out += ws.send(AcceptConnection())
                elif isinstance(event, Ping):
                    out += ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    await stream.send_all(out + ws.send(event.response()))
                    return
            if out:
                await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def run_bare_wsproto(port: int, batched: bool = False) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    _ready(listeners[0].socket.getsockname()[1])
    handler = _bare_wsproto_batched_connection if batched else _bare_wsproto_connection
    await trio.serve_listeners(handler, listeners)


# -- bare trio-websocket -------------------------------------------------------------------


async def _bare_trio_websocket_connection(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            return


async def run_bare_trio_websocket(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server: trio_websocket.WebSocketServer = await nursery.start(
            trio_websocket.serve_websocket,
            _bare_trio_websocket_connection,
            "127.0.0.1",
            port,
            None,
        )
        _ready(server.port)


# -- websockets (asyncio) ----------------------------------------------------------------


def _json(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


async def run_websockets(port: int) -> None:
    #: Each topic's subscribers.
    topics: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path != "/fanout":
            async for message in ws:
                await ws.send(message)
            return
        joined: set[str] = set()
        try:
            async for message in ws:
                frame: Any = json.loads(message)
                payload = frame["payload"]
                if frame["type"] == "SUBSCRIBE":
                    topics.setdefault(payload["topic"], set()).add(ws)
                    joined.add(payload["topic"])
                    await ws.send(_json({"type": "SUBSCRIBED", "payload": payload}))
                elif frame["type"] == "PUBLISH":
                    news = {"type": "NEWS", "payload": {"seq": payload["seq"]}}
                    broadcast(topics.get(payload["topic"], ()), _json(news))
                elif frame["type"] == "BURST":
                    # The same loop as the wskit_trio app's BURST handler: one
                    # broadcast() per message (it never waits: no back-pressure).
                    subscribers = topics.get(payload["topic"], set())
                    for seq in range(payload["count"]):
                        broadcast(subscribers, _json({"type": "NEWS", "payload": {"seq": seq}}))
                    done = {**payload, "ok": payload["count"], "offset": 0}
                    await ws.send(_json({"type": "BURST_DONE", "payload": done}))
        finally:
            for topic in joined:
                topics[topic].discard(ws)

    async with websockets.serve(handler, "127.0.0.1", port, compression=None) as server:
        _ready(next(iter(server.sockets)).getsockname()[1])
        await asyncio.Future()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--valkey", default=None)
    parser.add_argument("--prefix", default="wskit-bench:")
    parser.add_argument(
        "--history",
        type=int,
        metavar="SIZE",
        default=None,
        help="wskit kinds: keep every topic's last SIZE messages (positions, recovery)",
    )
    parser.add_argument(
        "--no-delivery",
        action="store_true",
        help="wskit kinds: the app without JOIN and BURST (a wskit_trio before them)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="profile from SIGUSR1 on (cProfile), write the stats to FILE on SIGINT",
    )
    args = parser.parse_args(argv)
    if (args.history is not None or args.no_delivery) and not args.kind.startswith("wskit"):
        parser.error("--history and --no-delivery are for the wskit kinds")
    run: Callable[[], object]
    if args.kind.startswith("wskit"):
        transport = "wsproto" if args.kind == "wskit" else "trio-websocket"
        options = (args.port, transport, args.valkey, args.prefix, args.history)
        run = partial(trio.run, run_wskit, *options, not args.no_delivery)
    elif args.kind == "bare-wsproto":
        run = partial(trio.run, run_bare_wsproto, args.port)
    elif args.kind == "bare-wsproto-batched":
        run = partial(trio.run, run_bare_wsproto, args.port, True)
    elif args.kind == "bare-trio-websocket":
        run = partial(trio.run, run_bare_trio_websocket, args.port)
    else:
        run = partial(asyncio.run, run_websockets(args.port))
    if args.profile is None:
        run()
        return
    profiler = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda _signal, _frame: profiler.enable())
    try:
        run()
    except KeyboardInterrupt:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
