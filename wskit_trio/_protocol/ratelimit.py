"""Token-bucket maths, sans IO: the caller passes the time in.

A bucket holds up to ``capacity`` whole tokens and gains ``tokens_per_second``.
The rules (shared, operation for operation, by the Valkey Lua script in
``wskit_trio.valkey._ratelimit``, so both limiters decide alike):

* A new bucket starts full.
* Refill adds **whole** tokens only: ``floor(elapsed * rate)`` since the last
  refill point, capped at ``capacity``. The refill point advances only by the
  time those whole tokens account for, so the fraction of a token earned so far
  is never lost (WS-Kit's Redis script loses it on every consume).
* While the bucket is full nothing accrues: reaching ``capacity`` moves the
  refill point to *now*. (Banking time while full would let a burst of
  ``capacity`` be followed at once by more.)
* A consume that cannot be paid debits nothing and says when to retry:
  ``ceil((cost - tokens) / rate * 1000)`` ms, or ``None`` when ``cost`` exceeds
  ``capacity`` (waiting can never pay it).

Together these give the bound the tests check: over any window of ``w``
seconds a bucket grants at most ``capacity + rate * w`` tokens.

Time is an **integer number of microseconds** (``now_us``), as Valkey's ``TIME``
gives it. The refill point is kept as an anchor time plus a count of tokens
refilled since, so repeated refills never accumulate rounding error: the total
refilled by ``now`` is one ``floor((now - anchor) * rate / 10**6)``. With an
``int`` or :class:`fractions.Fraction` rate the arithmetic is exact; with a
``float`` rate it is IEEE arithmetic, identical to the Lua script's.

A clock that goes backwards (Valkey's ``TIME`` is wall-clock time) re-anchors
the bucket at the new reading: the time between the last reading and the jump
is forfeited, nothing is ever granted twice.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Final, NamedTuple

__all__ = ["MICROS", "Decision", "TokenBucket", "check_cost", "check_parameters"]

#: Microseconds per second: bucket time is in integer microseconds.
MICROS: Final = 1_000_000


class Decision(NamedTuple):
    """The outcome of one consume."""

    #: Whether the cost was paid (and the caller may go ahead).
    allowed: bool
    #: Tokens left in the bucket after this consume (unchanged when refused).
    remaining: int
    #: When refused: milliseconds to wait before the same consume can succeed, or
    #: ``None`` when it never can (cost above capacity). ``0`` when allowed.
    retry_after_ms: int | None


def check_parameters(capacity: object, tokens_per_second: object) -> None:
    """Raise ``ValueError``/``TypeError`` unless these make a usable bucket."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, got {capacity!r}")
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if isinstance(tokens_per_second, bool) or not isinstance(tokens_per_second, Real):
        raise TypeError(f"tokens_per_second must be a number, got {tokens_per_second!r}")
    if not (0 < float(tokens_per_second) < math.inf):
        raise ValueError(f"tokens_per_second must be positive and finite, got {tokens_per_second}")


def check_cost(cost: object) -> int:
    """``cost`` if it is a non-negative ``int`` (not a bool); else raise."""
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise TypeError(f"a rate-limit cost must be an int, got {cost!r}")
    if cost < 0:
        raise ValueError(f"a rate-limit cost must not be negative, got {cost}")
    return cost


def retry_after_ms(deficit: int, rate: float, anchor: int, count: int, now: int) -> int:
    """``ceil(deficit / rate * 1000)``, raised (by a millisecond, in the rare case
    where rounding makes it short) until refilling at ``now + result`` ms really
    yields ``deficit`` more tokens, so a caller that waits that long succeeds."""
    wait = math.ceil(deficit / rate * 1000)
    for _ in range(3):
        if math.floor((now + wait * 1000 - anchor) * rate / MICROS) - count >= deficit:
            break
        wait += 1
    return wait


class TokenBucket:
    """One bucket's state. Mutable; not shared between tasks without care (it has
    no awaits, so under trio one call is atomic)."""

    __slots__ = ("anchor", "capacity", "count", "rate", "tokens")

    def __init__(self, capacity: int, tokens_per_second: float, now_us: int) -> None:
        check_parameters(capacity, tokens_per_second)
        self.capacity = capacity
        self.rate = tokens_per_second
        #: Whole tokens available (as of the last refill).
        self.tokens = capacity
        #: Refill point = ``anchor + count / rate``: ``count`` tokens were refilled
        #: since ``anchor`` (µs); fractions of a token earned since are kept.
        self.anchor = now_us
        self.count = 0

    def __repr__(self) -> str:
        return (
            f"TokenBucket(capacity={self.capacity}, rate={self.rate}, tokens={self.tokens}, "
            f"anchor={self.anchor}, count={self.count})"
        )

    def refill(self, now_us: int) -> int:
        """Add the whole tokens earned by ``now_us``; returns the tokens available."""
        if self.tokens >= self.capacity:
            # Full: nothing accrues; the next token is earned from now on.
            self.anchor, self.count = now_us, 0
            return self.tokens
        total = math.floor((now_us - self.anchor) * self.rate / MICROS)
        if total < self.count:
            # The clock went backwards past the refill point: start again from now.
            self.anchor, self.count = now_us, 0
        elif total > self.count:
            self.tokens += total - self.count
            if self.tokens >= self.capacity:
                self.tokens = self.capacity
                self.anchor, self.count = now_us, 0
            else:
                self.count = total
        return self.tokens

    def consume(self, now_us: int, cost: int = 1) -> Decision:
        """Refill, then take ``cost`` tokens if there are enough (else take none)."""
        if type(cost) is not int or cost < 0:
            check_cost(cost)  # raises
        tokens = self.refill(now_us)
        if cost > self.capacity:
            return Decision(False, tokens, None)
        if tokens >= cost:
            self.tokens = tokens - cost
            return Decision(True, self.tokens, 0)
        wait = retry_after_ms(cost - tokens, self.rate, self.anchor, self.count, now_us)
        return Decision(False, tokens, wait)
