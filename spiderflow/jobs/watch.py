"""What fetchers and processors know of jobs: which are cancelled, and a job's arguments.

A :class:`JobWatch` reads the job table at most once every :data:`REFRESH` seconds (one
indexed query, :meth:`JobDB.cancelled_since`), so a cancel reaches every node of the
cluster within about a second: a fetcher does not fetch a task of a cancelled job, and a
processor does not run its callback (the task is acknowledged and dropped; the scheduler
has already put it back in its project's queue). A database outage keeps the last answer
and is logged once (:class:`spiderflow.storage.Outage`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..exceptions import StorageError
from ..storage import Poller

logger = logging.getLogger(__name__)

#: seconds between two reads of the cancelled jobs
REFRESH = 1.0
#: how far back cancelled jobs are remembered (their tasks can wait in a queue that long)
MEMORY = 24 * 3600.0
#: job arguments kept in memory, per process
MAX_ARGS = 1000


class Job:
    """What a callback sees as ``self.job``: the id, arguments and settings of its job."""

    __slots__ = ("id", "project", "args", "settings")

    def __init__(self, job_id: str, project: str, args: dict[str, str], settings: dict[str, str]):
        self.id = job_id
        self.project = project
        self.args = dict(args)
        self.settings = dict(settings)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, args={self.args!r})"


class JobWatch(Poller):
    """Cancelled jobs and job arguments, read from a :class:`~spiderflow.jobs.JobDB`.

    The cancelled jobs are read by a daemon thread of its own (:class:`~spiderflow.storage.Poller`,
    started by the composition root, or by the first call of :meth:`cancelled`), so the asking
    loop never waits for the database.
    """

    name = "job-watch"

    def __init__(self, jobdb: Any, clock: Callable[[], float] = time.time, refresh: float = REFRESH):
        super().__init__(refresh)
        self.jobdb = jobdb
        self._clock = clock
        self._cancelled: frozenset[str] = frozenset()
        self._jobs: dict[str, Job | None] = {}
        self.dropped = 0

    def cancelled(self, job_id: str | None) -> bool:
        """Whether *job_id* (a task's ``schedule.job``) belongs to a cancelled job."""
        if job_id is None:
            return False
        if not self.started:     # the first answer, so a cancel is never missed at start
            self.start(wait=self.refresh * 5)
        return job_id in self._cancelled

    def read(self) -> None:
        self._cancelled = frozenset(self.jobdb.cancelled_since(self._clock() - MEMORY))

    def job(self, job_id: str | None) -> Job | None:
        """The :class:`Job` of *job_id*, or None (no job, or gone from the table)."""
        if job_id is None:
            return None
        if job_id not in self._jobs:
            try:
                row = self.jobdb.get(job_id)
            except StorageError as exc:
                logger.warning("job %s: cannot read its arguments (%s)", job_id, exc)
                return None
            if len(self._jobs) >= MAX_ARGS:
                self._jobs.clear()
            self._jobs[job_id] = None if row is None else Job(
                job_id, row["project"], row.get("args") or {}, row.get("settings") or {})
        return self._jobs[job_id]

    def drop(self, what: str, task: Any) -> None:
        """Log and count a task of a cancelled job that this node will not work on."""
        self.dropped += 1
        logger.info("%s: dropping %s:%s %s: its job %s is cancelled", what, task.project, task.taskid,
                    task.url, task.schedule.job)


__all__ = ["Job", "JobWatch", "MEMORY", "REFRESH"]
