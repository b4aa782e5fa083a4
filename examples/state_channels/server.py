"""State channels: reliable, ordered state updates that survive disconnects.

Run it:   python -m examples.state_channels.server        (PORT=3010 by default)
Talk:     python -m examples.state_channels.client alice

The shared state is a tally board (``{"apples": 3, ...}``); an update adds a
delta to one key, so applying an update twice, or skipping one, shows. Two
sequence numbers make it reliable:

* the **client** numbers its own updates 1, 2, 3... and re-sends every update
  the server has not acknowledged after a reconnect; the server remembers the
  last number it accepted from each session, so a re-sent update is
  acknowledged (``duplicate: true``) but never applied twice;
* the **server** numbers every accepted update (``serverSeq``) and broadcasts
  it to the channel; clients apply updates strictly in that order. A client
  that reconnects says where it stopped (``RESUME``); if it is behind, it gets
  a ``SEQUENCE_GAP`` notice saying where to resume, and catches up from the
  server's recent history (``CATCH_UP``) before it applies what comes live.

A client authenticates with ``?access_token=<name>`` (demo rule: the token is
the session name; one writer per name).
"""

from __future__ import annotations

import itertools
import os
import re
from collections import deque

import attrs
import trio

from wskit_trio import Context, Router, RpcContext, UpgradeRequest, WsKitError, message, rpc, serve

TOPIC = "state"
DEFAULT_PORT = 3010


@attrs.define
class Peer:
    """Per-connection data: the session this connection writes for."""

    name: str


@attrs.frozen
class Update:
    """Add ``delta`` to the tally ``key``."""

    key: str
    delta: int


@attrs.frozen
class StateUpdate:
    """Client → server: the client's ``seq``-th update (the same ``seq`` on a re-send)."""

    seq: int
    update: Update


@attrs.frozen
class StateSync:
    """Server → channel: an accepted update, in server order."""

    server_seq: int
    author: str
    client_seq: int
    update: Update


@attrs.frozen
class StateAck:
    """Server → author: update ``seq`` is safe (``duplicate``: it already was)."""

    seq: int
    server_seq: int | None
    duplicate: bool


@attrs.frozen
class Resume:
    """Client → server, first thing on every connection: the last server seq applied."""

    last_seq: int


@attrs.frozen
class SequenceGap:
    """Server → client: you are behind. ``resumeFrom`` is where catch-up starts."""

    expected_seq: int
    head_seq: int
    resume_from: int


@attrs.frozen
class CatchUp:
    from_seq: int


@attrs.frozen
class CatchUpResult:
    updates: list[StateSync]
    head_seq: int


STATE_UPDATE = message("STATE_UPDATE", StateUpdate)
STATE_SYNC = message("STATE_SYNC", StateSync)
STATE_ACK = message("STATE_ACK", StateAck)
RESUME = message("RESUME", Resume)
SEQUENCE_GAP = message("SEQUENCE_GAP", SequenceGap)
CATCH_UP = rpc("CATCH_UP", CatchUp, "CATCH_UP_RESULT", CatchUpResult)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Channel:
    """The server side of one state channel: the state, the server sequence, recent
    history, and the last client sequence accepted per session."""

    def __init__(self, history_size: int = 10_000) -> None:
        self.head_seq = 0
        self.totals: dict[str, int] = {}
        self.history: deque[StateSync] = deque(maxlen=history_size)
        self.last_client_seq: dict[str, int] = {}
        #: Re-sent updates acknowledged without being applied again.
        self.duplicates = 0

    @property
    def oldest_seq(self) -> int:
        """The oldest server seq the history still holds (``head_seq + 1`` if none)."""
        return self.history[0].server_seq if self.history else self.head_seq + 1

    def accept(self, author: str, client_seq: int, update: Update) -> StateSync:
        """Apply a new update: the next server seq, the state, the history."""
        self.head_seq += 1
        entry = StateSync(self.head_seq, author, client_seq, update)
        self.history.append(entry)
        self.totals[update.key] = self.totals.get(update.key, 0) + update.delta
        self.last_client_seq[author] = client_seq
        return entry

    def server_seq_of(self, author: str, client_seq: int) -> int | None:
        """Where an already accepted update landed (``None`` once out of history)."""
        for entry in reversed(self.history):
            if entry.author == author and entry.client_seq == client_seq:
                return entry.server_seq
        return None

    def since(self, from_seq: int) -> list[StateSync]:
        """Every update from ``from_seq`` on; ``FAILED_PRECONDITION`` if history has
        already dropped some of them."""
        if from_seq < 1:
            raise WsKitError("INVALID_ARGUMENT", "fromSeq starts at 1", {"fromSeq": from_seq})
        if from_seq < self.oldest_seq <= self.head_seq:
            raise WsKitError(
                "FAILED_PRECONDITION",
                "The history no longer reaches that far back; reload the state",
                {"fromSeq": from_seq, "oldestSeq": self.oldest_seq},
            )
        return list(itertools.islice(self.history, max(0, from_seq - self.oldest_seq), None))


def authenticate(request: UpgradeRequest) -> Peer | None:
    """Demo auth: the token is the session name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return Peer(name=token)


def build_app(history_size: int = 10_000) -> tuple[Router[Peer], Channel]:
    """The router and the channel state it serves (tests look at both)."""
    router: Router[Peer] = Router()
    channel = Channel(history_size)

    @router.on(RESUME)
    async def resume(ctx: Context[Resume, Peer]) -> None:
        last = ctx.payload.last_seq
        if last < 0 or last > channel.head_seq:
            raise WsKitError(
                "FAILED_PRECONDITION",
                "lastSeq is not a sequence number of this channel",
                {"lastSeq": last, "headSeq": channel.head_seq},
            )
        # Subscribed (confirmed) before we read the head: every later update
        # reaches this connection live, every earlier one is in the history.
        await ctx.topics.subscribe(TOPIC)
        if last < channel.head_seq:
            gap = SequenceGap(last + 1, channel.head_seq, max(last + 1, channel.oldest_seq))
            await ctx.send(SEQUENCE_GAP, gap)

    @router.on(STATE_UPDATE)
    async def state_update(ctx: Context[StateUpdate, Peer]) -> None:
        author, seq = ctx.data.name, ctx.payload.seq
        if seq < 1:
            raise WsKitError("INVALID_ARGUMENT", "seq starts at 1", {"seq": seq})
        last = channel.last_client_seq.get(author, 0)
        if seq <= last:
            channel.duplicates += 1
            ack = StateAck(seq, channel.server_seq_of(author, seq), duplicate=True)
            await ctx.send(STATE_ACK, ack)
            return
        if seq != last + 1:
            raise WsKitError(
                "FAILED_PRECONDITION",
                "Client sequence gap: send the missing updates first",
                {"expectedSeq": last + 1, "receivedSeq": seq},
            )
        if not _KEY.fullmatch(ctx.payload.update.key):
            raise WsKitError("INVALID_ARGUMENT", "Bad key", {"key": ctx.payload.update.key[:80]})
        entry = channel.accept(author, seq, ctx.payload.update)
        # No await between numbering and publishing: broadcasts leave in seq order.
        await ctx.publish(TOPIC, STATE_SYNC, entry)
        await ctx.send(STATE_ACK, StateAck(seq, entry.server_seq, duplicate=False))

    @router.rpc(CATCH_UP)
    async def catch_up(ctx: RpcContext[CatchUp, CatchUpResult, Peer]) -> None:
        updates = channel.since(ctx.payload.from_seq)
        await ctx.reply(CatchUpResult(updates, channel.head_seq))

    return router, channel


def build_router() -> Router[Peer]:
    return build_app()[0]


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(build_router(), host="127.0.0.1", port=port, authenticate=authenticate)
        )
        print(f"state-channels server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(os.environ.get("PORT", str(DEFAULT_PORT))))
