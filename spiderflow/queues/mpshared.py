"""State that the processes of a ``multiprocessing://`` queue share and that a killed process cannot wedge.

:class:`ProcessLock` is a lock for every thread of every forked process that the kernel
releases when its holder dies (``flock`` on a memfd that each process opens anew after the
fork, so that each has a lock of its own). :class:`Ledger` is a table in shared memory with
an entry per process that uses the queue: what that process holds of the queue's shared
counts, so that what a process held when it was killed can be given back by another one
(see :mod:`spiderflow.queues.multiprocessing`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from typing import Any

#: How long a waiter sleeps between tries of a busy lock: it starts short and doubles.
SPIN_MIN, SPIN_MAX = 0.0001, 0.002

#: Ledger entries: processes that may use one queue over its lifetime at the same time.
LEDGER_SIZE = 256

# The fields of a ledger entry.
PID, START, OWED, HELD, PENDING = range(5)
ENTRY = 5


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _reopen(fd: int) -> int:
    """A new open file description of the file behind *fd* (a lock of its own for ``flock``)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


class _NoLock:
    """A stand-in for a thread lock that never excludes."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        pass


class ProcessLock:
    """A lock shared by the threads of every process forked after it was made; the kernel
    releases it when the process holding it dies.

    Call :meth:`after_fork` in each forked child before it uses the lock. A lock taken by
    one thread may be released by another thread of the same process. With
    ``threads=False`` it does not exclude the threads of one process from each other (its
    users do that themselves).
    """

    def __init__(self, name: str, threads: bool = True):
        self._fds = [os.memfd_create(f"spiderflow-{name}", os.MFD_CLOEXEC)]   # [lock fd, probe fd]
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        self._finalizer.atexit = False
        self._threads = threads
        self._mutex = threading.Lock() if threads else _NoLock()   # flock does not exclude threads

    def after_fork(self) -> None:
        """In a forked child: a file description of its own (the inherited one is the parent's
        lock) and a fresh thread lock (the parent's may have been held by another thread)."""
        inherited = list(self._fds)
        self._fds[:] = [_reopen(inherited[0])]
        for fd in inherited:
            os.close(fd)
        self._mutex = threading.Lock() if self._threads else _NoLock()

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most *timeout* seconds (None: as long as it takes; 0: not at all)."""
        mutex = self._mutex
        if timeout is None:
            mutex.acquire()
            try:
                fcntl.flock(self._fds[0], fcntl.LOCK_EX)
            except BaseException:
                mutex.release()
                raise
            return True
        if not mutex.acquire(False) and (timeout <= 0 or not mutex.acquire(True, timeout)):
            return False
        try:
            fcntl.flock(self._fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except BaseException:
            mutex.release()
            raise
        deadline = time.monotonic() + timeout
        delay = SPIN_MIN
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, SPIN_MAX)
                try:
                    fcntl.flock(self._fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
        except BaseException:
            mutex.release()
            raise
        mutex.release()
        return False

    def release(self) -> None:
        fcntl.flock(self._fds[0], fcntl.LOCK_UN)
        self._mutex.release()

    def is_held(self) -> bool:
        """Whether some process holds the lock (this one included). Not thread-safe: the
        caller serializes its calls."""
        if len(self._fds) < 2:
            self._fds.append(_reopen(self._fds[0]))
        probe = self._fds[1]
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def start_time(pid: int) -> int | None:
    """When process *pid* started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


class Ledger:
    """One entry per process that uses a queue, in shared memory: its pid and start time
    (a reused pid is not taken for the same process), the slots it owes (taken for frames
    not yet wholly in the pipe), the slots it holds (messages it took from the pipe and has
    not handed out) and its frames waiting for its background writer.

    Each process writes only its own entry (under its own locks); entries are claimed and
    freed under a :class:`ProcessLock`.
    """

    def __init__(self, ctx: Any, name: str, size: int = LEDGER_SIZE):
        self.cells = ctx.RawArray("q", size * ENTRY)
        self.lock = ProcessLock(f"{name}-ledger")

    def after_fork(self) -> None:
        self.lock.after_fork()

    def claim(self, give_back) -> int | None:
        """Claim a free entry for this process (freeing those of dead processes, as
        :meth:`reclaim` does, if none is free): the index of its first field, or None when
        the table is full."""
        me, started = os.getpid(), start_time(os.getpid()) or 0
        cells = self.cells
        self.lock.acquire()
        try:
            for attempt in (1, 2):
                for base in range(0, len(cells), ENTRY):
                    if cells[base + PID] == 0:
                        cells[base + START] = started
                        cells[base + OWED] = cells[base + HELD] = cells[base + PENDING] = 0
                        cells[base + PID] = me
                        return base
                if attempt == 1:
                    self._free_dead(give_back)
            return None
        finally:
            self.lock.release()

    def reclaim(self, give_back) -> None:
        """Free the entries of dead processes, calling ``give_back(pid, slots, frames)`` for each."""
        self.lock.acquire()
        try:
            self._free_dead(give_back)
        finally:
            self.lock.release()

    def _free_dead(self, give_back) -> None:
        cells = self.cells
        me = os.getpid()
        for base in range(0, len(cells), ENTRY):
            pid = cells[base + PID]
            if not pid or pid == me or start_time(pid) == cells[base + START]:
                continue
            slots, frames = cells[base + OWED] + cells[base + HELD], cells[base + PENDING]
            cells[base:base + ENTRY] = [0] * ENTRY
            give_back(pid, max(0, slots), max(0, frames))
