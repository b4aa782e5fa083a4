"""The client side of a state channel, and a small terminal client on top of it.

    python -m examples.state_channels.client alice [ws://127.0.0.1:3010]

then type ``apples 3`` (add 3 to ``apples``); every update anyone makes is
printed in server order. :func:`open_state_channel` is the reusable part:

* **joining (the toolkit does the catching up).** On every (re)connect the
  client's ``on_connect`` hook sends ``JOIN`` with ``client.position(TOPIC)``,
  the last position the client received on the channel. The server replays
  what came after it (those ``STATE_SYNC`` frames arrive before the answer), or,
  if it cannot (``recovered: false``), sends a ``STATE_SNAPSHOT`` and the client
  reloads its state from it. The client applies what arrives as it arrives:
  in order, with no gap and no duplicate, is the server's promise.
* **its own updates (the app's job).** Updates are numbered by the client and
  kept until the server acknowledges them (``STATE_ACK``, or their own
  broadcast). Once what the ``JOIN`` brought is applied (a replayed broadcast
  of one of them acknowledges it), the hook re-sends every update still
  unacknowledged, in order; the server acknowledges the ones it already has
  (say, in a snapshot) without applying them again.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from wskit_trio import Position
from wskit_trio.client import Client, ClientState, InboundMessage, Reconnect, open_client

from .server import (
    JOIN,
    STATE_ACK,
    STATE_SNAPSHOT,
    STATE_SYNC,
    STATE_UPDATE,
    TOPIC,
    Join,
    Joined,
    StateAck,
    StateSnapshot,
    StateSync,
    StateUpdate,
    Update,
)


class StateChannel:
    """One session's view of the channel: the state, as the server orders it, and
    the session's own updates until the server has them."""

    def __init__(
        self,
        name: str,
        on_apply: Callable[[StateSync, Position], None] | None = None,
        on_reload: Callable[[StateSnapshot], None] | None = None,
    ) -> None:
        self.name = name
        self.on_apply = on_apply
        self.on_reload = on_reload
        #: The state: the sum of every applied update, per key.
        self.totals: dict[str, int] = {}
        #: Where the state stands: the last update applied, or the snapshot loaded.
        self.position: Position | None = None
        #: The position of every update applied, in the order applied.
        self.applied: list[Position] = []
        #: The server's answer to every JOIN, in order (one per connection).
        self.joins: list[Joined] = []
        #: The position of every snapshot loaded (the first join, and any that
        #: could not recover).
        self.reloads: list[Position] = []
        #: Client seqs the server acknowledged as already applied.
        self.duplicate_acks: list[int] = []
        self._next_seq = 1
        self._unacked: dict[int, Update] = {}
        self._client: Client | None = None
        #: Joined on the current connection: updates may go out on it.
        self._live = False
        #: The highest client seq sent (or skipped as acked) on the current connection.
        self._sent_upto = 0
        self._send_lock = trio.Lock()
        self._opened = trio.Event()
        self._changed = trio.Event()

    # -- what the application calls ----------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "not attached to a client"
        return self._client

    @property
    def live(self) -> bool:
        """Joined on the current connection: updates go out as they are made."""
        return self._live

    @property
    def unacked(self) -> list[int]:
        """Client seqs made but not yet acknowledged."""
        return sorted(self._unacked)

    async def update(self, key: str, delta: int) -> int:
        """Add ``delta`` to ``key``; returns the update's client seq. It is applied
        locally when the server broadcasts it (in server order), and re-sent after a
        reconnect until the server acknowledges it."""
        seq = self._next_seq
        self._next_seq += 1
        self._unacked[seq] = Update(key, delta)
        async with self._send_lock:  # fair: updates leave in seq order
            if self._live:
                await self._send_unsent(self.client)
        self._notify()
        return seq

    async def wait_until(self, predicate: Callable[[StateChannel], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_applied(self, offset: int) -> None:
        """Wait until the state includes the update at ``offset`` (of the current epoch)."""
        await self.wait_until(lambda ch: ch.position is not None and ch.position.offset >= offset)

    # -- wiring ---------------------------------------------------------------------

    def attach(self, client: Client) -> None:
        """Register the handlers (before the first ``JOIN`` is answered)."""
        self._client = client
        client.on(STATE_SYNC, self._on_sync)
        client.on(STATE_SNAPSHOT, self._on_snapshot)
        client.on(STATE_ACK, self._on_ack)

    async def rejoin(self, client: Client) -> None:
        """Pass to ``open_client(on_connect=...)``: on every new connection, join
        from where this client left off, then re-send what is not acknowledged."""
        async with self._send_lock:
            self._live = False
            since = client.position(TOPIC)
            joined = await client.request(JOIN, Join(since), timeout=10)
            self.joins.append(joined)
            # What the JOIN brought (the replay, or the snapshot) arrived before its
            # answer; once it is applied, our updates among it count as acknowledged.
            await self.wait_until(lambda ch: ch._caught_up(joined.position))
            # Everything still not acknowledged goes again, in order; the server
            # acknowledges what it already has (it may be in a snapshot) without
            # applying it twice.
            self._sent_upto = min(self._unacked, default=self._next_seq) - 1
            await self._send_unsent(client)
            self._live = True
        self._notify()

    def on_state(self, state: ClientState) -> None:
        """Pass to ``open_client(on_state=...)``."""
        if state is ClientState.OPEN:
            self._opened.set()
        elif self._live:
            self._live = False
            self._notify()

    async def run(self) -> None:
        """Until cancelled: once a connection is open, send what was made between the
        end of its ``rejoin`` and then (the client drops frames while not open)."""
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            async with self._send_lock:
                if self._live:
                    await self._send_unsent(self.client)

    def _caught_up(self, position: Position) -> bool:
        here = self.position
        return here is not None and here.epoch == position.epoch and here.offset >= position.offset

    # -- sending ----------------------------------------------------------------------

    async def _send_unsent(self, client: Client) -> None:
        """Send the updates not yet sent on this connection, in order (lock held)."""
        while self._sent_upto < self._next_seq - 1:
            seq = self._sent_upto + 1
            update = self._unacked.get(seq)
            if update is not None and not await client.send(STATE_UPDATE, StateUpdate(seq, update)):
                return  # not open (queue="off" drops it): sent after the next join
            self._sent_upto = seq

    # -- receiving --------------------------------------------------------------------

    def _on_sync(self, msg: InboundMessage[StateSync]) -> None:
        assert msg.position is not None, "joined with positions"
        entry, position = msg.payload, msg.position
        update = entry.update
        self.totals[update.key] = self.totals.get(update.key, 0) + update.delta
        self.position = position
        self.applied.append(position)
        if entry.author == self.name:
            self._unacked.pop(entry.client_seq, None)  # its broadcast is an ack too
        if self.on_apply is not None:
            self.on_apply(entry, position)
        self._notify()

    def _on_snapshot(self, msg: InboundMessage[StateSnapshot]) -> None:
        snapshot = msg.payload
        self.totals = dict(snapshot.totals)
        self.position = snapshot.position
        self.reloads.append(snapshot.position)
        if self.on_reload is not None:
            self.on_reload(snapshot)
        self._notify()

    def _on_ack(self, msg: InboundMessage[StateAck]) -> None:
        ack = msg.payload
        self._unacked.pop(ack.seq, None)
        if ack.duplicate:
            self.duplicate_acks.append(ack.seq)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_state_channel(
    url: str,
    name: str,
    *,
    reconnect: Reconnect | bool = True,
    on_apply: Callable[[StateSync, Position], None] | None = None,
    on_reload: Callable[[StateSnapshot], None] | None = None,
) -> AsyncIterator[StateChannel]:
    """Join the state channel at ``url`` as ``name`` for the block (it starts once
    the channel is live: joined on the first connection)."""
    channel = StateChannel(name, on_apply, on_reload)
    # queue="off": the channel keeps and re-sends its own updates, in order.
    # wait_open=False: the handlers go in before the first JOIN brings the state.
    async with open_client(
        url,
        auth=lambda: name,
        queue="off",
        reconnect=reconnect,
        wait_open=False,
        on_state=channel.on_state,
        on_connect=channel.rejoin,
    ) as client:
        channel.attach(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run)
            await channel.wait_until(lambda ch: ch.live)
            yield channel
            nursery.cancel_scope.cancel()


async def main(name: str, url: str) -> None:
    def show(entry: StateSync, position: Position) -> None:
        update = entry.update
        print(f"#{position.offset} {entry.author}: {update.key} {update.delta:+d}", flush=True)

    def reloaded(snapshot: StateSnapshot) -> None:
        print(f"state as of #{snapshot.position.offset}: {snapshot.totals}", flush=True)

    async with open_state_channel(url, name, on_apply=show, on_reload=reloaded) as channel:
        async for line in trio.wrap_file(sys.stdin):
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("+-").isdigit():
                await channel.update(parts[0], int(parts[1]))
            elif parts:
                print("usage: <key> <delta>, e.g. apples 3", flush=True)
        await channel.wait_until(lambda ch: not ch.unacked)
        print(channel.totals, flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "alice",
        args[1] if len(args) > 1 else "ws://127.0.0.1:3010",
    )
