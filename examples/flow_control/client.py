"""Flow control, client side: a slow consumer and a fast producer that obeys retry hints.

    python -m examples.flow_control.client [ws://127.0.0.1:3040] [items] [consumer delay, s]

runs both against the server (start it first, see server.py) and prints what
happened: under POLICY=drop_oldest the consumer misses items (gaps in the
sequence numbers, exactly the ones the server's queue dropped); under
POLICY=wait it gets every item, in order, while the producer is told
RESOURCE_EXHAUSTED with retryAfterMs and sends those items again after that long.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import attrs
import trio

from wskit_trio.client import Backoff, Client, InboundMessage, Retry, open_client

from .server import FEED_END, FINISH, ITEM, PUBLISH, WATCH, FeedEnd, Item, Watching

#: The producer's retry policy: on RESOURCE_EXHAUSTED wait the server's retryAfterMs
#: (or the jittered backoff, if longer) and send the item again, many times if need be.
RETRY = Retry(max_attempts=200, backoff=Backoff(initial=0.01, max=0.5))


class Consumer:
    """Receives the feed and keeps count. ``delay`` seconds per item make it slow;
    ``pause()`` makes it stop reading altogether until ``resume()``."""

    def __init__(self, client: Client, *, delay: float = 0.0) -> None:
        self.client = client
        self.delay = delay
        #: Sequence numbers received, in arrival order.
        self.received: list[int] = []
        #: Items missed: gaps in the sequence numbers (counted up to FEED_END's last_seq).
        self.missed = 0
        #: Items that came out of order or twice (the server never does that).
        self.out_of_order = 0
        #: Set when FEED_END arrived (everything before it has been handled).
        self.finished = trio.Event()
        self.end: FeedEnd | None = None
        self._resumed = trio.Event()
        self._resumed.set()
        client.on(ITEM, self._on_item)
        client.on(FEED_END, self._on_end)

    async def watch(self) -> Watching:
        """Become the feed's consumer (items published after this reach us)."""
        return await self.client.request(WATCH)

    def pause(self) -> None:
        if self._resumed.is_set():
            self._resumed = trio.Event()

    def resume(self) -> None:
        self._resumed.set()

    async def _on_item(self, msg: InboundMessage[Item]) -> None:
        await self._resumed.wait()
        if self.delay:
            await trio.sleep(self.delay)
        seq = msg.payload.seq
        last = self.received[-1] if self.received else -1
        if seq <= last:
            self.out_of_order += 1  # never happens: the server keeps the producer's order
        else:
            self.missed += seq - last - 1
        self.received.append(seq)

    async def _on_end(self, msg: InboundMessage[FeedEnd]) -> None:
        await self._resumed.wait()
        end = self.end = msg.payload
        last = self.received[-1] if self.received else -1
        self.missed += max(0, end.last_seq - last)  # dropped after the last one we got
        self.finished.set()


@attrs.define
class Produced:
    items: int
    end: FeedEnd


async def produce(client: Client, items: Iterable[Item]) -> Produced:
    """Publish ``items`` one after the other, then finish the feed. Open ``client``
    with ``retry=RETRY``: a refused item is sent again after the server's hint."""
    count = 0
    for item in items:
        accepted = await client.request(PUBLISH, item)
        assert accepted.seq == item.seq
        count += 1
    end = await client.request(FINISH)
    return Produced(count, end)


def make_items(count: int, size: int = 256) -> Iterable[Item]:
    return (Item(seq, "x" * size) for seq in range(count))


async def main(url: str, count: int, delay: float) -> None:
    async with (
        open_client(url) as consumer_client,
        open_client(url, retry=RETRY) as producer_client,
    ):
        consumer = Consumer(consumer_client, delay=delay)
        watching = await consumer.watch()
        print(f"consumer watching; server queue: {watching.queue} frames, {watching.policy!r}")
        with trio.fail_after(120):
            produced = await produce(producer_client, make_items(count))
            await consumer.finished.wait()
        end = produced.end
        print(f"producer sent {produced.items} items; the server forwarded {end.forwarded}")
        print(f"consumer received {len(consumer.received)}, missed {consumer.missed}")
        if end.refused:
            print(
                f"the producer was told RESOURCE_EXHAUSTED {end.refused} times "
                "and sent those items again after retryAfterMs"
            )


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "ws://127.0.0.1:3040",
        int(args[1]) if len(args) > 1 else 3000,
        float(args[2]) if len(args) > 2 else 0.002,
    )
