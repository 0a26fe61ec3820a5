"""The scheduler's side of jobs: start pending jobs, stamp their tasks, count, finish, cancel.

A :class:`JobRunner` is owned by the scheduler and called from its loop: :meth:`tick` at
most once a second (it reads and writes the job table), :meth:`on_status` for every status
pack (in memory only), :meth:`project_finished` when a project's crawl has drained.

- **Start.** A pending job starts when fewer than ``max_proc`` jobs run in the cluster
  (0: ``max_proc_per_cpu`` × CPUs, :func:`~.store.max_running`) and no other job runs for its project (a project's
  task ids are shared, so two runs of one project cannot overlap). Starting sets the
  project RUNNING unless it was RUNNING or DEBUG already, and queues its ``on_start``.
- **Stamp.** While a job runs its project, every task the scheduler dispatches for that
  project carries the job's id in ``task.schedule.job`` (:attr:`ProjectState.job`), so
  fetchers and processors can drop the tasks of a cancelled job and callbacks can read
  ``self.job``.
- **Finish.** When the project's crawl drains (the moment ``on_finished`` is sent) the job
  is finished; its outcome is ``failed`` when every page of it failed. A project the job set
  RUNNING goes back to the status it had.
- **Cancel.** A cancel request (:meth:`JobDB.request_cancel`) stops the project (STOP), puts
  its tasks in flight back in its queue (fetchers and processors drop them; the next job of
  the project resumes them), and ends the job ``cancelled``.

Counts (pages, results, errors) are kept in memory per job and written at each tick; a
restarted scheduler starts from the counts stored in the job row, and takes up the running
jobs it finds there.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from ..message import ProjectStatus
from .store import max_running

logger = logging.getLogger(__name__)

#: seconds between two reads of the job table
TICK = 1.0
#: a job started by this runner that set its project RUNNING records the status it had here
_LIVE = (ProjectStatus.RUNNING, ProjectStatus.DEBUG)


class JobRunner:
    """Jobs as the scheduler sees them; every method runs on the scheduler's loop."""

    def __init__(self, scheduler: Any, jobdb: Any, clock: Callable[[], float]):
        self.scheduler = scheduler
        self.jobdb = jobdb
        self._clock = clock
        self._last_tick = -float("inf")
        self._running: dict[str, str] = {}                  # project -> id of its running job
        self._counts: dict[str, list[int]] = {}             # job id -> [pages, results, errors]
        self._written: dict[str, tuple[int, int, int]] = {}  # counts as last stored
        self._pid = os.getpid()
        self._node = socket.gethostname()
        self._loaded = False

    # -- from the scheduler's loop -------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Take up, cancel, start and count jobs (at most every :data:`TICK` seconds)."""
        if now - self._last_tick < TICK:
            return
        self._last_tick = now
        running = self.jobdb.list(status="running")
        if not self._loaded:
            self._take_up(running)
            self._loaded = True
        for job in running:
            if job["id"] not in self._counts:       # started by another scheduler, or gone from memory
                self._adopt(job)
            if job.get("cancel_requested"):
                self._cancel(job, now)
        self._assign()
        self._start_pending(now)
        self._write_counts()

    def on_status(self, job_id: str, ok: bool, track: Any) -> None:
        """Count one answered task of job *job_id*."""
        counts = self._counts.get(job_id)
        if counts is None:
            return
        counts[0] += 1
        results = track.process.get("results") if ok else 0
        if isinstance(results, int) and not isinstance(results, bool):
            counts[1] += results
        if not ok:
            counts[2] += 1

    def project_finished(self, p: Any, now: float) -> None:
        """The crawl of *p* has drained: its running job, if any, is finished."""
        job_id = self._running.get(p.name)
        if job_id is None:
            return
        pages, results, errors = self._counts.get(job_id, [0, 0, 0])
        outcome = "failed" if pages and errors == pages else "finished"
        self._end(p.name, job_id, outcome, now,
                  f"finished: {pages} pages, {results} results, {errors} errors")

    # -- internals ---------------------------------------------------------------------------
    def _take_up(self, running: list[dict[str, Any]]) -> None:
        for job in running:
            self._adopt(job)
            logger.info("job %s of project %s is running; taking it up (%d pages so far)",
                        job["id"], job["project"], job.get("pages") or 0)

    def _adopt(self, job: dict[str, Any]) -> None:
        counts = [int(job.get("pages") or 0), int(job.get("results") or 0), int(job.get("errors") or 0)]
        self._counts[job["id"]] = counts
        self._written[job["id"]] = tuple(counts)
        self._running[job["project"]] = job["id"]

    def _assign(self) -> None:
        """Every project state carries the id of its running job (None when it has none)."""
        for name, p in self.scheduler.projects.items():
            p.job = self._running.get(name)

    def _start_pending(self, now: float) -> None:
        settings = self.scheduler.settings
        for job in self.jobdb.startable(max_running(settings.max_proc, settings.max_proc_per_cpu)):
            project = job["project"]
            if project in self._running:
                continue                      # one running job per project: this one waits
            row = self.scheduler.projectdb.get(project, fields=["name", "status"])
            if not self.jobdb.start(job["id"], now=now, pid=self._pid, node=self._node):
                continue                      # cancelled meanwhile
            if row is None:
                self.jobdb.add_event(job["id"], f"project {project} does not exist; not started", now)
                self.jobdb.finish(job["id"], "failed", now=now, pages=0, results=0, errors=0)
                continue
            self._begin(job, row, now)

    def _begin(self, job: dict[str, Any], row: dict[str, Any], now: float) -> None:
        project, job_id = job["project"], job["id"]
        status = row["status"]
        self._adopt({**job, "pages": 0, "results": 0, "errors": 0})
        if status not in _LIVE:
            self.scheduler.projectdb.update(project, status=ProjectStatus.RUNNING)
            self.jobdb.add_event(job_id, f"started; project {project} set RUNNING (it was {status.value})", now)
        else:
            self.jobdb.add_event(job_id, f"started; project {project} is {status.value}", now)
        self.scheduler._force_project_check = True
        self.scheduler.run_project(project)
        p = self.scheduler.projects.get(project)
        if p is not None:
            p.job = job_id
        logger.info("job %s started: project %s, args %s", job_id, project, job.get("args") or {})

    def _cancel(self, job: dict[str, Any], now: float) -> None:
        project, job_id = job["project"], job["id"]
        p = self.scheduler.projects.get(project)
        back = 0
        if p is not None:
            back = self.scheduler.stop_project(p, now)
        else:
            self.scheduler.projectdb.update(project, status=ProjectStatus.STOP)
        self._end(project, job_id, "cancelled", now,
                  f"cancelled: project {project} set STOP, {back} tasks in flight dropped", restore=False)

    def _end(self, project: str, job_id: str, outcome: str, now: float, event: str,
             restore: bool = True) -> None:
        pages, results, errors = self._counts.pop(job_id, [0, 0, 0])
        self._written.pop(job_id, None)
        self._running.pop(project, None)
        p = self.scheduler.projects.get(project)
        if p is not None:
            p.job = None
        job = self.jobdb.get(job_id) or {}
        self.jobdb.add_event(job_id, event, now)
        self.jobdb.finish(job_id, outcome, now=now, pages=pages, results=results, errors=errors)
        if restore:
            before = _status_before(job.get("events") or "", project)
            if before is not None:
                self.scheduler.projectdb.update(project, status=before)
                self.scheduler._force_project_check = True
        logger.info("job %s of project %s %s: %d pages, %d results, %d errors",
                    job_id, project, outcome, pages, results, errors)
        trim = getattr(self.scheduler.settings, "finished_to_keep", 0)
        if trim > 0:
            self.jobdb.trim(trim)

    def _write_counts(self) -> None:
        for job_id, counts in self._counts.items():
            now_counts = tuple(counts)
            if self._written.get(job_id) != now_counts:
                self.jobdb.update_counts(job_id, *now_counts)
                self._written[job_id] = now_counts


def _status_before(events: str, project: str) -> ProjectStatus | None:
    """The status a job's start changed its project from, read back from the job's events
    (so a restarted scheduler restores it too); None if the start changed nothing."""
    marker = f"project {project} set RUNNING (it was "
    at = events.rfind(marker)
    if at < 0:
        return None
    value = events[at + len(marker):].split(")", 1)[0]
    try:
        return ProjectStatus(value)
    except ValueError:
        return None


__all__ = ["JobRunner", "TICK"]
