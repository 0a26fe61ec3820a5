"""``spiderflow all``: every component as a process on this machine, supervised."""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..message import ProjectStatus, TaskStatus
from ..queues import BaseQueue, connect_queues
from ..settings import Settings
from ..storage import connect_taskdb, open_databases
from .component import run_component, run_webui
from .compose import check_port_free, component_settings, queue_scheme, scheduler_lock, start_device
from .scripts import check_script, store_project
from .signals import die_with_parent, install_stop_signals, starting
from .worker import pool_process

logger = logging.getLogger(__name__)

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
    from ..result import load_result_worker_class
    load_result_worker_class(settings.result_sink)  # a bad sink name fails here, not in every child
    if webui:
        from ..webui import check_webui_settings
        check_webui_settings(settings)
        check_port_free(settings.webui_host, settings.webui_port, "web UI", "--webui-port")
    # a second `all` on this data directory (or cluster) fails here, naming the first, instead
    # of running without a scheduler after its scheduler child is refused
    scheduler_lock(settings).release()
    dbs = open_databases(settings)
    try:
        for name, script in scripts:
            store_project(dbs.projectdb, name, script, ProjectStatus.RUNNING, settings, rate, burst)
    finally:
        dbs.close()
    kwargs = {"context": ctx} if queue_scheme(settings, queue_url) == "multiprocessing" else {}
    queues = connect_queues(queue_url, settings.queue_bounds(), prefix=settings.queue_prefix, **kwargs)
    plan = [("scheduler", 1), ("fetcher", settings.fetcher_num), ("processor", settings.processor_num),
            ("result-worker", settings.result_worker_num)] + ([("webui", 1)] if webui else [])
    # with a node_id, this machine is a device: its node here, its components ID/kind#N (refused if taken)
    device = start_device(settings, [kind for kind, _ in plan])
    supervisor = Supervisor(ctx, settings, queues)
    try:   # from the first child on: a stop during start-up stops the children started so far
        # remote control: the socket (multiprocessing queues) and a pipe per child
        from ..control.relay import Relay
        supervisor.relay = Relay(ctx, settings.data_dir, serve=queue_scheme(settings, queue_url) == "multiprocessing")
        for kind, count in plan:
            for index in range(max(1, count)):
                supervisor.start(kind, index)
        from ..message import special_task
        for name, _script in scripts:
            queues["newtask_queue"].put(special_task(name, "on_start", priority=9), timeout=30)
            logger.info("all: project %s started", name)
        if webui and settings.webui_port:
            from ..webui import webui_url
            logger.info("all: web UI on %s", webui_url(settings.webui_host, settings.webui_port))
        stop = threading.Event()
        install_stop_signals(stop.set, "all")   # after the forks: a child must not inherit it
        names = [name for name, _ in scripts]
        quiet_since: float | None = None
        while not stop.wait(check_interval):
            supervisor.check()
            if not supervisor.procs and supervisor.relay.shut_down:
                logger.info("all: every component was shut down by remote control; stopping")
                break
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
        if supervisor.relay is not None:
            supervisor.relay.close()
        if device is not None:
            device.stop()
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


class Supervisor:
    """Starts the component processes of ``all``, restarts one that dies, stops them all.

    Each process runs ``target(kind, settings, queues)`` (:func:`child_main` unless given).
    """

    MAX_RESTARTS = 5

    def __init__(self, ctx: Any, settings: Settings, queues: dict[str, BaseQueue],
                 target: Callable[[str, Settings, dict[str, BaseQueue]], None] | None = None):
        self.ctx = ctx
        self.settings = settings
        self.queues = queues
        self.target = target or child_main
        self.procs: dict[tuple[str, int], Any] = {}
        self.restarts: dict[tuple[str, int], int] = {}
        self.numbers: dict[tuple[str, int], int] = {}
        self.stopping = False
        self.relay: Any = None     # a spiderflow.control.relay.Relay (run_all sets it)

    def start(self, kind: str, index: int) -> None:
        target = self.target if self.relay is None else self.relay.wrap((kind, index), self.target)
        # its process index (--logfile %i): 1, 2, ... in the order of first start; a restart keeps it
        number = self.numbers.setdefault((kind, index), len(self.numbers) + 1)
        target = functools.partial(pool_process, number, target)
        proc = self.ctx.Process(target=target, args=(kind, component_settings(self.settings, kind, index),
                                                     self.queues),
                                name=f"spiderflow-{kind}-{index}", daemon=False)
        proc.start()
        if self.relay is not None:
            self.relay.started((kind, index))
        self.procs[(kind, index)] = proc
        logger.info("all: started %s #%d (pid %d)", kind, index, proc.pid)

    def check(self) -> None:
        for key, proc in list(self.procs.items()):
            if proc.is_alive() or self.stopping:
                continue
            if self.relay is not None and self.relay.left(key):
                logger.info("all: %s #%d was shut down by remote control (exit code %s); not restarting it",
                            key[0], key[1], proc.exitcode)
                del self.procs[key]
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


@contextlib.contextmanager
def child_process(what: str, queues: dict[str, BaseQueue]) -> Iterator[None]:
    """The body of a forked component process: it dies with its parent, a failure is logged
    (as *what*) and exits 1, and its copies of the queues are closed whatever happens."""
    die_with_parent()
    try:
        yield
    except Exception:
        logger.exception("%s failed", what)
        raise SystemExit(1) from None
    finally:
        for q in queues.values():
            with contextlib.suppress(Exception):
                q.close()


def child_main(kind: str, settings: Settings, queues: dict[str, BaseQueue]) -> None:
    # starting() first: a SIGTERM from now on is logged as this kind's
    with starting(kind, sigint=False), child_process(kind, queues):
        if kind == "webui":
            run_webui(settings, queues)
        else:
            run_component(kind, settings, queues, sigint=False)
