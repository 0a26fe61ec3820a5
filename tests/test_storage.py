"""projectdb, taskdb and resultdb, one suite run on SQLite, PostgreSQL and MySQL.

On PostgreSQL and MySQL the suite runs in this test run's own database (see conftest.py),
whose tables are emptied before each test; SQLite gets a fresh file per test.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import random
import shutil
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from conftest import RUN_DATABASES, RunDatabases, require_service, service_url

from spiderflow import storage
from spiderflow.exceptions import (
    ConfigError,
    InvalidProjectName,
    SchemaVersionError,
    StorageError,
    UnknownSchemeError,
)
from spiderflow.message import (
    Fetch,
    Process,
    ProjectStatus,
    ResultPack,
    Schedule,
    Task,
    TaskStatus,
    Track,
)
from spiderflow.storage import codec
from spiderflow.storage import engine as engine_module
from spiderflow.storage.base import META, METADATA
from spiderflow.storage.taskdb import (
    _INSERT_COLUMNS,
    STATUS_CODE,
    TASKS,
    _DriverPlan,
    active_queries,
)

BAD_NAME = "p'; drop table x; --"
needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="needs the fork start method")


def _reset_server(url: str) -> None:
    """Empty spiderflow's tables in this run's database (created empty for this run)."""
    engine = storage.create_engine(url)
    try:
        with engine.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            for table in METADATA.sorted_tables:
                if table.name in existing:
                    conn.execute(table.delete())  # META too: the next connect writes it again
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/data/spiderflow.db"
    else:
        url = require_service(request.param)
        _reset_server(url)
    storage.dispose_engines()
    yield url
    storage.dispose_engines()


@pytest.fixture
def taskdb(db_url):
    db = storage.connect_taskdb(db_url)
    yield db
    db.close()


@pytest.fixture
def projectdb(db_url):
    db = storage.connect_projectdb(db_url)
    yield db
    db.close()


@pytest.fixture
def resultdb(db_url):
    db = storage.connect_resultdb(db_url)
    yield db
    db.close()


def make_task(url: str, project: str = "proj", priority: int = 0, exetime: float = 0.0,
              status: TaskStatus = TaskStatus.ACTIVE, **parts) -> Task:
    task = Task.create(project, url, schedule=Schedule(priority=priority, exetime=exetime), **parts)
    task.status = status
    return task


# -- projectdb ---------------------------------------------------------------------

def test_project_insert_get_list(projectdb):
    projectdb.insert("beta", group="g", script="print('é')", rate=2.5, burst=5, updatetime=100.0)
    projectdb.insert("alpha", status=ProjectStatus.RUNNING)
    projectdb.insert("Zeta")
    beta = projectdb.get("beta")
    assert beta == {"name": "beta", "group": "g", "status": ProjectStatus.TODO, "script": "print('é')",
                    "comments": "", "rate": 2.5, "burst": 5.0, "updatetime": 100.0}
    assert isinstance(beta["status"], ProjectStatus)
    assert [p["name"] for p in projectdb.list()] == ["Zeta", "alpha", "beta"]  # code point order
    assert projectdb.list(["status"])[1:] == [{"name": "alpha", "status": ProjectStatus.RUNNING},
                                             {"name": "beta", "status": ProjectStatus.TODO}]
    assert projectdb.get("gamma") is None
    assert projectdb.get("zeta") is None  # names are case-sensitive on every backend
    with pytest.raises(StorageError, match="already exists"):
        projectdb.insert("beta")
    with pytest.raises(ValueError, match="unknown project field"):
        projectdb.get("beta", ["nope"])


def test_project_update_changed_since_drop(projectdb):
    projectdb.insert("a", updatetime=10.0)
    projectdb.insert("b", updatetime=20.0)
    assert [p["name"] for p in projectdb.changed_since(15.0)] == ["b"]
    before = time.time()
    assert projectdb.update("a", status="RUNNING", script="x = 1")
    a = projectdb.get("a")
    assert a["status"] is ProjectStatus.RUNNING and a["script"] == "x = 1" and a["updatetime"] >= before
    assert projectdb.update("b", rate=9.0, updatetime=30.0)
    assert projectdb.get("b", ["rate", "updatetime"]) == {"name": "b", "rate": 9.0, "updatetime": 30.0}
    assert [p["name"] for p in projectdb.changed_since(15.0, ["name"])] == ["a", "b"]
    assert projectdb.update("missing", rate=1.0) is False
    with pytest.raises(ValueError, match="unknown project field"):
        projectdb.update("a", colour="red")
    with pytest.raises(ValueError):
        projectdb.update("a", status="SLEEPING")
    assert projectdb.drop("a") is True and projectdb.drop("a") is False
    assert [p["name"] for p in projectdb.list()] == ["b"]


def test_project_names_are_validated(projectdb, taskdb, resultdb):
    for call in (lambda: projectdb.insert(BAD_NAME), lambda: projectdb.get(BAD_NAME),
                 lambda: projectdb.update(BAD_NAME, rate=1.0), lambda: projectdb.drop(BAD_NAME),
                 lambda: taskdb.get(BAD_NAME, "x"), lambda: taskdb.load_active(BAD_NAME, 10),
                 lambda: taskdb.insert(Task(taskid="x", project=BAD_NAME, url="http://x/")),
                 lambda: taskdb.count(BAD_NAME), lambda: taskdb.drop(BAD_NAME),
                 lambda: taskdb.select(project=BAD_NAME),
                 lambda: resultdb.upsert(ResultPack(project=BAD_NAME, taskid="x", url="u")),
                 lambda: list(resultdb.select(BAD_NAME)), lambda: resultdb.drop(BAD_NAME)):
        with pytest.raises(InvalidProjectName):
            call()
    assert projectdb.list() == [] and taskdb.projects() == set() and resultdb.projects() == set()


# -- taskdb ---------------------------------------------------------------------------

def full_task() -> Task:
    """A task with every field away from its default, bytes and odd shapes included."""
    return Task(
        taskid="t1", project="proj", url="http://example.com/é?q=1", status=TaskStatus.FAILED,
        schedule=Schedule(priority=7, retries=5, retried=2, exetime=1234.5, age=60, itag="v2",
                          force_update=True, auto_recrawl=True, cancel=True),
        fetch=Fetch(method="POST", headers={"X-A": "1"}, params={"a": [1, 2]}, data=b"\x00\xffbin",
                    files={"f": b"\x01"}, cookies={"c": "v"}, user_agent="ua", timeout=3,
                    connect_timeout=1.5, allow_redirects=False, max_redirects=0, validate_cert=False,
                    proxy=False, etag="abc", last_modified=False, use_gzip=False, robots_txt=True,
                    fetch_type="js",
                    save={"raw": b"\xfe", 1: (b"t", None), "$b": "not a tag", "nested": {"$t": [1]},
                          "list": [1.5, True, {"k": b""}], "tuple": (1, (2, 3)), "unicode": "日本"}),
        process=Process(callback="detail_page", time_limit=9.5),
        track=Track(fetch={"ok": True, "status_code": 200, "headers": {"etag": "abc"}},
                    process={"ok": False, "logs": "line\n" * 3, "exception": "Traceback"}),
        lastcrawltime=1000.25, updatetime=2000.125,
    )


def test_task_round_trip(taskdb):
    task = full_task()
    assert taskdb.insert(task) is True
    assert taskdb.get_task("proj", "t1") == task
    assert taskdb.get_task("proj", "nope") is None
    assert taskdb.get_task("other", "t1") is None
    assert taskdb.get("proj", "t1") == task.to_dict()
    assert taskdb.get("proj", "t1", ["fetch", "status"]) == {
        "taskid": "t1", "project": "proj", "fetch": task.fetch.to_dict(), "status": "FAILED"}
    default = Task(taskid="t2", project="proj", url="http://x/", updatetime=1.0)
    taskdb.insert(default)
    assert taskdb.get_task("proj", "t2") == default
    many = taskdb.get_many("proj", ["t1", "t2", "t3"], ["url"])
    assert many == {"t1": {"taskid": "t1", "project": "proj", "url": task.url},
                    "t2": {"taskid": "t2", "project": "proj", "url": "http://x/"}}
    with pytest.raises(ValueError, match="unknown task field"):
        taskdb.get("proj", "t1", ["bogus"])


def test_insert_many_ignores_existing(taskdb):
    tasks = [make_task(f"http://x/{i}") for i in range(5)]
    assert taskdb.insert_many(tasks[:3]) == 3
    changed = [make_task(t.url, priority=9) for t in tasks[:3]]
    assert taskdb.insert_many(changed + tasks[3:] + tasks[3:]) == 2
    assert taskdb.count("proj") == 5
    assert taskdb.get_task("proj", tasks[0].taskid).schedule.priority == 0  # left as it was
    assert taskdb.insert(tasks[0]) is False
    assert taskdb.insert_many([]) == 0
    big = [make_task(f"http://big/{i}") for i in range(2500)]
    assert taskdb.insert_many(big) == 2500 and taskdb.count("proj") == 2505


def test_update_and_update_many(taskdb):
    tasks = [make_task(f"http://x/{i}") for i in range(4)]
    taskdb.insert_many(tasks)
    first = tasks[0]
    first.status = TaskStatus.SUCCESS
    first.track = Track(fetch={"ok": True}, process={"ok": True})
    first.schedule.priority = 3
    first.lastcrawltime = 55.5
    assert taskdb.update(first) is True
    assert taskdb.get_task("proj", first.taskid) == first
    for t in tasks[1:]:
        t.status = TaskStatus.BAD
        t.fetch.data = b"\x00"
    assert taskdb.update_many(tasks[1:] + [make_task("http://missing/")]) == 3
    assert [taskdb.get_task("proj", t.taskid) for t in tasks] == tasks
    assert taskdb.update(make_task("http://missing/")) is False
    assert taskdb.count("proj", TaskStatus.ACTIVE) == 0


def test_update_many_in_batches_keeps_every_value_and_the_last_of_a_repeated_task(taskdb):
    """On MySQL update_many is one UPDATE ... JOIN per chunk of rows: every value survives it
    (bytes, unicode, quotes, floats to the last bit, NULL), task ids that differ only in case
    stay two tasks, a task named twice keeps its last row, and batches past a chunk (by rows
    and by bytes) are all written."""
    full = full_task()
    lower, upper = make_task("http://case/a"), make_task("http://case/b")
    lower.taskid, upper.taskid = "abc", "ABC"
    many = [make_task(f"http://many/{i}") for i in range(1100)]
    big = [make_task(f"http://big/{i}") for i in range(4)]
    taskdb.insert_many([full, lower, upper, *many, *big])
    full.url = "http://example.com/'quoted' \\back\\ \"dq\" 日本 %s %(x)s"
    full.track = Track(fetch={"ok": True}, process={"logs": "é\x00?" * 10})
    full.updatetime = 1796661251.7190423
    full.lastcrawltime = None
    full.schedule.exetime = 5e-324
    lower.url = "http://case/changed"
    first, again = Task.from_dict(many[0].to_dict()), many[0]
    first.url = "http://many/first-version"
    again.url = "http://many/last-version"
    for t in many[1:]:
        t.status = TaskStatus.SUCCESS
    for t in big:
        t.track = Track(process={"logs": "x" * 400_000})
    batch = [full, lower, first, *many, *big]
    matched = taskdb.update_many(batch)
    assert len(batch) - 1 <= matched <= len(batch)      # the repeated task matches once or twice
    assert taskdb.get_task("proj", full.taskid) == full
    assert taskdb.get_task("proj", "abc").url == "http://case/changed"
    assert taskdb.get_task("proj", "ABC").url == "http://case/b"
    assert taskdb.get_task("proj", many[0].taskid).url == "http://many/last-version"
    assert taskdb.count("proj", TaskStatus.SUCCESS) == len(many) - 1
    assert [taskdb.get_task("proj", t.taskid) for t in big] == big


def test_load_active_pages_in_scheduling_order(taskdb):
    rng = random.Random(7)
    tasks = [make_task(f"http://x/{i}", priority=rng.choice([-1, 0, 0, 2, 5]),
                       exetime=rng.choice([0.0, 0.0, 10.5, 99.0]),
                       status=rng.choice([TaskStatus.ACTIVE] * 4 + [TaskStatus.SUCCESS]))
             for i in range(120)]
    taskdb.insert_many(tasks + [make_task("http://other/", project="other")])
    expected = sorted((t for t in tasks if t.status is TaskStatus.ACTIVE), key=lambda t: (
        -t.schedule.priority, t.schedule.exetime, t.taskid))
    pages, after = [], None
    while True:
        page = taskdb.load_active("proj", 7, after=after)
        assert len(page) <= 7
        if not page:
            break
        pages.extend(page)
        after = taskdb.order_key(page[-1])
    assert [t.taskid for t in pages] == [t.taskid for t in expected]
    assert pages == expected
    assert taskdb.load_active("proj", 1000) == expected
    assert taskdb.load_active("empty", 10) == []


def test_counts_projects_select_drop(taskdb):
    statuses = [TaskStatus.ACTIVE] * 3 + [TaskStatus.SUCCESS] * 2 + [TaskStatus.BAD]
    tasks = [make_task(f"http://x/{i}", status=s) for i, s in enumerate(statuses)]
    for i, t in enumerate(tasks):
        t.updatetime = 100.0 + i
    taskdb.insert_many(tasks + [make_task("http://y/", project="p2")])
    counts = {TaskStatus.ACTIVE: 3, TaskStatus.SUCCESS: 2, TaskStatus.FAILED: 0, TaskStatus.BAD: 1}
    assert taskdb.status_count("proj") == counts
    assert taskdb.status_count("nothing") == dict.fromkeys(TaskStatus, 0)
    assert taskdb.status_counts() == {"proj": counts, "p2": {**dict.fromkeys(TaskStatus, 0),
                                                            TaskStatus.ACTIVE: 1}}
    assert taskdb.count("proj") == 6 and taskdb.count("proj", "SUCCESS") == 2
    assert taskdb.projects() == {"proj", "p2"}
    newest = taskdb.select(project="proj", limit=2)
    assert [t["taskid"] for t in newest] == [tasks[5].taskid, tasks[4].taskid]
    assert newest[0] == tasks[5].to_dict()
    assert [t["taskid"] for t in taskdb.select(project="proj", status=TaskStatus.SUCCESS, offset=1)] \
        == [tasks[3].taskid]
    assert len(taskdb.select()) == 7
    assert taskdb.drop("proj") == 6 and taskdb.drop("proj") == 0
    assert taskdb.projects() == {"p2"}


def test_bad_task_values_are_storage_errors(taskdb):
    with pytest.raises(StorageError, match="task id"):
        taskdb.insert(Task(taskid="x" * 300, project="proj", url="http://x/"))
    with pytest.raises(StorageError, match="proj/t"):
        taskdb.insert(Task(taskid="t", project="proj", url="http://x/", fetch=Fetch(save=object())))
    assert taskdb.count("proj") == 0


def test_write_many_inserts_and_updates_in_one_transaction(taskdb):
    old = [make_task(f"http://old/{i}") for i in range(3)]
    taskdb.insert_many(old)
    for t in old:
        t.status = TaskStatus.SUCCESS
        t.lastcrawltime = 77.0
    new = [make_task(f"http://new/{i}") for i in range(4)]
    assert taskdb.write_many(inserts=new + old[:1], updates=old + [make_task("http://missing/")]) == (4, 3)
    assert [taskdb.get_task("proj", t.taskid) for t in old + new] == old + new
    assert taskdb.write_many() == (0, 0)
    both = make_task("http://both/")
    assert taskdb.write_many(inserts=[both], updates=[both]) == (1, 0)     # the updates go first
    bad = Task(taskid="x" * 300, project="proj", url="http://x/")
    old[0].status = TaskStatus.BAD
    with pytest.raises(StorageError, match="task id"):
        taskdb.write_many(inserts=[make_task("http://never/"), bad], updates=[old[0]])
    assert taskdb.count("proj") == 8                                  # nothing of the failed batch
    assert taskdb.get_task("proj", old[0].taskid).status is TaskStatus.SUCCESS


def _table(db) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(TASKS).order_by(TASKS.c.project, TASKS.c.taskid))]


def test_sqlite_driver_path_matches_sqlalchemy_path(tmp_path):
    """SQLite's straight-to-the-driver writes and reads give what SQLAlchemy's path gives."""
    fast = storage.connect_taskdb(f"sqlite:///{tmp_path}/fast.db")
    slow = storage.connect_taskdb(f"sqlite:///{tmp_path}/slow.db")
    slow._sqlite = False                                      # the path PostgreSQL and MySQL take
    try:
        tasks = [full_task(), make_task("http://x/1", priority=-3, exetime=5),
                 Task(taskid="int-times", project="proj", url="http://x/2", lastcrawltime=3, updatetime=4),
                 make_task("http://other/", project="other")]
        updated = [dataclasses.replace(tasks[1], status=TaskStatus.FAILED, lastcrawltime=9, updatetime=10),
                   make_task("http://missing/")]
        extra = make_task("http://x/3")
        for db in (fast, slow):
            assert db.write_many(inserts=tasks) == (len(tasks), 0)
            assert db.write_many(inserts=tasks[:2] + [extra], updates=updated) == (1, 1)
        assert _table(fast) == _table(slow)
        assert [type(v) for v in _table(fast)[0]] == [type(v) for v in _table(slow)[0]]
        ids = [t.taskid for t in tasks] + ["nope", tasks[0].taskid]
        for fields in (None, ["taskid", "status", "lastcrawltime"], ["schedule"], ["track", "url"]):
            assert fast.get_many("proj", ids, fields) == slow.get_many("proj", ids, fields)
        many = [f"id{i}" for i in range(1200)]                # several IN chunks
        for db in (fast, slow):
            db.insert_many([Task(taskid=i, project="proj", url="http://m/") for i in many[::3]])
        assert fast.get_many("proj", many, ["taskid"]) == slow.get_many("proj", many, ["taskid"])
        assert len(fast.get_many("proj", many, ["taskid"])) == 400
        assert fast.get_many("proj", []) == {}
    finally:
        fast.close()
        slow.close()
        storage.dispose_engines()


def _reference_write(db, inserts: list[Task], updates: list[Task]) -> None:
    """write_many as plain SQLAlchemy statements on dicts of the tasks' raw values."""
    def row(task: Task) -> dict:
        s = task.schedule
        return {"project": task.project, "taskid": task.taskid, "url": task.url,
                "status": STATUS_CODE[TaskStatus(task.status)], "priority": s.priority, "exetime": s.exetime,
                "schedule": codec.dumps_part(s), "fetch": codec.dumps_part(task.fetch),
                "process": codec.dumps_part(task.process), "track": codec.dumps_part(task.track),
                "lastcrawltime": task.lastcrawltime, "updatetime": task.updatetime}
    with db.engine.begin() as conn:
        for task in updates:
            values = row(task)
            conn.execute(TASKS.update().where(TASKS.c.project == values.pop("project"),
                                              TASKS.c.taskid == values.pop("taskid")).values(values))
        for task in inserts:
            if conn.execute(sa.select(TASKS.c.taskid).where(TASKS.c.project == task.project,
                                                           TASKS.c.taskid == task.taskid)).first() is None:
                conn.execute(TASKS.insert().values(row(task)))


def test_write_many_rows_match_plain_sqlalchemy(taskdb):
    """write_many's row tuples (times as floats, parameters in statement order) store what
    SQLAlchemy stores from the tasks' own values: the same columns, types and JSON text."""
    tasks = [full_task(), make_task("http://x/1", priority=-3, exetime=5),
             Task(taskid="int-times", project="proj", url="http://x/2", status="SUCCESS",
                  lastcrawltime=3, updatetime=4),
             make_task("http://other/", project="other", fetch=Fetch(allow_redirects=1, timeout=0))]
    updated = [dataclasses.replace(tasks[1], status=TaskStatus.FAILED, lastcrawltime=9, updatetime=10,
                                   track=Track(process={"ok": False})),
               make_task("http://missing/")]
    extra = make_task("http://x/3", exetime=7)
    tables = []
    for write in (lambda i, u: taskdb.write_many(inserts=i, updates=u),
                  lambda i, u: _reference_write(taskdb, i, u)):
        with taskdb.engine.begin() as conn:
            conn.execute(TASKS.delete())
        write(tasks, [])
        write(tasks[:2] + [extra], updated)
        tables.append(_table(taskdb))
    fast, reference = tables
    assert len(fast) == 5 and fast == reference
    assert [[type(v) for v in row] for row in fast] == [[type(v) for v in row] for row in reference]


def test_sqlite_driver_plan_checks_the_parameter_order():
    """The driver plan refuses a statement whose parameters are not in its tuples' order."""
    dialect = sqlite.dialect()
    _DriverPlan(TASKS.insert(), dialect, _INSERT_COLUMNS)
    swapped = ("taskid", "project", *_INSERT_COLUMNS[2:])
    with pytest.raises(RuntimeError, match="not in the order"):
        _DriverPlan(TASKS.insert(), dialect, swapped)
    processed = sa.Table("t_processed", sa.MetaData(), sa.Column("when", sa.DateTime))
    with pytest.raises(RuntimeError, match="bind processors"):
        _DriverPlan(processed.insert(), dialect, ("when",))


def test_sqlite_driver_transaction_rolls_back_on_error(tmp_path):
    db = storage.connect_taskdb(f"sqlite:///{tmp_path}/t.db")
    try:
        with pytest.raises(StorageError, match=r"taskdb test failed on .*OperationalError"):
            with db._sqlite_transaction("test", write=True) as cursor:
                cursor.execute("DELETE FROM spiderflow_meta")
                cursor.execute("SELECT * FROM no_such_table")
        with pytest.raises(KeyError):
            with db._sqlite_transaction("test", write=True) as cursor:
                cursor.execute("DELETE FROM spiderflow_meta")
                raise KeyError("not a database error")
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(META)).scalar() == 1
        db.insert(make_task("http://after/"))                  # the pool's connection is usable again
        assert db.count("proj") == 1
    finally:
        db.close()
        storage.dispose_engines()


def test_sqlite_hot_path_connection_is_shared_by_threads_and_returned_on_close(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    db, other = storage.connect_taskdb(url), storage.connect_taskdb(url)
    try:
        assert db.engine is other.engine

        def work(worker: int) -> None:
            for batch in range(20):
                tasks = [make_task(f"http://t{worker}/{batch}/{i}") for i in range(10)]
                assert db.insert_many(tasks) == 10
                assert len(db.get_many("proj", [t.taskid for t in tasks], ["taskid"])) == 10

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert db.count("proj") == 4 * 20 * 10
        assert db.engine.pool.checkedout() == 2         # the one it keeps, and its WAL checkpointer's
        db.close()
        assert other.engine.pool.checkedout() == 0
        assert not [t for t in threading.enumerate() if t.name == "sqlite-wal-checkpoint"]
    finally:
        db.close()
        other.close()
        storage.dispose_engines()


def _child_writes(url: str) -> None:
    db = storage.connect_taskdb(url)
    db.insert_many([make_task(f"http://child/{os.getpid()}/{i}") for i in range(20)])
    db.close()


@needs_fork
def test_fork_waits_for_a_running_wal_checkpoint(tmp_path):
    """A child is never forked while the checkpoint thread is inside SQLite (it would inherit
    SQLite's locks held by a thread it does not have), and it can use SQLite afterwards."""
    url = f"sqlite:///{tmp_path}/t.db"
    db = storage.connect_taskdb(url)
    exitcodes = []
    forked = threading.Event()

    def fork() -> None:
        child = multiprocessing.get_context("fork").Process(target=_child_writes, args=(url,))
        child.start()
        forked.set()
        child.join(20)
        exitcodes.append(child.exitcode)

    try:
        db.insert_many([make_task(f"http://p/{i}") for i in range(300)])
        checkpointer = db._checkpointer
        checkpointer._busy.acquire()                   # as the thread holds it around a checkpoint
        try:
            forking = threading.Thread(target=fork)
            forking.start()
            assert not forked.wait(0.5), "fork went ahead during a checkpoint"
        finally:
            checkpointer._busy.release()
        forking.join(30)
        assert forked.is_set() and exitcodes == [0]
        assert db.count("proj") == 320
    finally:
        db.close()
        storage.dispose_engines()


def test_sqlite_path_whose_directory_cannot_be_made_is_a_config_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot create the directory of sqlite database .*a-file/sub/t\.db.*writable"):
        storage.connect_taskdb(f"sqlite:///{tmp_path}/a-file/sub/t.db")


def _rows_in_main_file(path, copy) -> int:
    """Rows of spiderflow_task in the database file alone, without its WAL."""
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM spiderflow_task").fetchone()[0]
    except sqlite3.OperationalError:
        return 0                                        # the table itself is still only in the WAL
    finally:
        conn.close()


def test_sqlite_wal_is_copied_into_the_database_by_a_thread_not_the_writers_commit(tmp_path):
    db = storage.connect_taskdb(f"sqlite:///{tmp_path}/t.db")
    try:
        db.insert_many([make_task(f"http://a/{i}") for i in range(200)])
        writer = db._held.dbapi_connection
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == engine_module.SQLITE_WAL_PAGES
        deadline = time.monotonic() + 10
        while _rows_in_main_file(tmp_path / "t.db", tmp_path / "copy.db") != 200:
            assert time.monotonic() < deadline, "the WAL was not checkpointed into the database file"
            time.sleep(0.02)
    finally:
        db.close()
        storage.dispose_engines()


def test_sqlite_wal_stays_bounded_under_a_stream_of_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "SQLITE_WAL_PAGES", 64)
    monkeypatch.setattr(engine_module, "SQLITE_WAL_KEEP_BYTES", 512 * 1024)
    db = storage.connect_taskdb(f"sqlite:///{tmp_path}/t.db")
    reader = storage.connect_taskdb(f"sqlite:///{tmp_path}/t.db")    # another connection reading meanwhile
    try:
        largest = 0
        for batch in range(40):
            db.insert_many([make_task(f"http://b/{batch}/{i}") for i in range(500)])
            assert reader.count("proj") == 500 * (batch + 1)
            largest = max(largest, os.path.getsize(tmp_path / "t.db-wal"))
        # 20,000 rows wrote far more WAL than this; each restart cut it back to the limit
        assert largest < 8 * 1024 * 1024, largest
        assert os.path.getsize(tmp_path / "t.db-wal") < 8 * 1024 * 1024
    finally:
        db.close()
        reader.close()
        storage.dispose_engines()


class _Text(str):
    pass


PLAIN_VALUES = [
    {"ok": True, "status_code": 200, "time": 0.25, "error": None, "url": "http://é/"},
    {"logs": ["a", 1, 2.5, None, [True, {"k": "v"}]], "nested": {"a": {"b": []}}},
    [], {}, "text", 3, float("nan"), float("inf"), None,
]
TAGGED_VALUES = [
    {"t": (1, 2)}, [{"raw": b"\x00"}], {1: "int key"}, {"$b": "looks like a tag"}, {"x": {"$t": [1]}},
    {"s": _Text("str subclass")}, collections.OrderedDict(a=1), [[(1,)]], {"deep": [{"x": {2: 3}}]},
]


@pytest.mark.parametrize("value, plain", [(v, True) for v in PLAIN_VALUES] + [(v, False) for v in TAGGED_VALUES])
def test_plain_values_skip_the_copy_and_encode_the_same(value, plain):
    """dumps_part writes a plain value as it stands: the same text as after encode_value's copy."""
    assert codec.is_plain(value) is plain
    copied = codec.encode_value(value)
    if plain and value == value:                      # NaN is not equal to itself
        assert copied == value
    if isinstance(value, dict) and value:             # an empty dict is the default: left out
        text = codec.dumps_part(Track(fetch=value))
        assert text == '{"fetch":' + codec._ENCODER.encode(copied) + "}"
        assert codec.loads_part(Track, text) == Track(fetch=value)


class _Float(float):
    pass


class _Int(int):
    pass


EDGE_VALUES = [None, True, False, 0, 1, -1, 10 ** 20, _Int(0), 0.0, -0.0, 1.5, 1e300, _Float(0.0), float("nan"),
               float("inf"), float("-inf"), "", "GET", "é\n\"", _Text(""), {}, {"a": 1}, collections.OrderedDict(),
               [], [1, (2,)], b"", b"\x00", (), {1: 2}]


def _reference_dumps(part) -> str:
    """dumps_part's contract spelled out: the non-default fields, encoded, through the JSON encoder."""
    out = {}
    for f in dataclasses.fields(part):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(part, f.name)
        if not (type(value) is type(default) and value == default):
            out[f.name] = codec.encode_value(value)
    return codec._ENCODER.encode(out)


@pytest.mark.parametrize("cls", [Schedule, Fetch, Process, Track])
def test_generated_dumps_match_the_encoder_on_edge_values(cls):
    """Every field set to values near its default (equal but of another type, -0.0, NaN,
    subclasses, empty and non-empty containers) is written as the plain encoder writes it."""
    for f in dataclasses.fields(cls):
        for value in EDGE_VALUES:
            part = cls()
            setattr(part, f.name, value)
            assert codec.dumps_part(part) == _reference_dumps(part), (f.name, value)
    part = cls()
    for f, value in zip(dataclasses.fields(cls), EDGE_VALUES[1:]):    # many fields away at once
        setattr(part, f.name, value)
    assert codec.dumps_part(part) == _reference_dumps(part)
    assert codec.dumps_part(cls()) == "{}"


def test_generated_dumps_see_a_mutated_default_container():
    """A default dict filled in place is no longer the default (nothing is cached by identity)."""
    fetch = Fetch()
    assert codec.dumps_part(fetch) == "{}"
    fetch.headers["X-A"] = "1"
    assert codec.dumps_part(fetch) == '{"headers":{"X-A":"1"}}'
    track = Track()
    track.process["ok"] = True
    assert codec.dumps_part(track) == '{"process":{"ok":true}}'


def test_sqlite_load_active_uses_index(tmp_path):
    db = storage.connect_taskdb(f"sqlite:///{tmp_path}/t.db")
    try:
        with db.engine.connect() as conn:
            for after in (None, (1, 2.0, "abc")):
                for query in active_queries("proj", after):
                    sql = str(query.limit(1000).compile(conn, compile_kwargs={"literal_binds": True}))
                    plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                    assert "ix_spiderflow_task_order" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        db.close()
        storage.dispose_engines()


# -- resultdb ----------------------------------------------------------------------

def test_result_upsert_last_write_wins(resultdb):
    before = time.time()
    resultdb.upsert(ResultPack(project="proj", taskid="a", url="http://a/", result={"v": 1}))
    got = resultdb.get("proj", "a")
    assert got["result"] == {"v": 1} and got["url"] == "http://a/" and got["updatetime"] >= before
    resultdb.upsert(ResultPack(project="proj", taskid="a", url="http://a2/", result=[1, "é"],
                               updatetime=5.0))
    assert resultdb.get("proj", "a") == {"project": "proj", "taskid": "a", "url": "http://a2/",
                                         "result": [1, "é"], "updatetime": 5.0}
    resultdb.upsert_many([ResultPack("proj", "b", "u", 1, 1.0), ResultPack("proj", "a", "u", "x", 2.0),
                          ResultPack("proj", "b", "u", None, 3.0), ResultPack("p2", "a", "u", 0, 4.0)])
    assert resultdb.get("proj", "a")["result"] == "x"
    assert resultdb.get("proj", "b") == {"project": "proj", "taskid": "b", "url": "u", "result": None,
                                         "updatetime": 3.0}
    assert resultdb.count("proj") == 2 and resultdb.projects() == {"proj", "p2"}
    assert resultdb.get("proj", "zzz") is None
    assert resultdb.drop("proj") == 2 and resultdb.count("proj") == 0 and resultdb.projects() == {"p2"}


def test_result_not_json_is_rejected(resultdb):
    good = ResultPack("proj", "ok", "u", {"fine": True}, 1.0)
    for bad in (b"bytes", {"x": object()}, float("nan")):
        with pytest.raises(StorageError, match="proj/bad"):
            resultdb.upsert_many([good, ResultPack("proj", "bad", "u", bad, 1.0)])
    assert resultdb.count("proj") == 0  # nothing of the failed batch was written


def test_result_select_streams_in_order(resultdb):
    packs = [ResultPack("proj", f"t{i:02d}", f"http://x/{i}", {"i": i}, 1.0 + i % 4) for i in range(23)]
    resultdb.upsert_many(packs)
    resultdb.upsert(ResultPack("other", "t00", "u", 0, 0.0))
    ordered = [p.taskid for p in sorted(packs, key=lambda p: (p.updatetime, p.taskid))]
    assert [r["taskid"] for r in resultdb.select("proj", chunk=4)] == ordered
    assert [r["taskid"] for r in resultdb.select("proj", offset=5, limit=9, chunk=4)] == ordered[5:14]
    assert [r["taskid"] for r in resultdb.select("proj", offset=20)] == ordered[20:]
    assert list(resultdb.select("proj", limit=0)) == []
    first = next(resultdb.select("proj"))
    assert first["result"] == {"i": 0} and first["project"] == "proj"


# -- schema, URLs, engines ---------------------------------------------------------

def test_schema_version_too_new(db_url, taskdb):
    with taskdb.engine.begin() as conn:
        conn.execute(META.update().where(META.c.key == "schema_version:taskdb").values(value="999"))
    storage.dispose_engines()
    with pytest.raises(SchemaVersionError, match="schema version 999, newer"):
        storage.connect_taskdb(db_url)
    storage.connect_resultdb(db_url).close()  # other roles are unaffected


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_each_test_run_has_a_database_of_its_own(kind):
    mine = require_service(kind)
    assert sa.make_url(mine).database == RUN_DATABASES.name
    assert RUN_DATABASES.name.startswith(f"spiderflow_test_{os.getpid()}_")
    server = service_url(kind)
    other = RunDatabases()                      # what another run on this server would get
    try:
        theirs = other.url(kind, server)
        assert sa.make_url(theirs).database not in (sa.make_url(mine).database, sa.make_url(server).database)
        db = storage.connect_taskdb(theirs)
        db.insert(make_task("http://theirs/"))
        db.close()
        _reset_server(mine)                     # what this suite does to its database before each test
        db = storage.connect_taskdb(theirs)
        assert db.count("proj") == 1            # untouched
        db.close()
    finally:
        other.drop_all()
    engine = storage.create_engine(server)
    try:
        with engine.connect() as conn:
            if kind == "postgresql":
                names = conn.exec_driver_sql("SELECT datname FROM pg_database").scalars().all()
            else:
                names = conn.exec_driver_sql("SHOW DATABASES").scalars().all()
    finally:
        engine.dispose()
    assert other.name not in names and RUN_DATABASES.name in names     # only the other run's was dropped


def test_url_schemes():
    with pytest.raises(UnknownSchemeError) as info:
        storage.connect_taskdb("oracle://scott:tiger@db/orcl")
    message = str(info.value)
    assert "oracle" in message and "tiger" not in message
    for scheme in ("sqlite", "postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql"):
        assert scheme in message
    with pytest.raises(UnknownSchemeError):
        storage.connect_projectdb("not a url")
    assert storage.resolve_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert storage.resolve_url("mysql://u@h/db").drivername == "mysql+pymysql"


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(storage.DIALECTS, "fakedb",
                        storage.Dialect("sqlite", "spiderflow_no_such_driver", "fakedb"))
    with pytest.raises(ConfigError, match=r'pip install "spiderflow\[fakedb\]"') as info:
        storage.connect_taskdb("fakedb://user:secret@host/db")
    assert "secret" not in str(info.value)


def test_connection_errors_hide_the_password():
    with pytest.raises(StorageError) as info:
        storage.connect_taskdb("postgresql://postgres:hunter2@127.0.0.1:1/test")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_engine_is_shared_and_released(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = storage.connect_taskdb(url), storage.connect_resultdb(url)
    assert a.engine is b.engine
    a.close()
    a.close()
    assert b.count("proj") == 0
    b.close()
    c = storage.connect_taskdb(url)
    assert c.engine is not a.engine
    c.close()
    memory = [storage.connect_taskdb("sqlite://"), storage.connect_taskdb("sqlite://")]
    memory[0].insert(make_task("http://m/"))
    assert memory[1].count("proj") == 1
    for db in memory:
        db.close()


def _write_tasks(url: str, worker: int) -> None:
    db = storage.connect_taskdb(url)
    for batch in range(10):
        db.insert_many([make_task(f"http://w{worker}/{batch}/{i}") for i in range(50)])
        db.update(make_task(f"http://w{worker}/{batch}/0", status=TaskStatus.SUCCESS))
    db.close()


def _use_inherited(db) -> None:
    inherited = db._held
    db.insert_many([make_task(f"http://child/{i}") for i in range(50)])
    assert db.count("proj") == 51
    assert db._held is None or db._held is not inherited       # never the parent's connection
    db.close()


@needs_fork
def test_db_object_used_after_fork(taskdb):
    taskdb.insert(make_task("http://parent/"))  # the parent's pool now holds a connection
    child = multiprocessing.get_context("fork").Process(target=_use_inherited, args=(taskdb,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    taskdb.insert(make_task("http://parent/2"))
    assert taskdb.count("proj") == 52


@needs_fork
def test_sqlite_engines_share_writes(tmp_path):
    url = f"sqlite:///{tmp_path}/wal/task.db"
    one, two = storage.TaskDB(storage.create_engine(url)), storage.TaskDB(storage.create_engine(url))
    try:
        with one.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        one.insert(make_task("http://a/"))
        assert two.count("proj") == 1
        two.update(make_task("http://a/", status=TaskStatus.SUCCESS))
        assert one.status_count("proj")[TaskStatus.SUCCESS] == 1
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_write_tasks, args=(url, w)) for w in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert one.count("proj") == 1 + 3 * 500
        assert two.count("proj", TaskStatus.SUCCESS) == 1 + 3 * 10
    finally:
        one.engine.dispose()
        two.engine.dispose()
