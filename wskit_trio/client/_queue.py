"""The offline queue: frames sent while the client is not open wait here, bounded.

Pure (no trio). The client flushes it in order when a connection opens. What a
full queue does is the policy (WS-Kit's, with Python spelling):

* ``"drop_newest"`` (default): the frame being queued is refused.
* ``"drop_oldest"``: the oldest queued frame is evicted to make room.
* ``"off"``: nothing is queued; every frame sent while not open is refused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from typing import Generic, Literal, NamedTuple, TypeAlias, TypeVar

__all__ = ["OfflineQueue", "OfflineQueuePolicy", "Pushed"]

T = TypeVar("T")

OfflineQueuePolicy: TypeAlias = Literal["drop_newest", "drop_oldest", "off"]
_POLICIES = ("drop_newest", "drop_oldest", "off")


class Pushed(NamedTuple, Generic[T]):
    """What :meth:`OfflineQueue.push` did: whether the item was queued, and the item
    evicted to make room for it (``drop_oldest``), if any."""

    accepted: bool
    evicted: T | None = None


class OfflineQueue(Generic[T]):
    """A FIFO with a size limit and a full-queue policy."""

    def __init__(self, policy: OfflineQueuePolicy = "drop_newest", maxsize: int = 1000) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"queue policy must be one of {_POLICIES}, got {policy!r}")
        if maxsize < 1 and policy != "off":
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.policy: OfflineQueuePolicy = policy
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        #: Items refused or evicted so far.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def push(self, item: T) -> Pushed[T]:
        """Queue ``item`` at the back, applying the policy when full."""
        if self.policy == "off":
            self.dropped += 1
            return Pushed(False)
        if len(self._items) < self.maxsize:
            self._items.append(item)
            return Pushed(True)
        self.dropped += 1
        if self.policy == "drop_newest":
            return Pushed(False)
        evicted = self._items.popleft()
        self._items.append(item)
        return Pushed(True, evicted)

    def push_front(self, item: T) -> None:
        """Put back an item just taken by :meth:`pop` (its send failed): it stays first.

        Never refused; the queue may hold one item more than ``maxsize`` for a while.
        """
        self._items.appendleft(item)

    def pop(self) -> T | None:
        """The oldest item, or ``None`` when empty."""
        return self._items.popleft() if self._items else None

    def discard(self, item: T) -> None:
        """Remove ``item`` if it is queued (a request whose caller gave up)."""
        with suppress(ValueError):
            self._items.remove(item)

    def clear(self) -> list[T]:
        """Empty the queue; returns what it held, oldest first."""
        items = list(self._items)
        self._items.clear()
        return items
