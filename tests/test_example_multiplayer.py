"""examples/multiplayer: concurrent edits, presence and per-document subscriptions
converge on the server's state under last-writer-wins by server version.

Real sockets end to end; Cat talks to the server through a :class:`FlakyLink`
the test cuts to take her offline, the others directly.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from _example_cmd import example_server
from _flaky_link import FlakyLink

from examples.multiplayer.client import Multiplayer, Replica, open_multiplayer
from examples.multiplayer.server import (
    OPEN_DOC,
    PALETTE,
    Doc,
    DocSnapshot,
    Field,
    FieldChanged,
    OpenDoc,
    Player,
    Presence,
    authenticate,
    build_app,
)
from wskit_trio import Server, serve
from wskit_trio.client import Backoff, Reconnect, RpcError, open_client

FAST = Reconnect(backoff=Backoff(initial=0.01, max=0.05))
BOARD = "board-1"


@asynccontextmanager
async def game_server() -> AsyncIterator[tuple[Server[Player], dict[str, Doc]]]:
    router, docs = build_app()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(router, host="127.0.0.1", port=0, handle_signals=False, authenticate=authenticate)
        )
        yield server, docs
        await server.aclose(grace=0)


def names(replica: Replica) -> list[str]:
    return [who.name for who in replica.present]


def server_names(doc: Doc) -> list[str]:
    return sorted(who.name for who in doc.present.values())


async def converge(doc: Doc, *players: Multiplayer) -> None:
    """Wait until no edit is in flight, then until every replica has seen the
    document's last version; then check they are all identical to the server's."""
    for player in players:
        await player.wait_until(lambda p: not p.docs[doc.doc_id].pending)
    for player in players:
        await player.wait_until(lambda p: p.docs[doc.doc_id].version == doc.version)
    for player in players:
        replica = player.docs[doc.doc_id]
        assert replica.fields == doc.fields, player.name
        assert replica.view == replica.values == {k: f.value for k, f in doc.fields.items()}
        assert set(replica.present) == set(doc.present.values()), player.name


def last_writes(*replicas: Replica) -> dict[str, FieldChanged]:
    """Per field, the edit with the highest server version anyone saw broadcast."""
    last: dict[str, FieldChanged] = {}
    for replica in replicas:
        for event in replica.log:
            seen = last.get(event.field)
            if seen is None or event.state.version > seen.state.version:
                last[event.field] = event
    return last


async def test_concurrent_edits_presence_and_subscriptions_converge() -> None:
    with trio.fail_after(10):
        async with game_server() as (server, docs), trio.open_nursery() as nursery:
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_multiplayer(server.url, "ann", reconnect=FAST) as ann,
                open_multiplayer(server.url, "ben", reconnect=FAST) as ben,
                open_multiplayer(link.url, "cat", reconnect=FAST) as cat,
                open_multiplayer(server.url, "dora", reconnect=FAST) as dora,
            ):
                players = (ann, ben, cat)
                for player in players:
                    await player.open(BOARD)
                await dora.open("board-2")
                board = docs[BOARD]

                # Presence: everyone on board-1 sees the same three people.
                for player in players:
                    await player.wait_until(lambda p: names(p.docs[BOARD]) == ["ann", "ben", "cat"])
                assert server_names(board) == ["ann", "ben", "cat"]
                assert names(dora.docs["board-2"]) == ["dora"]
                # Per-connection data: each connection's name and colour, as joined.
                colours = {who.name: who.color for who in board.present.values()}
                assert colours == {p.name: PALETTE[sum(p.name.encode()) % 7] for p in players}

                # Everyone edits the same fields at once.
                async with trio.open_nursery() as editors:
                    for player in players:
                        for i in range(8):
                            field = ("title", "color", "size")[i % 3]
                            editors.start_soon(player.edit, BOARD, field, f"{player.name}-{i}")
                    editors.start_soon(dora.edit, "board-2", "title", "elsewhere")
                await converge(board, *players)
                # Last writer wins per field, by server version.
                last = last_writes(*(p.docs[BOARD] for p in players))
                assert set(last) == {"title", "color", "size"}
                for field, event in last.items():
                    assert board.fields[field] == event.state
                assert board.version == 3 + 24  # three joins, 24 edits

                # Subscriptions are per document: no event crosses between boards.
                await converge(docs["board-2"], dora)
                assert {e.doc_id for e in dora.docs["board-2"].log} == {"board-2"}
                assert all(e.doc_id == BOARD for p in players for e in p.docs[BOARD].log)
                assert BOARD not in dora.docs and "board-2" not in ann.docs

                # Cat drops off the network: the others see her leave.
                title_seen = cat.docs[BOARD].fields["title"].version
                link.cut()
                for player in (ann, ben):
                    await player.wait_until(lambda p: names(p.docs[BOARD]) == ["ann", "ben"])
                # Offline she edits the title, based on the version she saw; meanwhile
                # Ann edits it too. Cat's edit reaches the server later, so it wins,
                # and it is flagged as overwriting a value Cat had not seen.
                await cat.edit(BOARD, "title", "cat-offline")
                assert cat.docs[BOARD].view["title"] == "cat-offline"  # shown at once
                await ann.edit(BOARD, "title", "ann-while-cat-away")
                await ann.wait_until(lambda p: not p.docs[BOARD].pending)
                link.restore()
                for player in players:
                    await player.wait_until(lambda p: names(p.docs[BOARD]) == ["ann", "ben", "cat"])
                await converge(board, *players)
                title = board.fields["title"]
                assert (title.value, title.author) == ("cat-offline", "cat")
                ann_saw = [e for e in ann.docs[BOARD].log if e.field == "title"][-2:]
                assert [e.state.value for e in ann_saw] == ["ann-while-cat-away", "cat-offline"]
                assert ann_saw[1].conflict  # Cat's edit was based on an older title
                assert not ann_saw[0].conflict
                assert title_seen < ann_saw[0].state.version < title.version

                # Ben closes the board: the others see him go, he sees nothing more.
                await ben.close(BOARD)
                await ann.wait_until(lambda p: names(p.docs[BOARD]) == ["ann", "cat"])
                await ann.edit(BOARD, "size", "XL")
                await converge(board, ann, cat)
                assert BOARD not in ben.docs and server_names(board) == ["ann", "cat"]
            nursery.cancel_scope.cancel()


async def test_merge_is_order_independent() -> None:
    """A replica ends the same whatever order the snapshot and events arrive in."""
    events = [
        FieldChanged("d", "title", Field(f"v{v}", v, "ann", f"e{v}"), conflict=False)
        for v in (1, 2, 4, 5)
    ]
    ben = Presence("c-ben", "ben", "#fff", 3)
    snapshot = DocSnapshot("d", 4, {"title": events[2].state}, [ben])
    rng = random.Random(7)
    results = set()
    for _ in range(50):
        replica = Replica("d")
        steps: list[FieldChanged | DocSnapshot] = [*events, snapshot]
        rng.shuffle(steps)
        for step in steps:
            if isinstance(step, DocSnapshot):
                replica.merge_snapshot(step)
            else:
                replica.on_changed(step)
        results.add((replica.fields["title"], tuple(replica.present), replica.version))
    assert results == {(events[3].state, (ben,), 5)}


async def test_open_doc_refuses_a_bad_id() -> None:
    with trio.fail_after(10):
        async with game_server() as (server, _), open_client(server.url, auth=lambda: "x") as c:
            with pytest.raises(RpcError) as err:
                await c.request(OPEN_DOC, OpenDoc("no spaces please"))
            assert err.value.code == "INVALID_ARGUMENT"


async def test_multiplayer_runs_with_its_one_command() -> None:
    async with example_server("examples.multiplayer.server", "multiplayer") as url:
        with trio.fail_after(10):
            async with open_multiplayer(url, "probe") as player:
                replica = await player.open("board-1")
                assert names(replica) == ["probe"]
                await player.edit("board-1", "title", "hi")
                await player.wait_until(lambda p: not replica.pending)
                assert replica.values == {"title": "hi"}
