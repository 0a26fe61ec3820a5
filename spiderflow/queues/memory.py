"""``memory://``: a bounded in-process queue, thread-safe, carrying message objects as they are.

Used by ``spiderflow one``, tests and the in-process bench. Nothing is serialized, so a
message put here is the same object the consumer gets: producers must not mutate a
message after putting it.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from ..exceptions import QueueEmpty, QueueFull
from .base import BaseQueue


class MemoryQueue(BaseQueue):
    scheme = "memory"
    serialize = False

    def __init__(self, name: str, maxsize: int = 0, url: str = "memory://"):
        super().__init__(name, maxsize)
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    @staticmethod
    def _wait(cond: threading.Condition, ready, timeout: float | None) -> bool:
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            cond.wait(remaining)
        return True

    def _put(self, item: Any, timeout: float | None) -> None:
        with self._not_full:
            if not self._wait(self._not_full, lambda: not self.maxsize or len(self._items) < self.maxsize, timeout):
                raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})")
            self._items.append(item)
            self._not_empty.notify()

    def _get(self, timeout: float | None) -> tuple[Any, Any]:
        with self._not_empty:
            if not self._wait(self._not_empty, lambda: bool(self._items), timeout):
                raise QueueEmpty(f"queue {self.name!r} is empty")
            item = self._items.popleft()
            self._not_full.notify()
            return item, None

    def _qsize(self) -> int:
        return len(self._items)
