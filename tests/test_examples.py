"""The examples do what their READMEs promise, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from websockets.sync.client import connect

from examples.quickstart import server as chat
from wskit_trio import UpgradeRejected
from wskit_trio.testing import open_test_app

ROOT = Path(__file__).resolve().parent.parent


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


def _talk(url: str) -> list[dict[str, object]]:
    with connect(f"{url}/?access_token=carol", open_timeout=5) as ws:
        ws.send('{"type":"JOIN_ROOM","payload":{"roomId":"r1"}}')
        ws.send('{"type":"SEND_MESSAGE","payload":{"text":"hello"}}')
        return [json.loads(ws.recv(timeout=5)) for _ in range(2)]


async def test_quickstart_runs_with_its_one_command() -> None:
    """``python -m examples.quickstart.server`` serves, and stops cleanly on Ctrl-C."""
    env = {**os.environ, "PORT": "0", "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "examples.quickstart.server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, "server exited before printing its address"
                output += chunk
        line = output.decode()
        assert "listening on ws://" in line, line
        url = line.split("listening on ")[1].split()[0]
        with trio.fail_after(20):
            frames = await trio.to_thread.run_sync(_talk, url)
        assert frames == [
            {"type": "USER_JOINED", "payload": {"roomId": "r1", "user": "carol"}},
            {"type": "ROOM_MESSAGE", "payload": {"roomId": "r1", "user": "carol", "text": "hello"}},
        ]
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
