"""The scheduler's control panel: project changes applied at once, revoked tasks marked BAD.

``rate_limit``, ``pause`` and ``resume`` make the scheduler re-read projectdb now (the client
stored the change there) and answer once the new values are in force. ``revoke`` marks BAD
the revoked tasks the scheduler holds (queued or in flight) or taskdb has ACTIVE; a
project-wide revoke goes through taskdb's ACTIVE tasks of the project page by page on the
scheduler's loop, sparing the tasks accepted after it. As ``scheduler.revokes`` the panel is
also the dispatch check (:meth:`SchedulerPanel.revoked`, :meth:`SchedulerPanel.drop`): a
revoked task met later is marked BAD instead of being sent. Everything that touches the
scheduler's state runs on its loop (:func:`~.panels.call_on`); these methods use the
scheduler's internals (its task queues, batched writes and counters) as its own operations
(:mod:`spiderflow.scheduler.operations`) do.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..message import ProjectStatus, TaskStatus
from .commands import MAX_ITEMS, error, ok
from .panels import LOOP_WAIT, _WatchPanel, call_on
from .state import ANY, Revoke

logger = logging.getLogger(__name__)

#: tasks of a project-wide revoke marked BAD per step of the scheduler's loop
SWEEP_PAGE = 500


class SchedulerPanel(_WatchPanel):
    """Applies project changes at once; marks revoked tasks BAD (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.component.revokes = self       # the dispatch check (Scheduler._dispatch)

    @property
    def scheduler(self) -> Any:
        return self.component

    def close(self) -> None:
        if getattr(self.component, "revokes", None) is self:
            self.component.revokes = None
        super().close()

    # -- the dispatch hook (the scheduler's loop)
    def revoked(self, task: Any) -> bool:
        return self.watch.any and self.watch.revoked(task)

    def drop(self, scheduler: Any, p: Any, task: Any, now: float) -> None:
        """A revoked task met at dispatch: BAD, never sent (its token back to the bucket)."""
        self._bad(p, task, now)
        p.bucket.refund(1)
        logger.info("revoked task %s:%s %s marked BAD instead of being dispatched", p.name, task.taskid, task.url)

    def _bad(self, p: Any, task: Any, now: float) -> None:
        s = self.scheduler
        s._write(dataclasses.replace(task, status=TaskStatus.BAD, updatetime=now))
        s._counters.event(p.name, "pending", -1, windows=False)
        s._active_delta(p, -1)
        p.active.appendleft((now, "revoked", task, None))

    # -- commands
    def _apply(self, project: str, ttl: float, check: Any) -> Any:
        """Re-read projectdb now; wait (up to about the command's timeout) until *check(p)* holds."""
        s = self.scheduler
        call_on(self.loop, s.update_project)
        deadline = time.monotonic() + max(0.2, min(ttl * 0.8, 3.0))
        while True:
            p = call_on(self.loop, lambda: s.projects.get(project))
            if p is not None and check(p):
                return p, True
            if time.monotonic() >= deadline:
                return p, False
            time.sleep(0.02)

    def do_rate_limit(self, ttl: float, project: str, rate: float, burst: float | None = None) -> dict[str, Any]:
        def applied(p: Any) -> bool:
            return p.bucket.rate == rate and (burst is None or p.bucket.burst == max(1.0, burst))

        p, done = self._apply(project, ttl, applied)
        if p is None:
            return error(f"unknown project {project!r}")
        out = {"project": project, "rate": p.bucket.rate, "burst": p.bucket.burst}
        if not done:
            return {**error("the new rate limit is not in force yet (the scheduler's loop is busy)"), **out}
        return {**ok("new rate limit set successfully"), **out}

    def _status(self, project: str, ttl: float, status: ProjectStatus, what: str) -> dict[str, Any]:
        p, done = self._apply(project, ttl, lambda p: p.status is status)
        if p is None:
            return error(f"unknown project {project!r}")
        if not done:
            return {**error(f"project {project} is not {status.value} yet (its status is {p.status.value})"),
                    "project": project}
        return {**ok(f"project {project} {what} (status {status.value})"), "project": project}

    def do_pause(self, ttl: float, project: str) -> dict[str, Any]:
        return self._status(project, ttl, ProjectStatus.STOP, "paused")

    def do_resume(self, ttl: float, project: str) -> dict[str, Any]:
        return self._status(project, ttl, ProjectStatus.RUNNING, "resumed")

    def do_revoke(self, ttl: float, revokes: list[dict[str, Any]]) -> dict[str, Any]:
        entries = self._revoke(revokes)
        bad = call_on(self.loop, lambda: self._revoke_held(entries), wait=max(LOOP_WAIT, ttl * 0.8))
        return {**self._flagged(entries), "marked_bad": bad}

    def _revoke_held(self, entries: list[Revoke]) -> int:
        """On the loop: mark BAD the revoked tasks this scheduler holds or taskdb has ACTIVE."""
        s = self.scheduler
        now = s._clock()
        count = 0
        for e in entries:
            projects = list(s.projects.values()) if e.project == ANY else [s.projects.get(e.project)]
            for p in projects:
                if p is None:
                    continue
                if e.taskid == ANY:
                    count += self._revoke_project(p, e.revoked_at, now)
                else:
                    count += self._revoke_task(p, e.taskid, now)
        return count

    def _revoke_task(self, p: Any, taskid: str, now: float) -> int:
        s = self.scheduler
        task = p.queue.processing(taskid)
        if task is not None:
            p.queue.done(taskid)
        else:
            task = p.queue.remove(taskid)
        if task is None:
            pending = s._pending.get((p.name, taskid))
            if pending is not None:
                task = pending if pending.status is TaskStatus.ACTIVE else None
            else:
                stored = s.taskdb.get_task(p.name, taskid)
                task = stored if stored is not None and stored.status is TaskStatus.ACTIVE else None
        if task is None:
            return 0
        self._bad(p, task, now)
        logger.info("revoked task %s:%s %s marked BAD", p.name, taskid, task.url)
        return 1

    def _revoke_project(self, p: Any, before: float, now: float) -> int:
        """Every task of *p* accepted before *before*: those held now, then taskdb's page by page."""
        count = 0
        for task in [t for t in p.queue.in_flight() if (t.updatetime or 0.0) <= before]:
            p.queue.done(task.taskid)
            self._bad(p, task, now)
            count += 1
        for task in [t for t in p.queue.queued() if (t.updatetime or 0.0) <= before]:
            p.queue.remove(task.taskid)
            self._bad(p, task, now)
            count += 1
        logger.info("project %s: every task accepted before the revoke is revoked (%d held marked BAD; "
                    "taskdb's ACTIVE ones follow)", p.name, count)
        self._sweep(p.name, before, None)
        return count

    def _sweep(self, name: str, before: float, after: Any) -> None:
        """One page of taskdb's ACTIVE tasks of *name* on the loop, then the next one."""
        s = self.scheduler
        p = s.projects.get(name)
        if p is None:
            return
        now = s._clock()
        try:
            rows = s.taskdb.load_active(name, SWEEP_PAGE, after=after)
        except Exception as exc:
            logger.error("project %s: marking revoked tasks BAD failed (%s); those left are marked BAD at "
                         "dispatch", name, exc)
            return
        for task in rows:
            if (task.updatetime or 0.0) > before:
                continue
            pending = s._pending.get((name, task.taskid))
            if pending is not None and pending.status is not TaskStatus.ACTIVE:
                continue
            if p.queue.is_processing(task.taskid):
                p.queue.done(task.taskid)
            else:
                p.queue.remove(task.taskid)
            self._bad(p, task, now)
        if len(rows) == SWEEP_PAGE and self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(0.01, self._sweep, name, before, s.taskdb.order_key(rows[-1]))

    def do_registered(self, ttl: float) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            return [{"project": p.name, "version": p.md5, "status": p.status.value, "rate": p.bucket.rate,
                     "burst": p.bucket.burst} for p in sorted(self.scheduler.projects.values(), key=lambda p: p.name)]
        return call_on(self.loop, read)[:MAX_ITEMS]

    def stats(self) -> dict[str, Any]:
        return {**super().stats(),
                "scheduler": call_on(self.loop, self.scheduler.stats),
                "projects": call_on(self.loop, self.scheduler.projects_info)[:MAX_ITEMS]}


__all__ = ["SWEEP_PAGE", "SchedulerPanel"]
