"""The delay schedule for reconnects and retries. Pure: no trio, no clock.

``delay(n) = min(max, initial * 2**(n-1))`` for the n-th attempt (n ≥ 1), and
with full jitter a uniformly random fraction of that (WS-Kit's schedule: with
the defaults, attempt 1 waits 0-0.3 s, 2 waits 0-0.6 s, ... 7 and later 0-10 s).
Full jitter spreads a crowd of clients that lost the same server, so they do
not all come back at the same instant.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs

__all__ = ["Backoff", "Jitter"]

Jitter: TypeAlias = Literal["full", "none"]

#: 2**64 times any sane ``initial`` is far beyond any ``max``; capping the exponent
#: keeps huge attempt numbers from overflowing a float.
_MAX_EXPONENT = 64


def _check_non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with optional full jitter, in seconds.

    ``random`` returns a float in ``[0, 1)`` (default :func:`random.random`);
    inject a fixed one to make the schedule deterministic in tests.
    """

    initial: float = attrs.field(default=0.3, validator=_check_non_negative)
    max: float = attrs.field(default=10.0, validator=_check_non_negative)
    jitter: Jitter = "full"
    random: Callable[[], float] = attrs.field(default=_random.random, eq=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` without jitter: the upper bound with it."""
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        return min(self.max, self.initial * 2.0 ** min(attempt - 1, _MAX_EXPONENT))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1 = the first retry)."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "none":
            return ceiling
        return ceiling * self.random()
