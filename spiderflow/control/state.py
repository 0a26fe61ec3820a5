"""controldb: what remote control changed for the whole cluster, kept in the shared database.

It lives in the projectdb database, the one every node of a cluster shares::

    connect_controldb(settings.db_url("projectdb"))

Two tables: the **revokes** (``spiderflow_revoke``: one row per ``control revoke`` entry,
with the time it was revoked and when it expires) and the runtime **time limits** of
projects (``spiderflow_time_limit``). A revoke entry is ``(project, taskid)``; ``*`` stands
for any: ``("*", taskid)`` is that task id in every project, ``(project, "*")`` every task of
the project accepted before the revoke (``task.updatetime <= revoked_at``). So revokes
survive restarts without a state file per node (Celery's ``--statedb``): a starting node
reads them here.

:class:`ControlWatch` is what a node knows of them: read at start and then every
:data:`REFRESH` seconds by a daemon thread of its own (only the rows added since the last
read), and updated at once by a broadcast ``revoke``; a database outage keeps the last
answer and is logged once (:class:`spiderflow.storage.Poller`, as for :class:`spiderflow.jobs.watch.JobWatch`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..exceptions import ConfigError
from ..message import validate_project_name
from ..storage import Poller
from ..storage.base import (
    MAX_TASKID,
    METADATA,
    MYSQL_TABLE,
    NAME,
    TASKID,
    BaseDB,
    chunked,
)

logger = logging.getLogger(__name__)

#: seconds between two reads of the revokes and time limits
REFRESH = 1.0
#: stands for "any project" or "any task" in a revoke entry
ANY = "*"
#: revokes one command may carry, and that a node keeps
MAX_REVOKES = 10_000
KEEP_REVOKES = 100_000

REVOKES = sa.Table(
    "spiderflow_revoke", METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("project", NAME, nullable=False),
    sa.Column("taskid", TASKID, nullable=False),
    sa.Column("terminate", sa.Boolean, nullable=False, default=False),
    sa.Column("revoked_at", sa.Double, nullable=False),
    sa.Column("expires", sa.Double, nullable=False),
    **MYSQL_TABLE,
)
sa.Index("ix_spiderflow_revoke_expires", REVOKES.c.expires)

TIME_LIMITS = sa.Table(
    "spiderflow_time_limit", METADATA,
    sa.Column("project", NAME, primary_key=True),
    sa.Column("seconds", sa.Double, nullable=False),
    sa.Column("updated", sa.Double, nullable=False),
    **MYSQL_TABLE,
)


@dataclass(slots=True, frozen=True)
class Revoke:
    """One revoke entry (see the module docstring)."""

    project: str
    taskid: str
    terminate: bool
    revoked_at: float
    expires: float

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "taskid": self.taskid, "terminate": self.terminate,
                "revoked_at": self.revoked_at, "expires": self.expires}

    @classmethod
    def from_dict(cls, data: Any) -> Revoke:
        """A checked entry; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a revoke entry is an object, not {type(data).__name__}")
        project, taskid = data.get("project"), data.get("taskid")
        if project != ANY:
            validate_project_name(project)
        if not isinstance(taskid, str) or not taskid or len(taskid) > MAX_TASKID or not taskid.isprintable():
            raise ValueError(f"a task id is 1-{MAX_TASKID} printable characters, not {taskid!r}")
        if project == ANY and taskid == ANY:
            raise ValueError("revoke names a task id, a project, or both")
        terminate = data.get("terminate", False)
        if not isinstance(terminate, bool):
            raise ValueError(f"terminate is true or false, not {terminate!r}")
        times = []
        for key in ("revoked_at", "expires"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key} is a time in seconds, not {value!r}")
            times.append(float(value))
        return cls(project, taskid, terminate, times[0], times[1])

    def matches(self, project: str, taskid: str, updatetime: float) -> bool:
        if self.taskid == ANY:
            return project == self.project and updatetime <= self.revoked_at
        return taskid == self.taskid and self.project in (ANY, project)

    def describe(self) -> str:
        if self.taskid == ANY:
            return f"every task of {self.project}"
        return self.taskid if self.project == ANY else f"{self.project}:{self.taskid}"


def revokes_for(taskids: Iterable[str], project: str | None, *, terminate: bool = False,
                expires: float = 3 * 3600.0, now: float | None = None) -> list[Revoke]:
    """The entries of ``control revoke``: each of *taskids* (in *project*, else in any), or with
    no task id every task of *project*; ValueError for a bad id or name."""
    now = time.time() if now is None else now
    taskids = list(taskids)
    if not taskids and project is None:
        raise ValueError("give task ids, --project, or both")
    if len(taskids) > MAX_REVOKES:
        raise ValueError(f"at most {MAX_REVOKES} task ids at once, not {len(taskids)}")
    if not math.isfinite(expires) or expires <= 0:
        raise ValueError(f"expires is a number of seconds above 0, not {expires!r}")
    base = {"project": project or ANY, "terminate": terminate, "revoked_at": now, "expires": now + expires}
    return [Revoke.from_dict({**base, "taskid": t}) for t in (taskids or [ANY])]


class ControlDB(BaseDB):
    """Revokes and runtime time limits; written by ``spiderflow control`` and the web UI, read by every node."""

    role = "controldb"
    schema_version = 1
    tables = (REVOKES, TIME_LIMITS)

    def add_revokes(self, entries: Iterable[Revoke], now: float | None = None) -> int:
        """Store *entries* (and delete the expired ones); returns how many were stored."""
        now = time.time() if now is None else now
        rows = [{**e.to_dict()} for e in entries]
        with self._write("add_revokes") as conn:
            conn.execute(REVOKES.delete().where(REVOKES.c.expires < now))
            for chunk in chunked(rows, 500):
                conn.execute(REVOKES.insert(), chunk)
        return len(rows)

    def revokes_after(self, after: int = 0, now: float | None = None,
                      limit: int = KEEP_REVOKES) -> list[tuple[int, Revoke]]:
        """``(id, entry)`` of the unexpired revokes stored after row *after*, oldest first."""
        now = time.time() if now is None else now
        c = REVOKES.c
        query = (sa.select(c.id, c.project, c.taskid, c.terminate, c.revoked_at, c.expires)
                 .where(c.id > after, c.expires >= now).order_by(c.id).limit(limit))
        with self._read("revokes_after") as conn:
            return [(row.id, Revoke(row.project, row.taskid, bool(row.terminate), row.revoked_at, row.expires))
                    for row in conn.execute(query)]

    def last_revoke_id(self) -> int:
        with self._read("last_revoke_id") as conn:
            return conn.execute(sa.select(sa.func.max(REVOKES.c.id))).scalar() or 0

    def set_time_limit(self, project: str, seconds: float | None, now: float | None = None) -> None:
        """The time limit of *project*'s callbacks, over the script's and the processor's (None: remove it)."""
        validate_project_name(project)
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or not 0 < seconds <= 86400):
            raise ConfigError(f"a time limit is a number of seconds above 0 and at most a day, not {seconds!r}")
        now = time.time() if now is None else now
        t = TIME_LIMITS
        with self._write("set_time_limit") as conn:
            conn.execute(t.delete().where(t.c.project == project))
            if seconds is not None:
                conn.execute(t.insert().values(project=project, seconds=float(seconds), updated=now))

    def time_limits(self) -> dict[str, float]:
        with self._read("time_limits") as conn:
            return {row.project: row.seconds for row in conn.execute(sa.select(TIME_LIMITS))}


def connect_controldb(url: str) -> ControlDB:
    """The revokes and time limits; they live in the projectdb database (``settings.db_url("projectdb")``)."""
    from ..storage import _connect

    return _connect(ControlDB, url)


class ControlWatch(Poller):
    """What this node knows of revokes and time limits (see the module docstring).

    ``revoked(task)`` is on the hot path of every fetch, process and dispatch: with no revoke
    in force it is one attribute test. The sets are replaced, never changed in place, so
    readers on other threads need no lock.
    """

    name = "control-watch"

    def __init__(self, db: Any, clock: Callable[[], float] = time.time, refresh: float = REFRESH):
        super().__init__(refresh)
        self.db = db
        self._clock = clock
        self.any = False
        self._entries: dict[tuple[str, str], Revoke] = {}   # (project, taskid) -> the latest entry
        self._ids: frozenset[tuple[str, str]] = frozenset()
        self._projects: dict[str, float] = {}               # project -> revoked_at of "every task"
        self._limits: dict[str, float] = {}
        self._last_id = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self._logged: set[tuple[str, str]] = set()

    # -- asked by the components ------------------------------------------------------------------
    def revoked(self, task: Any) -> bool:
        """Whether *task* (a Task) is revoked."""
        if not self.any:
            return False
        taskid = task.taskid
        ids = self._ids
        if (task.project, taskid) in ids or (ANY, taskid) in ids:
            return True
        before = self._projects.get(task.project)
        return before is not None and (task.updatetime or 0.0) <= before

    def terminating(self, task: Any) -> bool:
        """Whether *task* is revoked by an entry that asks to terminate it."""
        if not self.revoked(task):
            return False
        return any(e.terminate and e.matches(task.project, task.taskid, task.updatetime or 0.0)
                   for e in self._candidates(task))

    def _candidates(self, task: Any) -> list[Revoke]:
        entries = self._entries
        out = [entries.get((task.project, task.taskid)), entries.get((ANY, task.taskid)),
               entries.get((task.project, ANY))]
        return [e for e in out if e is not None]

    def drop(self, what: str, task: Any) -> None:
        """Log (once per task) and count a revoked task this node will not work on."""
        self.dropped += 1
        key = (task.project, task.taskid)
        if key not in self._logged:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged.add(key)
            logger.info("%s: dropping %s:%s %s: it is revoked", what, task.project, task.taskid, task.url)

    def time_limit(self, project: str) -> float | None:
        return self._limits.get(project)

    def entries(self) -> list[Revoke]:
        now = self._clock()
        return sorted((e for e in self._entries.values() if e.expires >= now), key=lambda e: e.revoked_at)

    # -- changed by commands and the thread -----------------------------------------------------------
    def add(self, entries: Iterable[Revoke]) -> None:
        """Entries from a broadcast: in force at once (the database has them too)."""
        with self._lock:
            merged = dict(self._entries)
            for e in entries:
                old = merged.get((e.project, e.taskid))
                if old is None or e.revoked_at >= old.revoked_at:
                    merged[(e.project, e.taskid)] = e
            self._install(merged)

    def set_time_limit(self, project: str, seconds: float | None) -> None:
        limits = dict(self._limits)
        if seconds is None:
            limits.pop(project, None)
        else:
            limits[project] = float(seconds)
        self._limits = limits

    def _install(self, entries: dict[tuple[str, str], Revoke]) -> None:
        now = self._clock()
        live = {k: e for k, e in entries.items() if e.expires >= now}
        if len(live) > KEEP_REVOKES:     # the oldest go first
            live = dict(sorted(live.items(), key=lambda kv: kv[1].revoked_at)[-KEEP_REVOKES:])
        self._entries = live
        self._ids = frozenset(k for k in live if k[1] != ANY)
        self._projects = {k[0]: e.revoked_at for k, e in live.items() if k[1] == ANY}
        self.any = bool(live)

    def read(self) -> None:
        """Read what was stored since the last read (raises StorageError)."""
        rows = self.db.revokes_after(self._last_id, self._clock())
        limits = self.db.time_limits()
        with self._lock:
            merged = dict(self._entries)
            for row_id, e in rows:
                self._last_id = max(self._last_id, row_id)
                old = merged.get((e.project, e.taskid))
                if old is None or e.revoked_at >= old.revoked_at:
                    merged[(e.project, e.taskid)] = e
            self._install(merged)
        self._limits = limits

    def start(self, wait: float = 2.0) -> ControlWatch:
        """Read in a daemon thread; wait up to *wait* s for the first read (so a restarted node
        never works on a task revoked before it started)."""
        return super().start(wait)


__all__ = ["ANY", "REFRESH", "ControlDB", "ControlWatch", "Revoke", "connect_controldb", "revokes_for"]
