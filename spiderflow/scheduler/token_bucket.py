"""A token bucket: a project's rate (tokens per second) and burst (bucket size).

The scheduler asks a project's bucket for tokens before it selects tasks; one token is
one dispatched task. Time comes from an injected clock so tests control it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second accrue up to ``burst``; a full bucket starts the day.

    A rate of 0 or less means "no tasks"; a burst below 1 is raised to 1 so that any
    positive rate can dispatch.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last", "_clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.time):
        self._clock = clock
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._last = clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            if self.rate > 0:
                self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        elif elapsed < 0:  # the clock went back: start counting again from now
            self._last = now
        return self._tokens

    def available(self) -> int:
        """Whole tokens available now."""
        return int(self._refill()) if self.rate > 0 else 0

    def take(self, n: int = 1) -> int:
        """Take up to *n* whole tokens; return how many were granted."""
        if self.rate <= 0 or n <= 0:
            return 0
        granted = min(n, int(self._refill()))
        self._tokens -= granted
        return granted

    def refund(self, n: int = 1) -> None:
        """Give back tokens taken but not used."""
        self._tokens = min(self.burst, self._tokens + n)

    def configure(self, rate: float, burst: float) -> None:
        """Change rate and burst, keeping the tokens already earned (capped at the new burst)."""
        self._refill()
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._tokens = min(self._tokens, self.burst)

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate} burst={self.burst} tokens={self._tokens:.2f}>"
