"""The fetcher's counters: results by status class and bytes, over the last 5 minutes and hour.

Counts are kept in 10-second buckets (a window is therefore exact to 10 s), so recording a
result is a dict increment and memory stays at most 360 small dicts. Status classes are
``"2xx"``, ``"3xx"``, ``"4xx"``, ``"5xx"`` and ``"599"`` (every fetch failure; 1xx and
other odd codes count with their hundred). Rates divide by the window, or by the time since
the counters started when that is shorter.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

BUCKET_SECONDS = 10.0
WINDOWS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "599")


def status_class(status: int) -> str:
    """``200`` → ``"2xx"``; every failure (599) is its own class."""
    return "599" if status == 599 else f"{status // 100}xx"


class FetchCounters:
    """Sliding-window counts of fetch results; thread-safe (fetch_sync may run in another thread)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._buckets: collections.deque[tuple[int, dict[str, int]]] = collections.deque()
        self._current_key = -1
        self._current: dict[str, int] = {}
        self.total: dict[str, int] = dict.fromkeys((*STATUS_CLASSES, "bytes"), 0)

    def record(self, status: int, nbytes: int) -> None:
        """Count one result of *status* with *nbytes* of content."""
        cls = status_class(status)
        key = int(self._clock() // BUCKET_SECONDS)
        with self._lock:
            if key != self._current_key:
                self._rotate(key)
            current = self._current
            current[cls] = current.get(cls, 0) + 1
            current["bytes"] += nbytes
            total = self.total
            total[cls] = total.get(cls, 0) + 1
            total["bytes"] += nbytes

    def _rotate(self, key: int) -> None:
        self._current_key = key
        self._current = {"bytes": 0}
        self._buckets.append((key, self._current))
        oldest = key - int(WINDOWS["1h"] // BUCKET_SECONDS)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def total_count(self) -> int:
        """Results recorded since the counters started."""
        return sum(n for cls, n in self.total.items() if cls != "bytes")

    def snapshot(self, in_flight: int = 0) -> dict[str, Any]:
        """``{"5m": {...}, "1h": {...}, "all": {...}, "in_flight": n}``.

        Each window has a count per status class, ``total``, ``bytes``, ``bytes/s`` and
        ``pages/s``.
        """
        now = self._clock()
        key_now = int(now // BUCKET_SECONDS)
        with self._lock:
            buckets = list(self._buckets)
            total = dict(self.total)
        out: dict[str, Any] = {}
        for name, seconds in WINDOWS.items():
            first = key_now - int(seconds // BUCKET_SECONDS) + 1
            window = dict.fromkeys((*STATUS_CLASSES, "bytes"), 0)
            for key, counts in buckets:
                if key >= first:
                    for cls, n in counts.items():
                        window[cls] = window.get(cls, 0) + n
            out[name] = self._summary(window, min(seconds, now - self._started))
        out["all"] = self._summary(total, now - self._started)
        out["in_flight"] = in_flight
        return out

    @staticmethod
    def _summary(counts: dict[str, int], seconds: float) -> dict[str, Any]:
        pages = sum(n for cls, n in counts.items() if cls != "bytes")
        seconds = max(seconds, 1.0)
        return {**counts, "total": pages, "bytes/s": counts["bytes"] / seconds, "pages/s": pages / seconds}


__all__ = ["BUCKET_SECONDS", "FetchCounters", "STATUS_CLASSES", "WINDOWS", "status_class"]
