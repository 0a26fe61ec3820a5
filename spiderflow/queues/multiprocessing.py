"""``multiprocessing://``: a bounded queue between the processes that ``spiderflow all`` starts.

The queue must be created in the parent before the worker processes are started, and
handed to them (the composition root in :mod:`spiderflow.run` does this). Messages travel
as msgpack bytes.
"""

from __future__ import annotations

import multiprocessing
import queue as stdlib_queue
from typing import Any

from ..exceptions import QueueEmpty, QueueFull
from .base import BaseQueue


class MultiprocessingQueue(BaseQueue):
    scheme = "multiprocessing"

    def __init__(self, name: str, maxsize: int = 0, url: str = "multiprocessing://", context: Any = None):
        super().__init__(name, maxsize)
        ctx = context or multiprocessing.get_context()
        self._queue = ctx.Queue(maxsize)

    def _put(self, item: Any, timeout: float | None) -> None:
        try:
            if timeout is not None and timeout <= 0:
                self._queue.put(item, block=False)
            else:
                self._queue.put(item, timeout=timeout)
        except stdlib_queue.Full:
            raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})") from None

    def _get(self, timeout: float | None) -> tuple[Any, Any]:
        try:
            if timeout is not None and timeout <= 0:
                return self._queue.get(block=False), None
            return self._queue.get(timeout=timeout), None
        except stdlib_queue.Empty:
            raise QueueEmpty(f"queue {self.name!r} is empty") from None

    def _qsize(self) -> int:
        try:
            return self._queue.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue
            return 0

    def _close(self) -> None:
        self._queue.close()
        self._queue.cancel_join_thread()
