"""examples/delta_sync: deltas since a revision, a snapshot past the ring buffer,
optimistic changes reconciled, every client converging on the server's state.

Real sockets end to end; Cat talks to the server through a :class:`FlakyLink`
the test cuts to take her offline, Ann and Ben directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from _example_cmd import example_server
from _flaky_link import FlakyLink

from examples.delta_sync.client import DeltaSync, open_delta_sync
from examples.delta_sync.server import (
    SYNC,
    SYNC_DELTAS,
    UPDATE,
    Document,
    RevisionGap,
    Sync,
    SyncDeltas,
    Update,
    User,
    authenticate,
    build_app,
)
from wskit_trio import Server, serve
from wskit_trio.client import Backoff, Reconnect, open_client

FAST = Reconnect(backoff=Backoff(initial=0.01, max=0.05))
BUFFER = 8


@asynccontextmanager
async def doc_server(buffer_size: int = BUFFER) -> AsyncIterator[tuple[Server[User], Document]]:
    router, doc = build_app(buffer_size)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(router, host="127.0.0.1", port=0, handle_signals=False, authenticate=authenticate)
        )
        yield server, doc
        await server.aclose(grace=0)


async def settle(doc: Document, *clients: DeltaSync) -> None:
    """Wait until no client has a change in flight, then until each holds the
    server's final revision; then check they all converged on the server's state."""
    for client in clients:
        await client.wait_until(lambda c: not c.pending)
    for client in clients:
        await client.wait_until(lambda c: c.rev == doc.rev)
    for client in clients:
        assert client.confirmed == client.view == doc.entries, client.name


async def test_deltas_snapshot_after_the_buffer_and_optimistic_changes_converge() -> None:
    with trio.fail_after(10):
        async with doc_server() as (server, doc), trio.open_nursery() as nursery:
            link = FlakyLink(server.port)
            await nursery.start(link.run)
            async with (
                open_delta_sync(server.url, "ann", reconnect=FAST) as ann,
                open_delta_sync(server.url, "ben", reconnect=FAST) as ben,
                open_delta_sync(link.url, "cat", reconnect=FAST) as cat,
            ):
                everyone = (ann, ben, cat)
                await ann.set("title", "Draft")
                await ben.set("owner", "ben")
                await settle(doc, *everyone)
                assert doc.entries == {"title": "Draft", "owner": "ben"} and doc.rev == 2

                # Concurrent writes to the same keys: the last one the server applied
                # wins, and every client ends with exactly that.
                async with trio.open_nursery() as writers:
                    for client in everyone:
                        for i in range(5):
                            writers.start_soon(client.set, "color", f"{client.name}-{i}")
                            writers.start_soon(client.set, f"{client.name}-{i}", "x")
                await settle(doc, *everyone)
                last_color = max((op for op in doc.ops if op.key == "color"), key=lambda o: o.rev)
                assert doc.entries["color"] == last_color.value
                await ann.delete("title")

                # A rejected optimistic change shows at once, then is rolled back.
                await ben.set("locked:motd", "hi")
                await ben.wait_until(lambda c: bool(c.rejected))
                assert [r.code for r in ben.rejected] == ["PERMISSION_DENIED"]
                assert "locked:motd" not in ben.view and not ben.pending
                await settle(doc, *everyone)
                assert "title" not in doc.entries

                # Cat goes offline; her own change shows at once (optimistically)...
                link.cut()
                await cat.wait_until(lambda c: not c.live)
                rev_before = cat.rev
                await cat.set("title", "Cat's title")
                assert cat.view["title"] == "Cat's title" and "title" not in cat.confirmed
                # ...and 3 changes later (within the buffer) she gets just those 3
                # (plus her own): deltas only, no snapshot.
                for i in range(3):
                    await ann.set("counter", str(i))
                await ann.wait_until(lambda c: not c.pending)
                seen = len(cat.deltas)
                link.restore()
                await settle(doc, *everyone)
                assert cat.deltas[seen] == (rev_before, rev_before + 3, 3)
                assert cat.snapshots == [] and cat.gaps == []
                assert doc.entries["title"] == "Cat's title"

                # Offline again, and this time the document moves on by more than
                # the ring buffer holds: a revision-gap notice, then a snapshot.
                link.cut()
                await cat.wait_until(lambda c: not c.live)
                rev_before = cat.rev
                await cat.set("note", "written offline")
                for i in range(BUFFER + 4):
                    await ben.set("counter", f"ben-{i}")
                await ben.wait_until(lambda c: not c.pending)
                server_rev = doc.rev
                snapshots_sent = doc.snapshots_sent
                link.restore()
                await settle(doc, *everyone)
                assert cat.gaps == [
                    RevisionGap(
                        expected_rev=rev_before + 1,
                        server_rev=server_rev,
                        buffer_first_rev=server_rev - BUFFER + 1,
                        resume_from=server_rev,
                    )
                ]
                assert cat.snapshots == [server_rev]
                assert doc.snapshots_sent == snapshots_sent + 1
                assert doc.entries["note"] == "written offline"  # her change survived
                assert doc.entries["counter"] == f"ben-{BUFFER + 3}"
                # Ann and Ben stayed online: only ever deltas.
                assert ann.snapshots == ben.snapshots == []
                assert not any(c.rejected for c in (ann, cat))
                # Nobody was ever sent an operation it already had.
                assert [c.redundant for c in everyone] == [0, 0, 0]
            nursery.cancel_scope.cancel()


async def test_a_current_client_gets_an_empty_delta_and_a_resend_is_applied_once() -> None:
    with trio.fail_after(10):
        async with (
            doc_server() as (server, doc),
            open_delta_sync(server.url, "dan") as dan,
            open_client(server.url, auth=lambda: "eve") as eve,
        ):
            await dan.set("a", "1")
            await settle(doc, dan)
            send_delta, deltas = trio.open_memory_channel[SyncDeltas](10)
            eve.on(SYNC_DELTAS, lambda msg: send_delta.send_nowait(msg.payload))
            await eve.send(SYNC, Sync(doc.rev))
            assert await deltas.receive() == SyncDeltas(1, 1, [])  # current: nothing to send

            # Dan's change goes again (as after a lost ack): acknowledged, not re-applied.
            [op] = doc.ops
            assert op.client_req_id is not None
            await dan.client.send(UPDATE, Update(op.client_req_id, "a", "1"))
            await dan.set("b", "2")  # handled after the re-send (same connection)
            await settle(doc, dan)
            assert doc.entries == {"a": "1", "b": "2"} and doc.rev == 2
            delta = await deltas.receive()  # Eve sees only the one new operation
            assert (delta.from_rev, delta.to_rev) == (1, 2)
            assert [op.key for op in delta.operations] == ["b"]


async def test_delta_sync_runs_with_its_one_command() -> None:
    async with example_server("examples.delta_sync.server", "delta-sync") as url:
        with trio.fail_after(10):
            async with open_delta_sync(url, "probe") as doc:
                await doc.set("hello", "world")
                await doc.wait_until(lambda d: not d.pending)
                assert doc.confirmed == {"hello": "world"} and doc.rev == 1
