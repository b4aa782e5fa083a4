"""The client side of multiplayer editing, and a small terminal client on top of it.

    python -m examples.multiplayer.client alice [board-1] [ws://127.0.0.1:3030]

then type ``title Hello`` to set a field; every change and who is here is
printed. :func:`open_multiplayer` is the reusable part:

* each open document is a :class:`Replica`: per field, and per member of the
  presence list, it keeps what has the highest server version, so live
  events and snapshots merge in any order and every replica converges;
* ``edit()`` shows at once (``view`` overlays the edits not yet acknowledged)
  and is acknowledged by ``EDIT_ACK``;
* on every (re)connect the client re-opens its documents (subscriptions
  belong to a connection), merges their snapshots, then re-sends the
  unacknowledged edits (the server applies each edit id once).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from wskit_trio.client import (
    Client,
    ClientState,
    ConnectionClosed,
    InboundMessage,
    Reconnect,
    RequestTimeout,
    RpcError,
    open_client,
)

from .server import (
    CLOSE_DOC,
    EDIT,
    EDIT_ACK,
    FIELD_CHANGED,
    OPEN_DOC,
    PRESENCE_JOINED,
    PRESENCE_LEFT,
    CloseDoc,
    DocSnapshot,
    Edit,
    EditAck,
    Field,
    FieldChanged,
    OpenDoc,
    Presence,
    PresenceJoined,
    PresenceLeft,
)

log = logging.getLogger(__name__)


@attrs.define
class PendingEdit:
    edit: Edit
    #: The connection it was last sent on (0: not sent yet).
    sent_on: int = 0


class Replica:
    """One document as this client sees it. Merging is last-writer-wins by server
    version, so the order in which snapshots and events arrive does not matter."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        #: The highest server version seen.
        self.version = 0
        self.fields: dict[str, Field] = {}
        #: Edits made here and not acknowledged yet, by edit id, in the order made.
        self.pending: dict[str, PendingEdit] = {}
        #: Every edit of this document seen, in arrival order.
        self.log: list[FieldChanged] = []
        self._members: dict[str, tuple[int, Presence | None]] = {}

    @property
    def values(self) -> dict[str, str]:
        """The confirmed value of every field."""
        return {name: state.value for name, state in self.fields.items()}

    @property
    def view(self) -> dict[str, str]:
        """What the user sees: the confirmed values with the pending edits on top."""
        values = self.values
        for pending in self.pending.values():
            values[pending.edit.field] = pending.edit.value
        return values

    @property
    def present(self) -> list[Presence]:
        """Who has the document open, by name."""
        members = (who for _, who in self._members.values() if who is not None)
        return sorted(members, key=lambda p: (p.name, p.client_id))

    def merge_field(self, name: str, state: Field) -> None:
        current = self.fields.get(name)
        if current is None or state.version > current.version:
            self.fields[name] = state
        self.version = max(self.version, state.version)

    def merge_member(self, client_id: str, version: int, who: Presence | None) -> None:
        """``who`` is ``None`` for a leave; the higher version wins."""
        current = self._members.get(client_id)
        if current is None or version > current[0]:
            self._members[client_id] = (version, who)
        self.version = max(self.version, version)

    def merge_snapshot(self, snapshot: DocSnapshot) -> None:
        for name, state in snapshot.fields.items():
            self.merge_field(name, state)
        # The snapshot is the whole truth up to its version: members it does not
        # list have left (maybe while we were away); newer events still count.
        self._members = {
            client_id: entry
            for client_id, entry in self._members.items()
            if entry[0] > snapshot.version
        }
        for who in snapshot.present:
            self.merge_member(who.client_id, who.version, who)
        self.version = max(self.version, snapshot.version)

    def on_changed(self, event: FieldChanged) -> None:
        self.log.append(event)
        self.merge_field(event.field, event.state)


class Multiplayer:
    """One player's connection to the documents they have open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: dict[str, Replica] = {}
        self._client: Client | None = None
        self._live = False
        self._opened_on: dict[str, int] = {}
        self._opened = trio.Event()
        self._lock = trio.Lock()
        self._changed = trio.Event()

    # -- what the application calls ----------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "not attached to a client"
        return self._client

    @property
    def live(self) -> bool:
        """The documents are open on the current connection."""
        return self._live

    async def open(self, doc_id: str) -> Replica:
        """Open ``doc_id`` (subscribe, join its presence, merge its snapshot)."""
        replica = self.docs.setdefault(doc_id, Replica(doc_id))
        async with self._lock:
            if self._live:
                try:
                    await self._open_on_server(doc_id)
                except RpcError:
                    self.docs.pop(doc_id, None)  # refused (a bad id, say)
                    raise
        return replica

    async def close(self, doc_id: str) -> None:
        """Leave ``doc_id``: no more of its events, and others see us go."""
        self.docs.pop(doc_id, None)
        self._opened_on.pop(doc_id, None)
        async with self._lock:
            if self._live:
                await self.client.send(CLOSE_DOC, CloseDoc(doc_id))
        self._notify()

    async def edit(self, doc_id: str, field: str, value: str) -> str:
        """Set ``field`` of an open document; shown at once, returns the edit id."""
        replica = self.docs[doc_id]
        seen = replica.fields.get(field)
        edit = Edit(doc_id, field, value, str(uuid.uuid4()), seen.version if seen else 0)
        replica.pending[edit.edit_id] = PendingEdit(edit)
        self._notify()
        async with self._lock:
            await self._flush()
        return edit.edit_id

    async def wait_until(self, predicate: Callable[[Multiplayer], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Wait for the next change of anything (a document, presence, pending edits)."""
        await self._changed.wait()

    # -- wiring ---------------------------------------------------------------------

    def on_state(self, state: ClientState) -> None:
        """Pass to ``open_client(on_state=...)``: a new connection re-opens the docs."""
        if state is ClientState.OPEN:
            self._opened.set()
        elif self._live:
            self._live = False
            self._notify()

    def attach(self, client: Client) -> None:
        self._client = client
        client.on(FIELD_CHANGED, self._on_changed)
        client.on(EDIT_ACK, self._on_ack)
        client.on(PRESENCE_JOINED, self._on_joined)
        client.on(PRESENCE_LEFT, self._on_left)

    async def run(self) -> None:
        """Re-open the documents on every new connection, until cancelled."""
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            client = self._client
            if client is None:
                continue
            connection = client.statistics().connects
            async with self._lock:
                self._live = client.is_open and client.statistics().connects == connection
                for doc_id in list(self.docs):
                    try:
                        await self._open_on_server(doc_id)
                    except RpcError as err:
                        log.warning("cannot re-open %s: %s", doc_id, err)
                await self._flush()  # unacknowledged edits again, in order
            self._notify()

    async def _open_on_server(self, doc_id: str) -> None:
        """(Lock held.) A lost connection is not an error here: the next one re-opens."""
        client = self.client
        try:
            snapshot = await client.request(OPEN_DOC, OpenDoc(doc_id), timeout=10)
        except (ConnectionClosed, RequestTimeout):
            return
        replica = self.docs.get(doc_id)
        if replica is not None:
            replica.merge_snapshot(snapshot)
            self._opened_on[doc_id] = client.statistics().connects
        self._notify()

    async def _flush(self) -> None:
        """(Lock held.) Send the edits not yet sent on this connection, for the
        documents open on it."""
        client = self._client
        if client is None:
            return
        connection = client.statistics().connects
        for doc_id, replica in list(self.docs.items()):
            if self._opened_on.get(doc_id) != connection:
                continue
            for pending in list(replica.pending.values()):
                if not self._live:
                    return
                if pending.sent_on != connection and pending.edit.edit_id in replica.pending:
                    pending.sent_on = connection
                    await client.send(EDIT, pending.edit)

    # -- receiving --------------------------------------------------------------------

    def _on_changed(self, msg: InboundMessage[FieldChanged]) -> None:
        replica = self.docs.get(msg.payload.doc_id)
        if replica is not None:
            replica.on_changed(msg.payload)
            self._notify()

    def _on_ack(self, msg: InboundMessage[EditAck]) -> None:
        replica = self.docs.get(msg.payload.doc_id)
        if replica is not None:
            replica.pending.pop(msg.payload.edit_id, None)
            self._notify()

    def _on_joined(self, msg: InboundMessage[PresenceJoined]) -> None:
        replica = self.docs.get(msg.payload.doc_id)
        if replica is not None:
            who = msg.payload.who
            replica.merge_member(who.client_id, who.version, who)
            self._notify()

    def _on_left(self, msg: InboundMessage[PresenceLeft]) -> None:
        left = msg.payload
        replica = self.docs.get(left.doc_id)
        if replica is not None:
            replica.merge_member(left.client_id, left.version, None)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_multiplayer(
    url: str, name: str, *, reconnect: Reconnect | bool = True
) -> AsyncIterator[Multiplayer]:
    """Connect to the multiplayer server at ``url`` as ``name`` for the block."""
    player = Multiplayer(name)
    # queue="off": unacknowledged edits are kept and re-sent by Multiplayer itself.
    async with open_client(
        url, auth=lambda: name, queue="off", reconnect=reconnect, on_state=player.on_state
    ) as client:
        player.attach(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(player.run)
            await player.wait_until(lambda p: p.live)
            yield player
            nursery.cancel_scope.cancel()


async def main(name: str, doc_id: str, url: str) -> None:
    async with open_multiplayer(url, name) as player:
        replica = await player.open(doc_id)

        async def show() -> None:
            shown = None
            while True:
                now = (replica.view, [p.name for p in replica.present])
                if now != shown:
                    shown = now
                    print(f"{doc_id} v{replica.version}: {now[0]}  here: {now[1]}", flush=True)
                await player.wait_changed()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            async for line in trio.wrap_file(sys.stdin):
                field, _, value = line.strip().partition(" ")
                if field:
                    await player.edit(doc_id, field, value)
            await player.wait_until(lambda p: not replica.pending)
            nursery.cancel_scope.cancel()
        print(f"{doc_id} v{replica.version}: {replica.view}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "board-1",
        args[2] if len(args) > 2 else "ws://127.0.0.1:3030",
    )
