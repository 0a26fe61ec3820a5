"""``multiprocessing://``: a bounded queue between the processes that ``spiderflow all`` starts.

The queue must be created in the parent before the worker processes are forked, and handed
to them (the composition root in :mod:`spiderflow.runtime.compose` does this); it cannot be pickled for
a spawned process. It needs Linux (``F_SETPIPE_SZ``, ``sem_getvalue``, ``memfd_create``,
``/proc``). Messages travel as msgpack bytes.

The bound counts messages, with a semaphore of ``maxsize`` slots shared by every process:
a put takes a slot, handing a message to a consumer gives it back.

Underneath is one raw pipe, both ends non-blocking (grown to :data:`PIPE_SIZE` where the
system allows). It carries *frames*: a 20-byte header (a marker drawn at random for this
queue, the body's length, its message count, its CRC-32, then the header's own CRC-32),
then the message itself, or, for a run of messages from
:meth:`MultiprocessingQueue.put_many`, their lengths followed by the messages back to back
(one write, one wake-up of the consumer instead of one per message). There is no pickling
and, in the common case, no thread: the producer writes the frame from its own thread,
holding a shared write lock so that frames from several processes never interleave, and
the put returns with the message in the pipe.

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
:data:`FLUSH_TIMEOUT` seconds to reach the pipe.

A consumer reads one frame at a time under a shared read lock (a header, then the body),
keeps the rest of a batch in a small buffer of its own and hands the messages out one by
one, each still counted against the bound until then. A get that must not wait
(``timeout=0``) returns at once, without a system call, when the bound counts no message;
it finds every message whose put has returned, except those still queued in
a background writer: while any process has such frames it waits up to
:data:`TRANSIT_WAIT` for them, so that a polling consumer does not take "in transit" for
"empty".

A process may be killed at any point (SIGKILL, the OOM killer) without wedging the queue.
The write and read locks are :class:`~spiderflow.queues.mpshared.ProcessLock`\\ s, which the
kernel releases when their holder dies. A consumer waiting for the rest of a frame whose
write lock has become free knows that the writer died; a frame whose CRC does not match
(its writer died and another frame followed), or bytes that are not a frame (the rest of one
that a consumer was killed while reading), are dropped up to the next valid header, and
the drop is logged. The dead process's frame is lost (the put that began it never
returned, or it waited in that process's background writer: the scheduler sends the task
again), every later one arrives whole. Each process also notes, in a shared
:class:`~spiderflow.queues.mpshared.Ledger`, the slots it holds (frames not yet wholly in
the pipe, messages taken but not handed out) and its pending frames; a process that finds
the entry of a dead one (after a drop, or while the queue stays full, or counts a message
that does not come) gives those back, at most every :data:`RECLAIM_EVERY` seconds, so the
bound and qsize() stay true. Only a process killed in the microseconds between taking a
slot and starting its frame, or between reading a whole frame and handing out its
message, costs the queue a slot.
"""

from __future__ import annotations

import collections
import ctypes
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
import zlib
from collections.abc import Iterable
from multiprocessing.synchronize import SEM_VALUE_MAX
from multiprocessing.util import Finalize, register_after_fork
from typing import Any

from ..exceptions import QueueClosed, QueueEmpty, QueueFull
from .base import BaseQueue
from .mpshared import ENTRY, HELD, OWED, PENDING, Ledger, ProcessLock

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

#: How long a consumer waits for more of a frame begun before it checks that its writer lives.
PROBE_WAIT = 0.05

#: Least time between two looks for the ledger entries of dead processes, per process.
RECLAIM_EVERY = 1.0

_HEAD = struct.Struct("<4sIII")     # marker, body length in bytes, number of messages, body CRC-32
_CHECK = struct.Struct("<I")        # CRC-32 of the packed _HEAD
_HEADER = struct.Struct("<4sIIII")  # both
HEADER_SIZE = _HEADER.size
_SCAN_CHUNK = 1 << 16               # bytes read at a time while looking for a header


def _frame_one(marker: bytes, item: bytes) -> bytes:
    """The frame of one message: the header, then the message."""
    head = _HEAD.pack(marker, len(item), 1, zlib.crc32(item))
    return b"".join((head, _CHECK.pack(zlib.crc32(head)), item))


def _frame(marker: bytes, items: list[bytes]) -> bytes:
    """One frame carrying *items*: the header, then the message, or the lengths and the messages."""
    if len(items) == 1:
        return _frame_one(marker, items[0])
    count = len(items)
    lengths = struct.pack(f"<{count}I", *map(len, items))
    crc = zlib.crc32(lengths)
    for item in items:
        crc = zlib.crc32(item, crc)
    head = _HEAD.pack(marker, len(lengths) + sum(map(len, items)), count, crc)
    return b"".join((head, _CHECK.pack(zlib.crc32(head)), lengths, *items))


def _parse_header(marker: bytes, data: bytes | bytearray, pos: int = 0) -> tuple[int, int, int] | None:
    """(body length, count, body CRC) of the frame header at *pos* of *data*, or None if
    these bytes are not one."""
    if len(data) < pos + HEADER_SIZE:
        return None
    found, size, count, crc, check = _HEADER.unpack_from(data, pos)
    if found != marker or zlib.crc32(data[pos:pos + _HEAD.size]) != check:
        return None
    if count < 1 or (count > 1 and size < 4 * count):
        return None
    return size, count, crc


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
        # held while frames go into the pipe; the threads of a process take turns by _mutex and _writer
        self._write_lock = ProcessLock(f"{name}-write", threads=False)
        self._read_lock = ProcessLock(f"{name}-read")       # held while one frame comes out of it
        self._in_transit = ctx.Semaphore(0)  # frames waiting in some process's background writer
        self._ledger = Ledger(ctx, name)     # what each process holds, for when one dies
        self._marker = os.urandom(4)
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
        register_after_fork(self, MultiprocessingQueue._after_fork)

    def _after_fork(self) -> None:
        self._write_lock.after_fork()
        self._read_lock.after_fork()
        self._ledger.after_fork()
        self._reset_local_state()

    def _reset_local_state(self) -> None:
        """This process's own state (set up anew in a forked child): the rest of a batch
        taken from the pipe, the background writer with the frames it still has to write,
        a poller for the read end, and its ledger entry (claimed on first use)."""
        self._buffer: collections.deque[bytes] = collections.deque()
        self._pending: collections.deque[tuple[memoryview | bytes, int, bool]] = collections.deque()
        self._writer: threading.Thread | None = None
        self._mutex = threading.Lock()  # guards _pending, _writer, _owed; serializes this process's writes
        self._readable = select.poll()  # not shared with the parent: a poll object is not reentrant
        self._readable.register(self._rfd, select.POLLIN)
        self._claim_lock = threading.Lock()
        self._entry: int | None = None  # index of this process's ledger entry
        self._cells: Any = None         # the ledger (or a private stand-in when it is full)
        self._owed = 0                  # slots of frames this process has not wholly written yet
        self._held = 0                  # messages it took from the pipe and has not handed out, as noted
        self._next_reclaim = 0.0

    def __reduce__(self):
        raise TypeError("a multiprocessing:// queue reaches other processes by fork only")

    # -- ledger ----------------------------------------------------------------------------------
    def _claim_entry(self) -> int:
        """This process's ledger entry, claimed on first use."""
        with self._claim_lock:
            if self._entry is not None:
                return self._entry
            entry = self._ledger.claim(self._give_back)
            if entry is None:
                logger.warning("queue %s: more than %d processes use it; what this one holds is not "
                               "given back if it is killed", self.name, len(self._ledger.cells) // ENTRY)
                self._cells, entry = (ENTRY * ctypes.c_longlong)(), 0
            else:
                self._cells = self._ledger.cells
            self._entry = entry
            return entry

    def _note(self, field: int, value: int) -> None:
        entry = self._entry if self._entry is not None else self._claim_entry()
        self._cells[entry + field] = value

    def _note_held(self, count: int) -> None:
        """*count* messages taken from the pipe by this process and not handed out yet."""
        self._held = count
        self._note(HELD, count)

    def _free_slots(self, count: int) -> int:
        """Give back *count* slots; how many there were to give (a slot noted twice, for a
        process that died between two notes, may be free already)."""
        for freed in range(count):
            try:
                self._slots.release()
            except ValueError:
                return freed
        return count

    def _give_back(self, pid: int, slots: int, frames: int) -> None:
        """What a dead process held: its slots and its count of frames in transit."""
        freed = self._free_slots(slots)
        for _ in range(frames):
            self._in_transit.acquire(False)
        if freed or frames:
            logger.warning("queue %s: process %d died holding %d message slot(s) and %d unwritten frame(s); "
                           "they are given back (its messages are lost; the scheduler sends them again)",
                           self.name, pid, freed, frames)

    def _reclaim(self, due_only: bool = True) -> None:
        """Give back what dead processes held (at most every :data:`RECLAIM_EVERY` s when *due_only*)."""
        now = time.monotonic()
        if due_only and now < self._next_reclaim:
            return
        self._next_reclaim = now + RECLAIM_EVERY
        self._ledger.reclaim(self._give_back)

    # -- producer side ---------------------------------------------------------------------------
    def _take_slot(self, timeout: float | None) -> None:
        if self._slots.acquire(False):
            return
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._reclaim()  # a slot held by a process that died would never come back
                if self._slots.acquire(False):
                    return
                raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})")
            if self._slots.acquire(True, RECLAIM_EVERY if remaining is None else min(remaining, RECLAIM_EVERY)):
                return
            self._reclaim()

    def _put(self, item: Any, timeout: float | None) -> None:
        self._take_slot(timeout)
        self._send(_frame_one(self._marker, item), 1)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order, as one frame per run of messages that found a free slot.

        Like :meth:`BaseQueue.put_many`: *timeout* bounds the whole call, and the messages put
        before a QueueFull (or a message that cannot be packed) stay put.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        batch: list[bytes] = []

        def send() -> None:
            if batch:
                self._send(_frame(self._marker, batch), len(batch))
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

    def _owe(self, count: int) -> None:
        """Holding ``_mutex``: *count* more (or fewer) slots of frames not wholly in the pipe."""
        self._owed += count
        self._note(OWED, self._owed)

    def _send(self, frame: bytes, count: int) -> None:
        """Write *frame* (of *count* messages) from this thread if the pipe takes it whole;
        else hand it, or its unwritten rest, to the background writer."""
        with self._mutex:
            if self._writer is not None:    # frames are pending: this one goes behind them
                self._hand_over(frame, count, locked=False)
                return
            if not self._write_lock.acquire(LOCK_WAIT):
                self._hand_over(frame, count, locked=False)
                return
            entry = self._entry if self._entry is not None else self._claim_entry()
            cells = self._cells
            cells[entry + OWED] = self._owed + count   # noted first: we may die in the middle of the write
            try:
                written = os.write(self._wfd, frame)
            except BlockingIOError:
                written = 0
            except BaseException:
                cells[entry + OWED] = self._owed
                self._write_lock.release()
                raise
            if written == len(frame):
                cells[entry + OWED] = self._owed
                self._write_lock.release()
            elif written == 0:
                cells[entry + OWED] = self._owed
                self._write_lock.release()
                self._hand_over(frame, count, locked=False)
            else:                           # the frame is begun: its rest must come next
                self._hand_over(memoryview(frame)[written:], count, locked=True)

    def _hand_over(self, data: memoryview | bytes, count: int, locked: bool) -> None:
        """Queue *data* for the background writer (holding ``_mutex``), starting it if need be.
        *locked*: this thread holds the write lock for it, and the writer takes it over."""
        self._owe(count)
        self._pending.append((data, count, locked))
        self._in_transit.release()
        self._note(PENDING, len(self._pending))
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
                self._write_frames(run, locked, writable)
            except OSError as exc:  # EPIPE: every process has closed the queue
                with self._mutex:
                    logger.warning("queue %s: %d frame(s) lost: %s", self.name, len(self._pending), exc)
                    for _data, lost, _locked in self._pending:
                        self._in_transit.acquire(False)
                        self._owe(-lost)
                        self._free_slots(lost)
                    self._pending.clear()
                    self._note(PENDING, 0)

    def _write_frames(self, run: list[memoryview | bytes], locked: bool, writable: select.poll) -> None:
        """Write *run* (whole frames, or the rest of one and whole frames: the first ones
        pending) under the write lock (already held when *locked*), settling each frame
        as its last byte goes into the pipe."""
        if not locked:
            self._write_lock.acquire()
        try:
            view = memoryview(b"".join(run) if len(run) > 1 else run[0])
            ends = []
            for data in run:
                ends.append(len(data) + (ends[-1] if ends else 0))
            done = settled = 0
            while done < len(view):
                try:
                    done += os.write(self._wfd, view[done:])
                except BlockingIOError:
                    writable.poll()
                    continue
                while settled < len(ends) and ends[settled] <= done:
                    settled += 1
                    with self._mutex:
                        _data, count, _locked = self._pending.popleft()
                        self._in_transit.acquire(False)
                        self._owe(-count)
                        self._note(PENDING, len(self._pending))
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
        if self._held != len(buffer):
            self._note_held(len(buffer))
        try:
            self._slots.release()
        except ValueError:  # given back already, for a process that died between two notes
            pass
        return item, None

    def _read(self, timeout: float | None) -> bytes:
        """Take the next message from the pipe (or from what another thread left in the
        buffer meanwhile), keeping the rest of its frame in the buffer; raise QueueEmpty."""
        nowait = timeout is not None and timeout <= 0
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        if not self._read_lock.acquire(0 if nowait else timeout):
            raise QueueEmpty(f"queue {self.name!r} is empty")
        try:
            while True:
                if self._buffer:
                    return self._buffer.popleft()
                items = self._take_frame()
                if items:
                    self._buffer.extend(items[1:])
                    return items[0]
                if self._qsize() > 0:   # counted, yet not in the pipe: in transit, or held by the dead?
                    self._reclaim()
                if nowait:
                    if not self._in_transit.get_value():
                        raise QueueEmpty(f"queue {self.name!r} is empty")
                    nowait, deadline = False, time.monotonic() + TRANSIT_WAIT
                if deadline is None:
                    self._readable.poll(RECLAIM_EVERY * 1000)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueEmpty(f"queue {self.name!r} is empty")
                self._readable.poll(math.ceil(min(remaining, RECLAIM_EVERY) * 1000))
        finally:
            self._read_lock.release()

    def _take_frame(self) -> list[bytes]:
        """Holding the read lock: the messages of the next whole frame in the pipe (and of
        any other whole frames read with it while dropping a broken one); [] if the pipe is empty."""
        try:
            head = os.read(self._rfd, HEADER_SIZE)
        except BlockingIOError:
            return []
        if not head:
            raise QueueClosed(f"queue {self.name!r}: the pipe is closed")
        if len(head) < HEADER_SIZE:
            rest, _whole = self._read_more(HEADER_SIZE - len(head))
            head += rest
        parsed = _parse_header(self._marker, head)
        if parsed is None:
            return self._resync(bytearray(head), 0)
        size, count, crc = parsed
        try:
            body = os.read(self._rfd, size) if size else b""
        except BlockingIOError:
            body = b""
        whole = len(body) == size
        if not whole:   # the rest is still to come: these messages are ours, even if we die waiting
            self._note_held(len(self._buffer) + count)
            rest, whole = self._read_more(size - len(body))
            body += rest
        if whole and zlib.crc32(body) == crc:
            return _split(body, count)
        self._note_held(len(self._buffer))
        return self._resync(bytearray(head + body), 1, broken=1, lost=count)

    def _read_more(self, need: int, most: int = 0) -> tuple[bytes, bool]:
        """Holding the read lock: at least *need* (at most *most*, if more) bytes more of a
        frame begun, as they come. (the bytes read, False) if the pipe ran dry before with
        no process holding the write lock: the writer died, nothing more will come."""
        chunks = []
        want = max(need, most)
        idle = False
        while need > 0:
            try:
                chunk = os.read(self._rfd, want)
            except BlockingIOError:
                if idle:
                    return b"".join(chunks), False
                if not self._readable.poll(PROBE_WAIT * 1000):
                    idle = not self._write_lock.is_held()   # then one more read, for bytes written just before
                continue
            if not chunk:
                raise QueueClosed(f"queue {self.name!r}: the pipe is closed")
            chunks.append(chunk)
            need -= len(chunk)
            want -= len(chunk)
            idle = False
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), True

    def _resync(self, buf: bytearray, skip: int, broken: int = 0, lost: int = 0) -> list[bytes]:
        """Holding the read lock, with *buf* read from the pipe, not a whole frame from its
        start: drop bytes up to the next valid frame header, take the whole frames found,
        and stop where the bytes read end with a frame (the pipe is left on a frame's start).
        The first *skip* bytes are known not to begin a frame; *broken* frames of *lost*
        messages were found broken already. Logs what was dropped."""
        marker = self._marker
        items: list[bytes] = []
        dropped = 0
        start = skip
        while buf:
            pos = buf.find(marker, start)
            if pos < 0:                     # no header begins here; one may begin in the last bytes
                cut = max(start, len(buf) - (len(marker) - 1))
                dropped += cut
                del buf[:cut]
                start = 0
                more, _whole = self._read_more(1, _SCAN_CHUNK)
                if not more:
                    break
                buf += more
                continue
            if len(buf) < pos + HEADER_SIZE:
                more, whole = self._read_more(pos + HEADER_SIZE - len(buf))
                buf += more
                if not whole:
                    start = pos + 1
                continue
            parsed = _parse_header(marker, buf, pos)
            if parsed is None:
                start = pos + 1
                continue
            size, count, crc = parsed
            end = pos + HEADER_SIZE + size
            if len(buf) < end:
                more, whole = self._read_more(end - len(buf))
                buf += more
                if not whole:               # its writer died: later bytes may still hold whole frames
                    broken, lost, start = broken + 1, lost + count, pos + 1
                    continue
            body = bytes(buf[pos + HEADER_SIZE:end])
            if zlib.crc32(body) != crc:
                broken, lost, start = broken + 1, lost + count, pos + 1
                continue
            items.extend(_split(body, count))
            dropped += pos
            del buf[:end]
            start = 0
        dropped += len(buf)
        self._note_held(len(self._buffer) + len(items))
        logger.warning("queue %s: dropped %d byte(s) that were not a whole frame (%d broken frame(s), %d "
                       "message(s)): a process was killed while writing or reading them; %d message(s) "
                       "read after them", self.name, dropped, broken, lost, len(items))
        self._reclaim(due_only=False)
        return items

    # -- state -----------------------------------------------------------------------------------
    def _qsize(self) -> int:
        return self._capacity - self._slots.get_value()

    def _close(self) -> None:
        while self._buffer:     # messages this process took but never handed out: free their slots
            self._buffer.popleft()
            self._free_slots(1)
        if self._held:
            self._note_held(0)
        self._close_reader()
        with self._mutex:
            if self._writer is None:    # else it closes its end once its frames are written
                self._close_writer()
