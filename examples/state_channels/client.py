"""The client side of a state channel, and a small terminal client on top of it.

    python -m examples.state_channels.client alice [ws://127.0.0.1:3010]

then type ``apples 3`` (add 3 to ``apples``); every update anyone makes is
printed in server order. :func:`open_state_channel` is the reusable part:

* updates are numbered by the client and kept until the server acknowledges
  them; on every (re)connect the client sends ``RESUME`` with the last server
  seq it applied, then re-sends every unacknowledged update in order (the
  server acknowledges the ones it already has without applying them again);
* server updates are applied strictly in ``serverSeq`` order: one that skips
  ahead is held back, the gap is reported (``gaps_detected``) and filled from
  the server's history with ``CATCH_UP``; one already applied is ignored. A
  ``SEQUENCE_GAP`` notice after a reconnect starts the same catch-up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from wskit_trio import ErrorCode
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
    CATCH_UP,
    RESUME,
    SEQUENCE_GAP,
    STATE_ACK,
    STATE_SYNC,
    STATE_UPDATE,
    CatchUp,
    Resume,
    SequenceGap,
    StateAck,
    StateSync,
    StateUpdate,
    Update,
)

log = logging.getLogger(__name__)


class StateChannel:
    """One session's view of the channel: the state, applied strictly in server order,
    and the session's own updates until the server has them."""

    def __init__(self, name: str, on_apply: Callable[[StateSync], None] | None = None) -> None:
        self.name = name
        self.on_apply = on_apply
        #: The state: the sum of every applied update, per key.
        self.totals: dict[str, int] = {}
        #: The server seq of every update applied, in the order applied.
        self.applied: list[int] = []
        self.last_seq = 0
        #: Gap notices the server sent, in order.
        self.gap_notices: list[SequenceGap] = []
        #: Times this client found itself behind (a notice, or a seq that skipped ahead).
        self.gaps_detected = 0
        #: Client seqs the server acknowledged as already applied.
        self.duplicate_acks: list[int] = []
        #: Server updates received again after they were applied (and ignored).
        self.redundant = 0
        self.catch_ups = 0
        #: Set when the history no longer reaches back to ``last_seq``: reload needed.
        self.resync_required = False
        self._next_seq = 1
        self._unacked: dict[int, Update] = {}
        self._held: dict[int, StateSync] = {}
        self._client: Client | None = None
        #: The current connection has been resumed: updates may go out on it.
        self._live = False
        #: The highest client seq sent (or skipped as acked) on the current connection.
        self._sent_upto = 0
        self._send_lock = trio.Lock()
        self._opened = trio.Event()
        self._behind = trio.Event()
        self._changed = trio.Event()

    # -- what the application calls ----------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "not attached to a client"
        return self._client

    @property
    def live(self) -> bool:
        """Resumed on the current connection: updates go out as they are made."""
        return self._live

    @property
    def unacked(self) -> list[int]:
        """Client seqs sent but not yet acknowledged."""
        return sorted(self._unacked)

    async def update(self, key: str, delta: int) -> int:
        """Add ``delta`` to ``key``; returns the update's client seq. It is applied
        locally when the server broadcasts it (in server order), and re-sent after a
        reconnect until the server acknowledges it."""
        seq = self._next_seq
        self._next_seq += 1
        self._unacked[seq] = Update(key, delta)
        async with self._send_lock:  # fair: updates leave in seq order
            await self._flush()
        self._notify()
        return seq

    async def wait_until(self, predicate: Callable[[StateChannel], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_applied(self, server_seq: int) -> None:
        await self.wait_until(lambda ch: ch.last_seq >= server_seq)

    # -- wiring ---------------------------------------------------------------------

    def on_state(self, state: ClientState) -> None:
        """Pass to ``open_client(on_state=...)``: a new connection starts a resume."""
        if state is ClientState.OPEN:
            self._opened.set()
        elif self._live:
            self._live = False
            self._notify()

    def attach(self, client: Client) -> None:
        self._client = client
        client.on(STATE_SYNC, self._on_sync)
        client.on(STATE_ACK, self._on_ack)
        client.on(SEQUENCE_GAP, self._on_gap)

    async def run(self) -> None:
        """Resume on every connection and fill gaps, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._resume_loop)
            nursery.start_soon(self._catch_up_loop)

    # -- receiving --------------------------------------------------------------------

    def _on_sync(self, msg: InboundMessage[StateSync]) -> None:
        self.receive(msg.payload)

    def receive(self, entry: StateSync) -> None:
        """Apply ``entry`` in server order: now if it is next, later if it skipped
        ahead (a gap: catch up), never if it was applied already."""
        seq = entry.server_seq
        if seq <= self.last_seq or seq in self._held:
            self.redundant += 1
            return
        if seq != self.last_seq + 1:
            if not self._held:
                self.gaps_detected += 1
            self._held[seq] = entry
            self._behind.set()
            return
        self._apply(entry)
        while (held := self._held.pop(self.last_seq + 1, None)) is not None:
            self._apply(held)
        self._notify()

    def _apply(self, entry: StateSync) -> None:
        update = entry.update
        self.totals[update.key] = self.totals.get(update.key, 0) + update.delta
        self.applied.append(entry.server_seq)
        self.last_seq = entry.server_seq
        if entry.author == self.name:
            self._unacked.pop(entry.client_seq, None)  # its broadcast is an ack too
        if self.on_apply is not None:
            self.on_apply(entry)

    def _on_ack(self, msg: InboundMessage[StateAck]) -> None:
        ack = msg.payload
        self._unacked.pop(ack.seq, None)
        if ack.duplicate:
            self.duplicate_acks.append(ack.seq)
        self._notify()

    def _on_gap(self, msg: InboundMessage[SequenceGap]) -> None:
        notice = msg.payload
        self.gap_notices.append(notice)
        if notice.head_seq > self.last_seq:
            if not self._held:
                self.gaps_detected += 1
            self._behind.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- background -------------------------------------------------------------------

    async def _resume_loop(self) -> None:
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            client = self._client
            if client is None:
                continue
            connection = client.statistics().connects
            async with self._send_lock:
                self._live = False
                # A send on a connection that dies under us is dropped (queue="off"):
                # the next connection starts over from here.
                await client.send(RESUME, Resume(self.last_seq))
                self._live = client.is_open and client.statistics().connects == connection
                # Everything not acknowledged goes again, in order; the server
                # acknowledges what it already has without applying it twice.
                self._sent_upto = min(self._unacked, default=self._next_seq) - 1
                await self._flush()
            self._notify()

    async def _flush(self) -> None:
        """Send the updates not yet sent on this connection, in order (lock held)."""
        client = self._client
        while self._live and client is not None and self._sent_upto < self._next_seq - 1:
            self._sent_upto += 1
            update = self._unacked.get(self._sent_upto)
            if update is not None:
                await client.send(STATE_UPDATE, StateUpdate(self._sent_upto, update))

    async def _catch_up_loop(self) -> None:
        while True:
            await self._behind.wait()
            self._behind = trio.Event()
            client = self._client
            if client is None or not client.is_open or self.resync_required:
                continue  # the next connection's RESUME tells us where we stand
            try:
                result = await client.request(CATCH_UP, CatchUp(self.last_seq + 1), timeout=10)
            except ConnectionClosed:
                continue
            except RequestTimeout:
                self._behind.set()
                continue
            except RpcError as err:
                if err.code == ErrorCode.FAILED_PRECONDITION:
                    self.resync_required = True
                    self._notify()
                log.warning("catch-up failed: %s", err)
                continue
            self.catch_ups += 1
            for entry in result.updates:
                self.receive(entry)
            if self._held:
                self._behind.set()  # still a hole (more arrived meanwhile): go again
            self._notify()


@asynccontextmanager
async def open_state_channel(
    url: str,
    name: str,
    *,
    reconnect: Reconnect | bool = True,
    on_apply: Callable[[StateSync], None] | None = None,
) -> AsyncIterator[StateChannel]:
    """Join the state channel at ``url`` as ``name`` for the block (it starts once
    the channel is live: resumed on the first connection)."""
    channel = StateChannel(name, on_apply)
    # queue="off": the channel keeps and re-sends its own updates, in order.
    async with open_client(
        url, auth=lambda: name, queue="off", reconnect=reconnect, on_state=channel.on_state
    ) as client:
        channel.attach(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run)
            await channel.wait_until(lambda ch: ch.live)
            yield channel
            nursery.cancel_scope.cancel()


async def main(name: str, url: str) -> None:
    def show(entry: StateSync) -> None:
        update = entry.update
        print(f"#{entry.server_seq} {entry.author}: {update.key} {update.delta:+d}", flush=True)

    async with open_state_channel(url, name, on_apply=show) as channel:
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
