"""State channels: reliable, ordered state updates that survive disconnects.

Run it:   python -m examples.state_channels.server        (PORT=3010 by default)
Talk:     python -m examples.state_channels.client alice

The shared state is a tally board (``{"apples": 3, ...}``); an update adds a
delta to one key, so applying an update twice, or skipping one, shows. Two
halves make it reliable:

* **the channel's order, and catching up: the toolkit.** The topic keeps a
  history (``with_pubsub(history=History(...))``), so every broadcast update
  gets a position (``meta.topic/offset/epoch`` on the wire). A client joins
  with the position it last saw (``JOIN {since}``), and
  ``ctx.topics.subscribe(TOPIC, since=...)`` replays what it missed, then goes
  live, with no gap and no duplicate (``recovered: true``). When the history
  no longer covers the gap (it was trimmed, or the server restarted), nothing is
  replayed (``recovered: false``) and the server sends a ``STATE_SNAPSHOT``: the
  whole state, as of the position the subscription goes live from.
* **the client's own updates: the app.** The client numbers its updates 1, 2,
  3... and re-sends every update the server has not acknowledged after a
  reconnect; the server remembers the last number it accepted from each
  session, so a re-sent update is acknowledged (``duplicate: true``) but never
  applied twice. (Positions tell a client what it missed from others; they
  cannot tell it whether its own last update arrived before the link dropped.)

A client authenticates with ``?access_token=<name>`` (demo rule: the token is
the session name; one writer per name).
"""

from __future__ import annotations

import os
import re

import attrs
import trio

from wskit_trio import (
    Context,
    History,
    Position,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
    with_pubsub,
)

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
    """Server → channel: an accepted update. Its place in the channel's order is
    its position (``meta.offset``), stamped by the toolkit."""

    author: str
    client_seq: int
    update: Update


@attrs.frozen
class StateAck:
    """Server → author: update ``seq`` is safe (``duplicate``: it already was)."""

    seq: int
    duplicate: bool


@attrs.frozen
class Join:
    """Client → server, first thing on every connection: where it left off
    (``None``: nowhere yet, send me the state)."""

    since: Position | None = None


@attrs.frozen
class Joined:
    """The subscription's :class:`~wskit_trio.Recovery`: whether what was missed
    was replayed (``replayed`` updates, just before this answer), and the position
    the subscription is live from."""

    recovered: bool
    position: Position
    replayed: int


@attrs.frozen
class StateSnapshot:
    """Server → a client that could not recover: the whole state as of ``position``
    (the updates after it arrive live)."""

    totals: dict[str, int]
    position: Position


STATE_UPDATE = message("STATE_UPDATE", StateUpdate)
STATE_SYNC = message("STATE_SYNC", StateSync)
STATE_ACK = message("STATE_ACK", StateAck)
STATE_SNAPSHOT = message("STATE_SNAPSHOT", StateSnapshot)
JOIN = rpc("JOIN", Join, "JOINED", Joined)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Channel:
    """The server side of one state channel: the state, and the last client sequence
    accepted per session. (The order and the recent history are the topic's.)"""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.last_client_seq: dict[str, int] = {}
        #: Updates accepted (each applied once).
        self.accepted = 0
        #: Re-sent updates acknowledged without being applied again.
        self.duplicates = 0
        #: Held while an update is published and applied, and while a client joins:
        #: a snapshot is then exactly the state at the position it goes live from.
        self.lock = trio.Lock()

    def apply(self, entry: StateSync) -> None:
        update = entry.update
        self.totals[update.key] = self.totals.get(update.key, 0) + update.delta
        self.last_client_seq[entry.author] = entry.client_seq
        self.accepted += 1


def authenticate(request: UpgradeRequest) -> Peer | None:
    """Demo auth: the token is the session name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return Peer(name=token)


def build_app(
    history_size: int = 1000, history_ttl: float = 3600.0
) -> tuple[Router[Peer], Channel]:
    """The router and the channel state it serves (tests look at both). The topic
    keeps its last ``history_size`` updates, for ``history_ttl`` seconds after the
    last one: a client that missed more, or came back later, reloads the state."""
    router: Router[Peer] = Router()
    router.plugin(with_pubsub(history=History(size=history_size, ttl=history_ttl)))
    channel = Channel()

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[Join, Joined, Peer]) -> None:
        async with channel.lock:  # no update is published meanwhile
            # Replays what was missed since ``since`` (before returning), or, when
            # the history cannot, says so: then the state goes out whole.
            recovery = await ctx.topics.subscribe(TOPIC, positions=True, since=ctx.payload.since)
            if not recovery.recovered:
                snapshot = StateSnapshot(dict(channel.totals), recovery.position)
                await ctx.send(STATE_SNAPSHOT, snapshot)
        await ctx.reply(Joined(recovery.recovered, recovery.position, recovery.replayed))

    @router.on(STATE_UPDATE)
    async def state_update(ctx: Context[StateUpdate, Peer]) -> None:
        author, seq = ctx.data.name, ctx.payload.seq
        if seq < 1:
            raise WsKitError("INVALID_ARGUMENT", "seq starts at 1", {"seq": seq})
        if not _KEY.fullmatch(ctx.payload.update.key):
            raise WsKitError("INVALID_ARGUMENT", "Bad key", {"key": ctx.payload.update.key[:80]})
        async with channel.lock:
            last = channel.last_client_seq.get(author, 0)
            if seq <= last:
                channel.duplicates += 1
                duplicate = True
            elif seq != last + 1:
                raise WsKitError(
                    "FAILED_PRECONDITION",
                    "Client sequence gap: send the missing updates first",
                    {"expectedSeq": last + 1, "receivedSeq": seq},
                )
            else:
                entry = StateSync(author, seq, ctx.payload.update)
                published = await ctx.publish(TOPIC, STATE_SYNC, entry)
                if not published.ok:  # (the memory backend always takes it)
                    raise WsKitError("UNAVAILABLE", "Not broadcast; send it again", retryable=True)
                channel.apply(entry)  # in the history now: part of the state
                duplicate = False
        await ctx.send(STATE_ACK, StateAck(seq, duplicate))

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
