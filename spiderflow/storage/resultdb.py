"""resultdb: the latest result of each task, upserted by (project, taskid).

A re-sent task overwrites its result instead of adding one, so the pipeline's at-least-once
delivery never duplicates results. ``result`` is any JSON value, stored as JSON text.
:meth:`ResultDB.select` streams a project's results in (updatetime, taskid) order in
chunks, each a short index-seeking query, so exporting millions of rows holds none of them
in memory and no long transaction open.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..exceptions import StorageError
from ..message import ResultPack, validate_project_name
from .base import (
    LONGTEXT,
    MAX_TASKID,
    METADATA,
    MYSQL_TABLE,
    NAME,
    TASKID,
    TEXT,
    BaseDB,
)
from .codec import dumps_result, loads_result

SELECT_CHUNK = 1000

RESULTS = sa.Table(
    "spiderflow_result", METADATA,
    sa.Column("project", NAME, primary_key=True),
    sa.Column("taskid", TASKID, primary_key=True),
    sa.Column("url", TEXT, nullable=False),
    sa.Column("result", LONGTEXT, nullable=False),
    sa.Column("updatetime", sa.Double, nullable=False),
    **MYSQL_TABLE,
)
_c = RESULTS.c
ORDER_INDEX = sa.Index("ix_spiderflow_result_order", _c.project, _c.updatetime, _c.taskid)
_COLUMNS = (_c.project, _c.taskid, _c.url, _c.result, _c.updatetime)


class ResultDB(BaseDB):
    """Results by (project, taskid); the last write wins."""

    role = "resultdb"
    schema_version = 1
    tables = (RESULTS,)

    def __init__(self, engine: sa.Engine):
        super().__init__(engine)
        self._upsert_stmt = self._build_upsert()

    def _build_upsert(self) -> sa.Insert:
        if self.dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(RESULTS)
            return stmt.on_duplicate_key_update(
                url=stmt.inserted.url, result=stmt.inserted.result, updatetime=stmt.inserted.updatetime)
        module = postgresql if self.dialect == "postgresql" else sqlite
        stmt = module.insert(RESULTS)
        return stmt.on_conflict_do_update(
            index_elements=[_c.project, _c.taskid],
            set_={"url": stmt.excluded.url, "result": stmt.excluded.result,
                  "updatetime": stmt.excluded.updatetime})

    def upsert(self, pack: ResultPack) -> None:
        self.upsert_many([pack])

    def upsert_many(self, packs: Iterable[ResultPack]) -> None:
        """Insert or replace results in one transaction; within a batch the last pack wins.

        Every pack is encoded before anything is written: one that is not JSON raises
        StorageError and the batch is not stored.
        """
        now = time.time()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for pack in packs:
            row = _result_row(pack, now)
            rows.pop((row["project"], row["taskid"]), None)  # keep the last one, in write order
            rows[row["project"], row["taskid"]] = row
        if rows:
            with self._write("upsert_many") as conn:
                conn.execute(self._upsert_stmt, list(rows.values()))

    def get(self, project: str, taskid: str) -> dict | None:
        validate_project_name(project)
        with self._read("get") as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(_c.project == project, _c.taskid == taskid)).first()
        return _result_dict(row) if row is not None else None

    def count(self, project: str) -> int:
        validate_project_name(project)
        query = sa.select(sa.func.count()).select_from(RESULTS).where(_c.project == project)
        with self._read("count") as conn:
            return conn.execute(query).scalar_one()

    def projects(self) -> set[str]:
        """Names of the projects that have results."""
        with self._read("projects") as conn:
            return set(conn.execute(sa.select(_c.project).distinct()).scalars())

    def drop(self, project: str) -> int:
        """Delete every result of *project*; returns how many."""
        validate_project_name(project)
        with self._write("drop") as conn:
            return conn.execute(RESULTS.delete().where(_c.project == project)).rowcount

    def select(self, project: str, offset: int = 0, limit: int | None = None,
               chunk: int = SELECT_CHUNK) -> Iterator[dict]:
        """Results of *project* in (updatetime, taskid) order, fetched *chunk* rows at a time.

        Rows changed while the iteration runs may be seen twice or not at all.
        """
        validate_project_name(project)
        base = sa.select(*_COLUMNS).where(_c.project == project)
        for dialect in ("mysql", "mariadb"):  # MySQL may otherwise walk the primary key
            base = base.with_hint(RESULTS, f"FORCE INDEX ({ORDER_INDEX.name})", dialect)
        remaining = limit
        key = None
        while remaining is None or remaining > 0:
            want = chunk if remaining is None else min(chunk, remaining)
            rows = self._select_chunk(base, key, offset, want)
            offset = 0
            for row in rows:
                yield _result_dict(row)
            if len(rows) < want:
                return
            if remaining is not None:
                remaining -= len(rows)
            key = (rows[-1].updatetime, rows[-1].taskid)

    def _select_chunk(self, base: sa.Select, key: tuple | None, offset: int, want: int) -> list:
        with self._read("select") as conn:
            if key is None:
                query = base.order_by(_c.updatetime, _c.taskid).offset(offset or None).limit(want)
                return conn.execute(query).all()
            updatetime, taskid = key
            # two seeks instead of one OR, which would scan from the project's first row
            rows = conn.execute(base.where(_c.updatetime == updatetime, _c.taskid > taskid)
                                .order_by(_c.taskid).limit(want)).all()
            if len(rows) < want:
                rows += conn.execute(base.where(_c.updatetime > updatetime)
                                     .order_by(_c.updatetime, _c.taskid).limit(want - len(rows))).all()
            return rows


def _result_row(pack: ResultPack, now: float) -> dict[str, Any]:
    project = validate_project_name(pack.project)
    if not isinstance(pack.taskid, str) or not pack.taskid or len(pack.taskid) > MAX_TASKID:
        raise StorageError(f"result of project {project!r}: task id {pack.taskid!r:.80} must be a "
                           f"string of 1-{MAX_TASKID} characters")
    try:
        text = dumps_result(pack.result)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(f"result of {project}/{pack.taskid} is not JSON: {exc}") from exc
    return {"project": project, "taskid": pack.taskid, "url": pack.url, "result": text,
            "updatetime": pack.updatetime or now}


def _result_dict(row) -> dict[str, Any]:
    return {"project": row.project, "taskid": row.taskid, "url": row.url,
            "result": loads_result(row.result), "updatetime": row.updatetime}
