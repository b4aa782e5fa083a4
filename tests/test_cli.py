"""``python -m wskit_trio``: ``serve`` runs a router until SIGINT and stops gracefully;
bad targets are one clear line and exit status 2. (``contract``: test_contract.py.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from _net import close_of, recv_json, send_json
from valkey_server import ValkeyServerProcess

from wskit_trio import History, MemoryPubSub, Router, TopicPolicy, with_pubsub
from wskit_trio._cli import load_router, main, use_valkey
from wskit_trio.valkey import ValkeyPubSub

TESTS = Path(__file__).resolve().parent


async def _read_until(stream: trio.abc.ReceiveStream, pattern: re.Pattern[bytes]) -> bytes:
    """What ``stream`` says up to the first match of ``pattern``."""
    seen = b""
    while not pattern.search(seen):
        chunk = await stream.receive_some()
        assert chunk, f"the server exited before it was ready: {seen.decode()!r}"
        seen += chunk
    return seen


async def _get(port: int, path: str) -> Any:
    """The JSON body of ``GET path``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := await stream.receive_some():
        answer += chunk
    await stream.aclose()
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def test_serve_round_trip_then_sigint_closes_clients_with_1001(
    valkey_server: ValkeyServerProcess,
) -> None:
    command = [
        *(sys.executable, "-m", "wskit_trio", "serve", "contract_app:router"),
        *("--port", "0", "--path", "/ws", "--health-path", "/healthz"),
        *("--valkey", valkey_server.url),
    ]
    proc = await trio.lowlevel.open_process(command, cwd=TESTS, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        with trio.fail_after(20):
            said = await _read_until(proc.stderr, re.compile(rb"listening on ws://[\d.]+:(\d+)"))
            match = re.search(rb"listening on ws://[\d.]+:(\d+)", said)
            assert match is not None
            port = int(match[1])

            # The health check shows the backend --valkey chose, once it has connected.
            while (health := await _get(port, "/healthz"))["status"] != "ok":
                assert health["pubsub"]["backend"] == "ValkeyPubSub", health
                await trio.sleep(0.02)
            assert health["pubsub"] == {"backend": "ValkeyPubSub", "healthy": True}

            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                await send_json(ws, {"type": "QUOTE", "meta": {"correlationId": "c1"},
                                     "payload": {"sku": "ABC-1"}})  # fmt: skip
                frames = [await recv_json(ws), await recv_json(ws)]
                assert [f["type"] for f in frames] == ["$ws:rpc-progress", "QUOTED"]
                assert frames[1]["payload"] == {"sku": "ABC-1", "price": 9.5, "currency": "EUR"}

                proc.send_signal(signal.SIGINT)
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert close_of(closed.value)[0] == 1001
            assert await proc.wait() == 0
            rest = await proc.stderr.receive_some()
            while chunk := await proc.stderr.receive_some():
                rest += chunk
        log = (said + rest).decode()
        assert "received SIGINT: shutting down gracefully" in log
        assert "Traceback" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_bad_target_is_one_line_and_exit_status_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wskit_trio", "serve", "no_such_module:router"],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stderr == (
        "wskit_trio: error: no module named 'no_such_module' "
        "(is it on the path? run from its root)\n"
    )


def test_bad_targets_say_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "contract_app:nothing": "'contract_app' has no attribute 'nothing'",
        "contract_app:ORDER": "contract_app:ORDER is not a wskit_trio Router (got MessageSchema)",
        "contract_app": "expected module:router, got 'contract_app'",
        "contract_app:Order": "calling contract_app:Order failed: TypeError: ",
        "tests_no_such.sub:router": "no module named 'tests_no_such.sub'",
    }
    for target, message in cases.items():
        assert main(["contract", target]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"wskit_trio: error: {message}"), err
        assert err.count("\n") == 1, err


def test_a_target_may_be_a_factory_or_reach_into_an_attribute() -> None:
    router, module = load_router("examples.quickstart.server:build_router")
    assert isinstance(router, Router)
    assert "WHO" in router.routes
    assert module.__name__ == "examples.quickstart.server"
    router, _ = load_router("examples.quickstart.server:build_router()")
    assert "JOIN_ROOM" in router.routes


def test_valkey_swaps_the_backend_and_keeps_policy_and_history() -> None:
    policy = TopicPolicy(max_topics_per_connection=3)
    history = History(size=10)
    router: Router[None] = Router()
    router.plugin(with_pubsub(MemoryPubSub(), policy=policy, history=history))
    origin = router.pubsub.origin
    use_valkey(router, "valkey://127.0.0.1:1/2")
    assert isinstance(router.pubsub.backend, ValkeyPubSub)
    assert router.pubsub.policy is policy
    assert router.pubsub.history is history
    assert router.pubsub.origin == origin


def test_a_bad_valkey_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "contract_app:router", "--valkey", "http://x"]) == 2
    assert capsys.readouterr().err.startswith("wskit_trio: error: --valkey http://x: ")
