"""Exponential backoff with jitter and a cap, pure: the waits between a process's own retries
(NATS binds and fetches, claims, engine polls). Jitter keeps many orchestrators that failed
together from retrying in step; the cap keeps a long outage from making the retries rare.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from msgspec import Struct

# Past this many doublings every schedule here is long at its cap; it keeps `factor ** n` finite.
_MAX_EXPONENT = 64


class Backoff(Struct, frozen=True, kw_only=True):
    """Wait `base_s * factor^(failures - 1)`, at most `cap_s`, less up to `jitter` of it."""

    base_s: float
    cap_s: float
    factor: float = 2.0
    jitter: float = 0.2

    def ceiling(self, failures: int) -> float:
        """The longest wait after the `failures`-th failure in a row (counted from 1)."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return min(self.cap_s, self.base_s * self.factor**exponent)

    def floor(self, failures: int) -> float:
        """The shortest wait after the `failures`-th failure in a row."""
        return self.ceiling(failures) * (1.0 - self.jitter)

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """A wait between floor and ceiling; `draw` gives a number in [0, 1)."""
        high, low = self.ceiling(failures), self.floor(failures)
        return min(high, max(low, high - (high - low) * draw()))  # clamped: float rounding
