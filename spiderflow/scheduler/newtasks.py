"""Step 3 of the loop: new requests from newtask_queue, deduplicated by taskid.

A mixin of :class:`~spiderflow.scheduler.Scheduler`. Requests are grouped by project;
their taskids are looked up in memory, in the batched writes not yet flushed, and then in
taskdb with one ``get_many`` (light fields only; schedules are read just for requests that
carry an itag). A plain request (no force_update, cancel, itag or age) for a taskid the
project remembers as stored (``ProjectState.known``, up to ``known_taskids``) is ignored
as soon as it is grouped, as the lookup would have ignored it; the set is read as it was
when the batch began, even if storing the batch empties it. New tasks are stored with one
``insert_many``. An old task is restarted when its itag changed, its age expired (after a
crawl), or force_update is set; cancel marks it BAD; a restart of a task in flight waits
until the task returns (and is stored at once, so a restarted scheduler still honours it). The new tasks are stored in one transaction with the batched
updates (the status packs of this pass). On a reliable queue (redis, amqp) requests are acknowledged only
once stored in taskdb: those a killed scheduler had taken come back. The follow-up requests
of a crawled page come with its status pack (see :mod:`.scheduler`) and pass through here
before that status is written; this step then acknowledges the pass's status messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from ..exceptions import SerializationError, StorageError, StorageUnavailable
from ..message import Task, TaskStatus, Track
from .checks import coerce_task, flatten, make_active
from .operations import EPHEMERAL
from .project import ProjectState

logger = logging.getLogger(__name__)

_LIGHT_FIELDS = ["taskid", "status", "lastcrawltime"]
_ACTIVE = TaskStatus.ACTIVE


def _plain(s: Any) -> bool:
    """A request that never restarts a stored task: no force_update, cancel, itag or age."""
    return not (s.force_update or s.cancel) and s.itag is None and s.age < 0


class NewTasks:
    """Check requests: dedupe, insert, restart, cancel, postpone."""

    def _check_requests(self, now: float) -> None:
        batch: list[Any] = []
        if self._postponed:
            still: list[Task] = []
            for task in self._postponed:
                p = self.projects.get(task.project)
                if p is not None and p.queue.is_processing(task.taskid):
                    still.append(task)
                else:
                    batch.append(task)
            self._postponed = still
        if self._requests_held:
            batch.extend(self._requests_held)
            self._requests_held = []
        if self._requests:
            batch.extend(self._requests)
            self._requests.clear()
        deliveries: list[Any] = []
        reliable = getattr(self.newtask_queue, "reliable", False)
        if self.request_batch > 0:
            if reliable:
                # acked once stored: the requests a killed scheduler had taken are delivered again
                deliveries = self.newtask_queue.receive_many(self.request_batch, 0)
                batch.extend(d.message for d in deliveries)
            else:
                batch.extend(self.newtask_queue.get_many(self.request_batch, 0))
        try:
            if batch:
                self._on_request_msgs(batch, now)
        except StorageError as exc:
            if isinstance(exc, StorageUnavailable):
                # the database is away: keep what is in hand (those of a reliable queue wait there)
                self._requests_held = batch[:len(batch) - len(deliveries)] if deliveries else batch
            for d in deliveries:
                d.hand_back()
            if deliveries:
                self.newtask_queue.ack_many(deliveries)   # settled: handed back
            raise
        try:
            self._flush()
        except StorageError:
            for d in deliveries:
                d.hand_back()      # their restarts are in the batched writes, not yet in taskdb
            raise
        finally:
            if deliveries:
                self.newtask_queue.ack_many(deliveries)   # stored (those handed back are settled already)
        # the status packs of this pass and the requests they carried are stored: settle them
        unacked, self._status_unacked = self._status_unacked, []
        if unacked:
            self.status_queue.ack_many(unacked)

    def _on_request_msgs(self, msgs: Iterable[Any], now: float) -> None:
        """Check and group requests by project; a plain request for a known taskid stops here.

        :meth:`_on_requests` would ignore it too (``p.known`` does not change before it
        runs), after a lookup and a pass through its loop.
        """
        groups: dict[str, list[Task]] = {}
        known: dict[str, set[str]] = {}
        for msg in flatten(msgs):
            try:
                task = coerce_task(msg)
            except (SerializationError, ValueError) as exc:
                logger.error("dropping a malformed new task: %s", exc)
                continue
            tasks = groups.get(task.project)
            if tasks is None:
                if self._project(task.project, now) is None:
                    logger.error("dropping new task %s:%s %s: unknown project", task.project, task.taskid, task.url)
                    continue
                tasks = groups[task.project] = []
                known[task.project] = self.projects[task.project].known
            self._work += 1
            if task.taskid in known[task.project] and _plain(task.schedule) and task.taskid not in EPHEMERAL:
                continue
            tasks.append(task)
        for name, tasks in groups.items():
            if tasks:
                self._on_requests(self.projects[name], tasks, now)

    def _on_requests(self, p: ProjectState, tasks: list[Task], now: float) -> None:
        """Dedupe *tasks* by taskid against memory and taskdb; insert, restart, cancel or ignore."""
        queue = p.queue
        pending = self._pending                     # batched writes: newer than taskdb
        name = p.name
        known = p.known                             # in taskdb: a plain request for one of these is ignored
        unknown = {t.taskid for t in tasks
                   if t.taskid not in queue and (name, t.taskid) not in pending and t.taskid not in EPHEMERAL
                   and not (t.taskid in known and _plain(t.schedule))}
        stored = self.taskdb.get_many(p.name, list(unknown), fields=_LIGHT_FIELDS) if unknown else {}
        if stored:
            self._remember(p, stored)
        itags = [t.taskid for t in tasks if t.schedule.itag is not None and t.taskid in stored]
        if itags:   # the old itag only matters to requests that carry one: read schedules just for them
            for taskid, row in self.taskdb.get_many(p.name, itags, fields=["taskid", "schedule"]).items():
                stored[taskid]["itag"] = (row.get("schedule") or {}).get("itag")
        limit = self.settings.inqueue_limit
        active = self._active_count(p) if limit > 0 else 0
        seen: dict[str, Task] = {}                  # this batch's tasks, by taskid
        inserts: dict[str, Task] = {}
        need_track: list[Task] = []
        dropped = 0
        debug = logger.isEnabledFor(logging.DEBUG)
        for task in tasks:
            taskid = task.taskid
            if taskid in EPHEMERAL:
                p.specials.append(task)
                continue
            s = task.schedule
            old: Any = seen.get(taskid) or queue.get(taskid) or pending.get((name, taskid))
            if old is None:
                old = stored.get(taskid)
                if old is None and taskid not in unknown:
                    continue                        # known as stored (when the batch began), and plain
                if old is None:
                    if s.cancel:
                        logger.info("cancel of unknown task %s:%s ignored", p.name, taskid)
                        continue
                    if limit > 0 and active >= limit:
                        dropped += 1
                        continue
                    active += 1
                    make_active(task, now)
                    inserts[taskid] = task
                    seen[taskid] = task
                    if debug:
                        logger.debug("new task %s:%s %s", p.name, taskid, task.url)
                    continue
                old_status, old_itag, old_lastcrawl = old.get("status"), old.get("itag"), old.get("lastcrawltime")
            else:
                old_status, old_itag, old_lastcrawl = old.status, old.schedule.itag, old.lastcrawltime
            # age: recrawl when the last crawl is too old (a task never crawled is pending anyway)
            restart = (s.force_update or s.cancel or (s.itag is not None and s.itag != old_itag)
                       or (s.age >= 0 and (old_lastcrawl is not None or old_status != _ACTIVE)
                           and (old_lastcrawl or 0) + s.age < now))
            if not restart:
                continue
            if queue.is_processing(taskid) and taskid not in seen:
                logger.info("postponed request for %s:%s %s until the task in flight returns", p.name, taskid, task.url)
                self._postponed.append(task)
                self._persist_postponed(task, old, old_lastcrawl, now)
                continue
            old_status = TaskStatus(old_status)
            if s.cancel:
                self._cancel(p, task, old, old_status, now)
                seen[taskid] = task
                continue
            if old_status is not _ACTIVE:
                if limit > 0 and active >= limit:
                    dropped += 1
                    continue
                active += 1
            make_active(task, now)
            task.lastcrawltime = old_lastcrawl
            if isinstance(old, Task):
                task.track = old.track
            else:
                need_track.append(task)
            if taskid not in seen:
                queue.remove(taskid)
            self._restarted(p, old_status)
            seen[taskid] = task
            logger.info("restart task %s:%s %s", p.name, taskid, task.url)
        if need_track:
            full = self.taskdb.get_many(p.name, [t.taskid for t in need_track], fields=["taskid", "track"])
            for task in need_track:
                row = full.get(task.taskid)
                if row and isinstance(row.get("track"), dict):
                    with contextlib.suppress(SerializationError):
                        task.track = Track.from_dict(row["track"])
        if dropped:
            logger.warning("project %s: inqueue limit %d reached; dropped %d new tasks", p.name, limit, dropped)
        if inserts:
            stored_tasks = self._insert(list(inserts.values()))
            if len(stored_tasks) < len(inserts):
                kept = {t.taskid for t in stored_tasks}
                for taskid in [t for t in inserts if t not in kept]:
                    del inserts[taskid]
                    if seen.get(taskid) is not None and seen[taskid].status is _ACTIVE:
                        del seen[taskid]
            self._counters.event(p.name, "pending", len(inserts))
            self._active_delta(p, len(inserts))
            self._remember(p, inserts)
        placed = []
        for taskid, task in seen.items():
            if task.status is _ACTIVE:
                if inserts.get(taskid) is not task:
                    self._write(task)
                placed.append(task)
        self.window.place(p, placed, now)

    def _persist_postponed(self, task: Task, old: Any, old_lastcrawl: Any, now: float) -> None:
        """Store a postponed restart now, so that a scheduler restart does not forget it.

        taskdb gets the restarted task (ACTIVE, the request's schedule) while the old one is
        still in flight; a restarted scheduler loads and crawls it. In this scheduler, the
        in-flight task's status and then the postponed request are applied in one pass, so
        the write that reaches taskdb after them is the outcome of both.
        """
        stored = dataclasses.replace(task, schedule=dataclasses.replace(task.schedule))
        make_active(stored, now)
        stored.lastcrawltime = old_lastcrawl
        if isinstance(old, Task):
            stored.track = old.track
        self._write(stored)

    def _remember(self, p: ProjectState, taskids: Iterable[str]) -> None:
        """Note *taskids* as stored in taskdb; the set is emptied when it outgrows ``known_taskids``."""
        known = p.known
        known.update(taskids)
        if len(known) > self.settings.known_taskids:
            known.clear()

    def _cancel(self, p: ProjectState, task: Task, old: Any, old_status: TaskStatus, now: float) -> None:
        if isinstance(old, Task):
            base = old
        else:
            base = self.taskdb.get_task(p.name, task.taskid) or task
        p.queue.remove(task.taskid)
        bad = dataclasses.replace(base, status=TaskStatus.BAD, schedule=task.schedule, updatetime=now)
        task.status = TaskStatus.BAD
        self._write(bad)
        if old_status is _ACTIVE:
            self._counters.event(p.name, "pending", -1, windows=False)
            self._active_delta(p, -1)
        logger.info("cancel task %s:%s %s", p.name, task.taskid, task.url)

    def _restarted(self, p: ProjectState, old_status: TaskStatus) -> None:
        if old_status is _ACTIVE:
            return
        self._counters.event(p.name, "pending")
        if old_status is TaskStatus.SUCCESS:
            self._counters.event(p.name, "success", -1, windows=False)
        elif old_status is TaskStatus.FAILED:
            self._counters.event(p.name, "failed", -1, windows=False)
        self._active_delta(p, 1)
