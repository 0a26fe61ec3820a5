"""``multiprocessing://``: a bounded queue between the processes that ``spiderflow all`` starts.

The queue must be created in the parent before the worker processes are forked, and handed
to them (the composition root in :mod:`spiderflow.run` does this); it cannot be pickled for
a spawned process. It needs Linux (``F_SETPIPE_SZ``, ``sem_getvalue``). Messages travel as
msgpack bytes.

The bound counts messages, with a semaphore of ``maxsize`` slots shared by every process:
a put takes a slot, handing a message to a consumer gives it back.

Underneath is one raw pipe, both ends non-blocking (grown to :data:`PIPE_SIZE` where the
system allows). It carries *frames*: an 8-byte header (body length, message count), then
the message itself, or, for a run of messages from :meth:`MultiprocessingQueue.put_many`,
their lengths followed by the messages back to back (one write, one wake-up of the
consumer instead of one per message). There is no pickling and, in the common case, no
thread: the producer writes the frame from its own thread, holding a shared write lock so
that frames from several processes never interleave, and the put returns with the message
in the pipe.

When the pipe has no room for a whole frame (the consumer is behind, or a page is larger
than the pipe, or this very thread will read the messages later), or another process has
held the write lock for :data:`LOCK_WAIT` (it is waiting for room itself), the producer
does not wait: the frame, or its unwritten rest, goes to a background writer thread,
started only then, which keeps the write lock until a frame is complete. While that
thread has frames pending, the process's later frames queue behind them, so order is kept;
it writes them together, as the pipe makes room, and once it has written them all, it
ends. close() does not wait for it, so that a stopping component never hangs on a
consumer that is gone: it goes on writing to the other processes that still read the queue
(and gives up, logging what it drops, once none does); at process exit, pending frames get
:data:`FLUSH_TIMEOUT` seconds to reach the pipe. A producer that dies in the middle of a
frame leaves the pipe unusable, as a dead feeder thread did with ``multiprocessing.Queue``.

A consumer reads one frame at a time under a shared read lock (a header, then the body),
keeps the rest of a batch in a small buffer of its own and hands the messages out one by
one, each still counted against the bound until then. A get that must not wait
(``timeout=0``) returns at once, without a system call, when the bound counts no message;
it finds every message whose put has returned, except those still queued in
a background writer: while any process has such frames it waits up to
:data:`TRANSIT_WAIT` for them, so that a polling consumer does not take "in transit" for
"empty".
"""

from __future__ import annotations

import collections
import fcntl
import logging
import math
import multiprocessing
import os
import select
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from multiprocessing.synchronize import SEM_VALUE_MAX
from multiprocessing.util import Finalize, register_after_fork
from typing import Any

from ..exceptions import QueueClosed, QueueEmpty, QueueFull
from .base import BaseQueue

logger = logging.getLogger(__name__)

#: The pipe's capacity in bytes, where the system allows it (Linux's default is 64 KiB).
PIPE_SIZE = 1 << 20

#: How long a get that must not wait still waits for messages that a background writer
#: (this process's or another's) has not written yet.
TRANSIT_WAIT = 0.005

#: How long a producer waits for the shared write lock (held by another writer only for
#: one write, unless that writer is stuck on a full pipe) before it hands its frame to its
#: background writer.
LOCK_WAIT = 0.02

#: How long process exit waits for a background writer to get its pending frames into the pipe.
FLUSH_TIMEOUT = 2.0

_HEADER = struct.Struct("<II")  # body length in bytes, number of messages


def _frame(items: list[bytes]) -> bytes:
    """One frame carrying *items*: the header, then the message, or the lengths and the messages."""
    if len(items) == 1:
        return _HEADER.pack(len(items[0]), 1) + items[0]
    lengths = [len(item) for item in items]
    count = len(items)
    return b"".join((_HEADER.pack(4 * count + sum(lengths), count), struct.pack(f"<{count}I", *lengths), *items))


def _split(body: bytes, count: int) -> list[bytes]:
    """The messages of a frame body that carries *count* of them."""
    if count == 1:
        return [body]
    items = []
    pos = 4 * count
    for length in struct.unpack_from(f"<{count}I", body):
        items.append(body[pos:pos + length])
        pos += length
    return items


def _join_writer(ref: weakref.ref) -> None:
    """At exit: give a background writer :data:`FLUSH_TIMEOUT` to finish its frames."""
    thread = ref()
    if thread is not None and thread.is_alive():
        thread.join(FLUSH_TIMEOUT)
        if thread.is_alive():
            logger.warning("multiprocessing queue: exiting with messages not yet written to the pipe")


class MultiprocessingQueue(BaseQueue):
    scheme = "multiprocessing"

    def __init__(self, name: str, maxsize: int = 0, url: str = "multiprocessing://", context: Any = None):
        super().__init__(name, maxsize)
        ctx = context or multiprocessing.get_context()
        self._capacity = maxsize if 0 < maxsize <= SEM_VALUE_MAX else SEM_VALUE_MAX
        self._slots = ctx.BoundedSemaphore(self._capacity)  # the bound, in messages
        self._write_lock = ctx.Lock()       # held while one frame goes into the pipe
        self._read_lock = ctx.Lock()        # held while one frame comes out of it
        self._in_transit = ctx.Semaphore(0)  # frames waiting in some process's background writer
        self._rfd, self._wfd = os.pipe()
        self._close_reader = weakref.finalize(self, os.close, self._rfd)
        self._close_writer = weakref.finalize(self, os.close, self._wfd)
        self._close_reader.atexit = self._close_writer.atexit = False
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        try:
            fcntl.fcntl(self._wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # above /proc/sys/fs/pipe-max-size, or past the user's pipe quota
            pass
        self._reset_local_state()
        register_after_fork(self, MultiprocessingQueue._reset_local_state)

    def _reset_local_state(self) -> None:
        """This process's own state (set up anew in a forked child): the rest of a batch
        taken from the pipe, the background writer with the frames it still has to write,
        and a poller for the read end."""
        self._buffer: collections.deque[bytes] = collections.deque()
        self._pending: collections.deque[tuple[memoryview | bytes, int, bool]] = collections.deque()
        self._writer: threading.Thread | None = None
        self._mutex = threading.Lock()  # guards _pending and _writer; serializes this process's writes
        self._readable = select.poll()  # not shared with the parent: a poll object is not reentrant
        self._readable.register(self._rfd, select.POLLIN)

    def __reduce__(self):
        raise TypeError("a multiprocessing:// queue reaches other processes by fork only")

    # -- producer side ---------------------------------------------------------------------------
    def _take_slot(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            ok = self._slots.acquire(False)
        else:
            ok = self._slots.acquire(True, timeout)
        if not ok:
            raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})")

    def _put(self, item: Any, timeout: float | None) -> None:
        self._take_slot(timeout)
        self._send(_HEADER.pack(len(item), 1) + item, 1)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order, as one frame per run of messages that found a free slot.

        Like :meth:`BaseQueue.put_many`: *timeout* bounds the whole call, and the messages put
        before a QueueFull (or a message that cannot be packed) stay put.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        batch: list[bytes] = []

        def send() -> None:
            if batch:
                self._send(_frame(batch), len(batch))
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

    def _send(self, frame: bytes, count: int) -> None:
        """Write *frame* (of *count* messages) from this thread if the pipe takes it whole;
        else hand it, or its unwritten rest, to the background writer."""
        with self._mutex:
            if self._writer is not None:    # frames are pending: this one goes behind them
                self._hand_over(frame, count, locked=False)
                return
            if not self._write_lock.acquire(True, LOCK_WAIT):
                self._hand_over(frame, count, locked=False)
                return
            try:
                written = os.write(self._wfd, frame)
            except BlockingIOError:
                written = 0
            except BaseException:
                self._write_lock.release()
                raise
            if written == len(frame):
                self._write_lock.release()
            elif written == 0:
                self._write_lock.release()
                self._hand_over(frame, count, locked=False)
            else:                           # the frame is begun: its rest must come next
                self._hand_over(memoryview(frame)[written:], count, locked=True)

    def _hand_over(self, data: memoryview | bytes, count: int, locked: bool) -> None:
        """Queue *data* for the background writer (holding ``_mutex``), starting it if need be.
        *locked*: this thread holds the write lock for it, and the writer takes it over."""
        self._pending.append((data, count, locked))
        self._in_transit.release()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_pending, name=f"queue-{self.name}-writer",
                                            daemon=True)
            self._writer.start()
            Finalize(self._writer, _join_writer, args=(weakref.ref(self._writer),), exitpriority=-5)

    def _write_pending(self) -> None:
        """The background writer: write the pending frames in order, as many as
        :data:`PIPE_SIZE` bytes' worth in one write, waiting for room in the pipe; end when
        none is left."""
        writable = select.poll()
        writable.register(self._wfd, select.POLLOUT)
        while True:
            with self._mutex:
                if not self._pending:
                    self._writer = None
                    if self.closed:
                        self._close_writer()
                    return
                run, size = [], 0
                for data, _count, _locked in self._pending:   # only the first can be locked
                    if run and size + len(data) > PIPE_SIZE:
                        break
                    run.append(data)
                    size += len(data)
                locked = self._pending[0][2]
            try:
                self._write_frames(b"".join(run), locked, writable)
            except OSError as exc:  # EPIPE: every process has closed the queue
                logger.warning("queue %s: %d frame(s) lost: %s", self.name, len(self._pending), exc)
                with self._mutex:
                    for _data, lost, _locked in self._pending:
                        self._in_transit.acquire(False)
                        for _ in range(lost):
                            self._slots.release()
                    self._pending.clear()
                continue
            with self._mutex:
                for _ in run:
                    self._pending.popleft()
                    self._in_transit.acquire(False)

    def _write_frames(self, data: bytes, locked: bool, writable: select.poll) -> None:
        """Write *data* (whole frames, or the rest of one and whole frames) under the write
        lock (already held when *locked*)."""
        if not locked:
            self._write_lock.acquire()
        try:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._wfd, view):]
                except BlockingIOError:
                    writable.poll()
        finally:
            self._write_lock.release()

    # -- consumer side ---------------------------------------------------------------------------
    def _get(self, timeout: float | None) -> tuple[Any, Any]:
        buffer = self._buffer
        if buffer:
            try:
                item = buffer.popleft()
            except IndexError:  # another thread took the last one
                item = self._read(timeout)
        elif timeout is not None and timeout <= 0 and self._qsize() == 0:
            raise QueueEmpty(f"queue {self.name!r} is empty")  # no message is counted: none to read
        else:
            item = self._read(timeout)
        self._slots.release()
        return item, None

    def _read(self, timeout: float | None) -> bytes:
        """Take the next message from the pipe (or from what another thread left in the
        buffer meanwhile), keeping the rest of its frame in the buffer; raise QueueEmpty."""
        if timeout is not None and timeout <= 0:
            deadline = None
            acquired = self._read_lock.acquire(False)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            acquired = self._read_lock.acquire(True, timeout)
        if not acquired:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        try:
            if self._buffer:
                return self._buffer.popleft()
            header = self._read_header(timeout, deadline)
            if len(header) < _HEADER.size:
                header += self._read_exactly(_HEADER.size - len(header))
            size, count = _HEADER.unpack(header)
            items = _split(self._read_exactly(size), count)
            self._buffer.extend(items[1:])
            return items[0]
        finally:
            self._read_lock.release()

    def _read_header(self, timeout: float | None, deadline: float | None) -> bytes:
        """The first bytes of the next frame, waiting as a get with *timeout* does."""
        try:
            return self._read_some(_HEADER.size)
        except BlockingIOError:
            pass
        if timeout is not None and timeout <= 0:
            if not self._in_transit.get_value():
                raise QueueEmpty(f"queue {self.name!r} is empty")
            deadline = time.monotonic() + TRANSIT_WAIT
        while True:
            if deadline is None:
                self._readable.poll()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueEmpty(f"queue {self.name!r} is empty")
                self._readable.poll(math.ceil(remaining * 1000))
            try:
                return self._read_some(_HEADER.size)
            except BlockingIOError:
                pass

    def _read_exactly(self, size: int) -> bytes:
        """*size* more bytes of a frame already begun: its writer is committed to finish it."""
        chunks = []
        while size:
            try:
                chunk = self._read_some(size)
            except BlockingIOError:
                self._readable.poll()
                continue
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)   # a single chunk comes back as it is

    def _read_some(self, size: int) -> bytes:
        chunk = os.read(self._rfd, size)
        if not chunk:
            raise QueueClosed(f"queue {self.name!r}: the pipe is closed")
        return chunk

    # -- state -----------------------------------------------------------------------------------
    def _qsize(self) -> int:
        return self._capacity - self._slots.get_value()

    def _close(self) -> None:
        while self._buffer:     # messages this process took but never handed out: free their slots
            self._buffer.popleft()
            self._slots.release()
        self._close_reader()
        with self._mutex:
            if self._writer is None:    # else it closes its end once its frames are written
                self._close_writer()
