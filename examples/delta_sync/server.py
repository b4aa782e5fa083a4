"""Delta sync: clients hold the state at a revision and receive only what changed.

Run it:   python -m examples.delta_sync.server        (PORT=3020 by default)
Talk:     python -m examples.delta_sync.client alice

The state is a small key/value document. Every accepted change is one
:class:`Operation` with the next revision number, kept in a ring buffer of the
most recent ``buffer_size`` operations and broadcast as a delta. A client
(re)connecting says which revision it holds (``SYNC``):

* within the buffer: it gets one ``SYNC_DELTAS`` with just the operations since
  then (nothing at all is re-sent when it is current);
* older than the buffer (or unknown): a ``REVISION_GAP`` notice, then a full
  ``SYNC_SNAPSHOT``.

Clients apply their own changes optimistically and send ``UPDATE`` with a
``clientReqId``; the server applies changes in arrival order (the last writer
of a key wins), echoes the operation with that id to everyone, and answers the
author ``UPDATE_ACK`` (``duplicate`` when a re-send was already applied) or
``UPDATE_REJECTED`` (the client rolls the change back).

A client authenticates with ``?access_token=<name>`` (demo rule: the token is
the user name). Keys under ``locked:`` are read-only, to show a rejection.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict, deque
from collections.abc import Iterator

import attrs
import trio

from wskit_trio import Context, Router, UpgradeRequest, message, serve

TOPIC = "doc"
DEFAULT_PORT = 3020
MAX_VALUE = 200


@attrs.define
class User:
    """Per-connection data."""

    name: str


@attrs.frozen
class Operation:
    """One change: set ``key`` to ``value`` (``None``: delete it) at ``rev``."""

    rev: int
    key: str
    author: str
    value: str | None = None
    #: The author's id for the change, so its optimistic copy can be reconciled.
    client_req_id: str | None = None


@attrs.frozen
class Sync:
    """Client → server on every (re)connect: the revision the client holds (0: none)."""

    rev: int


@attrs.frozen
class SyncDeltas:
    """The operations that take a client from ``fromRev`` to ``toRev``."""

    from_rev: int
    to_rev: int
    operations: list[Operation]


@attrs.frozen
class SyncSnapshot:
    rev: int
    entries: dict[str, str]


@attrs.frozen
class RevisionGap:
    """The client's revision is no longer in the buffer: a snapshot follows."""

    expected_rev: int
    server_rev: int
    buffer_first_rev: int
    resume_from: int


@attrs.frozen
class Update:
    """Client → server: set ``key`` (``value`` absent: delete it)."""

    client_req_id: str
    key: str
    value: str | None = None


@attrs.frozen
class UpdateAck:
    client_req_id: str
    rev: int
    duplicate: bool


@attrs.frozen
class UpdateRejected:
    client_req_id: str
    code: str
    message: str


SYNC = message("SYNC", Sync)
SYNC_DELTAS = message("SYNC_DELTAS", SyncDeltas)
SYNC_SNAPSHOT = message("SYNC_SNAPSHOT", SyncSnapshot)
REVISION_GAP = message("REVISION_GAP", RevisionGap)
UPDATE = message("UPDATE", Update)
UPDATE_ACK = message("UPDATE_ACK", UpdateAck)
UPDATE_REJECTED = message("UPDATE_REJECTED", UpdateRejected)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class RingBuffer:
    """The most recent operations, oldest first, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self._ops: deque[Operation] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops)

    def append(self, op: Operation) -> None:
        self._ops.append(op)

    def first_rev(self, current: int) -> int:
        """The oldest revision held (``current + 1`` when empty)."""
        return self._ops[0].rev if self._ops else current + 1

    def since(self, rev: int, current: int) -> list[Operation] | None:
        """The operations after ``rev``, or ``None`` if some have been dropped already
        (or ``rev`` is not a revision of this document)."""
        if rev < 0 or rev > current or rev < self.first_rev(current) - 1:
            return None
        return [op for op in self._ops if op.rev > rev]


class Document:
    """The server's state: the entries, the revision, recent operations and the ids
    of recently applied changes (so a re-sent change is not applied twice)."""

    def __init__(self, buffer_size: int = 256, remember_ids: int = 10_000) -> None:
        self.rev = 0
        self.entries: dict[str, str] = {}
        self.ops = RingBuffer(buffer_size)
        self.snapshots_sent = 0
        self._applied: OrderedDict[str, int] = OrderedDict()
        self._remember = remember_ids

    def applied_rev(self, client_req_id: str) -> int | None:
        return self._applied.get(client_req_id)

    def apply(self, author: str, update: Update) -> Operation:
        self.rev += 1
        op = Operation(self.rev, update.key, author, update.value, update.client_req_id)
        if update.value is None:
            self.entries.pop(update.key, None)
        else:
            self.entries[update.key] = update.value
        self.ops.append(op)
        self._applied[update.client_req_id] = self.rev
        if len(self._applied) > self._remember:
            self._applied.popitem(last=False)
        return op


def authenticate(request: UpgradeRequest) -> User | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return User(name=token)


def _problem(update: Update) -> tuple[str, str] | None:
    if not _KEY.fullmatch(update.key):
        return "INVALID_ARGUMENT", "Keys are 1-64 letters, digits or _.:-"
    if update.value is not None and len(update.value) > MAX_VALUE:
        return "INVALID_ARGUMENT", f"Values are at most {MAX_VALUE} characters"
    if update.key.startswith("locked:"):
        return "PERMISSION_DENIED", "This key is read-only"
    return None


def build_app(buffer_size: int = 256) -> tuple[Router[User], Document]:
    """The router and the document it serves (tests look at both)."""
    router: Router[User] = Router()
    doc = Document(buffer_size)

    @router.on(SYNC)
    async def sync(ctx: Context[Sync, User]) -> None:
        # Subscribed (confirmed) before we look: later operations arrive live,
        # earlier ones are in what we send now.
        await ctx.topics.subscribe(TOPIC)
        rev = ctx.payload.rev
        ops = doc.ops.since(rev, doc.rev)
        if ops is not None:
            await ctx.send(SYNC_DELTAS, SyncDeltas(rev, doc.rev, ops))
            return
        first = doc.ops.first_rev(doc.rev)
        gap = RevisionGap(rev + 1, doc.rev, first, doc.rev)
        snapshot = SyncSnapshot(doc.rev, dict(doc.entries))
        doc.snapshots_sent += 1
        await ctx.send(REVISION_GAP, gap)
        await ctx.send(SYNC_SNAPSHOT, snapshot)

    @router.on(UPDATE)
    async def update(ctx: Context[Update, User]) -> None:
        change = ctx.payload
        done = doc.applied_rev(change.client_req_id)
        if done is not None:  # a re-send of a change already applied
            await ctx.send(UPDATE_ACK, UpdateAck(change.client_req_id, done, duplicate=True))
            return
        problem = _problem(change)
        if problem is not None:
            code, text = problem
            await ctx.send(UPDATE_REJECTED, UpdateRejected(change.client_req_id, code, text))
            return
        op = doc.apply(ctx.data.name, change)
        # No await between numbering and publishing: deltas leave in revision order.
        await ctx.publish(TOPIC, SYNC_DELTAS, SyncDeltas(op.rev - 1, op.rev, [op]))
        await ctx.send(UPDATE_ACK, UpdateAck(change.client_req_id, op.rev, duplicate=False))

    return router, doc


def build_router() -> Router[User]:
    return build_app()[0]


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(build_router(), host="127.0.0.1", port=port, authenticate=authenticate)
        )
        print(f"delta-sync server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", str(DEFAULT_PORT))))
