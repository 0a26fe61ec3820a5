"""jobdb: the jobs of a cluster (one run of a project each) and the stored versions of projects.

It lives in the projectdb database, the one every node of a cluster shares::

    connect_jobdb(settings.db_url("projectdb"))

A job is ``pending`` until the scheduler starts it (:meth:`JobDB.start`), ``running``
until the scheduler finishes it (:meth:`JobDB.finish`), then ``finished`` with an
``outcome`` of ``finished``, ``cancelled`` or ``failed``. A project runs at most one job at
a time (its task ids are shared by every run). Cancelling a pending job finishes it at once;
a running job gets ``cancel_requested`` and the scheduler ends it. Fetchers and processors
poll :meth:`JobDB.cancelled_since` to drop the work of cancelled jobs. A job is a dict with
the keys of :data:`FIELDS`; times are Unix seconds.

Versions are scrapyd's eggs: a project's script as uploaded under a version name
(``addversion.json``), listed oldest first; the latest is the last one added.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ..exceptions import ConfigError, InvalidProjectName
from ..message import validate_project_name
from ..storage.base import LONGTEXT, METADATA, MYSQL_TABLE, NAME, TEXT, BaseDB, chunked

FIELDS = ("id", "project", "spider", "version", "status", "outcome", "args", "settings", "priority",
          "created", "start_time", "end_time", "pid", "node", "pages", "results", "errors",
          "cancel_requested", "events")
PENDING, RUNNING, FINISHED = "pending", "running", "finished"
STATES = (PENDING, RUNNING, FINISHED)
OUTCOMES = ("finished", "cancelled", "failed")
CANCELLED = "cancelled"
MAX_JOBID = 64
MAX_SPIDER = 255
MAX_VERSION = 128
#: job-level log lines kept per job (the oldest go first), and the longest line kept
EVENT_LINES = 1000
EVENT_LINE_CHARS = 2000
_JOBID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_BIN = mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin")
JOBID = (sa.String(MAX_JOBID).with_variant(sa.String(MAX_JOBID, collation="C"), "postgresql")
         .with_variant(mysql.VARCHAR(MAX_JOBID, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"))
VERSION = (sa.String(MAX_VERSION).with_variant(sa.String(MAX_VERSION, collation="C"), "postgresql")
           .with_variant(mysql.VARCHAR(MAX_VERSION, charset="utf8mb4", collation="utf8mb4_bin"),
                         "mysql", "mariadb"))

JOBS = sa.Table(
    "spiderflow_job", METADATA,
    sa.Column("id", JOBID, primary_key=True),
    sa.Column("project", NAME, nullable=False),
    sa.Column("spider", sa.String(MAX_SPIDER).with_variant(_BIN, "mysql", "mariadb"), nullable=False),
    sa.Column("version", VERSION, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("args", TEXT, nullable=False),            # JSON object of str -> str
    sa.Column("settings", TEXT, nullable=False),        # JSON object of str -> str
    sa.Column("priority", sa.Double, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("start_time", sa.Double, nullable=True),
    sa.Column("end_time", sa.Double, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("node", sa.String(255), nullable=True),
    sa.Column("pages", sa.BigInteger, nullable=False, default=0),
    sa.Column("results", sa.BigInteger, nullable=False, default=0),
    sa.Column("errors", sa.BigInteger, nullable=False, default=0),
    sa.Column("cancel_requested", sa.Double, nullable=True),
    sa.Column("events", TEXT, nullable=False),
    **MYSQL_TABLE,
)
_j = JOBS.c
sa.Index("ix_spiderflow_job_status", _j.status, _j.project)
sa.Index("ix_spiderflow_job_project", _j.project, _j.spider, _j.end_time)
# only cancelled jobs have cancel_requested, so cancelled_since() reads a handful of index entries
sa.Index("ix_spiderflow_job_cancel", _j.cancel_requested)

VERSIONS = sa.Table(
    "spiderflow_version", METADATA,
    sa.Column("project", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("script", LONGTEXT, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    **MYSQL_TABLE,
)
_v = VERSIONS.c


def validate_jobid(jobid: object) -> str:
    """Return *jobid* if it is 1-64 of ``[A-Za-z0-9_.-]`` (and not ``.`` or ``..``), else raise ConfigError."""
    if not isinstance(jobid, str) or not _JOBID.fullmatch(jobid) or jobid in (".", ".."):
        raise ConfigError(f"invalid job id {jobid!r}: use 1-{MAX_JOBID} letters, digits, '_', '.' or '-'")
    return jobid


def max_running(max_proc: int, max_proc_per_cpu: int = 4, cpus: int | None = None) -> int:
    """How many jobs may run at once in the cluster: *max_proc*, or (0) ``max_proc_per_cpu`` × CPUs, as scrapyd."""
    if max_proc > 0:
        return max_proc
    if cpus is None:
        cpus = os.cpu_count() or 1
    return max(1, cpus * max_proc_per_cpu)


class JobDB(BaseDB):
    """Jobs by id and project versions; written by the API, the CLI and the scheduler."""

    role = "jobdb"
    schema_version = 1
    tables = (JOBS, VERSIONS)

    # -- jobs: written by the API and the CLI --------------------------------------------------
    def schedule(self, project: str, spider: str, *, jobid: str | None = None, args: dict[str, str] | None = None,
                 settings: dict[str, str] | None = None, priority: float = 0.0, version: str | None = None,
                 now: float | None = None) -> dict[str, Any]:
        """Add a pending job and return it; ConfigError (a ValueError) on a bad or taken *jobid*."""
        validate_project_name(project)
        jobid = uuid.uuid4().hex if jobid is None else validate_jobid(jobid)
        if not isinstance(spider, str) or not spider or len(spider) > MAX_SPIDER or not spider.isprintable():
            raise ConfigError(f"invalid spider name {spider!r}")
        if version is not None:
            _check_version(version)
        try:
            priority = float(priority)
        except (TypeError, ValueError):
            raise ConfigError(f"priority must be a number, not {priority!r}") from None
        if not math.isfinite(priority):
            raise ConfigError(f"priority must be a finite number, not {priority!r}")
        row = {
            "id": jobid, "project": project, "spider": spider, "version": version, "status": PENDING,
            "outcome": None, "args": _strmap(args, "args"), "settings": _strmap(settings, "settings"),
            "priority": priority, "created": float(time.time() if now is None else now), "start_time": None,
            "end_time": None, "pid": None, "node": None, "pages": 0, "results": 0, "errors": 0,
            "cancel_requested": None, "events": "",
        }
        with self._write("schedule") as conn:
            if conn.execute(sa.select(_j.id).where(_j.id == jobid)).first() is not None:
                raise ConfigError(f"job id {jobid!r} is taken; choose another")
            conn.execute(JOBS.insert(), row)
        return _job(row)

    def request_cancel(self, jobid: str, now: float | None = None) -> str | None:
        """Cancel a job; returns its state before (None: no such job).

        A pending job is finished at once (outcome ``cancelled``); a running one gets
        ``cancel_requested`` (the scheduler ends it); a finished one is left alone.
        """
        if not _is_id(jobid):
            return None
        now = time.time() if now is None else now
        with self._write("cancel") as conn:
            row = conn.execute(self._locked(sa.select(_j.status, _j.cancel_requested).where(_j.id == jobid))).first()
            if row is None:
                return None
            status, requested = row
            if status == PENDING:
                conn.execute(JOBS.update().where(_j.id == jobid, _j.status == PENDING).values(
                    status=FINISHED, outcome=CANCELLED, end_time=now, cancel_requested=now))
            elif status == RUNNING and requested is None:
                conn.execute(JOBS.update().where(_j.id == jobid, _j.status == RUNNING).values(cancel_requested=now))
            return status

    # -- jobs: written by the scheduler ---------------------------------------------------------
    def start(self, jobid: str, *, now: float, pid: int | None, node: str | None) -> bool:
        """pending → running; False if the job is not pending (cancelled meanwhile) or another
        job of its project is running."""
        if not _is_id(jobid):
            return False
        with self._write("start") as conn:
            project = conn.execute(self._locked(sa.select(_j.project).where(_j.id == jobid, _j.status == PENDING))
                                   ).scalar()
            if project is None:
                return False
            busy = conn.execute(sa.select(_j.id).where(_j.project == project, _j.status == RUNNING).limit(1)).first()
            if busy is not None:
                return False
            return conn.execute(JOBS.update().where(_j.id == jobid, _j.status == PENDING).values(
                status=RUNNING, start_time=now, pid=pid, node=node)).rowcount > 0

    def finish(self, jobid: str, outcome: str, *, now: float, pages: int | None = None, results: int | None = None,
               errors: int | None = None, keep: int | None = None) -> bool:
        """running → finished with *outcome*; False if the job was not running. With *keep*,
        then :meth:`trim` to that many finished jobs."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown job outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
        values: dict[str, Any] = {"status": FINISHED, "outcome": outcome, "end_time": now}
        values.update(_counts(pages, results, errors))
        if outcome == CANCELLED:
            values["cancel_requested"] = sa.func.coalesce(_j.cancel_requested, now)
        if not _is_id(jobid):
            return False
        with self._write("finish") as conn:
            done = conn.execute(JOBS.update().where(_j.id == jobid, _j.status == RUNNING).values(values)).rowcount > 0
        if done and keep is not None:
            self.trim(keep)
        return done

    def update_counts(self, jobid: str, pages: int, results: int, errors: int) -> None:
        """Set a job's counts (pages fetched, results, errors)."""
        if not _is_id(jobid):
            return
        with self._write("update counts") as conn:
            conn.execute(JOBS.update().where(_j.id == jobid).values(_counts(pages, results, errors)))

    def add_event(self, jobid: str, line: str, now: float | None = None) -> None:
        """Append a timestamped line to the job's own log (the last :data:`EVENT_LINES` are kept)."""
        if not _is_id(jobid):
            return
        stamp = format_time(time.time() if now is None else now)
        text = str(line).encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
        new = [f"{stamp} {part[:EVENT_LINE_CHARS]}" for part in text.splitlines() or [""]]
        with self._write("add event") as conn:
            old = conn.execute(self._locked(sa.select(_j.events).where(_j.id == jobid))).scalar()
            if old is None:
                return
            lines = (old.split("\n") if old else []) + new
            conn.execute(JOBS.update().where(_j.id == jobid).values(events="\n".join(lines[-EVENT_LINES:])))

    # -- read -----------------------------------------------------------------------------------
    def get(self, jobid: str) -> dict[str, Any] | None:
        if not _is_id(jobid):
            return None
        with self._read("get") as conn:
            row = conn.execute(sa.select(JOBS).where(_j.id == jobid)).mappings().first()
        return None if row is None else _job(row)

    def list(self, project: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Jobs (of *project*, in *status*): pending by priority (highest first) then age,
        running by start time, finished newest first; without *status* in that order."""
        if status is not None and status not in STATES:
            raise ValueError(f"unknown job status {status!r}; known: {', '.join(STATES)}")
        out: list[dict[str, Any]] = []
        if project is not None and not _is_name(project):
            return out
        with self._read("list") as conn:
            for state in (status,) if status else STATES:
                query = sa.select(JOBS).where(_j.status == state)
                if project is not None:
                    query = query.where(_j.project == project)
                out.extend(_job(r) for r in conn.execute(query.order_by(*_ORDER[state])).mappings())
        return out

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "running": n, "finished": n}`` of the whole cluster."""
        with self._read("counts") as conn:
            rows = conn.execute(sa.select(_j.status, sa.func.count()).group_by(_j.status)).all()
        found = dict.fromkeys(STATES, 0)
        found.update({status: int(n) for status, n in rows if status in found})
        return found

    def startable(self, limit: int) -> list[dict[str, Any]]:
        """The pending jobs to start now, in order: at most one per project, none of a project
        with a running job, and no more than *limit* running in all (see :func:`max_running`)."""
        with self._read("startable") as conn:
            running = conn.execute(sa.select(_j.project).where(_j.status == RUNNING)).scalars().all()
            rows = conn.execute(sa.select(JOBS).where(_j.status == PENDING).order_by(*_ORDER[PENDING])).mappings().all()
        room = limit - len(running)
        busy = set(running)
        out = []
        for row in rows:
            if room <= 0:
                break
            if row["project"] in busy:
                continue
            busy.add(row["project"])
            out.append(_job(row))
            room -= 1
        return out

    def cancelled_since(self, since: float) -> set[str]:
        """Ids of the jobs cancelled at or after *since*, and of the running jobs asked to cancel."""
        query = sa.select(_j.id).where(
            _j.cancel_requested.is_not(None),
            (_j.status == RUNNING) | ((_j.outcome == CANCELLED) & (_j.end_time >= since)))
        with self._read("cancelled since") as conn:
            return set(conn.execute(query).scalars())

    def kept(self, job: dict[str, Any], jobs_to_keep: int) -> bool:
        """Whether *job*'s log and items are served: it is pending or running, or one of the
        *jobs_to_keep* latest finished jobs of its (project, spider)."""
        if job["status"] != FINISHED:
            return True
        if jobs_to_keep <= 0:
            return False
        with self._read("kept") as conn:
            newest = conn.execute(
                sa.select(_j.id).where(_j.project == job["project"], _j.spider == job["spider"],
                                       _j.status == FINISHED)
                .order_by(*_ORDER[FINISHED]).limit(jobs_to_keep)).scalars().all()
        return job["id"] in newest

    # -- housekeeping ---------------------------------------------------------------------------
    def trim(self, finished_to_keep: int) -> int:
        """Delete the finished jobs beyond the newest *finished_to_keep*; returns how many went."""
        beyond = (sa.select(_j.id).where(_j.status == FINISHED).order_by(*_ORDER[FINISHED])
                  .limit(_FAR).offset(max(0, finished_to_keep)))
        with self._read("trim") as conn:     # most calls find nothing to delete: no write transaction then
            if conn.execute(beyond.limit(1)).first() is None:
                return 0
        with self._write("trim") as conn:
            ids = conn.execute(beyond).scalars().all()
            deleted = 0
            for chunk in chunked(list(ids), 500):
                deleted += conn.execute(JOBS.delete().where(_j.id.in_(chunk), _j.status == FINISHED)).rowcount
        return max(0, deleted)

    # -- versions -------------------------------------------------------------------------------
    def add_version(self, project: str, version: str, script: str, now: float | None = None) -> None:
        """Store *script* as *version* of *project* (replacing that version; it becomes the latest)."""
        validate_project_name(project)
        _check_version(version)
        if not isinstance(script, str):
            raise ConfigError("a version's script must be text")
        now = time.time() if now is None else now
        with self._write("add version") as conn:
            conn.execute(VERSIONS.delete().where(_v.project == project, _v.version == version))
            conn.execute(VERSIONS.insert().values(project=project, version=version, script=script, created=now))

    def list_versions(self, project: str) -> list[str]:
        """The versions of *project*, oldest first."""
        if not _is_name(project):
            return []
        with self._read("list versions") as conn:
            return list(conn.execute(sa.select(_v.version).where(_v.project == project)
                                     .order_by(_v.created, _v.version)).scalars())

    def version_projects(self) -> list[str]:
        """The projects that have versions, by name."""
        with self._read("version projects") as conn:
            return list(conn.execute(sa.select(_v.project).distinct().order_by(_v.project)).scalars())

    def get_version(self, project: str, version: str | None = None) -> dict[str, Any] | None:
        """A version of *project* (None: the latest) with keys project, version, script, created."""
        if not _is_name(project):
            return None
        query = sa.select(VERSIONS).where(_v.project == project)
        if version is None:
            query = query.order_by(_v.created.desc(), _v.version.desc()).limit(1)
        else:
            query = query.where(_v.version == version)
        with self._read("get version") as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else {k: row[k] for k in ("project", "version", "script", "created")}

    def delete_version(self, project: str, version: str) -> bool:
        if not _is_name(project):
            return False
        with self._write("delete version") as conn:
            return conn.execute(VERSIONS.delete().where(_v.project == project, _v.version == version)).rowcount > 0

    def delete_project(self, project: str) -> int:
        """Delete the versions and jobs of *project*; returns how many rows went."""
        if not _is_name(project):
            return 0
        with self._write("delete project") as conn:
            gone = conn.execute(VERSIONS.delete().where(_v.project == project)).rowcount
            gone += conn.execute(JOBS.delete().where(_j.project == project)).rowcount
        return max(0, gone)

    # -- helpers --------------------------------------------------------------------------------
    def _locked(self, query: sa.Select) -> sa.Select:
        # SQLite's write transaction (BEGIN IMMEDIATE) already holds the database
        return query if self.dialect == "sqlite" else query.with_for_update()


_FAR = 2 ** 62       # LIMIT for an OFFSET without a limit (MySQL needs one)
_ORDER = {
    PENDING: (_j.priority.desc(), _j.created, _j.id),
    RUNNING: (_j.start_time, _j.id),
    FINISHED: (_j.end_time.desc(), _j.id.desc()),
}


def format_time(ts: float) -> str:
    """A local time as the job log writes it: ``2024-05-01 12:00:00.123``."""
    ms = round((ts % 1) * 1000)
    whole = int(ts)
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole)) + f".{ms:03d}"


def _is_id(jobid: object) -> bool:
    """Whether *jobid* may name a job (anything else names none; MySQL's ASCII column could not compare it)."""
    return isinstance(jobid, str) and _JOBID.fullmatch(jobid) is not None


def _is_name(project: object) -> bool:
    try:
        validate_project_name(project)
    except InvalidProjectName:
        return False
    return True


def _check_version(version: object) -> None:
    if not isinstance(version, str) or not version or len(version) > MAX_VERSION or not version.isprintable():
        raise ConfigError(f"invalid version {version!r}: 1-{MAX_VERSION} printable characters")


def _strmap(value: dict[str, str] | None, what: str) -> str:
    value = value or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"job {what} must map names to strings")
    for key, text in value.items():
        if not key or not _plain_text(key) or not _plain_text(text):
            raise ConfigError(f"job {what}: {key!r} is not a usable name and value "
                              "(an empty name, a NUL character or text that is not valid Unicode)")
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _plain_text(text: str) -> bool:
    """Whether every database can store *text*: valid Unicode (no lone surrogate), no NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _counts(pages: int | None, results: int | None, errors: int | None) -> dict[str, int]:
    out = {}
    for name, value in (("pages", pages), ("results", results), ("errors", errors)):
        if value is not None:
            out[name] = max(0, int(value))
    return out


def _job(row: Any) -> dict[str, Any]:
    job = {f: row[f] for f in FIELDS}
    for name in ("args", "settings"):
        raw = job[name]
        try:
            job[name] = json.loads(raw) if raw else {}
        except ValueError:
            job[name] = {}
    job["events"] = job["events"] or ""
    for name in ("pages", "results", "errors"):
        job[name] = int(job[name] or 0)
    return job


__all__ = ["CANCELLED", "EVENT_LINES", "FIELDS", "FINISHED", "JOBS", "MAX_JOBID", "OUTCOMES", "PENDING", "RUNNING",
           "STATES", "VERSIONS", "JobDB", "format_time", "max_running", "validate_jobid"]
