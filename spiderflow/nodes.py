"""A process as a node of a cluster: identity, registration, heartbeats with host health, thread dumps.

:class:`Node` registers the process in the node registry (:class:`~spiderflow.storage.NodeDB`)
with what it is and can do (kind, version, Python, platform, CPUs, memory, IP address, port,
capabilities), then beats from a daemon thread every ``heartbeat_interval`` seconds, so a
busy loop or a long callback never starves it. Each beat carries the component's
``stats()`` (tasks in flight, done, errors; see the ``*_stats`` adapters below, which read
counters the components keep anyway), the throughput since the last beat, the process's CPU
seconds and RSS, and the host's health (CPU %, memory %, disk % of the data directory, load
average, network bytes; psutil), and is kept in the registry's history. A failing database
is logged once per outage and never reaches the component.

Identity: a node started without an id gets a new random one (its rows are trimmed a day
after it stops); with ``node_id`` it keeps that id across restarts, and :meth:`Node.start`
waits for the first registration, so that a second live node with the same id is refused
there with a ConfigError. A device (``spiderflow standalone --device-id D``) is the node
``D``; its components are ``D/<kind>#<index>`` (:func:`component_identity`).

:meth:`Node.stop` marks the node stopped at once (a warm shutdown); a node that dies without
it shows ``offline`` once its last heartbeat is older than ``node_timeout``. Registering and
every :data:`TRIM_EVERY` beats trim old rows and history.
:func:`spiderflow.runtime.compose.start_node` builds the node of each component process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import platform
import random
import re
import resource
import socket
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from . import __version__
from .exceptions import ConfigError

try:
    import psutil
except ImportError:  # a declared dependency; without it heartbeats carry no host health
    psutil = None

logger = logging.getLogger(__name__)

Stats = Callable[[], dict[str, Any]]

TRIM_EVERY = 30              # beats between trims of old rows, per node (with a random phase)
KEEP_OFFLINE = 24 * 3600.0   # offline or stopped nodes without a stable id are deleted after this many seconds
MAX_NODES = 1000             # and beyond this many rows, the oldest offline ones first
KEEP_HISTORY = 24 * 3600.0   # heartbeats are kept this long (settings.node_history_keep)
STOP_WAIT = 5.0              # seconds stop() waits for the registry before giving up
REGISTER_WAIT = 10.0         # seconds start() waits for the first registration of a node with a stable id
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/#+-]*\Z")
MAX_NODE_ID = 100            # a device's components add "/<kind>#<index>" (at most 128 in all)


# -- the process and its host ------------------------------------------------------------------------

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


def _existing_dir(path: str | None) -> str:
    path = os.path.abspath(path or ".")
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def host_health(path: str | None = None) -> dict[str, Any]:
    """The host's CPU % (since the last call in this process), memory %, disk % of the file
    system holding *path*, load averages and network bytes sent and received since boot;
    what cannot be read is left out."""
    out: dict[str, Any] = {}
    try:
        out["load1"], out["load5"], out["load15"] = (round(x, 3) for x in os.getloadavg())
    except (OSError, AttributeError):
        pass
    if psutil is None:
        return out
    readings: list[tuple[tuple[str, ...], Callable[[], tuple]]] = [
        (("cpu_percent",), lambda: (psutil.cpu_percent(None),)),
        (("memory_percent",), lambda: (psutil.virtual_memory().percent,)),
        (("disk_percent",), lambda: (psutil.disk_usage(_existing_dir(path)).percent,)),
        (("net_sent", "net_recv"), lambda: (lambda n: (n.bytes_sent, n.bytes_recv))(psutil.net_io_counters())),
    ]
    for keys, read in readings:
        try:
            out.update(zip(keys, read()))
        except Exception:   # a container without /proc/net, a vanished directory: leave it out
            logger.debug("host health: reading %s failed", keys, exc_info=True)
    return out


_ip: list[str] = []


def local_ip() -> str:
    """This host's address for other machines: its name's, unless that is loopback, then the
    first IPv4 address of an interface that is up (127.0.0.1 if there is none)."""
    if _ip:
        return _ip[0]
    ip = "127.0.0.1"
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        pass
    if ip.startswith("127.") and psutil is not None:
        try:
            up = {name for name, st in psutil.net_if_stats().items() if st.isup}
            for name, addrs in psutil.net_if_addrs().items():
                found = [a.address for a in addrs if a.family == socket.AF_INET and not a.address.startswith("127.")]
                if name in up and found:
                    ip = found[0]
                    break
        except Exception:
            logger.debug("local_ip: listing interfaces failed", exc_info=True)
    _ip.append(ip)
    return ip


def host_info() -> dict[str, Any]:
    """What registration records of the host: IP address, Python, platform, CPU count, memory."""
    memory = None
    if psutil is not None:
        try:
            memory = psutil.virtual_memory().total
        except Exception:
            pass
    return {"ip": local_ip(), "python": platform.python_version(), "platform": platform.platform(terse=True),
            "cpu_count": os.cpu_count(), "memory_total": memory}


def fetch_types() -> list[str]:
    """What a fetcher of this installation can fetch: ``http``, ``https``, ``data`` URLs, and
    through a proxy (http, https, socks) when pycurl is installed, and ``js`` (fetch_type='js')
    when Playwright and a Chromium on PATH are (see :func:`spiderflow.fetcher.js.js_unavailable`)."""
    from .fetcher.js import js_unavailable

    types = ["http", "https", "data"]
    if importlib.util.find_spec("pycurl") is not None:
        types += ["proxy-http", "proxy-socks"]
    if js_unavailable() is None:
        types.append("js")
    return types


def capabilities(kinds: Iterable[str], concurrency: int | None = None) -> dict[str, Any]:
    """The capabilities registered for a node running components of *kinds*."""
    kinds = list(kinds)
    out: dict[str, Any] = {"components": kinds}
    if "fetcher" in kinds or "one" in kinds:
        out["fetch_types"] = fetch_types()
        if concurrency:
            out["max_concurrent_tasks"] = concurrency
    return out


def process_alive(pid: int) -> bool:
    """Whether a process of *pid* runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# -- identity --------------------------------------------------------------------------------------

def check_node_id(node_id: str, what: str = "--node-id", longest: int = MAX_NODE_ID) -> str:
    """*node_id* if it is a usable stable id (letters, digits, ``._:@/#+-``), else ConfigError."""
    if not isinstance(node_id, str) or not NODE_ID.match(node_id) or len(node_id) > longest:
        raise ConfigError(f"{what} {node_id!r} is not a usable node id: give 1-{longest} letters, digits and "
                          "._:@/#+- (starting with a letter or digit)")
    return node_id


def component_identity(node_id: str, node_name: str | None, kind: str, index: int) -> tuple[str, str]:
    """``(id, name)`` of component *kind* number *index* of device *node_id*: ``ID/kind#index``."""
    name = node_name or socket.gethostname()
    return f"{node_id}/{kind}#{index}", f"{name}/{kind}#{index}"


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


# -- threads and signals ----------------------------------------------------------------------------

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


# -- the node ----------------------------------------------------------------------------------------

class Node:
    """This process in the node registry *db*, with a heartbeat thread once :meth:`start` ed.

    *db* is a :class:`~spiderflow.storage.NodeDB`, or a function that opens one: it is then
    called on first use (in the heartbeat thread once started) and again until it works, so
    an unreachable database never delays or stops the component. *node_id* is a stable id
    (None: a new random one); *device* the device the node belongs to. *stats* returns some
    of ``in_flight``, ``done`` and ``errors``; it may be replaced at any time (``node.stats =
    ...``); with *aggregate* (a device) the sums over the device's nodes stand in for them.
    *data_dir* is where disk use is measured; *port* and *capabilities* are registered as
    given. With *monitoring*, each beat logs the node's health and the nodes of the cluster
    that went offline or came back. The node closes *db* when it stops. *clock* is for tests.
    """

    def __init__(self, db: Any, kind: str, *, name: str | None = None, node_id: str | None = None,
                 device: str | None = None, stats: Stats | None = None, interval: float = 30.0,
                 timeout: float = 300.0, data_dir: str | None = None, port: int | None = None,
                 capabilities: dict[str, Any] | None = None, aggregate: bool = False,
                 history_keep: float = KEEP_HISTORY, monitoring: bool = False,
                 clock: Callable[[], float] = time.time):
        self._open = None if hasattr(db, "register") else db
        self.db = None if self._open else db
        self.kind = kind
        self.named = node_id is not None
        self.id = check_node_id(node_id, longest=128) if node_id is not None else uuid.uuid4().hex
        self.session = uuid.uuid4().hex
        self.device = device
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or (node_id if node_id is not None else f"{kind}@{self.host}:{self.pid}")
        self.stats = stats
        self.interval = interval
        self.timeout = timeout
        self.data_dir = data_dir
        self.port = port or None
        self.capabilities = capabilities
        self.aggregate = aggregate
        self.history_keep = history_keep
        self.monitoring = monitoring
        self.clock = clock
        self.started_at = clock()
        self.registered = False
        self.refused: ConfigError | None = None      # the id belongs to another live node
        self._beats = random.randrange(TRIM_EVERY)   # nodes started together do not trim together
        self._failing: str | None = None             # what failed, while the registry is down
        self._last_done: tuple[float, float] | None = None
        self._seen: dict[str, str] = {}              # monitoring: status of each node at the last beat
        self._stopping = threading.Event()
        self._first = threading.Event()              # the first registration was tried
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._busy = threading.Lock()                # held while talking to the registry (see _before_fork)
        self._claim = threading.Lock()
        self._waiter = False                         # start() waits for the first registration
        if psutil is not None:
            psutil.cpu_percent(None)                 # the first reading starts the interval

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.id}>"

    def record(self) -> dict[str, Any]:
        """What :meth:`register` writes: identity, what the node is and can do, the first stats."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "host": self.host, "pid": self.pid,
                "version": __version__, "started_at": self.started_at, "last_seen": self.clock(),
                "session": self.session, "named": self.named, "device": self.device, "port": self.port,
                "capabilities": self.capabilities, **host_info(), **self.sample()}

    def sample(self) -> dict[str, Any]:
        """The component's stats (a device's: its nodes' sums), the throughput since the last
        sample, the process's CPU and RSS and the host's health; a failing ``stats()`` leaves its part out."""
        out: dict[str, Any] = {}
        stats = self.stats
        if stats is not None:
            try:
                out.update(stats())
            except Exception:
                logger.debug("node %s: stats() failed", self.name, exc_info=True)
        if self.aggregate and self.db is not None:
            try:
                out.update(self.db.device_totals(self.id))
            except Exception:
                logger.debug("node %s: device totals failed", self.name, exc_info=True)
        now = self.clock()
        done = out.get("done")
        if isinstance(done, (int, float)):
            if self._last_done is None:
                self._last_done = (now, done)
            elif now - self._last_done[0] >= self.interval / 4:    # a beat soon after another (the
                out["rate"] = round(max(0.0, done - self._last_done[1]) / (now - self._last_done[0]), 3)
                self._last_done = (now, done)                    # one at stop) tells no rate
        out["cpu"] = round(cpu_seconds(), 3)
        out["rss_mb"] = rss_mb()
        out.update(host_health(self.data_dir))
        return out

    # -- one step each; never raise ----------------------------------------------------------------
    def _alive(self, row: dict[str, Any]) -> bool | None:
        if row["host"] != self.host:
            return None                               # another machine: its heartbeats tell
        if row["pid"] == self.pid:
            return False                              # an earlier registration of this process
        return process_alive(row["pid"])

    def register(self) -> bool:
        """Write this node's row (again); False (logged once per outage) if the registry failed
        or refused the id (then :attr:`refused` says why)."""
        with self._busy:
            try:
                if self.db is None:
                    self.db = self._open()
                starts = self.db.register(self.record(), timeout=self.timeout, alive=self._alive)
                now = self.clock()
                self.db.trim(keep=KEEP_OFFLINE, max_rows=MAX_NODES, timeout=self.timeout, now=now)
                self.db.trim_history(keep=self.history_keep, now=now)
            except ConfigError as exc:
                self.refused = exc
                return False
            except Exception as exc:
                self._failed("registration", exc)
                return False
        self.registered = True
        self._recovered()
        if self.named:
            logger.info("node %s registered as %s (start %d of this id)", self.name, self.id, starts)
        else:
            logger.debug("node %s registered as %s", self.name, self.id)
        return True

    def beat(self) -> bool:
        """One heartbeat (registering first if needed; trimming every :data:`TRIM_EVERY`)."""
        if self.refused is not None:
            return False
        if not self.registered:
            return self.register()
        with self._busy:
            try:
                now = self.clock()
                sample = self.sample()
                if not self.db.heartbeat(self.id, sample, now=now, session=self.session):
                    gone = True
                else:
                    gone = False
                    self._beats += 1
                    if self._beats % TRIM_EVERY == 0:
                        self.db.trim(keep=KEEP_OFFLINE, max_rows=MAX_NODES, timeout=self.timeout, now=now)
                        self.db.trim_history(keep=self.history_keep, now=now)
                    if self.monitoring:
                        self._watch(sample, now)
            except Exception as exc:
                self._failed("heartbeat", exc)
                return False
        if gone:
            logger.info("node %s: its row is gone from the registry (or another process took it); "
                        "registering again", self.name)
            if not self.register() and self.refused is not None:
                self._log_refused()
            return self.registered and self.refused is None
        self._recovered()
        return True

    def _watch(self, sample: dict[str, Any], now: float) -> None:
        """Monitoring: log this node's health, and each node that went offline or came back."""
        def pct(key: str) -> str:
            value = sample.get(key)
            return "-" if value is None else f"{value:.0f}%"

        logger.info("node %s: cpu %s, memory %s, disk %s, load %s, tasks %s, done %s (%s/s), errors %s",
                    self.name, pct("cpu_percent"), pct("memory_percent"), pct("disk_percent"),
                    sample.get("load1", "-"), sample.get("in_flight", "-"), sample.get("done", "-"),
                    sample.get("rate", "-"), sample.get("errors", "-"))
        seen = {}
        for node in self.db.list(True, timeout=self.timeout, now=now):
            seen[node["id"]] = status = node["status"]
            before = self._seen.get(node["id"])
            if before == "online" and status == "offline":
                logger.warning("node %s (%s on %s) is offline: no heartbeat for %.0f s", node["name"],
                               node["kind"], node["host"], now - node["last_seen"])
            elif before == "offline" and status == "online":
                logger.warning("node %s (%s on %s) is back online", node["name"], node["kind"], node["host"])
        self._seen = seen

    def mark_stopped(self) -> bool:
        """Mark this node stopped in the registry; False if that failed."""
        with self._busy:
            try:
                return bool(self.db.stop(self.id, self.sample(), now=self.clock(), session=self.session))
            except Exception as exc:
                self._failed("marking it stopped", exc)
                return False

    def _log_refused(self) -> None:
        logger.error("node %s: %s; this process goes on without heartbeats", self.name, self.refused)

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
    def start(self, wait: float | None = None) -> Node:
        """Register and beat from a daemon thread.

        A node with a stable id waits up to *wait* seconds (:data:`REGISTER_WAIT`) for the
        first registration and raises ConfigError if its id belongs to another live node;
        others (and a registry that does not answer in time) never make the caller wait.
        """
        _track(self, True)
        self._thread = threading.Thread(target=self._run, name=f"spiderflow-node-{self.kind}", daemon=True)
        self._thread.start()
        wait = (REGISTER_WAIT if self.named else 0.0) if wait is None else wait
        if wait > 0:
            with self._claim:
                self._waiter = True
            self._first.wait(wait)
            with self._claim:
                self._waiter = False
            if self.refused is not None:
                self.stop()
                raise ConfigError(str(self.refused))
        return self

    def _run(self) -> None:
        try:
            self.register()
        finally:
            with self._claim:       # start() raises the refusal while it waits; else it is logged here
                self._first.set()
                if self.refused is not None and not self._waiter:
                    self._log_refused()
        while self.refused is None and not self._stopping.wait(self.interval):
            self.beat()
        if self.registered and self.refused is None:
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
        _track(self, False)
        if self.db is not None:
            try:
                self.db.close()
            except Exception:
                logger.debug("node %s: closing the registry failed", self.name, exc_info=True)
        if self.refused is None:
            logger.info("node %s stopped", self.name)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- fork safety: `all` forks its components while the device's node beats -----------------------------

_live: weakref.WeakSet[Node] = weakref.WeakSet()
_live_lock = threading.Lock()
_held: list[threading.Lock] = []       # the locks _before_fork took (each noted before it is taken)


def _track(node: Node, live: bool) -> None:
    """Add *node* to (or drop it from) the nodes a fork pauses; never waits long (a signal that
    interrupted a fork's handlers may have left the lock taken)."""
    if _live_lock.acquire(timeout=1.0):
        try:
            (_live.add if live else _live.discard)(node)
        finally:
            _live_lock.release()


def _before_fork() -> None:
    """A child must not inherit a lock of SQLite or of a driver held by a beat in a thread it lacks,
    nor an open SQLite connection: SQLite keeps its file locks per process, so a child's own
    connection would count on locks that only this process holds (and lose commits once it is
    gone). The next beat here opens a new one."""
    _held.append(_live_lock)
    _live_lock.acquire()
    for node in list(_live):
        _held.append(node._busy)
        node._busy.acquire()
        db = node.db
        if db is not None and db.dialect == "sqlite":
            try:
                db.engine.dispose()
            except Exception:
                logger.debug("node %s: closing its connections before a fork failed", node.name, exc_info=True)


def _after_fork_in_parent() -> None:
    while _held:
        lock = _held.pop()
        try:
            lock.release()
        except RuntimeError:    # noted but not taken: _before_fork was interrupted
            pass


def _after_fork_in_child() -> None:
    global _live_lock
    for node in list(_live):    # copies of the parent's nodes: their threads stayed there
        node._busy = threading.Lock()
        node._stopped = True
    _held.clear()
    _live.clear()
    _live_lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


__all__ = [
    "COMPONENT_STATS", "KEEP_HISTORY", "KEEP_OFFLINE", "MAX_NODES", "TRIM_EVERY", "Node", "capabilities",
    "check_node_id", "component_identity", "cpu_seconds", "dump_threads", "fetch_types", "fetcher_stats",
    "format_threads", "host_health", "host_info", "local_ip", "on_loop", "one_stats", "process_alive",
    "processor_stats", "result_worker_stats", "rss_mb", "scheduler_stats",
]
