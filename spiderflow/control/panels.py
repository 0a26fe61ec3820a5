"""What each kind of node answers to each command (Celery calls this the control panel).

A panel holds its component and answers ``do_<command>(ttl=..., **arguments)`` from what the
component keeps anyway (the counters the heartbeats read, :meth:`Scheduler.stats`, the
fetcher's slots, the processor's projects). Every node answers ping, shutdown, stats and
conf; the others depend on the kind:

===============  ==================================================================================
scheduler        rate_limit, pause, resume, revoke, registered, revoked (:mod:`.scheduler_panel`)
fetcher          revoke (``terminate``: the fetch in flight is cancelled), pool_grow, pool_shrink,
                 autoscale (fetch slots), active, reserved, revoked
processor        revoke (``terminate``: solo pool, the outcome of the callback running now is
                 dropped when it returns, a running callback cannot be aborted safely; prefork
                 pool, its child process is killed and replaced), time_limit, active, reserved,
                 registered, revoked; pool_grow, pool_shrink, autoscale (child processes) with
                 the prefork pool; the solo pool is one worker (pool commands answer so)
result-worker    the common ones
webui            the common ones
===============  ==================================================================================

The fetcher and processor call their panel's hooks (``fetching``/``fetched``/``terminated``,
``handle``) from their own thread; commands come on the agent's thread, and what must run on
the component's loop goes there (:func:`call_on`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import os
import resource
import signal
import socket
import threading
import time
from typing import Any

from .. import __version__
from ..exceptions import redact_url
from .commands import MAX_ITEMS, error, ok
from .state import ControlWatch, Revoke, connect_controldb

logger = logging.getLogger(__name__)

#: seconds a command waits for the component's loop
LOOP_WAIT = 1.0
#: autoscale: seconds of spare slots before the pool shrinks by one step
SHRINK_AFTER = 10.0
PROCESSOR_POOL = ("processor pool is fixed at 1 worker: this processor runs its callbacks one at a time in its "
                  "own process (--pool solo); start it with --pool prefork, --concurrency N or --autoscale MAX,MIN "
                  "for a pool of child processes, or run more processors (spiderflow all --processor-num N, "
                  "or more `spiderflow processor`)")
SECRETS = ("password", "token", "scheduler_token", "cookie_secret")
URLS = ("taskdb", "projectdb", "resultdb", "queue", "proxy")


# -- helpers ---------------------------------------------------------------------------------------

def call_on(loop: Any, fn: Any, wait: float = LOOP_WAIT) -> Any:
    """``fn()`` on *loop*'s thread (directly when there is no running loop); TimeoutError if busy."""
    if loop is None or loop.is_closed() or not loop.is_running():
        return fn()
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(wait)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"the component's loop did not answer within {wait:g} s (busy)") from None


def rusage() -> dict[str, Any]:
    """getrusage(2) of this process, as Celery's ``inspect stats`` gives it."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(r, f"ru_{name}") for name in (
        "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock",
        "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")}


def public_settings(settings: Any) -> dict[str, Any]:
    """*settings* as a dict, secrets hidden and URLs without passwords (as ``spiderflow config``)."""
    data = dataclasses.asdict(settings)
    for key in SECRETS:
        if data.get(key):
            data[key] = "***"
    for key in URLS:
        if data.get(key):
            data[key] = redact_url(data[key])
    return data


def broker_info(settings: Any) -> dict[str, Any]:
    from urllib.parse import urlsplit
    url = settings.queue or "multiprocessing://"
    parts = urlsplit(url)
    out: dict[str, Any] = {"transport": parts.scheme, "prefix": settings.queue_prefix}
    if parts.hostname:
        out.update(hostname=parts.hostname, port=parts.port, virtual_host=parts.path[1:] or None,
                   userid=parts.username)
    return out


def describe_task(task: Any, started: float | None = None, **more: Any) -> dict[str, Any]:
    out = {"id": task.taskid, "project": task.project, "url": task.url, "callback": task.process.callback,
           "fetch_type": task.fetch.fetch_type or "http", "job": task.schedule.job}
    if started is not None:
        out["time_start"] = started
    out.update(more)
    return out


def reserved_messages(queue: Any) -> list[dict[str, Any]]:
    """The messages this process took from *queue* and holds unhanded: the rest of a batch of
    the multiprocessing backend, the prefetched deliveries of an amqp consumer (``(tag, body)``);
    empty for backends that hand out one at a time (redis)."""
    buffer = getattr(queue, "_buffer", None)
    if not buffer:
        return []
    from ..message import Task, unpack
    for _ in range(3):
        try:
            raw = list(buffer)[:MAX_ITEMS]
            break
        except RuntimeError:        # changed while copied: take it again
            continue
    else:
        return []
    out = []
    for data in raw:
        if isinstance(data, tuple):     # amqp: (delivery tag, body)
            data = data[-1]
        try:
            message = unpack(data)
        except Exception:
            continue
        task = message[0] if isinstance(message, tuple) and message else message
        if isinstance(task, Task):
            out.append(describe_task(task))
    return out


# -- every node ----------------------------------------------------------------------------------------

class Panel:
    """ping, shutdown, stats and conf; the other commands are the kind's (see the module docstring)."""

    def __init__(self, kind: str, component: Any, settings: Any, *, name: str, node_id: str, loop: Any = None):
        self.kind = kind
        self.component = component
        self.settings = settings
        self.name = name
        self.node_id = node_id
        self.loop = loop
        self.started = time.time()
        self._shutdown_requested = False

    # -- the agent's calls
    def tick(self) -> None:
        """Periodic work on the agent's thread (every TICK seconds)."""

    def after_reply(self, command: str, reply: Any) -> None:
        if command == "shutdown" and self._shutdown_requested:
            self._shutdown_requested = False
            self.stop_process()

    def close(self) -> None:
        pass

    def stop_process(self) -> None:
        """A warm shutdown exactly as SIGTERM makes one (with its grace period and its log line)."""
        from . import relay
        if relay.parent_pipe is not None:     # `spiderflow all` must not start this child again
            from .bus import PipeNodeBus
            PipeNodeBus(relay.parent_pipe).leaving()
        os.kill(os.getpid(), signal.SIGTERM)

    # -- commands
    def do_ping(self, ttl: float) -> dict[str, Any]:
        return {**ok("pong"), "kind": self.kind, "pid": os.getpid(), "host": socket.gethostname(),
                "uptime": round(time.time() - self.started, 3)}

    def do_shutdown(self, ttl: float) -> dict[str, Any]:
        logger.warning("control: %s got a shutdown from a remote client; stopping warmly", self.name)
        self._shutdown_requested = True
        return ok("shutting down: finishing the work in hand")

    def do_stats(self, ttl: float) -> dict[str, Any]:
        from ..nodes import COMPONENT_STATS, cpu_seconds, rss_mb
        stats = COMPONENT_STATS.get(self.kind)
        total = call_on(self.loop, lambda: stats(self.component)) if stats and self.component is not None else {}
        return {"kind": self.kind, "pid": os.getpid(), "host": socket.gethostname(), "node_id": self.node_id,
                "version": __version__, "uptime": round(time.time() - self.started, 3), "total": total,
                "pool": self.pool(), "rusage": rusage(), "rss_mb": rss_mb(), "cpu": round(cpu_seconds(), 3),
                "broker": broker_info(self.settings), **self.stats()}

    def do_conf(self, ttl: float) -> dict[str, Any]:
        return public_settings(self.settings)

    def pool(self) -> dict[str, Any]:
        return {"max-concurrency": 1, "processes": [os.getpid()]}

    def stats(self) -> dict[str, Any]:
        return {}


class _WatchPanel(Panel):
    """A panel of a node that enforces revokes (it reads them: :class:`~.state.ControlWatch`)."""

    def __init__(self, *args: Any, watch: ControlWatch | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._db = None
        if watch is None:
            self._db = connect_controldb(self.settings.db_url("projectdb"))
            watch = ControlWatch(self._db).start()
        self.watch = watch

    def close(self) -> None:
        self.watch.stop()
        if self._db is not None:
            self._db.close()

    def do_revoked(self, ttl: float) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.watch.entries()[-MAX_ITEMS:]]

    def _revoke(self, revokes: list[dict[str, Any]]) -> list[Revoke]:
        entries = [Revoke.from_dict(r) for r in revokes]
        self.watch.add(entries)
        return entries

    @staticmethod
    def _flagged(entries: list[Revoke]) -> dict[str, Any]:
        return ok(f"tasks {', '.join(e.describe() for e in entries)} flagged as revoked")

    def stats(self) -> dict[str, Any]:
        return {"revoked": len(self.watch.entries()), "revoked_dropped": self.watch.dropped}


# -- fetcher ----------------------------------------------------------------------------------------------

class FetcherPanel(_WatchPanel):
    """Revokes before each fetch, the fetches in flight, the slots (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._active: dict[int, tuple[Any, Any, float]] = {}   # id(delivery) -> (task, asyncio task, start)
        self._terminating: set[int] = set()
        self._lock = threading.Lock()
        self.autoscale: tuple[int, int] | None = None
        self._spare_since: float | None = None

    @property
    def fetcher(self) -> Any:
        return self.component

    def _loop(self) -> Any:
        return self.loop or getattr(self.fetcher, "_loop", None)

    # -- hooks (the fetcher's loop)
    def fetching(self, task: Any, delivery: Any) -> bool:
        """Before a fetch: False (the delivery acked, the task dropped) when *task* is revoked."""
        watch = self.watch
        if watch.any and watch.revoked(task):
            watch.drop("fetcher", task)
            delivery.ack()
            return False
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        with self._lock:
            self._active[id(delivery)] = (task, current, time.time())
        return True

    def fetched(self, delivery: Any) -> None:
        with self._lock:
            self._active.pop(id(delivery), None)

    def terminated(self, delivery: Any) -> bool:
        """Whether the cancellation of *delivery*'s fetch is a ``revoke --terminate`` (then it is acked)."""
        key = id(delivery)
        with self._lock:
            self._active.pop(key, None)
            if key in self._terminating:
                self._terminating.discard(key)
                return True
        return False

    # -- commands
    def do_revoke(self, ttl: float, revokes: list[dict[str, Any]]) -> dict[str, Any]:
        entries = self._revoke(revokes)
        if not any(e.terminate for e in entries):
            return self._flagged(entries)

        def cancel() -> list[str]:
            done = []
            with self._lock:
                for key, (task, running, _start) in list(self._active.items()):
                    if running is not None and any(e.terminate and e.matches(task.project, task.taskid,
                                                                             task.updatetime or 0.0)
                                                   for e in entries):
                        self._terminating.add(key)
                        running.cancel()
                        done.append(f"{task.project}:{task.taskid}")
            return done

        terminated = call_on(self._loop(), cancel)
        if terminated:
            logger.warning("control: terminated the fetch of %s (revoked)", ", ".join(terminated))
            return ok(f"terminate: {', '.join(terminated)}")
        return ok("terminate: tasks unknown")

    def _resize(self, size: int) -> int:
        fetcher = self.fetcher

        def resize() -> int:
            fetcher.poolsize = max(1, int(size))
            transport = getattr(fetcher, "_transport", None)
            client = getattr(transport, "client", None)
            if client is not None and hasattr(client, "max_clients"):
                client.max_clients = max(client.max_clients, fetcher.poolsize)
            fetcher._wake()
            return fetcher.poolsize

        return call_on(self._loop(), resize)

    def do_pool_grow(self, ttl: float, n: int = 1) -> dict[str, Any]:
        if self.autoscale is not None:
            return error("pool_grow is not supported with autoscale; adjust the autoscale range instead")
        size = self._resize(self.fetcher.poolsize + n)
        return {**ok("pool will grow"), "max-concurrency": size}

    def do_pool_shrink(self, ttl: float, n: int = 1) -> dict[str, Any]:
        if self.autoscale is not None:
            return error("pool_shrink is not supported with autoscale; adjust the autoscale range instead")
        size = self._resize(self.fetcher.poolsize - n)
        return {**ok("pool will shrink"), "max-concurrency": size}

    def do_autoscale(self, ttl: float, max: int, min: int) -> dict[str, Any]:
        if min > max:
            return error(f"autoscale min {min} is above max {max}")
        self.autoscale = (max, min)
        self._spare_since = None
        size = self._resize(sorted((min, self.fetcher.poolsize, max))[1])
        return {**ok(f"autoscale now max={max} min={min}"), "max-concurrency": size}

    def tick(self) -> None:
        """Autoscale: grow while every slot is busy and the inqueue has more; shrink after
        SHRINK_AFTER seconds with spare slots."""
        if self.autoscale is None:
            return
        high, low = self.autoscale
        fetcher = self.fetcher
        size, busy = fetcher.poolsize, fetcher.in_flight
        step = int(math.ceil((high - low) / 10)) or 1
        try:
            waiting = fetcher.inqueue.qsize() if fetcher.inqueue is not None else 0
        except Exception:
            waiting = 0
        now = time.monotonic()
        if busy >= size and waiting and size < high:
            self._spare_since = None
            self._resize(min(high, size + step))
        elif busy < size - step and size > low:
            if self._spare_since is None:
                self._spare_since = now
            elif now - self._spare_since >= SHRINK_AFTER:
                self._spare_since = now
                self._resize(max(low, size - step, busy))
        else:
            self._spare_since = None

    def do_active(self, ttl: float) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._active.values())[:MAX_ITEMS]
        return [describe_task(task, start) for task, _running, start in items]

    def do_reserved(self, ttl: float) -> list[dict[str, Any]]:
        return reserved_messages(self.fetcher.inqueue)

    def pool(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max-concurrency": self.fetcher.poolsize, "processes": [os.getpid()],
                               "in-flight": self.fetcher.in_flight}
        if self.autoscale is not None:
            out["autoscaler"] = {"max": self.autoscale[0], "min": self.autoscale[1]}
        return out

    def stats(self) -> dict[str, Any]:
        counters = call_on(self._loop(), lambda: self.fetcher.counters)
        return {**super().stats(), "counters": counters}


# -- processor ---------------------------------------------------------------------------------------------

class ProcessorPanel(_WatchPanel):
    """Revokes and runtime time limits before each callback, the tasks in hand, the prefork pool."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.current: tuple[Any, float] | None = None
        self._terminate = False

    @property
    def prefork(self) -> Any:
        """The processor's prefork pool (spiderflow.processor.pool), or None (solo)."""
        return getattr(self.component, "pool", None)

    # -- the hooks (the processor's thread)
    def admit(self, task: Any) -> Any:
        """*task* with its runtime time limit, or None (dropped, counted) when it is revoked."""
        watch = self.watch
        if watch.any and watch.revoked(task):
            watch.drop("processor", task)
            return None
        limit = watch.time_limit(task.project)
        if limit is not None:
            task = dataclasses.replace(task, process=dataclasses.replace(task.process, time_limit=limit))
        return task

    def handle(self, task: Any, fetch_result: Any) -> None:
        """Process *task* as :meth:`Processor.handle`, unless revoked; with a runtime time limit."""
        processor = self.component
        task = self.admit(task)
        if task is None:
            return
        self._terminate = False
        self.current = (task, time.time())
        try:
            outcome = processor.process(task, fetch_result)
        finally:
            self.current = None
        if self._terminate:
            self._terminate = False
            logger.warning("processor: dropped the outcome of %s:%s %s: revoked with terminate while its "
                           "callback ran", task.project, task.taskid, task.url)
            return
        processor.dispatch(outcome)

    # -- commands
    def do_revoke(self, ttl: float, revokes: list[dict[str, Any]]) -> dict[str, Any]:
        entries = self._revoke(revokes)
        if not any(e.terminate for e in entries):
            return self._flagged(entries)
        pool = self.prefork
        if pool is not None:        # Celery's terminate: the child running it is killed
            killed = pool.terminate(lambda task: any(e.terminate and e.matches(task.project, task.taskid,
                                                                                task.updatetime or 0.0)
                                                     for e in entries))
            if not killed:
                return ok("terminate: tasks unknown")
            logger.warning("control: terminated %s (revoked): killed child process(es) %s",
                           ", ".join(f"{t.project}:{t.taskid}" for t, _ in killed),
                           ", ".join(str(pid) for _, pid in killed))
            return {**ok(f"terminate: {', '.join(f'{t.project}:{t.taskid}' for t, _ in killed)}"),
                    "note": f"killed child process(es) {', '.join(str(pid) for _, pid in killed)}; the outcome is "
                            "dropped and new children take their places"}
        current = self.current
        if current is not None:
            task = current[0]
            if any(e.terminate and e.matches(task.project, task.taskid, task.updatetime or 0.0) for e in entries):
                self._terminate = True
                return {**ok(f"terminate: {task.project}:{task.taskid}"),
                        "note": "a running callback cannot be stopped safely: it ends (or hits its time "
                                "limit), then its outcome is dropped"}
        return ok("terminate: tasks unknown")

    def do_time_limit(self, ttl: float, project: str, seconds: float | None = None) -> dict[str, Any]:
        self.watch.set_time_limit(project, seconds)
        if seconds is None:
            return {**ok("time limits set successfully"), "project": project,
                    "seconds": self.settings.process_time_limit, "source": "the script's or process_time_limit"}
        return {**ok("time limits set successfully"), "project": project, "seconds": seconds}

    def do_pool_grow(self, ttl: float, n: int = 1) -> dict[str, Any]:
        pool = self.prefork
        if pool is None:
            return error(PROCESSOR_POOL)
        if pool.autoscale is not None:
            return error("pool_grow is not supported with autoscale; adjust the autoscale range instead")
        return {**ok("pool will grow"), "max-concurrency": pool.resize(pool.size + n)}

    def do_pool_shrink(self, ttl: float, n: int = 1) -> dict[str, Any]:
        pool = self.prefork
        if pool is None:
            return error(PROCESSOR_POOL)
        if pool.autoscale is not None:
            return error("pool_shrink is not supported with autoscale; adjust the autoscale range instead")
        return {**ok("pool will shrink"), "max-concurrency": pool.resize(pool.size - n)}

    def do_autoscale(self, ttl: float, max: int, min: int) -> dict[str, Any]:
        pool = self.prefork
        if pool is None:
            return error(PROCESSOR_POOL)
        if min > max:
            return error(f"autoscale min {min} is above max {max}")
        size = pool.set_autoscale(max, min)
        return {**ok(f"autoscale now max={max} min={min}"), "max-concurrency": size}

    def do_active(self, ttl: float) -> list[dict[str, Any]]:
        pool = self.prefork
        if pool is not None:
            return [describe_task(task, start, time_limit=limit, worker_pid=pid)
                    for task, start, limit, pid in pool.active()[:MAX_ITEMS]]
        current = self.current
        if current is None:
            return []
        task, start = current
        limit = task.process.time_limit or self.settings.process_time_limit
        return [describe_task(task, start, time_limit=limit)]

    def do_reserved(self, ttl: float) -> list[dict[str, Any]]:
        pool = self.prefork
        source = pool if pool is not None else self.component     # solo: the rest of the batch in hand
        held = [describe_task(task) for task in source.reserved_tasks()]
        return (held + reserved_messages(self.component.inqueue))[:MAX_ITEMS]

    def do_registered(self, ttl: float) -> list[dict[str, Any]]:
        out = []
        pool = self.prefork
        if pool is not None:     # what the children loaded (they report it with their outcomes)
            for name, (md5, updatetime, failure) in sorted(self.component.projects_seen.items())[:MAX_ITEMS]:
                item = {"project": name, "version": md5, "updatetime": updatetime}
                if failure:
                    item["error"] = failure
                out.append(item)
            return out
        for name, project in sorted(self.component.projects.projects().items())[:MAX_ITEMS]:
            item = {"project": name, "version": project.md5, "updatetime": project.updatetime}
            if project.error:
                item["error"] = project.error.splitlines()[0]
            out.append(item)
        return out

    def pool(self) -> dict[str, Any]:
        pool = self.prefork
        if pool is None:
            return {"implementation": "solo", "max-concurrency": 1, "processes": [os.getpid()]}
        return pool.stats()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "time_limits": dict(self.watch._limits)}


class ResultWorkerPanel(Panel):
    pass


class WebUIPanel(Panel):
    pass


def make_panel(kind: str, component: Any, settings: Any, **kwargs: Any) -> Panel:
    """The panel of a component of *kind* (its hooks installed in the fetcher and processor)."""
    from .scheduler_panel import SchedulerPanel
    panels = {"scheduler": SchedulerPanel, "fetcher": FetcherPanel, "processor": ProcessorPanel,
              "result-worker": ResultWorkerPanel, "webui": WebUIPanel}
    panel = panels.get(kind, Panel)(kind, component, settings, **kwargs)
    if kind in ("fetcher", "processor"):
        component.control = panel       # the hooks (Fetcher._handle, Processor._handle_message)
    return panel


__all__ = ["FetcherPanel", "Panel", "ProcessorPanel", "ResultWorkerPanel", "WebUIPanel", "call_on", "make_panel",
           "public_settings", "reserved_messages", "rusage"]
