"""Multiplayer: several people editing shared documents at once.

Run it:   python -m examples.multiplayer.server        (PORT=3030 by default)
Talk:     python -m examples.multiplayer.client alice board-1

* **Per-connection data**: who is on this connection (name, a cursor colour)
  and which documents it has open, in ``ctx.data``.
* **Subscriptions per document**: opening a document (``OPEN_DOC``, an RPC
  answered with a snapshot) subscribes the connection to ``doc:<id>``; edits
  and presence of that document go to its subscribers only.
* **Presence**: who has the document open. Joins and leaves (closing the
  document, or the connection going away) are broadcast.
* **Conflict rule**: last writer wins, per field, by server version. Each
  document has one version counter; every change to it (an edit, a join, a
  leave) takes the next version. Clients keep, per field and per member, the
  value with the highest version, whatever order things arrive in (a live
  edit can overtake the snapshot), so every replica converges on the
  server's. An edit that overwrote a value its author had not seen is
  flagged ``conflict`` (the last writer still wins).

A client authenticates with ``?access_token=<name>`` (demo rule: the token is
the user name).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict

import attrs
import trio

from wskit_trio import (
    ConnectionContext,
    Context,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
)

DEFAULT_PORT = 3030
MAX_VALUE = 500
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


@attrs.define
class Player:
    """Per-connection data: who this is and which documents they have open."""

    name: str
    color: str
    docs: set[str] = attrs.field(factory=set)


@attrs.frozen
class Field:
    """A field's value, with the server version of the edit that wrote it."""

    value: str
    version: int
    author: str
    edit_id: str


@attrs.frozen
class Presence:
    """One connection with the document open (``version``: when it joined)."""

    client_id: str
    name: str
    color: str
    version: int


@attrs.frozen
class OpenDoc:
    doc_id: str


@attrs.frozen
class DocSnapshot:
    doc_id: str
    version: int
    fields: dict[str, Field]
    present: list[Presence]


@attrs.frozen
class CloseDoc:
    doc_id: str


@attrs.frozen
class Edit:
    """Set ``field`` to ``value``; ``baseVersion`` is the field's version the author saw
    (0: none)."""

    doc_id: str
    field: str
    value: str
    edit_id: str
    base_version: int


@attrs.frozen
class FieldChanged:
    doc_id: str
    field: str
    state: Field
    #: The edit overwrote a value its author had not seen (it still wins: it is later).
    conflict: bool


@attrs.frozen
class EditAck:
    doc_id: str
    edit_id: str
    version: int
    duplicate: bool


@attrs.frozen
class PresenceJoined:
    doc_id: str
    who: Presence


@attrs.frozen
class PresenceLeft:
    doc_id: str
    client_id: str
    version: int


OPEN_DOC = rpc("OPEN_DOC", OpenDoc, "DOC_SNAPSHOT", DocSnapshot)
CLOSE_DOC = message("CLOSE_DOC", CloseDoc)
EDIT = message("EDIT", Edit)
EDIT_ACK = message("EDIT_ACK", EditAck)
FIELD_CHANGED = message("FIELD_CHANGED", FieldChanged)
PRESENCE_JOINED = message("PRESENCE_JOINED", PresenceJoined)
PRESENCE_LEFT = message("PRESENCE_LEFT", PresenceLeft)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def topic(doc_id: str) -> str:
    return f"doc:{doc_id}"


class Doc:
    """One shared document: its fields, who is here, one version counter for both."""

    def __init__(self, doc_id: str, remember_edits: int = 10_000) -> None:
        self.doc_id = doc_id
        self.version = 0
        self.fields: dict[str, Field] = {}
        self.present: dict[str, Presence] = {}
        #: Edit ids recently applied, so a re-sent edit is not applied twice.
        self._edits: OrderedDict[str, int] = OrderedDict()
        self._remember = remember_edits

    def snapshot(self) -> DocSnapshot:
        present = list(self.present.values())
        return DocSnapshot(self.doc_id, self.version, dict(self.fields), present)

    def applied(self, edit_id: str) -> int | None:
        return self._edits.get(edit_id)

    def edit(self, author: str, edit: Edit) -> FieldChanged:
        current = self.fields.get(edit.field)
        conflict = current is not None and current.version > edit.base_version
        self.version += 1
        state = Field(edit.value, self.version, author, edit.edit_id)
        self.fields[edit.field] = state
        self._edits[edit.edit_id] = self.version
        if len(self._edits) > self._remember:
            self._edits.popitem(last=False)
        return FieldChanged(self.doc_id, edit.field, state, conflict)

    def join(self, client_id: str, player: Player) -> Presence:
        self.version += 1
        who = self.present[client_id] = Presence(client_id, player.name, player.color, self.version)
        return who

    def leave(self, client_id: str) -> PresenceLeft | None:
        if self.present.pop(client_id, None) is None:
            return None
        self.version += 1
        return PresenceLeft(self.doc_id, client_id, self.version)


def authenticate(request: UpgradeRequest) -> Player | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return Player(name=token, color=PALETTE[sum(token.encode()) % len(PALETTE)])


def build_app() -> tuple[Router[Player], dict[str, Doc]]:
    """The router and the documents it serves, by id (tests look at both)."""
    router: Router[Player] = Router()
    docs: dict[str, Doc] = {}

    def doc_of(doc_id: str) -> Doc:
        if not _ID.fullmatch(doc_id):
            raise WsKitError("INVALID_ARGUMENT", "Bad document id", {"docId": doc_id[:80]})
        doc = docs.get(doc_id)
        if doc is None:
            doc = docs[doc_id] = Doc(doc_id)
        return doc

    async def leave(ctx: ConnectionContext[Player], doc_id: str) -> None:
        ctx.data.docs.discard(doc_id)
        await ctx.topics.unsubscribe(topic(doc_id))
        left = docs[doc_id].leave(ctx.client_id)
        if left is not None:
            await router.publish(topic(doc_id), PRESENCE_LEFT, left)

    @router.rpc(OPEN_DOC)
    async def open_doc(ctx: RpcContext[OpenDoc, DocSnapshot, Player]) -> None:
        doc = doc_of(ctx.payload.doc_id)
        # Subscribed (confirmed) first: every change after the snapshot arrives live.
        await ctx.topics.subscribe(topic(doc.doc_id))
        ctx.data.docs.add(doc.doc_id)
        if ctx.client_id not in doc.present:
            who = doc.join(ctx.client_id, ctx.data)
            await ctx.publish(topic(doc.doc_id), PRESENCE_JOINED, PresenceJoined(doc.doc_id, who))
        await ctx.reply(doc.snapshot())

    @router.on(CLOSE_DOC)
    async def close_doc(ctx: Context[CloseDoc, Player]) -> None:
        if ctx.payload.doc_id in ctx.data.docs:
            await leave(ctx, ctx.payload.doc_id)

    @router.on(EDIT)
    async def edit(ctx: Context[Edit, Player]) -> None:
        change = ctx.payload
        if change.doc_id not in ctx.data.docs:
            raise WsKitError("FAILED_PRECONDITION", "Open the document first")
        doc = docs[change.doc_id]
        done = doc.applied(change.edit_id)
        if done is not None:  # a re-send of an edit already applied
            await ctx.send(EDIT_ACK, EditAck(doc.doc_id, change.edit_id, done, duplicate=True))
            return
        if not _ID.fullmatch(change.field) or len(change.value) > MAX_VALUE:
            raise WsKitError("INVALID_ARGUMENT", "Bad field name or value too long")
        changed = doc.edit(ctx.data.name, change)
        await ctx.publish(topic(doc.doc_id), FIELD_CHANGED, changed)
        ack = EditAck(doc.doc_id, change.edit_id, changed.state.version, duplicate=False)
        await ctx.send(EDIT_ACK, ack)

    @router.on_close
    async def gone(ctx: ConnectionContext[Player]) -> None:
        for doc_id in sorted(ctx.data.docs):  # a vanished player leaves everything
            await leave(ctx, doc_id)

    return router, docs


def build_router() -> Router[Player]:
    return build_app()[0]


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(build_router(), host="127.0.0.1", port=port, authenticate=authenticate)
        )
        print(f"multiplayer server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", str(DEFAULT_PORT))))
