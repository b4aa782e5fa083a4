"""The client side of delta sync, and a small terminal client on top of it.

    python -m examples.delta_sync.client alice [ws://127.0.0.1:3020]

then type ``title Hello`` (set a key), ``-title`` (delete it) or an empty line
(show the document). :func:`open_delta_sync` is the reusable part:

* ``confirmed`` is the server's state at revision ``rev``; deltas are applied
  in revision order (one that skips ahead waits for the missing ones), ones
  already applied are ignored, and a snapshot replaces everything;
* ``set()``/``delete()`` apply at once to the ``view`` (``confirmed`` plus the
  pending changes, in order) and are sent with a ``clientReqId``. A change
  stops being pending when its operation comes back in a delta (or, if a
  snapshot swallowed it, when its ack does), or is rolled back when rejected;
* on every (re)connect the client sends ``SYNC`` with its revision, then
  re-sends its pending changes (the server applies each id once).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from wskit_trio.client import Client, ClientState, InboundMessage, Reconnect, open_client

from .server import (
    REVISION_GAP,
    SYNC,
    SYNC_DELTAS,
    SYNC_SNAPSHOT,
    UPDATE,
    UPDATE_ACK,
    UPDATE_REJECTED,
    RevisionGap,
    Sync,
    SyncDeltas,
    SyncSnapshot,
    Update,
    UpdateAck,
    UpdateRejected,
)


@attrs.define
class Pending:
    """A local change the server has not confirmed yet."""

    update: Update
    #: The connection it was last sent on (0: not sent yet).
    sent_on: int = 0


class DeltaSync:
    """One client's copy of the document: the server's state at ``rev`` plus its own
    pending changes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rev = 0
        #: The server's state at ``rev``.
        self.confirmed: dict[str, str] = {}
        self.pending: dict[str, Pending] = {}  # by clientReqId, in the order made
        #: ``(fromRev, toRev, number of operations)`` of every delta received.
        self.deltas: list[tuple[int, int, int]] = []
        #: The revision of every snapshot received.
        self.snapshots: list[int] = []
        self.gaps: list[RevisionGap] = []
        self.rejected: list[UpdateRejected] = []
        #: Deltas received again after they were applied (and ignored).
        self.redundant = 0
        self._held: dict[int, SyncDeltas] = {}  # deltas that skipped ahead, by fromRev
        self._client: Client | None = None
        self._live = False
        self._opened = trio.Event()
        self._send_lock = trio.Lock()
        self._changed = trio.Event()

    # -- what the application calls ----------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "not attached to a client"
        return self._client

    @property
    def live(self) -> bool:
        """Synced on the current connection: changes go out as they are made."""
        return self._live

    @property
    def view(self) -> dict[str, str]:
        """What the user sees: the confirmed state with the pending changes applied."""
        state = dict(self.confirmed)
        for pending in self.pending.values():
            _apply(state, pending.update.key, pending.update.value)
        return state

    async def set(self, key: str, value: str | None) -> str:
        """Change ``key`` (``None`` deletes it) optimistically; returns its clientReqId."""
        req_id = str(uuid.uuid4())
        self.pending[req_id] = Pending(Update(req_id, key, value))
        self._notify()
        async with self._send_lock:
            await self._flush()
        return req_id

    async def delete(self, key: str) -> str:
        return await self.set(key, None)

    async def wait_until(self, predicate: Callable[[DeltaSync], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    # -- wiring ---------------------------------------------------------------------

    def on_state(self, state: ClientState) -> None:
        """Pass to ``open_client(on_state=...)``: a new connection starts a sync."""
        if state is ClientState.OPEN:
            self._opened.set()
        elif self._live:
            self._live = False
            self._notify()

    def attach(self, client: Client) -> None:
        self._client = client
        client.on(SYNC_DELTAS, lambda msg: self.receive_deltas(msg.payload))
        client.on(SYNC_SNAPSHOT, lambda msg: self.receive_snapshot(msg.payload))
        client.on(REVISION_GAP, self._on_gap)
        client.on(UPDATE_ACK, self._on_ack)
        client.on(UPDATE_REJECTED, self._on_rejected)

    async def run(self) -> None:
        """Sync on every new connection, until cancelled."""
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            client = self._client
            if client is None:
                continue
            connection = client.statistics().connects
            async with self._send_lock:
                self._live = False
                await client.send(SYNC, Sync(self.rev))
                self._live = client.is_open and client.statistics().connects == connection
                await self._flush()  # every pending change again, in order
            self._notify()

    async def _flush(self) -> None:
        """Send each pending change not yet sent on this connection (lock held)."""
        client = self._client
        if client is None:
            return
        connection = client.statistics().connects
        for pending in list(self.pending.values()):
            if not self._live:
                return
            if pending.sent_on != connection and pending.update.client_req_id in self.pending:
                pending.sent_on = connection
                await client.send(UPDATE, pending.update)

    # -- receiving --------------------------------------------------------------------

    def receive_deltas(self, batch: SyncDeltas) -> None:
        """Apply ``batch`` if it starts at or before ``rev``; hold it if it skips ahead."""
        self.deltas.append((batch.from_rev, batch.to_rev, len(batch.operations)))
        self._merge(batch)
        self._notify()

    def _merge(self, batch: SyncDeltas) -> None:
        if batch.to_rev <= self.rev and batch.operations:
            self.redundant += 1
            return
        if batch.from_rev > self.rev:
            self._held[batch.from_rev] = batch
            return
        for op in batch.operations:
            if op.rev <= self.rev:
                continue
            _apply(self.confirmed, op.key, op.value)
            self.rev = op.rev
            if op.client_req_id is not None and op.author == self.name:
                self.pending.pop(op.client_req_id, None)  # ours, now confirmed
        self.rev = max(self.rev, batch.to_rev)
        self._drain()

    def _drain(self) -> None:
        for from_rev in sorted(self._held):
            if from_rev > self.rev:
                break
            self._merge(self._held.pop(from_rev))

    def receive_snapshot(self, snapshot: SyncSnapshot) -> None:
        """Replace the confirmed state; pending changes stay (they are re-sent, and
        the server applies each once)."""
        self.snapshots.append(snapshot.rev)
        self.confirmed = dict(snapshot.entries)
        self.rev = snapshot.rev
        self._held = {k: v for k, v in self._held.items() if v.to_rev > self.rev}
        self._drain()
        self._notify()

    def _on_gap(self, msg: InboundMessage[RevisionGap]) -> None:
        self.gaps.append(msg.payload)  # the snapshot follows
        self._notify()

    def _on_ack(self, msg: InboundMessage[UpdateAck]) -> None:
        ack = msg.payload
        # The delta with this change is applied already (or its effect came in a
        # snapshot): nothing is pending any more. Otherwise the delta is on its way.
        if ack.rev <= self.rev:
            self.pending.pop(ack.client_req_id, None)
        self._notify()

    def _on_rejected(self, msg: InboundMessage[UpdateRejected]) -> None:
        self.rejected.append(msg.payload)
        self.pending.pop(msg.payload.client_req_id, None)  # rolled back
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _apply(state: dict[str, str], key: str, value: str | None) -> None:
    if value is None:
        state.pop(key, None)
    else:
        state[key] = value


@asynccontextmanager
async def open_delta_sync(
    url: str, name: str, *, reconnect: Reconnect | bool = True
) -> AsyncIterator[DeltaSync]:
    """Sync the document at ``url`` as ``name`` for the block (it starts once the
    first sync has been sent)."""
    doc = DeltaSync(name)
    # queue="off": pending changes are kept and re-sent by DeltaSync itself.
    async with open_client(
        url, auth=lambda: name, queue="off", reconnect=reconnect, on_state=doc.on_state
    ) as client:
        doc.attach(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(doc.run)
            await doc.wait_until(lambda d: d.live)
            yield doc
            nursery.cancel_scope.cancel()


async def main(name: str, url: str) -> None:
    async with open_delta_sync(url, name) as doc:
        async for line in trio.wrap_file(sys.stdin):
            text = line.strip()
            if text.startswith("-"):
                await doc.delete(text[1:])
            elif text:
                key, _, value = text.partition(" ")
                await doc.set(key, value)
            print(f"rev {doc.rev}: {doc.view}", flush=True)
        await doc.wait_until(lambda d: not d.pending)
        print(f"rev {doc.rev}: {doc.view}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "ws://127.0.0.1:3020",
    )
