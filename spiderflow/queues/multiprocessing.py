"""``multiprocessing://``: a bounded queue between the processes that ``spiderflow all`` starts.

The queue must be created in the parent before the worker processes are started, and
handed to them (the composition root in :mod:`spiderflow.run` does this). Messages travel
as msgpack bytes.

The bound counts messages, with a semaphore of ``maxsize`` slots shared by every process:
a put takes a slot, handing a message to a consumer gives it back. Underneath, an unbounded
``multiprocessing.Queue`` carries the bytes, and :meth:`MultiprocessingQueue.put_many` sends
the messages it has slots for as one item (one pipe write, one wake-up of the consumer
instead of one per message); the consumer keeps the rest of such a batch in a small buffer
of its own and hands them out one by one, each still counted against the bound until then.
A get that must not wait (``timeout=0``) still waits up to :data:`TRANSIT_WAIT` when the
bound counts messages that are not through the pipe yet, so that a polling consumer does not
take "in transit" for "empty".
"""

from __future__ import annotations

import collections
import multiprocessing
import queue as stdlib_queue
import time
from collections.abc import Iterable
from multiprocessing.synchronize import SEM_VALUE_MAX
from typing import Any

from ..exceptions import QueueEmpty, QueueFull
from .base import BaseQueue

#: How long a get that must not wait still waits for messages already put but not yet through
#: the pipe (a producer's feeder thread writes them a moment after ``put`` returns).
TRANSIT_WAIT = 0.005


class MultiprocessingQueue(BaseQueue):
    scheme = "multiprocessing"

    def __init__(self, name: str, maxsize: int = 0, url: str = "multiprocessing://", context: Any = None):
        super().__init__(name, maxsize)
        ctx = context or multiprocessing.get_context()
        self._capacity = maxsize if 0 < maxsize <= SEM_VALUE_MAX else SEM_VALUE_MAX
        self._slots = ctx.BoundedSemaphore(self._capacity)   # the bound, in messages
        self._queue = ctx.Queue()                            # the pipe: items are bytes, or lists of bytes
        self._buffer: collections.deque = collections.deque()  # the rest of a batch this process took

    def _take_slot(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            ok = self._slots.acquire(False)
        else:
            ok = self._slots.acquire(True, timeout)
        if not ok:
            raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})")

    def _put(self, item: Any, timeout: float | None) -> None:
        self._take_slot(timeout)
        self._queue.put(item)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order, as one item per run of messages that found a free slot.

        Like :meth:`BaseQueue.put_many`: *timeout* bounds the whole call, and the messages put
        before a QueueFull (or a message that cannot be packed) stay put.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        batch: list[bytes] = []

        def send() -> None:
            if batch:
                self._queue.put(batch[0] if len(batch) == 1 else list(batch))
                batch.clear()

        try:
            for msg in msgs:
                self._check_open()
                item = self._encode(msg)
                if not self._slots.acquire(False):
                    send()      # a consumer must see what we hold before we wait for it
                    self._take_slot(None if deadline is None else max(0.0, deadline - time.monotonic()))
                batch.append(item)
        finally:
            send()

    def _get(self, timeout: float | None) -> tuple[Any, Any]:
        buffer = self._buffer
        if not buffer:
            try:
                if timeout is not None and timeout <= 0:
                    if self._qsize() > 0:   # put, maybe still in the producer's feeder thread: wait for it
                        item = self._queue.get(timeout=TRANSIT_WAIT)
                    else:
                        item = self._queue.get(block=False)
                else:
                    item = self._queue.get(timeout=timeout)
            except stdlib_queue.Empty:
                raise QueueEmpty(f"queue {self.name!r} is empty") from None
            if type(item) is list:
                buffer.extend(item)
            else:
                buffer.append(item)
        item = buffer.popleft()
        try:
            self._slots.release()
        except ValueError:  # an item that reached the pipe without a slot (not through put)
            pass
        return item, None

    def _qsize(self) -> int:
        try:
            return self._capacity - self._slots.get_value()
        except NotImplementedError:  # macOS has no sem_getvalue
            return 0

    def _close(self) -> None:
        while self._buffer:     # messages this process took but never handed out: free their slots
            self._buffer.popleft()
            self._slots.release()
        self._queue.close()
        self._queue.cancel_join_thread()
