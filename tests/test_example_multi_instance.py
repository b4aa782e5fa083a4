"""examples/multi_instance: two server instances sharing one Valkey are one chat.

Members connect to different instances and talk at once; every member must see
every line exactly once, each speaker's lines in the order said, and (Valkey
orders the channel) all members the same sequence. Run twice: with both
instances in this process on the ``valkey_server`` fixture, and as the README's
one command, ``python -m examples.multi_instance``: its own Valkey and two server
processes, stopped cleanly by Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from _example_cmd import ROOT
from valkey_server import ValkeyServerProcess

from examples.multi_instance.client import ChatMember, open_member
from examples.multi_instance.server import ChatLine, authenticate, build_router
from wskit_trio import serve
from wskit_trio.client import ConnectError
from wskit_trio.valkey import ValkeyConnection, ValkeyPubSub, ValkeyUnavailable

#: Who connects where.
MEMBERS = {"alice": "A", "bob": "B", "carol": "A", "dave": "B"}
#: Lines each member says (then "bye").
LINES = 25


async def one_chat(urls: dict[str, str]) -> None:
    """The scenario: ``urls`` maps instance name to its URL."""
    async with AsyncExitStack() as stack:
        members: dict[str, ChatMember] = {}
        for user, instance in MEMBERS.items():
            member = await stack.enter_async_context(open_member(urls[instance], user))
            assert member.welcome is not None and member.welcome.instance == instance
            members[user] = member

        async def talk(user: str) -> None:
            for i in range(LINES):
                await members[user].say(f"{user} {i}")
            await members[user].say("bye")

        async with trio.open_nursery() as nursery:
            for user in MEMBERS:
                nursery.start_soon(talk, user)

        def everyone_said_bye(lines: list[ChatLine]) -> bool:
            return sum(line.text == "bye" for line in lines) == len(MEMBERS)

        for member in members.values():
            # Each speaker's "bye" comes after all their lines: nothing is on its way.
            await member.wait_until(everyone_said_bye)

        reference = members["alice"].lines
        for user, member in members.items():
            lines = member.lines
            assert len(lines) == len(MEMBERS) * (LINES + 1), user  # nothing twice
            for speaker, instance in MEMBERS.items():
                said = [line for line in lines if line.user == speaker]
                expected = [f"{speaker} {i}" for i in range(LINES)] + ["bye"]
                assert [line.text for line in said] == expected, (user, speaker)
                assert {line.via for line in said} == {instance}
            assert lines == reference  # one chat: the same order everywhere
        # Half of what each member saw crossed from the other instance.
        via = {line.via for line in reference}
        assert via == {"A", "B"}


async def test_members_on_two_instances_see_one_chat(valkey_server: ValkeyServerProcess) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            urls: dict[str, str] = {}
            servers = []
            for name in ("A", "B"):
                pubsub = ValkeyPubSub.from_url(valkey_server.url)
                router = build_router(name, pubsub)
                server = await nursery.start(
                    serve(
                        router,
                        host="127.0.0.1",
                        port=0,
                        authenticate=authenticate,
                        handle_signals=False,
                    )
                )
                await pubsub.wait_healthy()
                urls[name] = server.url
                servers.append(server)
            assert urls["A"] != urls["B"]
            await one_chat(urls)
            with pytest.raises(ConnectError) as refused:
                async with open_member(urls["A"], "no spaces"):
                    pass  # pragma: no cover
            assert refused.value.status == 401
            for server in servers:
                await server.aclose(grace=0)


@asynccontextmanager
async def launched() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Run ``python -m examples.multi_instance`` (``PORT=0``) until it says ``ready``;
    yield the Valkey URL and the instances' URLs; then Ctrl-C it and expect exit 0."""
    env = {**os.environ, "PORT": "0", "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "examples.multi_instance"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        output = b""
        with trio.fail_after(30):
            while b"ready" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"the launcher exited before it was ready: {output!r}"
                output += chunk
        text = output.decode()
        valkey = re.search(r"^valkey listening on (valkey://127\.0\.0\.1:\d+)$", text, re.M)
        assert valkey, text
        urls = dict(
            re.findall(
                r"^instance ([AB]): multi-instance server listening on (ws://127\.0\.0\.1:\d+)$",
                text,
                re.M,
            )
        )
        assert sorted(urls) == ["A", "B"], text
        yield valkey[1], urls
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_one_command_runs_valkey_and_two_server_processes() -> None:
    with trio.fail_after(60):
        async with launched() as (valkey_url, urls):
            await one_chat(urls)
        # Ctrl-C stopped it all: no instance, no Valkey left behind.
        for url in urls.values():
            with pytest.raises(ConnectError):
                async with open_member(url, "late"):
                    pass  # pragma: no cover
        host, port = valkey_url.removeprefix("valkey://").split(":")
        with pytest.raises(ValkeyUnavailable):
            await ValkeyConnection.connect(host, int(port), connect_timeout=2)
