"""A process as a node of a cluster: registration, heartbeats, and thread dumps on SIGUSR1.

:class:`Node` registers the process in the node registry (:class:`~spiderflow.storage.NodeDB`)
and beats from a daemon thread every ``heartbeat_interval`` seconds, so a busy loop or a
long callback never starves it. Each beat carries the component's ``stats()`` (tasks in
flight, done, errors; see the ``*_stats`` adapters below, which read counters the
components keep anyway) plus the process's CPU seconds and RSS. A failing database is
logged once per outage and never reaches the component. :meth:`Node.stop` marks the node
stopped (a warm shutdown); a node that dies without it shows ``offline`` once its last
heartbeat is older than ``node_timeout``. Heartbeats also trim old rows, every
:data:`TRIM_EVERY` beats. :func:`spiderflow.runtime.compose.start_node` builds the node of each component process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import resource
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from . import __version__

logger = logging.getLogger(__name__)

Stats = Callable[[], dict[str, Any]]

TRIM_EVERY = 30              # beats between trims of old rows, per node (with a random phase)
KEEP_OFFLINE = 24 * 3600.0   # offline or stopped nodes are deleted after this many seconds
MAX_NODES = 1000             # and beyond this many rows, the oldest offline ones first
STOP_WAIT = 5.0              # seconds stop() waits for the registry before giving up


# -- the process -------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread)."""
    return time.process_time()


def rss_mb() -> float | None:
    """Resident set size of this process in MB (``VmRSS``; else the peak from getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def format_threads(main_frame: Any = None) -> str:
    """Every thread's stack, named; *main_frame* stands for the main thread (a signal handler's frame)."""
    threads = {t.ident: t for t in threading.enumerate()}
    main = threading.main_thread().ident
    parts = []
    frames = sorted(sys._current_frames().items(),
                    key=lambda item: (item[0] != main, getattr(threads.get(item[0]), "name", "")))
    for ident, frame in frames:
        if ident == main and main_frame is not None:
            frame = main_frame
        thread = threads.get(ident)
        label = (f"thread {thread.name!r}{' (daemon)' if thread.daemon else ''}" if thread is not None
                 else "thread (unnamed)")
        parts.append(f"--- {label} ident {ident}, most recent call last:\n"
                     + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def dump_threads(name: str, main_frame: Any = None) -> None:
    """Log every thread's stack as one record; the process goes on."""
    logger.warning("%s: thread dump (pid %d, %d threads)\n%s", name, os.getpid(),
                   threading.active_count(), format_threads(main_frame).rstrip())


# -- stats of each component (read from the heartbeat thread) --------------------------------------

def fetcher_stats(fetcher: Any) -> dict[str, Any]:
    """In flight, fetched, failed fetches (status 599: connection errors, timeouts)."""
    counts = fetcher.counters["all"]
    return {"in_flight": fetcher.in_flight, "done": counts["total"], "errors": counts.get("599", 0)}


def processor_stats(processor: Any) -> dict[str, Any]:
    """Tasks processed and those whose callback failed."""
    return {"done": processor.processed, "errors": processor.failed}


def result_worker_stats(worker: Any) -> dict[str, Any]:
    """Results stored and dropped."""
    return {"done": worker.stored, "errors": worker.failed}


def scheduler_stats(scheduler: Any) -> dict[str, Any]:
    """Tasks dispatched and unanswered, and tasks in SUCCESS and FAILED (the scheduler's ``stats()``).

    Not thread-safe: :mod:`spiderflow.runtime.component` calls it on the scheduler's loop through :func:`on_loop`.
    """
    stats = scheduler.stats()
    return {key: stats[key] for key in ("in_flight", "done", "errors") if key in stats}


def one_stats(one: Any) -> dict[str, Any]:
    """``spiderflow one``: its fetcher's fetches in flight, its processor's tasks."""
    out = {"in_flight": one.fetcher_component.in_flight}
    processor = getattr(one, "processor_component", None)
    if processor is not None:
        out.update(processor_stats(processor))
    return out


COMPONENT_STATS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "scheduler": scheduler_stats, "fetcher": fetcher_stats, "processor": processor_stats,
    "result-worker": result_worker_stats, "one": one_stats,
}


def on_loop(stats: Stats, loop: asyncio.AbstractEventLoop, wait: float = 1.0) -> Stats:
    """*stats* run on *loop*'s thread; while the loop is busy for more than *wait* s, the last values."""
    last: dict[str, Any] = {}

    def call() -> dict[str, Any]:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(stats())
                except Exception as exc:
                    future.set_exception(exc)

        loop.call_soon_threadsafe(run)   # RuntimeError once the loop is closed: the beat logs it
        try:
            last.update(future.result(wait))
        except concurrent.futures.TimeoutError:
            future.cancel()
        return dict(last)

    return call


# -- the node ----------------------------------------------------------------------------------------

class Node:
    """This process in the node registry *db*, with a heartbeat thread once :meth:`start` ed.

    *db* is a :class:`~spiderflow.storage.NodeDB`, or a function that opens one: it is then
    called on first use (in the heartbeat thread once started) and again until it works, so
    an unreachable database never delays or stops the component. *stats* returns some of
    ``in_flight``, ``done`` and ``errors``; it may be replaced at any time (``node.stats =
    ...``). The node closes *db* when it stops. *clock* is for tests.
    """

    def __init__(self, db: Any, kind: str, *, name: str | None = None, stats: Stats | None = None,
                 interval: float = 10.0, timeout: float = 60.0, clock: Callable[[], float] = time.time):
        self._open = None if hasattr(db, "register") else db
        self.db = None if self._open else db
        self.kind = kind
        self.id = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or f"{kind}@{self.host}:{self.pid}"
        self.stats = stats
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.started_at = clock()
        self.registered = False
        self._beats = random.randrange(TRIM_EVERY)   # nodes started together do not trim together
        self._failing: str | None = None             # what failed, while the registry is down
        self._stopping = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.id}>"

    def record(self) -> dict[str, Any]:
        """What :meth:`register` writes: identity, version, start time and the first stats."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "host": self.host, "pid": self.pid,
                "version": __version__, "started_at": self.started_at, "last_seen": self.clock(),
                **self.sample()}

    def sample(self) -> dict[str, Any]:
        """The component's stats plus CPU and RSS; a failing ``stats()`` leaves its part out."""
        out: dict[str, Any] = {}
        stats = self.stats
        if stats is not None:
            try:
                out.update(stats())
            except Exception:
                logger.debug("node %s: stats() failed", self.name, exc_info=True)
        out["cpu"] = round(cpu_seconds(), 3)
        out["rss_mb"] = rss_mb()
        return out

    # -- one step each; never raise ----------------------------------------------------------------
    def register(self) -> bool:
        """Write this node's row (again); False (logged once per outage) if the registry failed."""
        try:
            if self.db is None:
                self.db = self._open()
            self.db.register(self.record())
            self.db.trim(keep=KEEP_OFFLINE, max_rows=MAX_NODES, timeout=self.timeout, now=self.clock())
        except Exception as exc:
            self._failed("registration", exc)
            return False
        self.registered = True
        self._recovered()
        logger.debug("node %s registered as %s", self.name, self.id)
        return True

    def beat(self) -> bool:
        """One heartbeat (registering first if needed; trimming every :data:`TRIM_EVERY`)."""
        if not self.registered:
            return self.register()
        try:
            now = self.clock()
            if not self.db.heartbeat(self.id, self.sample(), now=now):
                logger.info("node %s: its row is gone from the registry; registering again", self.name)
                return self.register()
            self._beats += 1
            if self._beats % TRIM_EVERY == 0:
                self.db.trim(keep=KEEP_OFFLINE, max_rows=MAX_NODES, timeout=self.timeout, now=now)
        except Exception as exc:
            self._failed("heartbeat", exc)
            return False
        self._recovered()
        return True

    def mark_stopped(self) -> bool:
        """Mark this node stopped in the registry; False if that failed."""
        try:
            return bool(self.db.stop(self.id, self.sample(), now=self.clock()))
        except Exception as exc:
            self._failed("marking it stopped", exc)
            return False

    def _failed(self, what: str, exc: Exception) -> None:
        if self._failing is None:
            logger.warning("node %s: %s failed: %s; the component goes on, heartbeats retry every %g s "
                           "(not logged again until the registry answers)", self.name, what, exc, self.interval)
        self._failing = what

    def _recovered(self) -> None:
        if self._failing is not None:
            logger.warning("node %s: the node registry answers again", self.name)
            self._failing = None

    # -- the thread --------------------------------------------------------------------------------
    def start(self) -> Node:
        """Register and beat from a daemon thread (the caller never waits for the database)."""
        self._thread = threading.Thread(target=self._run, name=f"spiderflow-node-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        self.register()
        while not self._stopping.wait(self.interval):
            self.beat()
        if self.registered:
            self.mark_stopped()

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Warm shutdown: stop beating, mark the node stopped (waiting at most *wait* s), close db."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(wait)
            if thread.is_alive():
                logger.warning("node %s: the node registry did not answer in %g s; the node will show "
                               "offline after %g s", self.name, wait, self.timeout)
                return  # the thread still uses db; the process is about to exit anyway
        elif self.registered:
            self.mark_stopped()
        if self.db is not None:
            try:
                self.db.close()
            except Exception:
                logger.debug("node %s: closing the registry failed", self.name, exc_info=True)
        logger.info("node %s stopped", self.name)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "COMPONENT_STATS", "KEEP_OFFLINE", "MAX_NODES", "TRIM_EVERY", "Node", "cpu_seconds", "dump_threads",
    "fetcher_stats", "format_threads", "on_loop", "one_stats", "processor_stats", "result_worker_stats",
    "rss_mb", "scheduler_stats",
]
