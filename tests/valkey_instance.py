"""One app instance in its own OS process, for the multi-process pub/sub test.

    python tests/valkey_instance.py VALKEY_URL PREFIX

serves ``pubsub_app`` with ``ValkeyPubSub`` on a free port of 127.0.0.1, prints
``READY <port>`` once it is listening and connected to Valkey, and shuts down
gracefully on SIGTERM (exit status 0).
"""

from __future__ import annotations

import sys

import trio
from pubsub_app import make_router

from wskit_trio import Server, serve
from wskit_trio.valkey import ValkeyPubSub


async def main(url: str, prefix: str) -> None:
    backend = ValkeyPubSub.from_url(url, prefix=prefix)
    router = make_router(backend)
    async with trio.open_nursery() as nursery:
        server: Server[object] = await nursery.start(serve(router, host="127.0.0.1", port=0))
        with trio.fail_after(10):
            await backend.wait_healthy()
        print(f"READY {server.port}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])


# -- the delivery app, for test_delivery_valkey.py --------------------------------------
#
#     python -c "import valkey_instance; valkey_instance.run_delivery()" VALKEY_URL PREFIX
#
# (run from the tests directory) serves ``test_delivery``'s app (JOIN with positions,
# SAY, BURST, PUB; history on every topic) the same way: ``READY <port>`` once it is
# listening and connected to Valkey.


async def serve_delivery(url: str, prefix: str) -> None:
    from test_delivery import make_router as make_delivery_router

    backend = ValkeyPubSub.from_url(url, prefix=prefix)
    router = make_delivery_router(backend=backend)
    async with trio.open_nursery() as nursery:
        server: Server[object] = await nursery.start(serve(router, host="127.0.0.1", port=0))
        with trio.fail_after(10):
            await backend.wait_healthy()
        print(f"READY {server.port}", flush=True)


def run_delivery() -> None:
    trio.run(serve_delivery, sys.argv[1], sys.argv[2])
