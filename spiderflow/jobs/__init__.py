"""Jobs: one run of a project each, and a scrapyd-compatible service API over them.

A job is scheduled (``schedule.json``, ``/api/jobs``, ``spiderflow job schedule``), waits
pending while its project runs another job or ``max_proc`` jobs run in the cluster, is
started and finished by the scheduler, and can be cancelled at any time. Jobs and project
versions live in the projectdb database::

    jobdb = connect_jobdb(settings.db_url("projectdb"))
    job = jobdb.schedule("books", "Handler", args={"start": "1"})
"""

from __future__ import annotations

from .store import (
    CANCELLED,
    FINISHED,
    OUTCOMES,
    PENDING,
    RUNNING,
    STATES,
    JobDB,
    format_time,
    max_running,
    validate_jobid,
)


def connect_jobdb(url: str) -> JobDB:
    """The jobs and versions; they live in the projectdb database (``settings.db_url("projectdb")``)."""
    from ..storage import _connect

    return _connect(JobDB, url)


__all__ = ["CANCELLED", "FINISHED", "OUTCOMES", "PENDING", "RUNNING", "STATES", "JobDB", "connect_jobdb",
           "format_time", "max_running", "validate_jobid"]
