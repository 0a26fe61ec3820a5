"""JobDB (jobs and project versions), one suite run on SQLite, PostgreSQL and MySQL/MariaDB.

On PostgreSQL and MySQL the suite runs in this test run's own database (see conftest.py)
and empties the job and version tables before each test; SQLite gets a fresh file per test.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from conftest import require_service

from spiderflow import storage
from spiderflow.exceptions import ConfigError, InvalidProjectName, SchemaVersionError
from spiderflow.jobs import connect_jobdb, max_running
from spiderflow.jobs.store import EVENT_LINES, JOBS, VERSIONS, format_time
from spiderflow.storage.base import META

T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/data/project.db"
    else:
        url = require_service(request.param)
        engine = storage.create_engine(url)
        try:
            with engine.begin() as conn:
                existing = set(sa.inspect(conn).get_table_names())
                for table in (JOBS, VERSIONS):
                    if table.name in existing:
                        conn.execute(table.delete())
        finally:
            engine.dispose()
    storage.dispose_engines()
    yield url
    storage.dispose_engines()


@pytest.fixture
def jobdb(db_url):
    db = connect_jobdb(db_url)
    yield db
    db.close()


def test_schedule_get_and_the_fields_of_a_job(jobdb):
    job = jobdb.schedule("books", "Handler", args={"start": "1", "q": "é"}, settings={"RATE": "2"},
                         priority=1.5, version="v1", now=T0)
    assert len(job["id"]) == 32 and job["id"].isalnum()
    assert jobdb.get(job["id"]) == job == {
        "id": job["id"], "project": "books", "spider": "Handler", "version": "v1", "status": "pending",
        "outcome": None, "args": {"start": "1", "q": "é"}, "settings": {"RATE": "2"}, "priority": 1.5,
        "created": T0, "start_time": None, "end_time": None, "pid": None, "node": None, "pages": 0,
        "results": 0, "errors": 0, "cancel_requested": None, "events": ""}
    assert jobdb.get("nope") is None
    mine = jobdb.schedule("books", "books", jobid="my-run_1.a", now=T0)
    assert mine["id"] == "my-run_1.a" and jobdb.get("my-run_1.a")["version"] is None


@pytest.mark.parametrize("jobid", ["", "a b", "x/y", "..", ".", "a" * 65, "é", "a\nb", 7])
def test_bad_job_ids_are_refused(jobdb, jobid):
    with pytest.raises(ConfigError, match="invalid job id"):
        jobdb.schedule("books", "Handler", jobid=jobid)
    assert jobdb.list() == []


def test_duplicate_job_id_and_bad_values_are_refused(jobdb):
    jobdb.schedule("books", "Handler", jobid="a" * 64)
    with pytest.raises(ValueError, match="is taken"):
        jobdb.schedule("other", "Handler", jobid="a" * 64)
    with pytest.raises(ConfigError, match="map names to strings"):
        jobdb.schedule("books", "Handler", args={"n": 1})
    with pytest.raises(ConfigError, match="map names to strings"):
        jobdb.schedule("books", "Handler", settings=["A=1"])
    with pytest.raises(ConfigError, match="finite"):
        jobdb.schedule("books", "Handler", priority=float("nan"))
    with pytest.raises(ConfigError, match="spider"):
        jobdb.schedule("books", "")
    with pytest.raises(InvalidProjectName):
        jobdb.schedule("no such/project", "Handler")
    assert [j["id"] for j in jobdb.list()] == ["a" * 64]


def test_list_orders_each_state_and_filters(jobdb):
    low = jobdb.schedule("a", "H", jobid="low", priority=0, now=T0)
    high_late = jobdb.schedule("b", "H", jobid="high-late", priority=5, now=T0 + 2)
    high_early = jobdb.schedule("c", "H", jobid="high-early", priority=5, now=T0 + 1)
    for jid, start in (("r2", T0 + 20), ("r1", T0 + 10)):
        jobdb.schedule(jid, "H", jobid=jid, now=T0)
        assert jobdb.start(jid, now=start, pid=1, node="n")
    for jid, end in (("f-old", T0 + 30), ("f-new", T0 + 40)):
        jobdb.schedule(jid, "H", jobid=jid, now=T0)
        jobdb.start(jid, now=T0 + 25, pid=1, node="n")
        assert jobdb.finish(jid, "finished", now=end)
    assert [j["id"] for j in jobdb.list(status="pending")] == ["high-early", "high-late", "low"]
    assert [j["id"] for j in jobdb.list(status="running")] == ["r1", "r2"]
    assert [j["id"] for j in jobdb.list(status="finished")] == ["f-new", "f-old"]
    assert [j["id"] for j in jobdb.list()] == ["high-early", "high-late", "low", "r1", "r2", "f-new", "f-old"]
    assert [j["id"] for j in jobdb.list(project="b")] == [high_late["id"]]
    assert [j["id"] for j in jobdb.list(project="a", status="running")] == []
    assert jobdb.counts() == {"pending": 3, "running": 2, "finished": 2}
    with pytest.raises(ValueError, match="unknown job status"):
        jobdb.list(status="done")
    assert low["id"] and high_early["id"]


def test_request_cancel_in_each_state(jobdb):
    pending = jobdb.schedule("a", "H", now=T0)["id"]
    running = jobdb.schedule("b", "H", now=T0)["id"]
    done = jobdb.schedule("c", "H", now=T0)["id"]
    jobdb.start(running, now=T0 + 1, pid=10, node="n")
    jobdb.start(done, now=T0 + 1, pid=11, node="n")
    jobdb.finish(done, "finished", now=T0 + 2)

    assert jobdb.request_cancel(pending, now=T0 + 5) == "pending"
    job = jobdb.get(pending)
    assert (job["status"], job["outcome"], job["end_time"]) == ("finished", "cancelled", T0 + 5)
    assert not jobdb.start(pending, now=T0 + 6, pid=1, node="n")           # the scheduler lost the race

    assert jobdb.request_cancel(running, now=T0 + 5) == "running"
    assert jobdb.request_cancel(running, now=T0 + 9) == "running"          # the first request stays
    job = jobdb.get(running)
    assert (job["status"], job["outcome"], job["cancel_requested"]) == ("running", None, T0 + 5)

    assert jobdb.request_cancel(done, now=T0 + 5) == "finished"
    job = jobdb.get(done)
    assert (job["outcome"], job["end_time"], job["cancel_requested"]) == ("finished", T0 + 2, None)
    assert jobdb.request_cancel("unknown", now=T0 + 5) is None


def test_start_and_finish_only_from_their_state_one_job_per_project(jobdb):
    first = jobdb.schedule("books", "H", now=T0)["id"]
    second = jobdb.schedule("books", "H", now=T0 + 1)["id"]
    other = jobdb.schedule("other", "H", now=T0 + 2)["id"]
    assert not jobdb.finish(first, "finished", now=T0)                     # not running yet
    assert jobdb.start(first, now=T0 + 3, pid=42, node="sched@host")
    assert not jobdb.start(first, now=T0 + 4, pid=42, node="sched@host")   # not pending any more
    assert not jobdb.start(second, now=T0 + 4, pid=42, node="x")           # its project is busy
    assert jobdb.start(other, now=T0 + 4, pid=43, node="x")
    job = jobdb.get(first)
    assert (job["status"], job["start_time"], job["pid"], job["node"]) == ("running", T0 + 3, 42, "sched@host")
    with pytest.raises(ValueError, match="unknown job outcome"):
        jobdb.finish(first, "ok", now=T0 + 5)
    assert jobdb.finish(first, "failed", now=T0 + 5, pages=7, results=3, errors=2)
    assert not jobdb.finish(first, "finished", now=T0 + 6)
    job = jobdb.get(first)
    assert (job["status"], job["outcome"], job["end_time"]) == ("finished", "failed", T0 + 5)
    assert (job["pages"], job["results"], job["errors"]) == (7, 3, 2)
    assert jobdb.start(second, now=T0 + 6, pid=42, node="x")               # free again


def test_only_one_of_two_racing_starts_wins(jobdb):
    jid = jobdb.schedule("books", "H", now=T0)["id"]
    wins = []
    barrier = threading.Barrier(4)

    def go(n):
        barrier.wait()
        wins.append(jobdb.start(jid, now=T0 + n, pid=n, node=f"n{n}"))

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]


def test_startable_respects_one_per_project_and_the_limit(jobdb):
    jobdb.schedule("a", "H", jobid="a1", now=T0)
    jobdb.schedule("a", "H", jobid="a2", priority=9, now=T0 + 1)
    jobdb.schedule("b", "H", jobid="b1", now=T0 + 2)
    jobdb.schedule("c", "H", jobid="c1", now=T0 + 3)
    jobdb.schedule("d", "H", jobid="d1", now=T0 + 4)
    assert [j["id"] for j in jobdb.startable(10)] == ["a2", "b1", "c1", "d1"]
    assert [j["id"] for j in jobdb.startable(2)] == ["a2", "b1"]
    jobdb.start("c1", now=T0 + 5, pid=1, node="n")
    assert [j["id"] for j in jobdb.startable(3)] == ["a2", "b1"]           # 1 running + 2
    assert [j["id"] for j in jobdb.startable(1)] == []
    assert max_running(3) == 3 and max_running(0, 4, cpus=2) == 8 and max_running(0, 0, cpus=2) == 1


def test_cancelled_since(jobdb):
    for jid in ("p", "r", "old", "fin"):
        jobdb.schedule(jid, "H", jobid=jid, now=T0)
    for jid in ("r", "old", "fin"):
        jobdb.start(jid, now=T0 + 1, pid=1, node="n")
    assert jobdb.cancelled_since(0) == set()
    jobdb.request_cancel("old", now=T0 + 2)
    jobdb.finish("old", "cancelled", now=T0 + 3)
    jobdb.finish("fin", "finished", now=T0 + 3)
    jobdb.request_cancel("r", now=T0 + 2)
    jobdb.request_cancel("p", now=T0 + 10)
    assert jobdb.cancelled_since(T0 + 5) == {"r", "p"}
    assert jobdb.cancelled_since(T0 + 3) == {"r", "p", "old"}
    assert jobdb.cancelled_since(T0 + 11) == {"r"}                          # running: until the scheduler ends it
    jobdb.finish("r", "cancelled", now=T0 + 12)
    assert jobdb.cancelled_since(T0 + 11) == {"r"} and jobdb.cancelled_since(T0 + 13) == set()
    assert jobdb.get("r")["cancel_requested"] == T0 + 2


def test_counts_and_events(jobdb):
    jid = jobdb.schedule("books", "H", now=T0)["id"]
    jobdb.update_counts(jid, 5, 4, 1)
    job = jobdb.get(jid)
    assert (job["pages"], job["results"], job["errors"]) == (5, 4, 1)
    jobdb.add_event(jid, "scheduled", now=T0)
    jobdb.add_event(jid, "two\nlines", now=T0 + 1.5)
    assert jobdb.get(jid)["events"].split("\n") == [
        f"{format_time(T0)} scheduled", f"{format_time(T0 + 1.5)} two", f"{format_time(T0 + 1.5)} lines"]
    assert format_time(T0 + 1.5).endswith(".500")
    jobdb.add_event(jid, "\n".join(f"line {n} " + "x" * 3000 for n in range(EVENT_LINES - 1)), now=T0 + 2)
    for n in range(EVENT_LINES - 1, EVENT_LINES + 2):
        jobdb.add_event(jid, f"line {n}", now=T0 + 3)
    events = jobdb.get(jid)["events"].split("\n")
    assert len(events) == EVENT_LINES
    assert events[0].startswith(f"{format_time(T0 + 2)} line 2 ") and events[-1].split()[3] == str(EVENT_LINES + 1)
    assert max(map(len, events)) < 2100
    jobdb.add_event("nope", "ignored")                                      # an unknown job: nothing
    jobdb.update_counts("nope", 1, 1, 1)


def test_trim_keeps_the_newest_finished_and_every_live_job(jobdb):
    for n in range(6):
        jid = f"f{n}"
        jobdb.schedule(f"p{n}", "H", jobid=jid, now=T0)
        jobdb.start(jid, now=T0 + 1, pid=1, node="n")
        jobdb.finish(jid, "finished", now=T0 + 10 + n)
    jobdb.schedule("p0", "H", jobid="pending", now=T0)
    jobdb.schedule("r", "H", jobid="running", now=T0)
    jobdb.start("running", now=T0 + 1, pid=1, node="n")
    assert jobdb.trim(4) == 2
    assert [j["id"] for j in jobdb.list(status="finished")] == ["f5", "f4", "f3", "f2"]
    assert jobdb.trim(4) == 0
    jobdb.finish("running", "finished", now=T0 + 100, keep=2)
    assert [j["id"] for j in jobdb.list()] == ["pending", "running", "f5"]
    assert jobdb.trim(0) == 2 and [j["id"] for j in jobdb.list()] == ["pending"]


def test_kept_jobs_per_project_and_spider(jobdb):
    for n in range(4):
        for spider in ("A", "B"):
            jid = f"{spider}{n}"
            jobdb.schedule("p", spider, jobid=jid, now=T0)
            jobdb.start(jid, now=T0 + 1, pid=1, node="n")
            jobdb.finish(jid, "finished", now=T0 + 10 + n)
    pending = jobdb.schedule("p", "A", now=T0)
    kept = {j["id"] for j in jobdb.list() if jobdb.kept(j, 2)}
    assert kept == {"A3", "A2", "B3", "B2", pending["id"]}
    assert not jobdb.kept(jobdb.get("A3"), 0) and jobdb.kept(pending, 0)


def test_versions(jobdb):
    assert jobdb.list_versions("books") == [] and jobdb.get_version("books") is None
    jobdb.add_version("books", "r10", "print(10)", now=T0 + 2)
    jobdb.add_version("books", "r9", "print(9)", now=T0 + 1)
    jobdb.add_version("books", "1718000000", "print(1)", now=T0 + 3)
    jobdb.add_version("other", "v", "x = 1", now=T0)
    assert jobdb.list_versions("books") == ["r9", "r10", "1718000000"]
    assert jobdb.get_version("books") == {"project": "books", "version": "1718000000", "script": "print(1)",
                                          "created": T0 + 3}
    assert jobdb.get_version("books", "r9")["script"] == "print(9)"
    assert jobdb.get_version("books", "nope") is None
    jobdb.add_version("books", "r9", "print('nine')", now=T0 + 4)          # replaced: now the latest
    assert jobdb.list_versions("books") == ["r10", "1718000000", "r9"]
    assert jobdb.get_version("books")["script"] == "print('nine')"
    assert jobdb.version_projects() == ["books", "other"]
    assert jobdb.delete_version("books", "r9") and not jobdb.delete_version("books", "r9")
    assert jobdb.get_version("books")["version"] == "1718000000"
    jobdb.schedule("books", "H", jobid="j1")
    jobdb.schedule("other", "H", jobid="j2")
    assert jobdb.delete_project("books") == 3                              # 2 versions, 1 job
    assert jobdb.list_versions("books") == [] and [j["id"] for j in jobdb.list()] == ["j2"]
    with pytest.raises(ConfigError, match="invalid version"):
        jobdb.add_version("books", "", "x")
    with pytest.raises(InvalidProjectName):
        jobdb.add_version("../etc", "v", "x")


def test_jobdb_lives_beside_projectdb_with_its_own_schema_version(db_url):
    projectdb = storage.connect_projectdb(db_url)
    jobdb = connect_jobdb(db_url)
    try:
        projectdb.insert("books", script="x = 1")
        jobdb.schedule("books", "H", jobid="j")
        with jobdb.engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            version = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version:jobdb")).scalar()
        assert {"spiderflow_project", "spiderflow_job", "spiderflow_version"} <= names
        assert version == "1"
        with jobdb.engine.begin() as conn:
            conn.execute(META.update().where(META.c.key == "schema_version:jobdb").values(value="99"))
    finally:
        projectdb.drop("books")
        projectdb.close()
        jobdb.close()
    storage.dispose_engines()
    try:
        with pytest.raises(SchemaVersionError, match="jobdb .* schema version 99, newer"):
            connect_jobdb(db_url)
        storage.connect_projectdb(db_url).close()                               # other roles are unaffected
    finally:
        engine = storage.create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(META.update().where(META.c.key == "schema_version:jobdb").values(value="1"))
        engine.dispose()


def test_unusable_ids_and_names_find_nothing(jobdb):
    jobdb.schedule("books", "H", jobid="j")
    assert jobdb.get("é") is None and jobdb.request_cancel("x/y") is None
    assert not jobdb.start("é", now=T0, pid=1, node="n") and not jobdb.finish("é", "failed", now=T0)
    assert jobdb.list(project="é") == [] and jobdb.list_versions("é") == [] and jobdb.get_version("é") is None
    assert not jobdb.delete_version("é", "v") and jobdb.delete_project("é") == 0
    jobdb.add_event("é", "x")
    jobdb.update_counts("é", 1, 1, 1)
    with pytest.raises(ConfigError, match="not a usable name and value"):
        jobdb.schedule("books", "H", args={"a": "nul\x00"})
    with pytest.raises(ConfigError, match="not a usable name and value"):
        jobdb.schedule("books", "H", settings={"a": "\udc80"})
    jobdb.add_event("j", "lone \udc80 surrogate and nul \x00")
    assert "lone ? surrogate and nul \ufffd" in jobdb.get("j")["events"]


def test_items_and_log_of_a_job_window_in_chunks(db_url, jobdb):
    """The window queries of spiderflow.jobs.output, across chunk edges with tied update times."""
    from spiderflow.jobs import output
    from spiderflow.message import ResultPack, Task, Track

    taskdb, resultdb = storage.connect_taskdb(db_url), storage.connect_resultdb(db_url)
    try:
        for project in ("books", "other"):
            taskdb.drop(project)
            resultdb.drop(project)
        job = jobdb.schedule("books", "H", now=T0)
        jobdb.start(job["id"], now=T0 + 10, pid=1, node="n")
        tasks = []
        for n in range(23):
            for project in ("books", "other"):
                task = Task.create(project, f"http://a.test/{n}")
                task.track = Track(process={"ok": True, "logs": f"{project} {n}"})
                task.updatetime = T0 + 5 + n // 3                    # 3 per time: ties across chunks of 4
                tasks.append(task)
                resultdb.upsert(ResultPack(project, task.taskid, task.url, {"n": n}, updatetime=task.updatetime))
        taskdb.insert_many(tasks)
        jobdb.finish(job["id"], "finished", now=T0 + 11)
        job = jobdb.get(job["id"])
        want = [n for n in range(23) if T0 + 10 <= T0 + 5 + n // 3 <= T0 + 11]
        assert want == list(range(15, 21))
        for chunk in (1, 4, 500):
            got = [i["result"]["n"] for i in output.items(resultdb, job, chunk=chunk)]
            assert sorted(got) == want, chunk
            logs = [line.strip() for line in output.log_lines(taskdb, job, chunk=chunk) if line.startswith("    ")]
            assert sorted(logs) == sorted(f"books {n}" for n in want), chunk
        assert list(output.items(resultdb, jobdb.schedule("books", "H"))) == []      # never started
        assert output.tail(iter(range(10)), 3) == [7, 8, 9]
    finally:
        for project in ("books", "other"):
            taskdb.drop(project)
            resultdb.drop(project)
        taskdb.close()
        resultdb.close()
