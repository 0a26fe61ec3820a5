"""The composition root: the only place that turns settings and URLs into components.

``build_*`` functions make one component from settings, queues and databases;
:func:`run_component` runs one in this process with warm/cold signal handling;
:func:`start_node` registers a process as a node and starts its heartbeats;
:func:`run_one` is ``spiderflow one`` (OneScheduler, fetch → process → result inline);
:func:`run_all` is ``spiderflow all`` (every component as a process on one machine);
:func:`crawl` runs a crawl from Python and returns its results.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from .exceptions import ConfigError, InvalidProjectName
from .message import (
    Fetch,
    Process,
    ProjectStatus,
    ResultPack,
    Task,
    TaskStatus,
    validate_project_name,
)
from .nodes import dump_threads
from .queues import BaseQueue, connect_queues
from .settings import Settings
from .storage import connect_nodedb, connect_projectdb, connect_resultdb, connect_taskdb

logger = logging.getLogger(__name__)

COMPONENTS = ("scheduler", "fetcher", "processor", "result-worker")
#: queue backends that cannot be shared by processes started separately
LOCAL_QUEUES = ("memory", "multiprocessing")


# -- databases and queues ----------------------------------------------------------------

@dataclass
class Databases:
    projectdb: Any
    taskdb: Any
    resultdb: Any

    def close(self) -> None:
        for db in (self.projectdb, self.taskdb, self.resultdb):
            with contextlib.suppress(Exception):
                db.close()


def open_databases(settings: Settings) -> Databases:
    """Open projectdb, taskdb and resultdb from the settings' URLs (sqlite in data_dir by default)."""
    return Databases(
        projectdb=connect_projectdb(settings.db_url("projectdb")),
        taskdb=connect_taskdb(settings.db_url("taskdb")),
        resultdb=connect_resultdb(settings.db_url("resultdb")),
    )


def open_queues(settings: Settings, default: str = "memory://") -> dict[str, BaseQueue]:
    """The five pipeline queues on ``settings.queue`` (or *default*), bounded by ``settings.queue_bounds()``."""
    return connect_queues(settings.queue or default, settings.queue_bounds())


def queue_scheme(settings: Settings, default: str) -> str:
    return (settings.queue or default).split("://", 1)[0].lower()


# -- components ----------------------------------------------------------------------------

def build_scheduler(settings: Settings, queues: dict[str, BaseQueue], dbs: Databases):
    from .scheduler import Scheduler
    return Scheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb,
                     newtask_queue=queues["newtask_queue"], status_queue=queues["status_queue"],
                     out_queue=queues["scheduler2fetcher"], settings=settings)


def build_fetcher(settings: Settings, queues: dict[str, BaseQueue] | None = None):
    from .fetcher import Fetcher
    queues = queues or {}
    return Fetcher(queues.get("scheduler2fetcher"), queues.get("fetcher2processor"), settings)


def build_processor(settings: Settings, queues: dict[str, BaseQueue] | None, dbs: Databases):
    from .processor import Processor
    queues = queues or {}
    return Processor(inqueue=queues.get("fetcher2processor"), status_queue=queues.get("status_queue"),
                     newtask_queue=queues.get("newtask_queue"), result_queue=queues.get("processor2result"),
                     projectdb=dbs.projectdb, settings=settings)


def build_result_worker(settings: Settings, queues: dict[str, BaseQueue] | None, dbs: Databases | None,
                        sink: str | None = None, **kwargs: Any):
    from .result import load_result_worker_class
    cls = load_result_worker_class(sink or settings.result_sink)
    return cls((queues or {}).get("processor2result"), dbs.resultdb if dbs else None, settings, **kwargs)


# -- signals ---------------------------------------------------------------------------------

#: a second stop signal within this many seconds of the first counts as the same one
SAME_SIGNAL_WINDOW = 1.0


def install_stop_signals(stop: Callable[[], None], name: str, sigint: bool = True,
                         grace: float | None = None) -> None:
    """First SIGTERM/SIGINT: warm stop (``stop()``); a second one or SIGQUIT: cold, exit now.

    With ``sigint=False`` (the children of ``all``) Ctrl-C is left to the parent, which
    passes it on as one SIGTERM, so a single Ctrl-C stays a warm shutdown. With *grace*, a
    warm stop that has not ended the process after *grace* seconds turns cold. SIGUSR1 logs
    every thread's stack and changes nothing.
    """
    first: dict[str, float] = {}

    def warm(signum: int, _frame: Any) -> None:
        if "at" in first:
            # one event often arrives twice: Ctrl-C or `timeout` signal the whole process
            # group and `all` passes the signal on; only a later signal means "stop now"
            if time.monotonic() - first["at"] < SAME_SIGNAL_WINDOW:
                return
            cold(signum, _frame)
            return
        first["at"] = time.monotonic()
        logger.info("%s: %s received, finishing in-flight work (send again to stop at once)",
                    name, signal.Signals(signum).name)
        if grace is not None:
            _cold_after(grace, name)
        stop()

    def cold(signum: int, _frame: Any) -> None:
        logger.warning("%s: %s received, stopping at once", name, signal.Signals(signum).name)
        logging.shutdown()
        os._exit(1)

    signal.signal(signal.SIGTERM, warm)
    signal.signal(signal.SIGINT, warm if sigint else signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, cold)
    signal.signal(signal.SIGUSR1, lambda _signum, frame: dump_threads(name, frame))


def _cold_after(grace: float, name: str) -> None:
    def expire() -> None:
        logger.warning("%s: warm shutdown did not end in %g s; stopping at once", name, grace)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def stop_grace(settings: Settings) -> float:
    """How long a warm shutdown may take: the longest fetch or callback in hand, plus a margin."""
    return max(settings.timeout, settings.process_time_limit) + 30.0


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# -- nodes: every component process registers and heartbeats (spiderflow.nodes) -------------------

def start_node(kind: str, settings: Settings, component: Any = None, *, name: str | None = None):
    """Register this process as a node of *kind* and start its heartbeat thread.

    The registry is in the projectdb database. Returns the :class:`~spiderflow.nodes.Node`
    (``stop()`` it on a warm shutdown), or None when ``heartbeat_interval`` is 0.
    """
    if settings.heartbeat_interval <= 0:
        return None
    from .nodes import COMPONENT_STATS, Node
    stats = COMPONENT_STATS.get(kind)
    url = settings.db_url("projectdb")
    return Node(lambda: connect_nodedb(url), kind, name=name,
                stats=(lambda: stats(component)) if stats and component is not None else None,
                interval=settings.heartbeat_interval, timeout=settings.node_timeout).start()


def node_lister(settings: Settings) -> Callable[[bool], list[dict[str, Any]]]:
    """``nodes(include_offline)``: the registry's nodes, read on each call (the control interface)."""
    def nodes(include_offline: bool = False) -> list[dict[str, Any]]:
        db = connect_nodedb(settings.db_url("projectdb"))
        try:
            return db.list(include_offline, timeout=settings.node_timeout)
        finally:
            db.close()
    return nodes


# -- one component in this process -------------------------------------------------------------

#: Objects allocated (net) between young-generation collections in a running component;
#: Python's default is 700, which at several hundred pages a second means a collection
#: every few pages.
GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """Before a component's loop: move everything built so far (modules, the project's
    script, caches) out of the collector's way, and collect young objects less often.

    The objects of one page (a parsed tree, a few dozen messages) are freed by reference
    counting; the cyclic collector only finds work in rare cycles, so running it every 700
    allocations was pure cost, and each full collection walked every long-lived object.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_component(kind: str, settings: Settings, queues: dict[str, BaseQueue], *, burst: bool = False,
                  control: bool = True, sigint: bool = True,
                  observe: Callable[[str, Any], None] | None = None) -> None:
    """Run one component until a signal (or, with *burst*, until its input is drained).

    *observe*, if given, is called with ``(kind, component)`` once the component is built and
    before it runs (the bench watches the component's counters this way).
    """
    if kind not in COMPONENTS:
        raise ConfigError(f"unknown component {kind!r}; known: {', '.join(COMPONENTS)}")
    dbs = None if kind == "fetcher" else open_databases(settings)
    grace = stop_grace(settings)
    node = None
    try:
        if kind == "scheduler":
            component = build_scheduler(settings, queues, dbs)
        elif kind == "fetcher":
            component = build_fetcher(settings, queues)
        elif kind == "processor":
            component = build_processor(settings, queues, dbs)
        else:
            component = build_result_worker(settings, queues, dbs)
        if observe is not None:
            observe(kind, component)
        _settle_heap()
        install_stop_signals(component.stop, kind, sigint, grace)
        # the scheduler's stats are read on its own loop, in _run_scheduler
        node = start_node(kind, settings, None if kind == "scheduler" else component)
        if kind == "scheduler":
            asyncio.run(_run_scheduler(component, control, node))
        elif kind == "fetcher":
            asyncio.run(component.run(burst=burst))
        else:
            component.run(burst=burst)
    finally:
        if node is not None:
            node.stop()
        if dbs is not None:
            dbs.close()


async def _run_scheduler(scheduler: Any, control: bool, node: Any = None) -> None:
    from .nodes import on_loop, scheduler_stats
    if node is not None:
        node.stats = on_loop(lambda: scheduler_stats(scheduler), asyncio.get_running_loop())
    server = None
    if control:
        from .scheduler import serve_control
        try:
            server, _port = serve_control(scheduler, nodes=node_lister(scheduler.settings))
        except OSError as exc:
            logger.error("scheduler control interface could not bind %s:%s (%s); running without it "
                         "(choose another port with --scheduler-port)",
                         scheduler.settings.scheduler_host, scheduler.settings.scheduler_port, exc.strerror or exc)
    try:
        await scheduler.run()
    finally:
        if server is not None:
            server.stop()


def _run_webui(settings: Settings, queues: dict[str, BaseQueue]) -> None:
    from .webui import build_webui
    server = build_webui(settings, queues=queues)
    install_stop_signals(server.stop, "webui", sigint=False)
    logger.info("web UI on %s", server.url)
    node = start_node("webui", settings)
    try:
        server.run()
    finally:
        if node is not None:
            node.stop()


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Fail before anything starts when *port* is taken (0 means "any free port")."""
    if not port:
        return
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"the {what} cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          f"choose another port with {option}") from None


# -- project scripts -------------------------------------------------------------------------------

def read_script(path: str, name: str | None = None) -> tuple[str, str]:
    """Read a project script; its project name defaults to the file name without ``.py``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read project script {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"project script {path!r} is not UTF-8 text: {exc}") from exc
    if name is None:
        name = re.sub(r"\.py$", "", os.path.basename(path))
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name).lstrip("-") or "project"
    try:
        validate_project_name(name)
    except InvalidProjectName as exc:
        raise ConfigError(f"{exc} (from script {path!r}; pass --name)") from exc
    return name, text


_RATE_COMMENT = re.compile(r"^\s*#\s*(rate|burst)\s*[:=]\s*(\d+(?:\.\d+)?)\s*$", re.I | re.M)


def script_rate(script: str, settings: Settings = Settings(), rate: float | None = None,
                burst: float | None = None) -> tuple[float, float]:
    """A project's rate and burst: given values > ``# rate: N`` / ``# burst: N`` comment lines > defaults."""
    found = {key.lower(): float(value) for key, value in _RATE_COMMENT.findall(script)}
    return (rate if rate is not None else found.get("rate", settings.default_rate),
            burst if burst is not None else found.get("burst", settings.default_burst))


def store_project(projectdb: Any, name: str, script: str, status: ProjectStatus = ProjectStatus.RUNNING,
                  settings: Settings = Settings(), rate: float | None = None, burst: float | None = None) -> None:
    """Insert or update a project's script, status, rate and burst in projectdb."""
    rate, burst = script_rate(script, settings, rate, burst)
    if projectdb.get(name, fields=["name"]) is None:
        projectdb.insert(name, script=script, status=status, rate=rate, burst=burst)
    else:
        projectdb.update(name, script=script, status=status, rate=rate, burst=burst)


def check_script(name: str, script: str) -> None:
    """Compile a script now so that a broken one is reported before anything starts."""
    from .processor import load_project
    load_project(name, script)  # raises ScriptError naming the line


def start_task(project: str, url: str, callback: str) -> Task:
    """A task that crawls *url* with *callback*, forced to run now (``one --url``)."""
    from .message import Schedule
    return Task.create(project, url, schedule=Schedule(force_update=True, priority=9),
                       fetch=Fetch(), process=Process(callback=callback))


# -- spiderflow one ----------------------------------------------------------------------------------

def run_one(settings: Settings, script_path: str, *, name: str | None = None, urls: Iterable[str] = (),
            callback: str = "index_page", out: TextIO | None = None, interactive: bool = False,
            resultdb_given: bool = False, rate: float | None = None, burst: float | None = None) -> int:
    """``spiderflow one``: run one project in this process until its crawl is done."""
    name, script = read_script(script_path, name)
    check_script(name, script)
    dbs = Databases(
        projectdb=connect_projectdb(settings.projectdb or "sqlite://"),
        taskdb=connect_taskdb(settings.taskdb or "sqlite://"),
        resultdb=connect_resultdb(settings.resultdb) if resultdb_given else None,
    )
    store_project(dbs.projectdb, name, script, ProjectStatus.DEBUG, settings, rate, burst)
    one, results = _one_scheduler(settings, dbs, name, out)
    urls = list(urls)
    if urls:
        for url in urls:
            one.newtask(start_task(name, url, callback))
    else:
        one.run_project(name)
    # a node only when its registry is shared (a projectdb URL): never a ./data for in-memory runs
    node = start_node("one", settings, one) if settings.projectdb else None
    try:
        install_stop_signals(one.stop, "one")
        asyncio.run(_run_one(one, interactive, name, callback))
    finally:
        if node is not None:
            node.stop()
        dbs.close()
    logger.info("one: done, %d results", results())
    return 0


def _one_scheduler(settings: Settings, dbs: Databases, name: str, out: TextIO | None):
    from .fetcher import Fetcher
    from .processor import Processor
    from .result import JsonLinesResultWorker
    from .scheduler import OneScheduler

    fetcher = Fetcher(None, None, settings)
    processor = Processor(projectdb=dbs.projectdb, settings=settings)

    def process(task: Task, result: Any):
        outcome = processor.process(task, result)
        return outcome.status_pack, outcome.new_tasks, outcome.results

    stored = {"n": 0}
    if dbs.resultdb is not None:
        def sink(pack: ResultPack) -> None:
            dbs.resultdb.upsert(pack)
            stored["n"] += 1
    else:
        writer = JsonLinesResultWorker(stream=out or sys.stdout)

        def sink(pack: ResultPack) -> None:
            writer.on_results([pack])
            stored["n"] += 1

    # counters are kept only where task state is kept
    counter_file = None if settings.taskdb is None else os.path.join(settings.data_dir, f"one.{name}.counters.json")
    one = OneScheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb, fetcher=fetcher,
                       process=process, result_sink=sink, project=name, settings=settings,
                       counter_file=counter_file)
    one.fetcher_component = fetcher
    one.processor_component = processor  # for its node's stats
    return one, lambda: stored["n"]


async def _run_one(one: Any, interactive: bool, name: str, callback: str) -> None:
    try:
        await one.run(burst=True)
        if interactive:
            await _interactive(one, name, callback)
    finally:
        one.fetcher_component.close()


async def _interactive(one: Any, name: str, callback: str) -> None:
    """A Python prompt with ``crawl(url, callback=...)`` that runs each crawl to completion."""
    import code

    loop = asyncio.get_running_loop()

    def crawl(url: str, callback: str = callback) -> None:
        one.newtask(start_task(name, url, callback))
        asyncio.run_coroutine_threadsafe(one.run(burst=True), loop).result()

    banner = (f"spiderflow one: project {name!r} is done. crawl(url, callback={callback!r}) runs another "
              "crawl to completion; Ctrl-D quits.")
    console = code.InteractiveConsole({"crawl": crawl, "scheduler": one})
    await loop.run_in_executor(None, lambda: console.interact(banner=banner, exitmsg=""))


# -- crawl() from Python ---------------------------------------------------------------------------------

def crawl(handler: Any, *, name: str | None = None, urls: Iterable[str] = (), callback: str = "index_page",
          settings: Settings | None = None, rate: float | None = None,
          burst: float | None = None) -> list[dict[str, Any]]:
    """Run a crawl in this process and return its results as dicts (taskid, url, result).

    *handler* is a BaseHandler subclass, a script's text, or the path of a script file.
    Without *urls* the project's ``on_start`` runs. Task state lives in memory unless
    *settings* name a taskdb.
    """
    settings = settings or Settings()
    if isinstance(handler, str) and handler.endswith(".py") and "\n" not in handler:
        name, handler = read_script(handler, name)
    name = validate_project_name(name or getattr(handler, "__name__", "project"))
    dbs = Databases(projectdb=connect_projectdb("sqlite://"), taskdb=connect_taskdb(settings.taskdb or "sqlite://"),
                    resultdb=None)
    results: list[dict[str, Any]] = []
    from .fetcher import Fetcher
    from .processor import Processor, ProjectManager
    from .scheduler import OneScheduler

    projects = ProjectManager(time_limit=settings.process_time_limit)
    projects.add(name, handler)
    store_project(dbs.projectdb, name, handler if isinstance(handler, str) else f"# {handler!r}",
                  ProjectStatus.DEBUG, settings, rate, burst)
    processor = Processor(settings=settings, projects=projects)
    fetcher = Fetcher(None, None, settings)

    def process(task: Task, result: Any):
        outcome = processor.process(task, result)
        return outcome.status_pack, outcome.new_tasks, outcome.results

    def sink(pack: ResultPack) -> None:
        results.append({"taskid": pack.taskid, "url": pack.url, "result": pack.result})

    one = OneScheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=None, fetcher=fetcher,
                       process=process, result_sink=sink, project=name, settings=settings, counter_file=None)
    for url in urls:
        one.newtask(start_task(name, url, callback))
    if not urls:
        one.run_project(name)

    async def go() -> None:
        try:
            await one.run(burst=True)
        finally:
            fetcher.close()

    try:
        asyncio.run(go())
    finally:
        dbs.close()
    return results


# -- spiderflow all ------------------------------------------------------------------------------------

def run_all(settings: Settings, scripts: Iterable[tuple[str, str]] = (), *, exit_when_done: bool = False,
            rate: float | None = None, burst: float | None = None, webui: bool = True,
            check_interval: float = 0.5, done_after: float = 2.0) -> int:
    """``spiderflow all``: every component as a process on this machine, until a signal.

    *scripts* (name, text) are stored as RUNNING projects and started (on_start). With
    *exit_when_done*, it stops once those projects have no ACTIVE task and every queue has
    stayed empty for *done_after* seconds.
    """
    ctx = multiprocessing.get_context("fork")
    queue_url = settings.queue or "multiprocessing://"
    settings = settings.replace(queue=queue_url)
    scripts = list(scripts)
    for name, script in scripts:
        check_script(name, script)
    from .result import load_result_worker_class
    load_result_worker_class(settings.result_sink)  # a bad sink name fails here, not in every child
    if webui:
        from .webui import check_webui_settings
        check_webui_settings(settings)
        check_port_free(settings.webui_host, settings.webui_port, "web UI", "--webui-port")
    dbs = open_databases(settings)
    try:
        for name, script in scripts:
            store_project(dbs.projectdb, name, script, ProjectStatus.RUNNING, settings, rate, burst)
    finally:
        dbs.close()
    kwargs = {"context": ctx} if queue_scheme(settings, queue_url) == "multiprocessing" else {}
    queues = connect_queues(queue_url, settings.queue_bounds(), **kwargs)
    plan = [("scheduler", 1), ("fetcher", settings.fetcher_num), ("processor", settings.processor_num),
            ("result-worker", settings.result_worker_num)] + ([("webui", 1)] if webui else [])
    supervisor = _Supervisor(ctx, settings, queues)
    for kind, count in plan:
        for index in range(max(1, count)):
            supervisor.start(kind, index)
    from .message import special_task
    for name, _script in scripts:
        queues["newtask_queue"].put(special_task(name, "on_start", priority=9), timeout=30)
        logger.info("all: project %s started", name)
    if webui and settings.webui_port:
        from .webui import webui_url
        logger.info("all: web UI on %s", webui_url(settings.webui_host, settings.webui_port))
    stop = threading.Event()
    install_stop_signals(stop.set, "all")
    names = [name for name, _ in scripts]
    quiet_since: float | None = None
    try:
        while not stop.wait(check_interval):
            supervisor.check()
            if exit_when_done and names:
                if _crawl_quiet(settings, queues, names):
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= done_after:
                        logger.info("all: every project is done; stopping")
                        break
                else:
                    quiet_since = None
    finally:
        supervisor.stop_all()
        for q in queues.values():
            q.close()
    return 0


def _crawl_quiet(settings: Settings, queues: dict[str, BaseQueue], names: list[str]) -> bool:
    if any(q.qsize() for q in queues.values()):
        return False
    taskdb = connect_taskdb(settings.db_url("taskdb"))
    try:
        for name in names:
            counts = taskdb.status_count(name)
            if counts[TaskStatus.ACTIVE] or not sum(counts.values()):
                return False
        return True
    finally:
        taskdb.close()


class _Supervisor:
    """Starts the component processes of ``all``, restarts one that dies, stops them all.

    Each process runs ``target(kind, settings, queues)`` (:func:`_child_main` unless given).
    """

    MAX_RESTARTS = 5

    def __init__(self, ctx: Any, settings: Settings, queues: dict[str, BaseQueue],
                 target: Callable[[str, Settings, dict[str, BaseQueue]], None] | None = None):
        self.ctx = ctx
        self.settings = settings
        self.queues = queues
        self.target = target or _child_main
        self.procs: dict[tuple[str, int], Any] = {}
        self.restarts: dict[tuple[str, int], int] = {}
        self.stopping = False

    def start(self, kind: str, index: int) -> None:
        proc = self.ctx.Process(target=self.target, args=(kind, self.settings, self.queues),
                                name=f"spiderflow-{kind}-{index}", daemon=False)
        proc.start()
        self.procs[(kind, index)] = proc
        logger.info("all: started %s #%d (pid %d)", kind, index, proc.pid)

    def check(self) -> None:
        for key, proc in list(self.procs.items()):
            if proc.is_alive() or self.stopping:
                continue
            count = self.restarts.get(key, 0)
            if count >= self.MAX_RESTARTS:
                logger.error("all: %s #%d died (exit code %s) %d times; not restarting it",
                             key[0], key[1], proc.exitcode, count)
                del self.procs[key]
                continue
            logger.error("all: %s #%d died (exit code %s); restarting it", key[0], key[1], proc.exitcode)
            self.restarts[key] = count + 1
            self.start(*key)

    def stop_all(self, timeout: float = 15.0) -> None:
        """Warm: SIGTERM every child and wait; then SIGKILL whatever is left."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for (kind, index), proc in self.procs.items():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                logger.warning("all: %s #%d did not stop in %.0f s; killing it", kind, index, timeout)
                proc.kill()
                proc.join(5)
        logger.info("all: every component stopped")


def _child_main(kind: str, settings: Settings, queues: dict[str, BaseQueue]) -> None:
    die_with_parent()
    try:
        if kind == "webui":
            _run_webui(settings, queues)
        else:
            run_component(kind, settings, queues, sigint=False)
    except Exception:
        logger.exception("%s failed", kind)
        raise SystemExit(1) from None
    finally:
        for q in queues.values():
            with contextlib.suppress(Exception):
                q.close()
