"""The typed client, with its defaults, against WS-Kit 0.10's own server on Bun.

WS-Kit's strict meta drops a request carrying ``meta.timeoutMs`` without an
answer, so this only works because the client sends it to servers that
advertise it and WS-Kit's does not (docs/protocol.md §7). The server is
``tests/bun/wskit_server.ts``, run with the WS-Kit and Bun that
``benchmarks/bun`` pins (``.ci/run`` installs them; ``npm ci`` there does too).
Real time: Bun is another process, beyond a mock clock's reach.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from _net import ready_port
from _npm import npm_ci

from benchmarks.run import BUN_DIR, find_bun
from wskit_trio import rpc
from wskit_trio.client import RpcError, open_client

SERVER = Path(__file__).parent / "bun" / "wskit_server.ts"
#: Bun starts in well under a second; this bounds a wedged start.
START_TIMEOUT = 20.0


@attrs.frozen
class GetItem:
    id: str


@attrs.frozen
class Item:
    id: str
    n: int


@attrs.frozen
class Export:
    rows: int


@attrs.frozen
class Exported:
    done: int


GET_ITEM = rpc("GET_ITEM", GetItem, "ITEM", Item)
EXPORT = rpc("EXPORT", Export, "EXPORTED", Exported)


@asynccontextmanager
async def wskit_on_bun() -> AsyncIterator[str]:
    """``tests/bun/wskit_server.ts`` on a free port for the block; yields its URL."""
    npm_ci(BUN_DIR, "@ws-kit/bun")
    bun, why = find_bun(install=False)
    if bun is None:
        pytest.fail(f"{why}: run `npm ci` in {BUN_DIR} (.ci/run does)")
    # The server imports WS-Kit from the one install the repository has.
    env = {**os.environ, "NODE_PATH": str(BUN_DIR / "node_modules")}
    process = await trio.lowlevel.open_process(
        [bun, "run", str(SERVER), "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        cwd=SERVER.parent,
    )
    try:
        with trio.fail_after(START_TIMEOUT):
            port = await ready_port(process)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


async def test_defaults_against_wskit_on_bun() -> None:
    """A request, a progress stream and an error, with ``open_client(url)`` as is."""
    async with wskit_on_bun() as url:
        with trio.fail_after(10):
            async with open_client(url) as client:
                assert client.extensions == frozenset()

                assert await client.request(GET_ITEM, GetItem("a")) == Item("a", 1)

                async with client.stream(EXPORT, Export(rows=3)) as call:
                    progress = [update async for update in call]
                    assert await call.result() == Exported(3)
                assert progress == [Exported(1), Exported(2)]

                with pytest.raises(RpcError) as info:
                    await client.request(GET_ITEM, GetItem("missing"))
                err = info.value
                assert (err.code, err.message, err.details) == (
                    "NOT_FOUND",
                    "no such item",
                    {"id": "missing"},
                )
                assert not err.retryable  # WS-Kit sends no `retryable`: the code's default

                # Still in step after the error: the next request is answered.
                assert await client.request(GET_ITEM, GetItem("b")) == Item("b", 1)


async def test_forcing_extensions_on_a_wskit_server_goes_unanswered() -> None:
    """Why the default matters: WS-Kit drops a request with ``timeoutMs``, so
    ``extensions=True`` can only time out there."""
    async with wskit_on_bun() as url:
        with trio.fail_after(10):
            async with open_client(url, extensions=True) as client:
                with pytest.raises(TimeoutError):
                    await client.request(GET_ITEM, GetItem("a"), timeout=0.5)
