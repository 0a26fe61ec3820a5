"""taskdb: every task of every project, the scheduler's source of truth.

One row per (project, taskid). ``schedule``, ``fetch``, ``process`` and ``track`` are JSON
text (see :mod:`.codec`); ``priority`` and ``exetime`` are copied into columns so that
:meth:`TaskDB.load_active` pages through ACTIVE tasks in scheduling order (priority DESC,
exetime, taskid) on one index, seeking to each page's start instead of skipping rows.
Inserts skip tasks that already exist; the scheduler writes in batches (:meth:`TaskDB.write_many`:
its updates and new tasks in one transaction). On SQLite, batch writes and ``get_many``
go straight to the driver on a pooled connection, with statements compiled once.

``spiderflow_lease`` keeps the scheduler's leases: when each task in flight was dispatched
and until when its lease runs (:meth:`TaskDB.save_leases`), so that a restarted scheduler
waits for the answers of tasks still in flight instead of sending them again
(:meth:`TaskDB.leases`). A lease row is never deleted when its task is answered: a status
written after the dispatch moves the task's ``updatetime`` past ``dispatched``, which voids
it; expired rows are purged (:meth:`TaskDB.purge_leases`). The table is created, when
missing, by every open (``create_all`` checks first), so a taskdb written by an older
spiderflow gains it without a migration, and the schema version stays 1: an older
spiderflow still opens a taskdb written by this one, and ignores the table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..exceptions import StorageError
from ..message import (
    Fetch,
    Process,
    Schedule,
    Task,
    TaskStatus,
    Track,
    validate_project_name,
)
from .base import (
    MAX_TASKID,
    METADATA,
    MYSQL_TABLE,
    NAME,
    TASKID,
    TEXT,
    BaseDB,
    check_fields,
    chunked,
)
from .codec import dumps_part, loads_part

FIELDS = ("taskid", "project", "url", "status", "schedule", "fetch", "process", "track",
          "lastcrawltime", "updatetime")
PARTS = {"schedule": Schedule, "fetch": Fetch, "process": Process, "track": Track}
STATUS_CODE = {TaskStatus.ACTIVE: 1, TaskStatus.SUCCESS: 2, TaskStatus.FAILED: 3, TaskStatus.BAD: 4}
CODE_STATUS = {code: status for status, code in STATUS_CODE.items()}
IN_CHUNK = 500
_INT32 = 2 ** 31

TASKS = sa.Table(
    "spiderflow_task", METADATA,
    sa.Column("project", NAME, primary_key=True),
    sa.Column("taskid", TASKID, primary_key=True),
    sa.Column("url", TEXT, nullable=False),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("exetime", sa.Double, nullable=False),
    sa.Column("schedule", TEXT, nullable=False),
    sa.Column("fetch", TEXT, nullable=False),
    sa.Column("process", TEXT, nullable=False),
    sa.Column("track", TEXT, nullable=False),
    sa.Column("lastcrawltime", sa.Double, nullable=True),
    sa.Column("updatetime", sa.Double, nullable=False),
    **MYSQL_TABLE,
)
_c = TASKS.c
ACTIVE_INDEX = sa.Index("ix_spiderflow_task_order", _c.project, _c.status, _c.priority.desc(),
                        _c.exetime, _c.taskid)
sa.Index("ix_spiderflow_task_updatetime", _c.project, _c.updatetime)
_ORDER = (_c.priority.desc(), _c.exetime, _c.taskid)

LEASES = sa.Table(
    "spiderflow_lease", METADATA,
    sa.Column("project", NAME, primary_key=True),
    sa.Column("taskid", TASKID, primary_key=True),
    sa.Column("dispatched", sa.Double, nullable=False),
    sa.Column("deadline", sa.Double, nullable=False),
    **MYSQL_TABLE,
)
_l = LEASES.c
LEASE_CHUNK = 1000
_LEASE_COLUMNS = ("project", "taskid", "dispatched", "deadline")
_KEY_PARAMS = {"b_project": sa.bindparam("b_project"), "b_taskid": sa.bindparam("b_taskid")}


class TaskDB(BaseDB):
    """Tasks by (project, taskid)."""

    role = "taskdb"
    schema_version = 1
    tables = (TASKS, LEASES)

    def __init__(self, engine: sa.Engine):
        super().__init__(engine)
        self._insert_stmt = self._build_insert()
        self._update_stmt = (TASKS.update()
                             .where(_c.project == _KEY_PARAMS["b_project"], _c.taskid == _KEY_PARAMS["b_taskid"])
                             .values({name: sa.bindparam(name) for name in _ROW_COLUMNS})
                             .execution_options(preserve_rowcount=True))
        self._lease_stmt = self._build_lease_upsert()
        self._sqlite = self.dialect == "sqlite"
        # MySQL's drivers run an executemany of UPDATE as one statement and one round trip
        # per row: there the batch is one UPDATE ... JOIN of its rows (see _mysql_update_sql)
        self._mysql_join = self.dialect in ("mysql", "mariadb") and engine.dialect.paramstyle in ("format", "pyformat")
        if self._sqlite:
            self._insert_plan = _DriverPlan(self._insert_stmt, engine.dialect, _INSERT_COLUMNS)
            self._update_plan = _DriverPlan(self._update_stmt, engine.dialect, _UPDATE_COLUMNS)

    def _build_insert(self) -> sa.Insert:
        if self.dialect == "postgresql":
            stmt = postgresql.insert(TASKS).on_conflict_do_nothing(index_elements=[_c.project, _c.taskid])
        elif self.dialect == "sqlite":
            stmt = sqlite.insert(TASKS).on_conflict_do_nothing()
        elif self.dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(TASKS).prefix_with("IGNORE")
        else:
            stmt = TASKS.insert()
        # the drivers sum executemany's rowcount: the number of rows actually inserted
        return stmt.execution_options(preserve_rowcount=True)

    def _build_lease_upsert(self) -> Any:
        """The upsert of lease rows for this dialect (None: delete and insert, see :meth:`save_leases`)."""
        if self.dialect in ("postgresql", "sqlite"):
            stmt = (postgresql if self.dialect == "postgresql" else sqlite).insert(LEASES)
            return stmt.on_conflict_do_update(index_elements=[_l.project, _l.taskid],
                                              set_={"dispatched": stmt.excluded.dispatched,
                                                    "deadline": stmt.excluded.deadline})
        if self.dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(LEASES)
            return stmt.on_duplicate_key_update(dispatched=stmt.inserted.dispatched,
                                                deadline=stmt.inserted.deadline)
        return None

    # -- writes -------------------------------------------------------------------
    def insert(self, task: Task) -> bool:
        """Insert one task; False (and no change) if it already exists."""
        return self.insert_many([task]) == 1

    def insert_many(self, tasks: Iterable[Task]) -> int:
        """Insert tasks in one transaction; existing (project, taskid) rows are left alone.

        Returns how many rows were inserted.
        """
        return self.write_many(inserts=tasks)[0]

    def update(self, task: Task) -> bool:
        """Write every column of *task*; False if there is no such task."""
        return self.update_many([task]) == 1

    def update_many(self, tasks: Iterable[Task]) -> int:
        """Write every column of each task by (project, taskid), in one transaction.

        Returns how many rows matched.
        """
        return self.write_many(updates=tasks)[1]

    def write_many(self, inserts: Iterable[Task] = (), updates: Iterable[Task] = ()) -> tuple[int, int]:
        """:meth:`update_many` of *updates*, then :meth:`insert_many` of *inserts*, in one transaction.

        Returns (rows inserted, rows matched by the updates). Nothing is written unless
        every task can be.
        """
        ins = [_task_values(t) for t in inserts]
        rows = [_task_values(t) for t in updates]
        if not ins and not rows:
            return 0, 0
        op = "write_many" if ins and rows else "insert_many" if ins else "update_many"
        # the update's parameters: its columns, then its key (_UPDATE_COLUMNS order)
        ups = [] if self._mysql_join else [values[2:] + values[:2] for values in rows]
        if self._sqlite:
            # straight to the driver: the per-row parameter handling of Connection.execute
            # and the per-transaction set-up cost more than the statements themselves
            with self._sqlite_transaction(op, write=True) as cursor:
                matched = self._update_plan.run(cursor, ups) if ups else 0
                return (self._insert_plan.run(cursor, ins) if ins else 0), matched
        with self._write(op) as conn:
            if self._mysql_join:
                matched = self._mysql_update(conn, rows) if rows else 0
            else:
                matched = conn.execute(self._update_stmt, _dicts(_UPDATE_COLUMNS, ups)).rowcount if ups else 0
            return (conn.execute(self._insert_stmt, _dicts(_INSERT_COLUMNS, ins)).rowcount if ins else 0), matched

    def _mysql_update(self, conn: sa.Connection, rows: list[tuple]) -> int:
        """Update the tasks of *rows* (``_INSERT_COLUMNS`` order) with one ``UPDATE ... JOIN`` per
        chunk; returns the rows matched (the MySQL dialects connect with CLIENT.FOUND_ROWS).

        Where a batch names a task twice, the last row counts, as in an executemany."""
        last = {row[:2]: row for row in rows}      # (project, taskid): its last row
        matched = 0
        chunk: list[tuple] = []
        size = 0
        for row in last.values():
            chunk.append(row)
            size += sum(len(v) for v in row if isinstance(v, str))
            if len(chunk) >= _MYSQL_UPDATE_ROWS or size >= _MYSQL_UPDATE_BYTES:
                matched += self._mysql_update_chunk(conn, chunk)
                chunk, size = [], 0
        if chunk:
            matched += self._mysql_update_chunk(conn, chunk)
        return matched

    @staticmethod
    def _mysql_update_chunk(conn: sa.Connection, chunk: list[tuple]) -> int:
        params = tuple(value for row in chunk for value in row)
        return conn.exec_driver_sql(_mysql_update_sql(len(chunk)), params).rowcount

    def drop(self, project: str) -> int:
        """Delete every task of *project* (and its leases); returns how many tasks."""
        validate_project_name(project)
        with self._write("drop") as conn:
            conn.execute(LEASES.delete().where(_l.project == project))
            return conn.execute(TASKS.delete().where(_c.project == project)).rowcount

    # -- leases ---------------------------------------------------------------------
    def save_leases(self, rows: Iterable[tuple[str, str, float, float]]) -> int:
        """Store leases, ``(project, taskid, dispatched, deadline)`` rows, in one transaction:
        the task was dispatched at *dispatched*, and is in flight until *deadline*. A task's
        earlier lease is overwritten. Returns how many rows were given.

        The scheduler writes the leases of a pass (all its projects) in one call. The task
        rows are not touched: a lease is valid only while ``dispatched >= updatetime`` (see
        :meth:`leases`).
        """
        values: dict[tuple[str, str], tuple[str, str, float, float]] = {}
        for project, taskid, dispatched, deadline in rows:
            validate_project_name(project)
            if not isinstance(taskid, str) or not taskid or len(taskid) > MAX_TASKID:
                raise StorageError(f"task id {taskid!r:.80} of project {project!r} must be a string of "
                                   f"1-{MAX_TASKID} characters")
            try:
                values[(project, taskid)] = (project, taskid, float(dispatched), float(deadline))
            except (TypeError, ValueError) as exc:
                raise StorageError(f"cannot store the lease of task {project}/{taskid}: {exc}") from exc
        rows = list(values.values())      # one row per task: an upsert batch must not name a key twice
        if not rows:
            return 0
        if self._sqlite:    # as write_many: straight to the driver, on the connection it holds
            with self._sqlite_transaction("save_leases", write=True) as cursor:
                for chunk in chunked(rows, LEASE_CHUNK):
                    cursor.executemany(_SQLITE_LEASE_SQL, chunk)
            return len(rows)
        with self._write("save_leases") as conn:
            for chunk in chunked(rows, LEASE_CHUNK):
                params = _dicts(_LEASE_COLUMNS, chunk)
                if self._lease_stmt is None:    # no upsert known for this dialect: delete, then insert
                    conn.execute(LEASES.delete().where(_l.project == sa.bindparam("b_project"),
                                                       _l.taskid == sa.bindparam("b_taskid")),
                                 [{"b_project": row[0], "b_taskid": row[1]} for row in chunk])
                    conn.execute(LEASES.insert(), params)
                else:
                    conn.execute(self._lease_stmt, params)
        return len(rows)

    def leases(self, project: str, now: float) -> list[tuple[Task, float]]:
        """The ACTIVE tasks of *project* under a lease still valid at *now*, with its deadline.

        A lease is valid while its deadline is after *now* and nothing was written to its
        task after the dispatch (``dispatched >= updatetime``): a status, a retry, a restart
        or a cancel writes ``updatetime`` and so voids it. The tasks are whole, as
        :meth:`load_active` returns them.
        """
        validate_project_name(project)
        query = (sa.select(TASKS, _l.deadline)
                 .join(LEASES, sa.and_(_l.project == _c.project, _l.taskid == _c.taskid))
                 .where(_l.project == project, _c.project == project,
                        _c.status == STATUS_CODE[TaskStatus.ACTIVE],
                        _l.deadline > float(now), _l.dispatched >= _c.updatetime)
                 .order_by(_l.deadline, _c.taskid))
        with self._read("leases") as conn:
            rows = conn.execute(query).all()
        return [(_row_task(row), row.deadline) for row in rows]

    def purge_leases(self, before: float) -> int:
        """Delete the leases whose deadline is before *before* (of every project); returns how many."""
        with self._write("purge_leases") as conn:
            return conn.execute(LEASES.delete().where(_l.deadline < float(before))).rowcount

    # -- reads ----------------------------------------------------------------------
    def get(self, project: str, taskid: str, fields: Iterable[str] | None = None) -> dict | None:
        """The task as ``Task.to_dict()`` restricted to *fields* (taskid and project always)."""
        validate_project_name(project)
        cols = _columns(fields)
        with self._read("get") as conn:
            row = conn.execute(sa.select(*cols).where(_c.project == project, _c.taskid == taskid)).first()
        return _row_dict(row, cols) if row is not None else None

    def get_task(self, project: str, taskid: str) -> Task | None:
        validate_project_name(project)
        with self._read("get_task") as conn:
            row = conn.execute(sa.select(TASKS).where(_c.project == project, _c.taskid == taskid)).first()
        return _row_task(row) if row is not None else None

    def get_many(self, project: str, taskids: Iterable[str],
                 fields: Iterable[str] | None = None) -> dict[str, dict]:
        """``{taskid: dict}`` for the tasks that exist (see :meth:`get`)."""
        validate_project_name(project)
        cols = _columns(fields)
        ids = list(dict.fromkeys(taskids))
        out: dict[str, dict] = {}
        if not ids:
            return out
        if self._sqlite:     # the scheduler's dedupe lookup: straight to the driver, as writes
            names = tuple(col.name for col in cols)
            with self._sqlite_transaction("get_many", write=False) as cursor:
                for chunk in chunked(ids, IN_CHUNK):
                    for row in cursor.execute(_sqlite_get_many_sql(names, len(chunk)), (project, *chunk)):
                        out[row[0]] = _row_dict(row, cols)
            return out
        with self._read("get_many") as conn:
            for chunk in chunked(ids, IN_CHUNK):
                query = sa.select(*cols).where(_c.project == project, _c.taskid.in_(chunk))
                for row in conn.execute(query):
                    out[row.taskid] = _row_dict(row, cols)
        return out

    @staticmethod
    def order_key(task: Task) -> tuple[int, float, str]:
        """The position of *task* in scheduling order, for ``load_active(after=...)``."""
        return (task.schedule.priority, task.schedule.exetime, task.taskid)

    def load_active(self, project: str, limit: int,
                    after: tuple[int, float, str] | None = None) -> list[Task]:
        """Up to *limit* ACTIVE tasks in scheduling order, starting after the key *after*."""
        validate_project_name(project)
        out: list = []
        with self._read("load_active") as conn:
            for query in active_queries(project, after):
                if len(out) >= limit:
                    break
                out.extend(conn.execute(query.limit(limit - len(out))).all())
        return [_row_task(row) for row in out]

    def status_count(self, project: str) -> dict[TaskStatus, int]:
        """``{status: count}`` of one project, every status present."""
        validate_project_name(project)
        query = sa.select(_c.status, sa.func.count()).where(_c.project == project).group_by(_c.status)
        counts = dict.fromkeys(TaskStatus, 0)
        with self._read("status_count") as conn:
            for code, n in conn.execute(query):
                counts[CODE_STATUS[code]] = n
        return counts

    def status_counts(self, on_snapshot: Callable[[], None] | None = None) -> dict[str, dict[TaskStatus, int]]:
        """``{project: {status: count}}`` of every project.

        *on_snapshot*: called once the count's snapshot is taken (a repeatable-read
        transaction that has read a row), before the count itself: the counts are those of
        taskdb at that moment, whatever is written while they are read.
        """
        query = sa.select(_c.project, _c.status, sa.func.count()).group_by(_c.project, _c.status)
        out: dict[str, dict[TaskStatus, int]] = {}
        with self._read("status_counts") as conn:
            if on_snapshot is not None:
                if self.dialect in ("postgresql", "mysql", "mariadb"):
                    conn.execution_options(isolation_level="REPEATABLE READ")
                conn.execute(sa.select(_c.project).limit(1)).all()
                on_snapshot()
            for project, code, n in conn.execute(query):
                out.setdefault(project, dict.fromkeys(TaskStatus, 0))[CODE_STATUS[code]] = n
        return out

    def count(self, project: str, status: TaskStatus | str | None = None) -> int:
        validate_project_name(project)
        query = sa.select(sa.func.count()).select_from(TASKS).where(_c.project == project)
        if status is not None:
            query = query.where(_c.status == STATUS_CODE[TaskStatus(status)])
        with self._read("count") as conn:
            return conn.execute(query).scalar_one()

    def projects(self) -> set[str]:
        """Names of the projects that have tasks."""
        with self._read("projects") as conn:
            return set(conn.execute(sa.select(_c.project).distinct()).scalars())

    def select(self, project: str | None = None, status: TaskStatus | str | None = None,
               offset: int = 0, limit: int = 100, fields: Iterable[str] | None = None) -> list[dict]:
        """Task dicts, newest updatetime first (for the web UI's task list)."""
        cols = _columns(fields)
        query = sa.select(*cols)
        if project is not None:
            query = query.where(_c.project == validate_project_name(project))
        if status is not None:
            query = query.where(_c.status == STATUS_CODE[TaskStatus(status)])
        query = query.order_by(_c.updatetime.desc(), _c.project, _c.taskid).offset(offset).limit(limit)
        with self._read("select") as conn:
            return [_row_dict(row, cols) for row in conn.execute(query)]


def active_queries(project: str, after: tuple | None) -> list[sa.Select]:
    """The queries that continue scheduling order after *after*, each an index seek.

    Mixed sort directions rule out one row-value comparison, and an OR of the three cases
    would scan from the start of the project, so the rest of the priority+exetime group,
    the rest of the priority and the lower priorities are three queries run in turn.
    """
    base = sa.select(TASKS).where(_c.project == project, _c.status == STATUS_CODE[TaskStatus.ACTIVE])
    for dialect in ("mysql", "mariadb"):  # MySQL may otherwise walk the primary key
        base = base.with_hint(TASKS, f"FORCE INDEX ({ACTIVE_INDEX.name})", dialect)
    if after is None:
        return [base.order_by(*_ORDER)]
    priority, exetime, taskid = after
    return [
        base.where(_c.priority == priority, _c.exetime == exetime, _c.taskid > taskid).order_by(_c.taskid),
        base.where(_c.priority == priority, _c.exetime > exetime).order_by(_c.exetime, _c.taskid),
        base.where(_c.priority < priority).order_by(*_ORDER),
    ]


class _DriverPlan:
    """A statement compiled once for SQLite's driver, run with ``executemany`` on row tuples.

    The rows are :func:`_task_values` tuples in the statement's parameter order *columns*,
    their floats already converted as SQLAlchemy's bind processors would; the constructor
    checks both, so a SQLAlchemy that compiled the statement differently fails here, not
    with misplaced values.
    """

    def __init__(self, stmt: Any, dialect: sa.Dialect, columns: tuple[str, ...]):
        compiled = stmt.compile(dialect=dialect)
        names = tuple(compiled.positiontup or ())
        if names != columns:
            raise RuntimeError(f"taskdb: SQLite statement parameters {names} are not in the order {columns}")
        processed = {name for name in names if name in compiled._bind_processors}
        if not processed <= _FLOAT_COLUMNS:
            raise RuntimeError(f"taskdb: unexpected SQLite bind processors for {sorted(processed - _FLOAT_COLUMNS)}")
        self.sql = compiled.string

    def run(self, cursor: Any, rows: list[tuple]) -> int:
        """Execute for every row; returns the rows changed."""
        cursor.executemany(self.sql, rows)
        return cursor.rowcount


def _sqlite_get_many_sql(names: tuple[str, ...], count: int) -> str:
    """SQLite's text of get_many's query for the columns *names* and *count* taskids."""
    return f"{_sqlite_select_sql(names)} AND {_SQLITE_TASKID} IN ({', '.join('?' * count)})"


@functools.lru_cache(maxsize=64)
def _sqlite_select_sql(names: tuple[str, ...]) -> str:
    """``SELECT`` of the columns *names* of one project's tasks, in SQLite's SQL."""
    query = sa.select(*(_c[name] for name in names)).where(_c.project == sa.bindparam("project"))
    return str(query.compile(dialect=sqlite.dialect()))


_SQLITE_TASKID = str(_c.taskid.compile(dialect=sqlite.dialect()))
#: save_leases on SQLite, for the driver's executemany on (project, taskid, dispatched, deadline) rows
_SQLITE_LEASE_SQL = ("INSERT INTO spiderflow_lease (project, taskid, dispatched, deadline) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (project, taskid) DO UPDATE SET dispatched = excluded.dispatched, "
                     "deadline = excluded.deadline")

_ROW_COLUMNS = ("url", "status", "priority", "exetime", "schedule", "fetch", "process", "track",
                "lastcrawltime", "updatetime")


#: the parameters of the insert, and of the update (its key last), in the statements' order
_INSERT_COLUMNS = ("project", "taskid", *_ROW_COLUMNS)
_UPDATE_COLUMNS = (*_ROW_COLUMNS, "b_project", "b_taskid")
#: the columns whose values SQLAlchemy's bind processors turn into floats (sa.Double)
_FLOAT_COLUMNS = frozenset(("exetime", "lastcrawltime", "updatetime"))


def _task_values(task: Task) -> tuple:
    """The row of *task* in ``_INSERT_COLUMNS`` order, times as floats; StorageError if it cannot be stored.

    The times go through ``float()`` as the bind processor of ``sa.Double`` does, so the
    SQLite fast path can hand the tuple to the driver as it is.
    """
    project = task.project
    validate_project_name(project)
    taskid = task.taskid
    if not isinstance(taskid, str) or not taskid or len(taskid) > MAX_TASKID:
        raise StorageError(f"task id {taskid!r:.80} of project {project!r} must be a string of "
                           f"1-{MAX_TASKID} characters")
    url = task.url
    if not isinstance(url, str):
        raise StorageError(f"task {project}/{taskid}: url must be a string, not {url!r:.80}")
    schedule = task.schedule
    priority = schedule.priority
    if not -_INT32 <= priority < _INT32:
        raise StorageError(f"task {project}/{taskid}: priority {priority} is out of range")
    status = task.status
    lastcrawltime = task.lastcrawltime
    try:
        return (
            project, taskid, url, STATUS_CODE[status if type(status) is TaskStatus else TaskStatus(status)],
            priority, float(schedule.exetime),
            dumps_part(schedule), dumps_part(task.fetch), dumps_part(task.process), dumps_part(task.track),
            None if lastcrawltime is None else float(lastcrawltime), float(task.updatetime),
        )
    except (TypeError, ValueError) as exc:
        raise StorageError(f"cannot store task {project}/{taskid}: {exc}") from exc


#: the rows, and the bytes of their text, of one UPDATE ... JOIN on MySQL (well inside the
#: server's max_allowed_packet, 16 MB by default on MariaDB and 64 MB on MySQL 8)
_MYSQL_UPDATE_ROWS = 500
_MYSQL_UPDATE_BYTES = 1 << 20


@functools.lru_cache(maxsize=32)
def _mysql_update_sql(count: int) -> str:
    """MySQL's update of *count* tasks in one statement: the rows, ``_INSERT_COLUMNS`` in the
    driver's ``%s`` placeholders, as a derived table joined to the task table on the key.

    The first row names the derived table's columns. The key is compared in the task table's
    own binary collations, never in the connection's case-blind one (task ids ``a`` and ``A``
    are two tasks), and the join runs on the primary key."""
    first = "SELECT " + ", ".join(f"%s AS `{name}`" for name in _INSERT_COLUMNS)
    rest = " UNION ALL SELECT " + ", ".join(["%s"] * len(_INSERT_COLUMNS))
    sets = ", ".join(f"t.`{name}` = v.`{name}`" for name in _ROW_COLUMNS)
    return (f"UPDATE {TASKS.name} AS t JOIN ({first}{rest * (count - 1)}) AS v "
            f"ON t.project = CONVERT(v.project USING ascii) COLLATE ascii_bin "
            f"AND t.taskid = v.taskid COLLATE utf8mb4_bin SET {sets}")


def _dicts(columns: tuple[str, ...], rows: list[tuple]) -> list[dict[str, Any]]:
    """*rows* as parameter dicts for ``Connection.execute``."""
    return [dict(zip(columns, row)) for row in rows]


def _columns(fields: Iterable[str] | None) -> list[sa.Column]:
    if fields is None:
        return [_c[f] for f in FIELDS]
    fields = list(fields)
    check_fields(fields, FIELDS, "task")
    return [_c.taskid, _c.project, *(_c[f] for f in FIELDS if f in fields and f not in ("taskid", "project"))]


def _row_dict(row, cols: list[sa.Column]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, value in zip(cols, row):
        name = col.name
        if name in PARTS:
            value = loads_part(PARTS[name], value).to_dict()
        elif name == "status":
            value = CODE_STATUS[value].value
        out[name] = value
    return out


def _row_task(row) -> Task:
    return Task(
        taskid=row.taskid, project=row.project, url=row.url, status=CODE_STATUS[row.status],
        schedule=loads_part(Schedule, row.schedule), fetch=loads_part(Fetch, row.fetch),
        process=loads_part(Process, row.process), track=loads_part(Track, row.track),
        lastcrawltime=row.lastcrawltime, updatetime=row.updatetime,
    )
