"""taskdb's leases (``spiderflow_lease``) on SQLite, PostgreSQL and MySQL: saved, read back
while valid, voided by a later write of the task, purged, dropped with the project; and a
taskdb written before the table existed gains it when opened."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
import sqlalchemy as sa
from test_storage import db_url, taskdb  # noqa: F401  (fixtures: one taskdb per backend)

from spiderflow import storage
from spiderflow.exceptions import StorageError, StorageUnavailable
from spiderflow.message import Schedule, Task, TaskStatus
from spiderflow.storage.taskdb import LEASES

T = 1_700_000_000.0


def tasks(n: int, project: str = "p", updatetime: float = T) -> list[Task]:
    out = []
    for i in range(n):
        task = Task.create(project, f"http://a/{i}", schedule=Schedule(priority=i % 3))
        task.updatetime = updatetime
        out.append(task)
    return out


def lease_rows(db) -> set[tuple]:
    with db.engine.connect() as conn:
        return {tuple(row) for row in conn.execute(sa.select(LEASES))}


def test_leases_are_read_back_while_valid(taskdb):  # noqa: F811
    stored = tasks(4)
    taskdb.insert_many(stored)
    assert taskdb.save_leases([("p", t.taskid, T, T + 600) for t in stored[:3]]) == 3
    got = taskdb.leases("p", T + 1)
    assert sorted(t.taskid for t, _ in got) == sorted(t.taskid for t in stored[:3])
    by_id = {t.taskid: (t, deadline) for t, deadline in got}
    task, deadline = by_id[stored[0].taskid]
    assert deadline == T + 600
    assert task == taskdb.get_task("p", stored[0].taskid)       # the whole task, as load_active gives it
    assert taskdb.leases("other", T + 1) == []
    assert taskdb.leases("p", T + 600) == []                    # the deadline is not after now


def test_a_later_write_of_the_task_voids_its_lease(taskdb):  # noqa: F811
    a, b, c, d = tasks(4)
    taskdb.insert_many([a, b, c, d])
    taskdb.save_leases([("p", t.taskid, T + 10, T + 610) for t in (a, b, c, d)])
    # a status applied after the dispatch (a retry: still ACTIVE) writes updatetime=now
    taskdb.update(dataclasses.replace(a, updatetime=T + 11))
    # written in the dispatch's own pass (inserted, then sent): the lease holds
    taskdb.update(dataclasses.replace(b, updatetime=T + 10))
    # done: not ACTIVE any more, whatever its updatetime
    taskdb.update(dataclasses.replace(c, status=TaskStatus.SUCCESS, updatetime=T + 5))
    assert sorted(t.taskid for t, _ in taskdb.leases("p", T + 20)) == sorted([b.taskid, d.taskid])


def test_a_lease_saved_again_is_overwritten(taskdb):  # noqa: F811
    a, b = tasks(2)
    taskdb.insert_many([a, b])
    taskdb.save_leases([("p", a.taskid, T, T + 60), ("p", b.taskid, T, T + 60)])
    # sent again (the lease expired, or after a broker outage): the new dispatch and deadline
    taskdb.save_leases([("p", a.taskid, T + 100, T + 700), ("p", a.taskid, T + 100, T + 700)])
    assert lease_rows(taskdb) == {("p", a.taskid, T + 100, T + 700), ("p", b.taskid, T, T + 60)}
    assert [(t.taskid, deadline) for t, deadline in taskdb.leases("p", T + 100)] == [(a.taskid, T + 700)]
    assert taskdb.save_leases([]) == 0


def test_many_leases_in_one_call(taskdb):  # noqa: F811
    stored = tasks(2500)
    taskdb.insert_many(stored)
    taskdb.save_leases([("p", t.taskid, T, T + 600) for t in stored])
    assert len(taskdb.leases("p", T)) == 2500


def test_purge_deletes_expired_leases_of_every_project(taskdb):  # noqa: F811
    a, b = tasks(2)
    (c,) = tasks(1, project="q")
    taskdb.insert_many([a, b, c])
    taskdb.save_leases([("p", a.taskid, T, T + 10), ("p", b.taskid, T, T + 100), ("q", c.taskid, T, T + 5)])
    assert taskdb.purge_leases(T + 10) == 1
    assert {row[1] for row in lease_rows(taskdb)} == {a.taskid, b.taskid}
    assert taskdb.purge_leases(T + 50) == 1
    assert {row[1] for row in lease_rows(taskdb)} == {b.taskid}


def test_drop_drops_the_projects_leases(taskdb):  # noqa: F811
    a, b = tasks(2)
    (c,) = tasks(1, project="q")
    taskdb.insert_many([a, b, c])
    taskdb.save_leases([("p", t.taskid, T, T + 600) for t in (a, b)] + [("q", c.taskid, T, T + 600)])
    assert taskdb.drop("p") == 2
    assert {row[0] for row in lease_rows(taskdb)} == {"q"}
    # made again with the same taskids: the old leases do not come back
    taskdb.insert_many([a, b])
    assert taskdb.leases("p", T + 1) == []


def test_bad_leases_are_storage_errors(taskdb):  # noqa: F811
    with pytest.raises(StorageError) as info:
        taskdb.save_leases([("p", "x" * 300, T, T + 1)])
    assert not isinstance(info.value, StorageUnavailable)
    with pytest.raises(StorageError):
        taskdb.save_leases([("p", "a", "soon", T + 1)])
    with pytest.raises(ValueError):
        taskdb.save_leases([("p'; --", "a", T, T + 1)])
    assert lease_rows(taskdb) == set()


def test_a_taskdb_without_the_lease_table_opens_and_gains_it(tmp_path):
    """A taskdb file written by the previous version (task table and meta only) opens as it
    is: the lease table is created, the tasks are untouched, the schema version stays 1."""
    path = tmp_path / "task.db"
    url = f"sqlite:///{path}"
    db = storage.connect_taskdb(url)
    stored = tasks(3)
    db.insert_many(stored)
    db.close()
    storage.dispose_engines()
    with sqlite3.connect(path) as conn:     # as the previous version left it
        conn.execute("DROP TABLE spiderflow_lease")
        task_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spiderflow_task'").fetchone()
    db = storage.connect_taskdb(url)
    try:
        with sqlite3.connect(path) as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spiderflow_task'").fetchone() == task_sql
            version = conn.execute("SELECT value FROM spiderflow_meta WHERE key = 'schema_version:taskdb'").fetchone()
        assert "spiderflow_lease" in names and version == ("1",)
        assert db.count("p") == 3
        db.save_leases([("p", stored[0].taskid, T, T + 600)])
        assert [t.taskid for t, _ in db.leases("p", T)] == [stored[0].taskid]
    finally:
        db.close()
        storage.dispose_engines()


def test_a_server_taskdb_without_the_lease_table_gains_it(db_url):  # noqa: F811
    """The same on every backend: the table dropped behind spiderflow's back comes back on open."""
    db = storage.connect_taskdb(db_url)
    db.insert_many(tasks(1))
    db.close()
    storage.dispose_engines()
    engine = sa.create_engine(storage.resolve_url(db_url))
    try:
        with engine.begin() as conn:
            LEASES.drop(conn)
    finally:
        engine.dispose()
    db = storage.connect_taskdb(db_url)
    try:
        assert db.leases("p", T) == []
        assert db.count("p") == 1
    finally:
        db.close()
