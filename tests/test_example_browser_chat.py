"""examples/browser_chat in a real browser: two headless Chromium tabs load the page
the example serves, join a room, chat both ways, watch an RPC's progress, and come
back by themselves (re-joined) after the server restarts on the same port.

The example runs with its README's command; Chromium is driven over the DevTools
protocol (``_cdp``). Every wait is a condition on the page's DOM, bounded. The last
screen of each tab is saved next to the test's tmp files and, for a look without
digging, at ``tests/artifacts/browser_chat.png`` (Alice) and
``tests/artifacts/browser_chat_bob.png`` (git ignores ``tests/artifacts/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import trio
import trio.testing
from _cdp import Tab, open_browser
from _example_cmd import ROOT, example_server

from examples.browser_chat import server as chat
from wskit_trio.testing import open_test_app

MODULE = "examples.browser_chat.server"
NAME = "browser-chat"
ARTIFACTS = ROOT / "tests" / "artifacts"
#: Bound on each wait for the page.
STEP = 5
#: Bound on the wait for a tab to come back: its backoff (4 s at most) and a join.
RECONNECT = 10


def page_url(ws_url: str, name: str) -> str:
    port = urlsplit(ws_url).port
    return f"http://127.0.0.1:{port}/?name={name}&room=lobby"


def js(value: object) -> str:
    return json.dumps(value)


def texts(selector: str) -> str:
    """JavaScript: the text of each element ``selector`` matches, as an array."""
    return f"[...document.querySelectorAll({js(selector)})].map((e) => e.textContent)"


async def wait_for(page: Tab, predicate: str, *, after: str = "", bound: float = STEP) -> object:
    with trio.fail_after(bound):
        return await page.wait_for(predicate, after=after)


async def join(page: Tab) -> None:
    await page.click("#join")
    await wait_for(page, "document.querySelector('#status').dataset.state === 'joined'")


async def members(page: Tab, *expected: str) -> None:
    await wait_for(page, f"{texts('#members li')}.join() === {js(','.join(expected))}")


async def say(page: Tab, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def shows_message(page: Tab, line: str) -> None:
    """``line`` (``"user: text"``) is in the page's chat log, exactly once."""
    await wait_for(page, f"{texts('#log li.msg')}.includes({js(line)})")
    assert (await page.evaluate(texts("#log li.msg"))).count(line) == 1


async def chat_both_ways(alice: Tab, bob: Tab, round: str) -> None:
    await say(alice, f"hello from alice ({round})")
    await shows_message(bob, f"alice: hello from alice ({round})")
    await shows_message(alice, f"alice: hello from alice ({round})")  # everyone, her too
    await say(bob, f"hi alice, bob here ({round})")
    await shows_message(alice, f"bob: hi alice, bob here ({round})")
    await shows_message(bob, f"bob: hi alice, bob here ({round})")


async def roll_dice(page: Tab, dice: int) -> None:
    """Roll: the dice show as they land (progress), before the reply's total."""
    await page.fill("#dice", str(dice))
    # Watched from the click on: the page showed dice while still rolling, so a
    # progress frame reached it (and was drawn) before the reply.
    landed = await wait_for(
        page,
        "document.querySelector('#dice-total').dataset.state === 'rolling'"
        " && Number(document.querySelector('#dice-rolls').dataset.progress)",
        after="document.querySelector('#roll').click()",
    )
    assert isinstance(landed, int) and 1 <= landed < dice
    await wait_for(page, "document.querySelector('#dice-total').dataset.state === 'done'")
    progress = await page.evaluate("document.querySelector('#dice-rolls').dataset.progress")
    assert progress == str(dice)  # one progress frame per die
    glyphs = await page.evaluate("[...document.querySelector('#dice-rolls').textContent]")
    title = await page.evaluate("document.querySelector('#dice-rolls').title")
    faces = [int(n) for n in title.split(" + ")]
    assert len(faces) == len(glyphs) == dice and all(1 <= n <= 6 for n in faces)
    assert glyphs == [chr(0x2680 + n - 1) for n in faces]  # one die face each
    total = await page.evaluate("document.querySelector('#dice-total').textContent")
    assert total == f"{title} = {sum(faces)}"


# -- the contract the page relies on, in memory ---------------------------------------


async def test_join_say_roll_and_refusals_in_memory(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(5):
        router = chat.build_router()
        async with open_test_app(router, authenticate=chat.authenticate, path="/ws") as app:
            alice = await app.connect(path="/ws?access_token=alice")
            bob = await app.connect(path="/ws?access_token=bob")

            await alice.send(chat.SAY, chat.Say("anyone?"))
            assert (await alice.receive_error()).error_code == "FAILED_PRECONDITION"
            await alice.request(chat.JOIN, chat.Join("no spaces"))
            assert (await alice.receive_error()).error_code == "INVALID_ARGUMENT"

            cid = await alice.request(chat.JOIN, chat.Join("lobby"))
            reply = await alice.receive()
            assert (reply.type, reply.correlation_id) == ("JOINED", cid)
            assert reply.payload == {"roomId": "lobby", "user": "alice", "members": ["alice"]}
            await bob.request(chat.JOIN, chat.Join("lobby"))
            assert (await bob.receive()).payload["members"] == ["alice", "bob"]
            joined = await alice.receive_payload(chat.USER_JOINED)
            assert joined == chat.Presence("lobby", "bob", ["alice", "bob"])

            await bob.send(chat.SAY, chat.Say("  hi  "))
            said = chat.RoomMessage("lobby", "bob", "hi")
            assert await alice.receive_payload(chat.ROOM_MESSAGE) == said
            assert await bob.receive_payload(chat.ROOM_MESSAGE) == said  # the sender too

            # ROLL: one progress frame per die, each with every die so far, then the reply.
            cid = await alice.request(chat.ROLL, chat.Roll(3))
            frames = [await alice.receive() for _ in range(4)]
            assert [f.type for f in frames] == ["$ws:rpc-progress"] * 3 + ["ROLLED"]
            assert {f.correlation_id for f in frames} == {cid}
            rolls = frames[-1].payload["rolls"]
            assert len(rolls) == 3 and frames[-1].payload["total"] == sum(rolls)
            assert [f.payload["rolls"] for f in frames[:3]] == [rolls[:1], rolls[:2], rolls]
            await alice.request(chat.ROLL, chat.Roll(chat.MAX_DICE + 1))
            assert (await alice.receive_error()).error_code == "INVALID_ARGUMENT"

            await bob.close()
            left = await alice.receive_payload(chat.USER_LEFT)
            assert left == chat.Presence("lobby", "bob", ["alice"])


# -- in Chromium ------------------------------------------------------------------------


async def test_two_browsers_chat_roll_and_survive_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with open_browser(tmp_path / "profile") as browser:
            async with example_server(MODULE, NAME) as url:
                port = urlsplit(url).port
                assert port is not None
                alice = await browser.new_tab(page_url(url, "alice"))
                bob = await browser.new_tab(page_url(url, "bob"))

                await join(alice)
                await members(alice, "alice")
                await join(bob)
                await members(bob, "alice", "bob")
                await members(alice, "alice", "bob")  # USER_JOINED reached her
                await chat_both_ways(alice, bob, "first")
                await roll_dice(alice, 5)
            # The server stopped (Ctrl-C: a graceful close, 1001): both pages notice.
            for page in (alice, bob):
                await wait_for(
                    page,
                    f"{texts('#log li.event')}.some((t) => t.includes('server is going away'))",
                )
                await wait_for(page, "document.querySelector('#status').dataset.state !== 'joined'")

            async with example_server(MODULE, NAME, port=port):
                # Back by themselves: reconnected (a second connection) and re-joined.
                for page in (alice, bob):
                    await wait_for(
                        page,
                        "document.querySelector('#status').dataset.state === 'joined'"
                        " && document.querySelector('#status').dataset.connects === '2'",
                        bound=RECONNECT,
                    )
                    await wait_for(
                        page,
                        f"{texts('#log li.event')}.filter((t) => t === 'you joined lobby')"
                        ".length === 2",
                    )
                await members(alice, "alice", "bob")
                await members(bob, "alice", "bob")
                await chat_both_ways(alice, bob, "after the restart")
                await roll_dice(bob, 3)

                for page, name in ((alice, "browser_chat.png"), (bob, "browser_chat_bob.png")):
                    with trio.fail_after(STEP):
                        shot = await page.screenshot()
                    assert shot.startswith(b"\x89PNG\r\n\x1a\n")
                    for where in (tmp_path / name, ARTIFACTS / name):
                        await trio.Path(where.parent).mkdir(parents=True, exist_ok=True)
                        await trio.Path(where).write_bytes(shot)
                assert alice.errors == [] and bob.errors == []
