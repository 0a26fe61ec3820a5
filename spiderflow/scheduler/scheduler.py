"""The scheduler: the single source of truth for task state, and the ``run_once`` loop.

``run_once()`` runs, in order: update projects, check task done (status_queue), check
requests (newtask_queue), cron jobs, select (per project: time queue → priority queue,
gated by the token bucket, fair across projects), delete, dump counters.

Every task is written to taskdb before it is dispatched; a status pack for a task that is
not in flight is ignored; a task whose lease expires is sent again.

Where the queues outlive the scheduler (redis, amqp: ``reliable`` out and status queues), the
leases are persisted (``spiderflow_lease``): the leases of the tasks dispatched are written to
taskdb in batches, at most once a second, and a restarted scheduler, when it loads a project,
puts the tasks whose lease is still valid back in flight with their deadline. So it does not
send them again, it takes the status packs of the original dispatch, and only those whose
lease runs out are sent again. A lease is valid while its task was not written after the
dispatch (a status writes ``updatetime``), so a lease is never deleted on the hot path.
Losing a lease (a kill before the batch holding it is written, a failed write) only means
that task is sent again after a restart. On memory and multiprocessing queues what was in
flight dies with the scheduler's supervisor, so it is sent again at once, and no lease is
written.

taskdb is the truth, end to end. A status pack arrives with the requests its page made (one
message: ``(StatusPack, Task, ...)``, through the result worker when the page has results, so
its results are stored first); the requests are stored before, or in the same transaction
as, the task's new status, and a reliable queue's status messages are acknowledged only
after that. So a task is SUCCESS only once everything it produced is stored, and whatever a
crash or a broker loses, the task is still ACTIVE in taskdb and is crawled again. A database
outage (:class:`~spiderflow.exceptions.StorageUnavailable`) stops the pass where it failed:
the messages in hand and the batched writes are kept, and the pass is retried with backoff
until the database is back. Only a bounded window
of each project's ACTIVE tasks is held in memory (see :mod:`.window`). New requests are
handled in :mod:`.newtasks`; the operations the control interface calls are in
:mod:`.operations`; per-project state (bucket, pause, script info, cursor) in :mod:`.project`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..exceptions import QueueError, QueueFull, SerializationError, StorageError, StorageUnavailable
from ..message import ProjectStatus, StatusPack, Task, TaskStatus, Track, special_task
from ..settings import Settings
from ..storage import Outage
from .checks import coerce_status, error_text
from .counter import Counters
from .newtasks import NewTasks
from .operations import EPHEMERAL, Operations
from .project import CHECKING, ProjectState
from .window import Window

logger = logging.getLogger(__name__)

GET_INFO_ATTRIBUTES = ["min_tick", "retry_delay", "crawl_config"]
_CRON_CATCHUP = 100           # missed cron ticks sent per loop at most
_ACTIVE = TaskStatus.ACTIVE
_DEFAULT = "<data_dir>/scheduler.counters.json"


class Scheduler(NewTasks, Operations):
    """Schedules every project's tasks to ``out_queue`` (scheduler2fetcher).

    The tuning keywords override the settings of the same name (``project_check_interval``,
    ``time_horizon``, ``finished_delay``, ``request_batch``, ``status_batch``,
    ``load_pages``). ``counter_file``: where counters are saved (default
    ``<data_dir>/scheduler.counters.json``; None: not saved).
    """

    def __init__(self, *, projectdb: Any, taskdb: Any, resultdb: Any, newtask_queue: Any,
                 status_queue: Any, out_queue: Any, settings: Settings = Settings(),
                 clock: Callable[[], float] = time.time, project_check_interval: float | None = None,
                 time_horizon: float | None = None, finished_delay: float | None = None,
                 request_batch: int | None = None, status_batch: int | None = None, load_pages: int | None = None,
                 counter_file: str | None = _DEFAULT):
        self.projectdb = projectdb
        self.taskdb = taskdb
        self.resultdb = resultdb
        self.newtask_queue = newtask_queue
        self.status_queue = status_queue
        self.out_queue = out_queue
        self.settings = settings
        self._clock = clock
        def pick(value: Any, name: str) -> Any:
            return getattr(settings, name) if value is None else value

        self.project_check_interval = pick(project_check_interval, "project_check_interval")
        self.time_horizon = pick(time_horizon, "time_horizon")
        self.finished_delay = pick(finished_delay, "finished_delay")
        self.request_batch = pick(request_batch, "request_batch")
        self.status_batch = pick(status_batch, "status_batch")
        self.load_pages = pick(load_pages, "load_pages")
        self.window = Window(taskdb, settings, self.time_horizon, self.load_pages)

        self.projects: dict[str, ProjectState] = {}
        self._lock: Any = contextlib.nullcontext()   # a real lock in ThreadedScheduler
        self._stopping = threading.Event()
        self._requests: deque[Task] = deque()        # from newtask() of the control interface
        self._postponed: list[Task] = []             # requests for tasks in flight
        self._pending: dict[tuple[str, str], Task] = {}   # batched taskdb updates
        self._status_held: list[Any] = []            # status messages a database outage interrupted
        self._status_unacked: list[Any] = []         # reliable status deliveries, acked once stored
        self._requests_held: list[Any] = []          # request messages a database outage interrupted
        # persisted leases: only where the queues outlive this scheduler (see the module docstring)
        self._leases_on = bool(getattr(out_queue, "reliable", False) and getattr(status_queue, "reliable", False)
                               and hasattr(taskdb, "save_leases"))
        self._leases: dict[tuple[str, str], tuple[float, float]] = {}   # (project, taskid) -> (dispatched, deadline)
        self._resume: set[str] = set()               # projects whose persisted leases are yet to be loaded
        self._broker_kept: bool | None = None        # the queues still hold an earlier run's tasks (None: not asked)
        self._leases_saved = -math.inf               # when the batched leases were last stored
        self._last_purge = -math.inf
        self._outage = Outage(self.kind)
        self._broker_outage = Outage(self.kind, what="the queue backend")
        self._retry_in = 0.0
        self._force_project_check = True
        self._last_project_check = -math.inf
        self._unknown_checked: dict[str, float] = {}
        self._rr = 0
        self._work = 0
        self._counts_ready = False
        self._count_job: _CountJob | None = None     # the count running in the background
        self._dispatched = False
        self._started = clock()
        if counter_file == _DEFAULT:
            counter_file = os.path.join(settings.data_dir, "scheduler.counters.json")
        self._counter_path = counter_file
        self._counters = Counters(clock)
        self._counters_loaded = bool(counter_file) and self._counters.load(counter_file)
        self._last_dump = clock()
        self.jobs: Any = None      # a spiderflow.jobs.JobRunner when jobs are on (the composition root sets it)
        self.revokes: Any = None   # the remote-control panel (spiderflow.control.panels), when there is a bus

    # ==================================================================================
    # the loop
    def run_once(self) -> None:
        """One pass: projects, status packs, new requests, cron, select, delete, counters."""
        with self._lock:
            now = self._clock()
            self._work = 0
            self._update_projects(now)
            if self._resume:
                self._resume_leases(now)     # before the status packs: those of the tasks in flight are taken
            self._check_task_done(now)
            if self.jobs is not None:
                self.jobs.tick(now)
            self._check_requests(now)
            self._check_cronjob(now)
            self._check_select(now)
            self._check_delete(now)
            self._purge_leases(now)
            if not self._counts_ready:
                if self._count_job is not None:
                    self._check_count()
                elif self._dispatched or now - self._started > 10.0:
                    self._start_count()     # a full count, in a thread: after the first dispatch
            self._dump_counters(now)

    async def run(self, burst: bool = False) -> None:
        """Repeat :meth:`run_once` until :meth:`stop`; with *burst*, also stop when idle."""
        logger.info("%s started", self.kind)
        reason = "stopped"
        try:
            while not self._stopping.is_set():
                await self._astep()
                if self._retry_in:      # the database is unavailable: wait, then run the pass again
                    delay, self._retry_in = self._retry_in, 0.0
                    await asyncio.sleep(delay)
                    continue
                if burst and self.idle():
                    reason = "burst: nothing left to do"
                    break
                await asyncio.sleep(0 if self._work else self._idle_interval())
        finally:
            self.shutdown()
            self._stopping.clear()
            logger.info("%s exiting: %s", self.kind, reason)

    #: the name the loop logs under
    kind = "scheduler"

    async def _astep(self) -> None:
        """One pass of :meth:`run`; OneScheduler also fetches and processes what it selected."""
        self._loop_step()

    def _loop_step(self) -> None:
        try:
            self.run_once()
        except StorageUnavailable as exc:
            self._unavailable(exc)
        except QueueError as exc:   # a broker outage: what was taken is held or comes back; wait
            self._retry_in = self._broker_outage.failed(exc)
            self._work = 0
        except Exception:  # the loop boundary: one bad pass must not end the scheduler
            logger.exception("scheduler loop pass failed")
            self._work = 0
        else:
            if self._outage.since is not None:
                self._outage.recovered()
            if self._broker_outage.since is not None:
                self._broker_outage.recovered()
                self._resend_in_flight("the queue backend was unavailable")

    def _resend_in_flight(self, why: str) -> None:
        """Send every task in flight again now, not after its lease: a broker that was away
        may have lost them (restarted empty). A task that was not lost comes back twice; its
        second status pack is ignored and its result is upserted, not added."""
        now = self._clock()
        count = 0
        with self._lock:
            for p in self.projects.values():
                for task in p.queue.expired(math.inf):
                    self.window.requeue(p, task, now)
                    count += 1
        if self._leases_on and self._broker_kept is not None and hasattr(self.out_queue, "mark"):
            with contextlib.suppress(QueueError):
                self.out_queue.mark()       # what is in flight from now on is in the queues again
        if count:
            logger.warning("%s: sending the %d tasks in flight again (%s; it may have lost them)",
                           self.kind, count, why)

    def _unavailable(self, exc: StorageUnavailable) -> None:
        """A pass stopped by a database outage: what it held is kept; retry after a backoff."""
        self._retry_in = self._outage.failed(exc)
        self._work = 0

    def _idle_interval(self) -> float:
        """The pause after a pass with nothing to do: short while answers are on their way.

        A status pack is due for every task in flight, and a queued message may still be in
        a producer's hands (a multiprocessing queue counts it before its bytes arrive); a
        processor blocked on a full newtask_queue waits for exactly this pass.
        """
        try:
            queued = self.newtask_queue.qsize() or self.status_queue.qsize()
        except QueueError:
            queued = 0      # the broker is away: the next pass reports it
        if queued or any(p.queue.processing_count for p in self.projects.values()):
            return min(self.settings.busy_loop_interval, self.settings.loop_interval)
        return self.settings.loop_interval

    def stop(self) -> None:
        """Ask :meth:`run` to exit after the current pass (thread- and signal-safe)."""
        self._stopping.set()

    def shutdown(self) -> None:
        """Flush batched taskdb writes and leases, and save the counters."""
        with self._lock:
            try:
                self._flush()
            except Exception:
                logger.exception("could not flush task updates at shutdown")
            try:
                self._save_leases()
            except Exception:
                logger.exception("could not store the leases of the tasks in flight at shutdown; "
                                 "a restarted scheduler sends those tasks again")
            self._dump_counters(self._clock(), force=True)

    def idle(self) -> bool:
        """Nothing to do now: queues drained, nothing queued, in flight or left to load."""
        with self._lock:
            if self._requests or self._postponed or self._pending or self._status_held or self._requests_held:
                return False
            try:
                if self.newtask_queue.qsize() or self.status_queue.qsize():
                    return False
            except QueueError:
                return False
            return all(p.idle() and not (p.schedulable and p.selected_since_finished)
                       for p in self.projects.values())

    # ==================================================================================
    # step 1: projects
    def _update_projects(self, now: float) -> None:
        if not self._force_project_check and now - self._last_project_check < self.project_check_interval:
            return
        self._force_project_check = False
        self._last_project_check = now
        rows = self.projectdb.list(fields=["name", "group", "status", "rate", "burst", "updatetime"])
        seen = set()
        for row in rows:
            name = row["name"]
            if not self._wants_project(name):
                continue
            seen.add(name)
            p = self.projects.get(name)
            if p is None or p.updatetime != float(row.get("updatetime") or 0.0):
                full = self.projectdb.get(name)          # the script too: it may have changed
                if full is not None:
                    self._apply_project(full, now)
            elif (row.get("status"), row.get("group") or "", row.get("rate"), row.get("burst")) != p.row_sig:
                self._apply_project(row, now)
        for name in [n for n in self.projects if n not in seen]:
            logger.info("project %s is gone from projectdb; forgetting it", name)
            del self.projects[name]
            self._postponed = [t for t in self._postponed if t.project != name]

    def _wants_project(self, name: str) -> bool:
        return True

    def _apply_project(self, row: dict[str, Any], now: float) -> ProjectState:
        name = row["name"]
        p = self.projects.get(name)
        new = p is None
        if p is None:
            p = self.projects[name] = ProjectState(name, self.settings, self._clock)
        script_changed, schedulable_changed = p.apply_row(row, self.settings)
        p.known.clear()     # the row changed: the project may have been dropped and made again meanwhile
        if new:
            logger.info("project %s loaded (%s, rate %s, burst %s)", name, p.status.value, p.bucket.rate, p.bucket.burst)
        if schedulable_changed or new:
            p.queue.clear()
            p.reset_loader()
            if new and p.schedulable and self._leases_on:
                self._resume.add(name)      # before the loader runs: the tasks in flight are not loaded as ready
            elif not p.schedulable:
                self._resume.discard(name)
        if script_changed:
            if not new:
                logger.info("project %s: script changed, asking for its info", name)
                p.unpause()
            p.waiting_info = True
        if p.waiting_info and p.schedulable and (script_changed or schedulable_changed or new):
            self._request_info(p, now)      # only a scheduled project needs its script's info
        return p

    def _request_info(self, p: ProjectState, now: float) -> None:
        p.specials = deque(t for t in p.specials if t.taskid != "_on_get_info")
        p.specials.append(special_task(p.name, "_on_get_info", save=list(GET_INFO_ATTRIBUTES)))
        p.info_due = now + self.settings.lease_time

    def _project(self, name: str, now: float) -> ProjectState | None:
        """The project *name*, looked up in projectdb once per check interval if unknown."""
        p = self.projects.get(name)
        if p is None and self._wants_project(name):
            last = self._unknown_checked.get(name, -math.inf)
            if now - last >= self.project_check_interval:
                if len(self._unknown_checked) > 10000:
                    self._unknown_checked.clear()
                self._unknown_checked[name] = now
                try:
                    row = self.projectdb.get(name)
                except StorageUnavailable:
                    self._unknown_checked.pop(name, None)
                    raise       # the pass stops and is retried: the task is not dropped for it
                except (ValueError, StorageError) as exc:
                    logger.error("cannot look up project %r: %s", name, exc)
                    return None
                if row is not None:
                    p = self._apply_project(row, now)
        return p

    # ==================================================================================
    # step 2: status packs
    def _check_task_done(self, now: float) -> None:
        msgs, self._status_held = self._status_held, []
        if not msgs:
            if getattr(self.status_queue, "reliable", False):
                # acked once stored (in _check_requests): those a killed scheduler had taken come back
                deliveries = self.status_queue.receive_many(self.status_batch, 0)
                self._status_unacked.extend(deliveries)
                msgs = [d.message for d in deliveries]
            else:
                msgs = self.status_queue.get_many(self.status_batch, 0)
        if msgs:
            try:
                self._on_status_msgs(msgs, now)
            except StorageUnavailable:
                self._status_held = msgs     # none of their statuses was applied: all again next pass
                raise
        for p in self.projects.values():
            if p.queue.processing_count:
                for task in p.queue.expired(now):
                    logger.warning("lease of %s:%s %s expired; sending it again", p.name, task.taskid, task.url)
                    self.window.requeue(p, task, now)
                    if p.pause_state == CHECKING:
                        p.trial_left += 1
            if p.waiting_info and p.schedulable and now >= p.info_due \
                    and not any(t.taskid == "_on_get_info" for t in p.specials):
                logger.warning("project %s: no _on_get_info answer yet; asking again", p.name)
                self._request_info(p, now)
        # the writes stay batched: check requests stores them with its new tasks, in one transaction

    def _on_status_msgs(self, msgs: Iterable[Any], now: float) -> None:
        """Status messages: the requests they carry are stored first, then the statuses applied.

        A message is a StatusPack or ``(StatusPack, Task, ...)``, the pack with its page's
        follow-up requests. The requests of the whole batch are checked in one go (one taskdb
        lookup and insert per project); the new statuses only go to the batched writes, so
        they reach taskdb in the same transaction as the requests or a later one, never before.
        """
        packs: list[Any] = []
        follows: list[Any] = []
        for msg in msgs:
            if isinstance(msg, tuple) and msg:
                packs.append(msg[0])
                follows.extend(msg[1:])
            else:
                packs.append(msg)
        if follows:
            self._on_request_msgs(follows, now)
        for msg in packs:
            try:
                pack = coerce_status(msg)
            except SerializationError as exc:
                logger.error("dropping a malformed status pack: %s", exc)
                continue
            try:
                self._on_status(pack, now)
            except (TypeError, ValueError, AttributeError) as exc:
                logger.error("dropping status pack %s:%s: %s", pack.project, pack.taskid, exc)
            self._work += 1

    def _on_status(self, pack: StatusPack, now: float) -> None:
        p = self.projects.get(pack.project)
        if p is None:
            logger.warning("ignored status pack for %s:%s: unknown project", pack.project, pack.taskid)
            return
        track = pack.track
        ok = bool(track.process.get("ok"))
        if pack.taskid in EPHEMERAL:
            self._on_special_status(p, pack, ok, now)
            return
        task = p.queue.done(pack.taskid)
        if task is None:
            logger.warning("ignored status pack for %s:%s %s: not in flight", pack.project, pack.taskid, pack.url)
            return
        fetch_time = track.fetch.get("time")
        if isinstance(fetch_time, (int, float)) and not isinstance(fetch_time, bool):
            self._counters.duration(p.name, "fetch_time", fetch_time)
        process_time = track.process.get("time")
        if isinstance(process_time, (int, float)) and not isinstance(process_time, bool):
            self._counters.duration(p.name, "process_time", process_time)
        if ok:
            event = self._task_done(p, task, track, now)
        else:
            event = self._task_failed(p, task, track, now)
        if self.jobs is not None and task.schedule.job is not None:
            self.jobs.on_status(task.schedule.job, ok, track)
        p.active.appendleft((now, event, task, track))
        p.record_result(ok, now, self.settings)

    def _on_special_status(self, p: ProjectState, pack: StatusPack, ok: bool, now: float) -> None:
        task = Task(taskid=pack.taskid, project=p.name, url=pack.url)
        p.active.appendleft((now, "success" if ok else "failed", task, pack.track))
        if pack.taskid != "_on_get_info":
            if not ok:
                logger.error("%s of project %s failed: %s", pack.taskid, p.name, error_text(pack.track))
            return
        if not ok:
            logger.error("project %s: _on_get_info failed (%s); asking again in 60s", p.name, error_text(pack.track))
            p.info_due = now + 60.0
            return
        p.apply_info(pack.track.process.get("save"))
        logger.info("project %s info: min_tick=%s retry_delay=%s crawl_config=%s",
                    p.name, p.min_tick, p.retry_delay, p.crawl_config)

    def _task_done(self, p: ProjectState, task: Task, track: Track, now: float) -> str:
        s = task.schedule
        if s.auto_recrawl and s.age > 0:
            schedule = dataclasses.replace(s, exetime=now + s.age, retried=0)
            new = dataclasses.replace(task, schedule=schedule, track=track, lastcrawltime=now, updatetime=now)
            self._write(new)
            self.window.requeue(p, new, now)
            self._counters.event(p.name, "success", total=False)
            logger.info("task done %s:%s %s; recrawl in %ss", p.name, task.taskid, task.url, s.age)
            return "success"
        new = dataclasses.replace(task, status=TaskStatus.SUCCESS, track=track, lastcrawltime=now, updatetime=now)
        self._write(new)
        self._counters.event(p.name, "success")
        self._counters.event(p.name, "pending", -1, windows=False)
        self._active_delta(p, -1)
        logger.info("task done %s:%s %s", p.name, task.taskid, task.url)
        return "success"

    def _task_failed(self, p: ProjectState, task: Task, track: Track, now: float) -> str:
        s = task.schedule
        retried = s.retried
        delay = p.retry_delay_for(retried, self.settings)
        if s.auto_recrawl and s.age > 0:
            delay = min(delay, s.age)
        elif retried >= s.retries:
            delay = -1
        elif s.age > 0 and delay > s.age:
            delay = s.age
        if delay < 0:
            new = dataclasses.replace(task, status=TaskStatus.FAILED, track=track, lastcrawltime=now, updatetime=now)
            self._write(new)
            self._counters.event(p.name, "failed")
            self._counters.event(p.name, "pending", -1, windows=False)
            self._active_delta(p, -1)
            logger.info("task failed %s:%s %s: %s", p.name, task.taskid, task.url, error_text(track))
            return "failed"
        schedule = dataclasses.replace(s, retried=retried + 1, exetime=now + delay)
        new = dataclasses.replace(task, schedule=schedule, track=track, lastcrawltime=now, updatetime=now)
        self._write(new)
        self.window.requeue(p, new, now)
        self._counters.event(p.name, "retry")
        logger.info("task retry %d/%d in %ss %s:%s %s: %s", retried + 1, s.retries, delay, p.name,
                    task.taskid, task.url, error_text(track))
        return "retry"

    # ==================================================================================
    # step 4: cron
    def _check_cronjob(self, now: float) -> None:
        now_i = int(now)
        for p in self.projects.values():
            if not p.schedulable or p.waiting_info or p.min_tick <= 0 or p.last_tick is None:
                p.last_tick = now_i
                continue
            tick = p.min_tick
            nxt = (p.last_tick // tick + 1) * tick
            sent = 0
            while nxt <= now_i and sent < _CRON_CATCHUP:
                p.specials.append(special_task(p.name, "_on_cronjob", save={"tick": nxt}))
                p.last_tick = nxt
                nxt += tick
                sent += 1
            if nxt > now_i:
                p.last_tick = now_i
            self._work += sent

    # ==================================================================================
    # step 5: select
    def _room(self) -> int:
        limit = self.settings.loop_limit
        maxsize = self.out_queue.maxsize
        if maxsize:
            limit = min(limit, maxsize - self.out_queue.qsize())
        cap = self._pool_cap()
        if cap > 0:     # the cluster-wide cap on tasks in flight (dispatched, not yet answered)
            limit = min(limit, cap - sum(p.queue.processing_count for p in self.projects.values()))
        return limit

    _cap: int | None = None             # the pool cap in force (None: not read yet)
    _cap_read_at = -math.inf

    def _pool_cap(self) -> int:
        """The cap on tasks in flight: the one stored by ``spiderflow queue cap``, else the
        ``pool_cap`` setting (0: none). Read from projectdb at most once a second; while the
        database cannot be read, the last value stays in force."""
        now = self._clock()
        if self._cap is not None and 0 <= now - self._cap_read_at < 1.0:
            return self._cap
        self._cap_read_at = now
        try:
            stored = self.projectdb.get_pool_cap()
        except StorageError as exc:
            if self._cap is not None:
                return self._cap
            logger.error("cannot read the cluster's pool cap (%s); using pool_cap=%d until it can be read",
                         exc, self.settings.pool_cap)
            stored = None
        cap = max(0, self.settings.pool_cap if stored is None else stored)
        if cap != self._cap:
            if cap or self._cap:
                logger.info("%s: %s (%s)", self.kind, f"at most {cap} tasks in flight" if cap else "no pool cap",
                            "the pool_cap setting" if stored is None else "the cluster's, from `spiderflow queue cap`")
            self._cap = cap
        return cap

    def _check_select(self, now: float) -> None:
        if self._resume:
            self._resume_leases(now)     # a project first met in this pass's requests
        budget = self._room()
        projects = list(self.projects.values())
        if projects:
            self._rr = (self._rr + 1) % len(projects)
            projects = projects[self._rr:] + projects[:self._rr]
        # special tasks bypass the bucket and the pause
        for p in projects:
            while p.specials and budget > 0:
                task = p.specials.popleft()
                try:
                    self._send(task)
                except QueueError:      # full, or the broker is away (the next pass waits for it)
                    p.specials.appendleft(task)
                    budget = 0
                    break
                except SerializationError as exc:
                    logger.error("cannot send %s of project %s: %s", task.taskid, p.name, exc)
                    continue
                if task.taskid == "_on_get_info":
                    p.info_due = now + self.settings.lease_time
                budget -= 1
                self._work += 1
        candidates: list[tuple[ProjectState, int]] = []
        for p in projects:
            if not p.schedulable:
                continue
            self._work += self.window.fill(p, now, self._flush)
            if p.waiting_info:
                continue
            p.queue.promote(now)
            allowed = p.select_limit(now, self.settings)
            if allowed and p.queue.ready_count:
                candidates.append((p, allowed))
        while budget > 0 and candidates:
            quantum = max(1, budget // len(candidates))
            again: list[tuple[ProjectState, int]] = []
            for p, allowed in candidates:
                want = min(quantum, budget, p.queue.ready_count)
                if allowed >= 0:
                    want = min(want, allowed)
                got = p.bucket.take(want)
                if not got:
                    continue
                tasks = p.queue.pop(got)
                sent, full = self._dispatch(p, tasks, now)
                budget -= sent
                if allowed >= 0:
                    allowed -= sent
                    p.selected(sent)
                if full:
                    budget = 0
                    break
                if budget <= 0:
                    break
                if p.queue.ready_count and allowed:
                    again.append((p, allowed))
            candidates = again
        if self._leases and not 0 <= now - self._leases_saved < _LEASE_SAVE_INTERVAL:
            self._save_leases()
        self._check_finished(projects, now)

    def _dispatch(self, p: ProjectState, tasks: list[Task], now: float) -> tuple[int, bool]:
        """Send *tasks* in order, in one batch; those that do not fit go back. Returns (sent, out_queue full)."""
        deadline = now + self.settings.lease_time
        leases = self._leases if self._leases_on else None
        lease = (now, deadline)
        name = p.name
        job = p.job
        revokes = self.revokes
        ready: list[Task] = []
        for task in tasks:
            if revokes is not None and revokes.revoked(task):
                revokes.drop(self, p, task, now)    # `control revoke`: BAD, never sent (spiderflow.control)
                continue
            if task.schedule.job != job:    # the job running the project now (spiderflow.jobs)
                task.schedule = dataclasses.replace(task.schedule, job=job)
            ready.append(task)
        sent = 0
        selected = False
        start = 0
        while start < len(ready):
            batch = ready[start:]
            n, exc = self._send_many([p.join_crawl_config(t) for t in batch])
            for task in batch[:n]:
                p.queue.start(task, deadline)
                if leases is not None:
                    leases[(name, task.taskid)] = lease    # stored by the pass, in one batch (_save_leases)
                p.active.appendleft((now, "dispatched", task, None))
                if task.taskid != "on_finished":
                    p.selected_since_finished = selected = True
                elif not selected:
                    # on_finished ends a crawl, however it got here (also reloaded from taskdb after
                    # an outage hid the commit that stored it): it is sent once
                    p.selected_since_finished = False
            if n:
                self._dispatched = True
            sent += n
            start += n
            if exc is None:
                break
            if isinstance(exc, SerializationError):     # batch[n] cannot be packed: BAD; send the rest
                task = batch[n]
                logger.error("task %s:%s cannot be sent (%s); marking it BAD", p.name, task.taskid, exc)
                self._write(dataclasses.replace(task, status=TaskStatus.BAD, updatetime=now))
                self._active_delta(p, -1)
                start += 1
                continue
            if n == len(batch):
                # an eager backend failed part-way: all count as sent (see _send_many). A broker
                # that went away ends the pass, so that the tasks in flight are sent again once
                # it is back; a full queue leaves those it did not take to their lease.
                self._work += sent
                if not isinstance(exc, QueueFull):
                    raise exc
                return sent, True
            # QueueError: full, or the broker is away: the rest go back, in order
            for rest in ready[start:]:
                p.queue.put(rest, now)
            p.bucket.refund(len(ready) - start)
            self._work += sent
            return sent, True
        self._work += sent
        return sent, False

    def _send(self, task: Task) -> None:
        self.out_queue.put_nowait(task)

    def _send_each(self, msgs: list[Any]) -> tuple[int, Exception | None]:
        for i, msg in enumerate(msgs):
            try:
                self._send(msg)
            except (QueueError, SerializationError) as exc:
                return i, exc
        return len(msgs), None

    def _send_many(self, msgs: list[Any]) -> tuple[int, Exception | None]:
        """Send *msgs* in order with one ``put_many`` (one pipelined round of publishes and
        confirms on amqp, one script call per thousand on redis); never waits for room.

        Returns ``(n, exc)``: ``msgs[:n]`` were sent; *exc* is None when all were, else what
        stopped the batch: a SerializationError for ``msgs[n]`` (not sent, nor those after
        it), or a QueueError (``msgs[n:]`` not sent). A backend whose ``put_many`` packs every
        message before it sends any (redis, amqp) sends none of a batch with a message that
        cannot be packed. When such a backend fails part-way (the queue filled up past the
        room measured before the pass, or the broker went away), the error's ``sent`` says
        how many it took where the backend knows (redis, when full), and the rest go back to
        the queue; where it is unknown, all count as sent, so none is sent twice and none
        is lost; the lease (or, after a broker outage, the resend of every task in flight)
        sends again those it did not take.
        """
        if not msgs:
            return 0, None
        kind = _put_many_kind(self.out_queue) if len(msgs) > 1 else None
        if kind is None:        # one message, or a queue whose put_many is not known: one at a time
            return self._send_each(msgs)
        taken = 0

        def feed() -> Iterable[Any]:
            nonlocal taken
            for msg in msgs:
                taken += 1
                yield msg

        try:
            # an eager backend is given a moment to take the batch whole: it fails part-way only
            # when the queue filled past the room measured at the start of the pass
            self.out_queue.put_many(feed(), timeout=0 if kind == "prefix" else _EAGER_WAIT)
        except SerializationError as exc:
            if kind == "prefix":        # those before the bad one went
                return taken - 1, exc
            return self._send_each(msgs)    # nothing went: find the bad one, one at a time
        except QueueError as exc:
            if kind == "prefix":
                return taken - 1, exc
            if exc.sent is not None:    # the backend says which went (redis: a prefix); the rest go back
                return exc.sent, exc
            logger.warning("%s: sending %d tasks failed part-way (%s); those the queue did not take are "
                           "sent again (at the end of their lease, or once the broker is back)",
                           self.kind, len(msgs), exc)
            return len(msgs), exc
        return len(msgs), None

    def _check_finished(self, projects: list[ProjectState], now: float) -> None:
        """Send on_finished to projects whose queue has drained since they last ran tasks."""
        # anything a project's crawl may still grow from: requests queued or held, status
        # messages (they carry their pages' follows) queued or held. A message taken by a
        # consumer that died is invisible here, but the task it belongs to is still ACTIVE in
        # taskdb, which the check below reads before on_finished is sent.
        pending_requests: bool | None = None    # asked of the queues only for a project that looks drained
        postponed = {t.project for t in self._postponed}
        for p in projects:
            if not (p.selected_since_finished and p.schedulable and not p.waiting_info) \
                    or p.name in postponed \
                    or len(p.queue) or p.queue.processing_count or p.more or p.wake_at != math.inf:
                p.drained_since = None
                continue
            if pending_requests is None:
                pending_requests = bool(self._requests or self._requests_held or self._status_held) \
                    or self.newtask_queue.qsize() > 0 or self.status_queue.qsize() > 0
            if pending_requests:
                p.drained_since = None
                continue
            if p.drained_since is None:
                p.drained_since = now
            if now - p.drained_since < self.finished_delay:
                continue
            p.drained_since = None
            self._flush()       # the count must see this scheduler's own writes, not only taskdb's
            left = self.taskdb.count(p.name, _ACTIVE)
            if left:
                logger.info("project %s: taskdb still has %d ACTIVE tasks; loading them", p.name, left)
                p.reset_loader()
                continue
            logger.info("project %s finished its queue; sending on_finished", p.name)
            if self.jobs is not None:
                self.jobs.project_finished(p, now)
            self._on_requests(p, [special_task(p.name, "on_finished", priority=9)], now)
            self._flush()
            # only once it is stored: after an outage (even one that hid a commit that went
            # through) the next pass sends it again, rather than leave it ACTIVE in taskdb only
            p.selected_since_finished = False

    # ==================================================================================
    # step 6: delete
    def _check_delete(self, now: float) -> None:
        for p in list(self.projects.values()):
            if p.status is not ProjectStatus.STOP or "delete" not in p.groups:
                continue
            if now - p.updatetime < self.settings.delete_time:
                continue
            logger.warning("deleting project %s: in group 'delete' and stopped since %s", p.name, p.updatetime)
            self._flush()
            tasks = self.taskdb.drop(p.name)
            results = self.resultdb.drop(p.name) if self.resultdb is not None else 0
            self.projectdb.drop(p.name)
            self._counters.drop(p.name)
            del self.projects[p.name]
            self._postponed = [t for t in self._postponed if t.project != p.name]
            self._resume.discard(p.name)
            if self._leases:
                self._leases = {key: v for key, v in self._leases.items() if key[0] != p.name}
            logger.warning("project %s deleted (%s tasks, %s results)", p.name, tasks, results)

    # ==================================================================================
    # step 7: counters
    def _init_counts(self) -> None:
        """Count taskdb's tasks now (for a caller that needs the counts at once); a count
        running in the background is waited for."""
        job = self._count_job
        if job is not None:
            job.thread.join()
            self._apply_count(job)
            return
        self._counts_ready = True
        try:
            self._flush()
            counts = self.taskdb.status_counts()
        except Exception:
            logger.exception("cannot count tasks in taskdb")
            return
        self._set_counts(counts, {}, {}, set())

    def _background_counts(self) -> bool:
        """Can taskdb be counted in another thread while this one writes (not SQLite in memory)?"""
        engine = getattr(self.taskdb, "engine", None)
        if engine is None or not hasattr(self.taskdb, "status_counts"):
            return False
        if engine.dialect.name != "sqlite":
            return True
        from ..storage.engine import is_sqlite_file
        return is_sqlite_file(engine)

    def _start_count(self) -> None:
        """Count taskdb's tasks in a thread, off the loop: a full count reads the whole table.

        The count reads one snapshot, which this loop waits for (it writes nothing meanwhile);
        what the scheduler changes after it is kept aside (active counts, counter totals) and
        added to the count when it is applied, so the counts come out as a count taken at
        that moment would.
        """
        if not self._background_counts():
            self._init_counts()
            return
        try:
            self._flush()
        except Exception:
            self._counts_ready = True
            logger.exception("cannot count tasks in taskdb")
            return
        job = _CountJob()
        job.thread = threading.Thread(target=job.run, args=(self.taskdb,), name="taskdb-count", daemon=True)
        job.thread.start()
        if not job.snapshot.wait(_COUNT_SNAPSHOT_WAIT) or job.error is not None:
            # no snapshot in time (the database is away or locked): the count, when it comes, is not used
            job.discard = True
            self._counts_ready = True
            logger.error("cannot count tasks in taskdb: %s", job.error or "it did not answer in time")
            return
        job.base = {name: {k: self._counters.total(name, k) for k in _COUNTED}
                    for name in self._counters.projects() | set(self.projects)}
        job.known = set(self.projects)
        self._count_job = job

    def _check_count(self) -> None:
        job = self._count_job
        if job is not None and job.done.is_set():
            self._apply_count(job)

    def _apply_count(self, job: _CountJob) -> None:
        self._count_job = None
        self._counts_ready = True
        if job.error is not None:
            logger.error("cannot count tasks in taskdb: %s", job.error)
            return
        self._set_counts(job.counts, job.deltas, job.base, job.known)

    def _set_counts(self, counts: dict[str, dict[TaskStatus, int]], deltas: dict[str, int],
                    base: dict[str, dict[str, float]], known: set[str]) -> None:
        """Apply taskdb's *counts*, plus the *deltas* of ACTIVE tasks and the counter totals
        changed since the count's snapshot (*base*: the totals then; *known*: the projects then)."""
        for name, by_status in counts.items():
            p = self.projects.get(name)
            if p is None and name in known:
                continue        # dropped since the snapshot
            active = int(by_status.get(_ACTIVE, 0))
            if p is not None:
                p.active_count = max(0, active + deltas.get(name, 0))
            then = base.get(name, {})
            # taskdb is the truth for these three, even over a loaded counter file (it may be stale)
            for key, status in zip(_COUNTED, (_ACTIVE, TaskStatus.SUCCESS, TaskStatus.FAILED)):
                moved = self._counters.total(name, key) - then.get(key, 0) if base else 0
                self._counters.set_total(name, key, max(0, by_status.get(status, 0) + moved))
        for p in self.projects.values():
            if p.active_count is None or (p.name not in counts and p.name in deltas):
                p.active_count = max(0, deltas.get(p.name, 0))

    def _dump_counters(self, now: float, force: bool = False) -> None:
        if not self._counter_path or (not force and now - self._last_dump < self.settings.counter_dump_interval):
            return
        self._last_dump = now
        try:
            self._counters.dump(self._counter_path)
        except OSError as exc:
            logger.error("cannot save counters to %s: %s", self._counter_path, exc)

    # ==================================================================================
    # taskdb helpers
    def _write(self, task: Task) -> None:
        self._pending[(task.project, task.taskid)] = task

    def _flush(self) -> None:
        """Write the batched updates; on a database outage they stay batched (StorageUnavailable)."""
        if self._pending:
            tasks = list(self._pending.values())
            self._store("update_many", tasks)
            self._pending.clear()

    def _insert(self, tasks: list[Task]) -> list[Task]:
        """Insert new *tasks* and the batched updates in one transaction; returns the tasks stored.

        If that transaction fails, the updates are flushed and the tasks inserted apart, by
        :meth:`_store`, which drops just the bad tasks.
        """
        if self._pending:
            try:
                self.taskdb.write_many(inserts=tasks, updates=list(self._pending.values()))
            except StorageUnavailable:
                raise
            except StorageError as exc:
                logger.warning("cannot store %d new tasks with %d updates in one batch (%s); storing them apart",
                               len(tasks), len(self._pending), exc)
            else:
                self._pending.clear()
                return tasks
            self._flush()
        return self._store("insert_many", tasks)

    def _store(self, op: str, tasks: list[Task]) -> list[Task]:
        """Write *tasks* in one batch; if the batch fails, one by one, dropping the bad ones.

        A database outage drops nothing: StorageUnavailable leaves at once, for the pass to retry.
        """
        method = getattr(self.taskdb, op)
        try:
            method(tasks)
            return tasks
        except StorageUnavailable:
            raise
        except StorageError as exc:
            if len(tasks) == 1:
                logger.error("cannot store task %s:%s: %s", tasks[0].project, tasks[0].taskid, exc)
                return []
            good = []
            for task in tasks:
                try:
                    method([task])
                    good.append(task)
                except StorageUnavailable:
                    raise
                except StorageError as err:
                    logger.error("cannot store task %s:%s: %s", task.project, task.taskid, err)
            if not good:
                raise
            return good

    # ==================================================================================
    # persisted leases
    def _save_leases(self) -> None:
        """Store the batched leases in one transaction (the select step does it at most every
        ``_LEASE_SAVE_INTERVAL`` seconds: a transaction of its own in every pass slowed
        ``spiderflow bench`` on redis and PostgreSQL by some 10-15%; so a scheduler killed
        loses the leases of its last second of dispatches, and a restarted one sends those
        tasks again).

        A database outage (StorageUnavailable) keeps them batched, for the next pass; any
        other failure drops them: a lease only spares a restarted scheduler sending its task
        again, so losing one never loses a task. Leases that ran out meanwhile are not stored.
        """
        if not self._leases:
            return
        now = self._leases_saved = self._clock()
        rows = [(project, taskid, dispatched, deadline)
                for (project, taskid), (dispatched, deadline) in self._leases.items() if deadline > now]
        try:
            if rows:
                self.taskdb.save_leases(rows)
        except StorageUnavailable:
            raise
        except StorageError as exc:
            logger.error("%s: cannot store the leases of %d tasks in flight (%s); dropping them: a restarted "
                         "scheduler would send those tasks again", self.kind, len(rows), exc)
        self._leases.clear()

    def _resume_leases(self, now: float) -> None:
        """Put back in flight the tasks of newly loaded projects whose persisted lease is still
        valid, each with its deadline, so that the loader does not load them as ready and their
        status packs are taken; those not answered in time are sent again when it ends.

        The batched writes are flushed first: a task this scheduler already wrote again (a
        restart, a cancel) has no valid lease left.
        """
        self._flush()
        if self._broker_kept is None:
            self._broker_kept = self._check_broker_kept()
        for name in sorted(self._resume):
            p = self.projects.get(name)
            if p is None or not p.schedulable:
                self._resume.discard(name)
                continue
            try:
                leased = self.taskdb.leases(name, now)
            except StorageUnavailable:
                raise       # the pass stops; the project's leases are loaded when it runs again
            except StorageError as exc:
                self._resume.discard(name)
                logger.error("project %s: cannot read the leases of its tasks in flight (%s); "
                             "they are loaded and sent again", name, exc)
                continue
            self._resume.discard(name)
            if leased and not self._broker_kept:
                logger.warning("project %s: %d tasks were in flight under a lease, but %s holds no mark of the "
                               "earlier scheduler (a Redis restarted without its data?): they may be gone, so "
                               "they are sent again at once", name, len(leased), self.out_queue.name)
                continue
            resumed = 0
            last = now
            job = p.job
            for task, deadline in leased:
                if task.taskid in p.queue:      # already held as ready: it is sent anyway
                    continue
                if task.schedule.job != job:    # as _dispatch sent it: its status counts for the job running
                    task = dataclasses.replace(task, schedule=dataclasses.replace(task.schedule, job=job))
                p.queue.start(task, deadline)
                resumed += 1
                last = max(last, deadline)
            if resumed:
                logger.info("project %s: %d tasks still in flight under a lease from before the restart; "
                            "waiting for their answers (sent again if not answered in %.0fs at most)",
                            name, resumed, last - now)
            else:
                logger.info("project %s: no task in flight under a lease; every ACTIVE task is loaded", name)

    def _check_broker_kept(self) -> bool:
        """Whether the queues still hold what an earlier scheduler sent (a backend that marks
        its queues, redis, is asked; the others keep their messages across restarts), and
        leave the mark for the next start."""
        mark = getattr(self.out_queue, "mark", None)
        if mark is None:
            return True
        kept = self.out_queue.marked()
        mark()
        return kept

    def _purge_leases(self, now: float) -> None:
        """Delete expired leases every ``min(lease_time, 300)`` s (at the first pass too); a
        failure is logged, and tried again at the next interval."""
        if not self._leases_on:
            return
        interval = min(self.settings.lease_time, 300.0)
        if 0 <= now - self._last_purge < interval:
            return
        self._last_purge = now
        try:
            purged = self.taskdb.purge_leases(now)
        except StorageError as exc:
            logger.warning("%s: cannot purge expired leases (%s); trying again in %.0fs", self.kind, exc, interval)
            return
        if purged:
            logger.debug("%s: purged %d expired leases", self.kind, purged)

    def _active_count(self, p: ProjectState) -> int:
        if p.active_count is None:
            p.active_count = self.taskdb.count(p.name, _ACTIVE)
        return p.active_count

    def _active_delta(self, p: ProjectState, delta: int) -> None:
        if p.active_count is not None:
            p.active_count = max(0, p.active_count + delta)
        job = self._count_job
        if job is not None:     # a count is running: it is taken before this change
            job.deltas[p.name] = job.deltas.get(p.name, 0) + delta


_COUNTED = ("pending", "success", "failed")
_LEASE_SAVE_INTERVAL = 1.0      # seconds between two writes of the batched leases, at least
_COUNT_SNAPSHOT_WAIT = 30.0


class _CountJob:
    """taskdb's status counts, read in a thread from a snapshot the loop waits for."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.snapshot = threading.Event()
        self.done = threading.Event()
        self.counts: dict[str, dict[TaskStatus, int]] = {}
        self.error: BaseException | None = None
        self.discard = False
        self.deltas: dict[str, int] = {}
        self.base: dict[str, dict[str, float]] = {}
        self.known: set[str] = set()

    def run(self, taskdb: Any) -> None:
        try:
            self.counts = taskdb.status_counts(on_snapshot=self.snapshot.set)
        except BaseException as exc:  # the thread's boundary: the loop reports it
            self.error = exc
        finally:
            self.snapshot.set()
            self.done.set()


_EAGER_WAIT = 1.0
_PUT_MANY_KINDS: dict[Any, str | None] = {}
_PUT_MANY_KNOWN = [("spiderflow.queues.base", "BaseQueue", "prefix"),
                   ("spiderflow.queues.multiprocessing", "MultiprocessingQueue", "prefix"),
                   ("spiderflow.queues.redis", "RedisQueue", "eager"),
                   ("spiderflow.queues.amqp", "AmqpQueue", "eager")]


def _put_many_kind(queue: Any) -> str | None:
    """How *queue*'s ``put_many`` fails part-way: ``"prefix"`` (it takes the messages one by
    one from the iterable, and what it took before it raised is put: memory, multiprocessing),
    ``"eager"`` (it packs them all first, then sends: redis, amqp), None (unknown)."""
    cls = type(queue)
    kind = _PUT_MANY_KINDS.get(cls, "")
    if kind == "":
        import importlib

        method = getattr(cls, "put_many", None)
        kind = None
        for module, name, how in _PUT_MANY_KNOWN:
            try:
                known = getattr(importlib.import_module(module), name).put_many
            except (ImportError, AttributeError):   # the backend's client library is not installed
                continue
            if method is known:
                kind = how
                break
        _PUT_MANY_KINDS[cls] = kind
    return kind


__all__ = ["EPHEMERAL", "GET_INFO_ATTRIBUTES", "Scheduler"]
