"""Queue operations (spiderflow.ops, ``spiderflow queue``) on real databases, in this process.

Storing scripts keeps what the operator changed at runtime; pushing a directory reports
added / updated / unchanged / deleted; the comparison with what is stored; the cluster-wide
pool cap stored in projectdb on sqlite, PostgreSQL and MySQL and honoured by the scheduler
within a second; the health check naming a broken script, an unreachable start URL and an
unreachable scheduler. The same operations on a running cluster (``spiderflow all`` and
redis + PostgreSQL processes) are in ``tests/integration/test_ops_cluster.py``.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import require_service
from test_scheduler import Harness

from spiderflow.cli import main
from spiderflow.message import ProjectStatus
from spiderflow.ops.check import run_checks
from spiderflow.ops.push import CHANGED, IN_SYNC, NEW, ONLY_STORED, compare, push
from spiderflow.ops.status import remote_status
from spiderflow.runtime.scripts import (
    ADDED,
    UNCHANGED,
    UPDATED,
    read_script_dir,
    store_project,
)
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, open_databases

SCRIPT = '''# rate: {rate}
# burst: 20
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{start}", callback=self.page)

    def page(self, response):
        return {{"version": {version}}}
'''
BROKEN = "from spiderflow import *\n\nclass Handler(BaseHandler):\n    def on_start(self)\n        pass\n"


def script(version: int = 1, rate: float = 50, start: str = "http://127.0.0.1:1/") -> str:
    return SCRIPT.format(version=version, rate=rate, start=start)


@pytest.fixture
def projectdb(tmp_path):
    db = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    yield db
    db.close()


# -- storing one project -------------------------------------------------------------------------

def test_store_project_keeps_status_and_runtime_rate_of_a_stored_project(projectdb):
    assert store_project(projectdb, "books", script(1)) == ADDED
    row = projectdb.get("books")
    assert (row["status"], row["rate"], row["burst"]) == (ProjectStatus.TODO, 50, 20)

    projectdb.update("books", status=ProjectStatus.RUNNING, rate=7)          # changed at runtime
    stamp = projectdb.get("books")["updatetime"]
    assert store_project(projectdb, "books", script(1)) == UNCHANGED
    assert projectdb.get("books")["updatetime"] == stamp                     # nothing written

    assert store_project(projectdb, "books", script(2)) == UPDATED           # a new script, same comments
    row = projectdb.get("books")
    assert (row["status"], row["rate"], row["burst"], row["script"]) == (ProjectStatus.RUNNING, 7, 20, script(2))

    assert store_project(projectdb, "books", script(2, rate=9)) == UPDATED   # its '# rate:' line changed
    row = projectdb.get("books")
    assert (row["status"], row["rate"], row["burst"]) == (ProjectStatus.RUNNING, 9, 20)

    assert store_project(projectdb, "books", script(2, rate=9), ProjectStatus.STOP, rate=2, burst=4) == UPDATED
    row = projectdb.get("books")
    assert (row["status"], row["rate"], row["burst"]) == (ProjectStatus.STOP, 2, 4)   # given values win


def test_project_add_keeps_a_running_project_running(tmp_path):
    path = tmp_path / "books.py"
    path.write_text(script(1))
    data = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    out = runner.invoke(main, [*data, "project", "add", str(path), "--status", "RUNNING"])
    assert out.exit_code == 0, out.output
    assert "stored with status RUNNING, rate 50, burst 20" in out.output
    db = connect_projectdb(f"sqlite:///{tmp_path}/data/project.db")
    try:
        db.update("books", rate=7)
        path.write_text(script(2))
        out = runner.invoke(main, [*data, "project", "add", str(path)])
        assert out.exit_code == 0, out.output
        assert "updated with status RUNNING, rate 7, burst 20" in out.output
        assert db.get("books", ["status"])["status"] is ProjectStatus.RUNNING
        out = runner.invoke(main, [*data, "project", "add", str(path)])
        assert "project books unchanged" in out.output
    finally:
        db.close()


# -- a directory -------------------------------------------------------------------------------------

def test_push_reports_added_updated_unchanged_deleted(tmp_path, projectdb):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "a.py").write_text(script(1))
    (scripts / "b.py").write_text(script(1))
    (scripts / "_helpers.py").write_text("x = 1\n")               # not a project
    got = push(projectdb, read_script_dir(str(scripts)), new_status=ProjectStatus.RUNNING)
    assert [(c.name, c.action, c.status) for c in got] == [("a", ADDED, "RUNNING"), ("b", ADDED, "RUNNING")]

    projectdb.update("a", rate=5)
    (scripts / "a.py").write_text(script(2))
    (scripts / "b.py").unlink()
    (scripts / "c.py").write_text(script(1))
    assert [(c.name, c.action) for c in compare(projectdb.list(), read_script_dir(str(scripts)))] == [
        ("a", CHANGED), ("b", ONLY_STORED), ("c", NEW)]
    got = push(projectdb, read_script_dir(str(scripts)), delete=True)
    assert [(c.name, c.action) for c in got] == [("a", UPDATED), ("b", "deleted"), ("c", ADDED)]
    a = got[0]
    assert (a.status, a.rate, a.changed, a.kept) == ("RUNNING", 5, ("script",), ("status", "rate", "burst"))
    assert projectdb.get("b") is None and projectdb.get("c")["status"] is ProjectStatus.TODO
    assert [c.action for c in compare(projectdb.list(), read_script_dir(str(scripts)))] == [IN_SYNC, IN_SYNC]
    assert [c.action for c in push(projectdb, read_script_dir(str(scripts)))] == [UNCHANGED, UNCHANGED]


def test_update_pushes_nothing_when_a_script_is_broken(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "good.py").write_text(script(1))
    (scripts / "broken.py").write_text(BROKEN)
    data = tmp_path / "data"
    out = CliRunner().invoke(main, ["--data-dir", str(data), "queue", "update", str(scripts)])
    assert out.exit_code != 0
    assert "broken.py" in out.output and "line 4" in out.output and "nothing was pushed" in out.output
    assert not (data / "project.db").exists()                  # refused before the database was opened
    (scripts / "broken.py").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = CliRunner().invoke(main, ["--data-dir", str(data), "queue", "update", str(empty), "--delete"])
    assert out.exit_code != 0 and "refusing --delete" in out.output


def test_queue_update_and_status_commands(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "books.py").write_text(script(1))
    data = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    out = runner.invoke(main, [*data, "queue", "status", str(scripts), "--json"])
    assert out.exit_code == 0, out.output
    assert [(r["name"], r["action"]) for r in json.loads(out.output)] == [("books", NEW)]
    out = runner.invoke(main, [*data, "queue", "update", str(scripts), "--status", "RUNNING"])
    assert out.exit_code == 0, out.output
    assert "added      books  (RUNNING, rate 50, burst 20)" in out.output
    assert "1 script in" in out.output and "1 added, 0 updated, 0 unchanged, 0 deleted" in out.output
    out = runner.invoke(main, [*data, "queue", "status", str(scripts)])
    assert "books  in sync  RUNNING" in out.output and "1 in sync" in out.output


# -- the pool cap ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_pool_cap_is_stored_in_projectdb(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/project.db" if kind == "sqlite" else require_service(kind)
    db = connect_projectdb(url)
    try:
        db.set_cluster_value("pool_cap", None)      # a shared server: start from "never set"
        assert db.get_pool_cap() is None
        db.set_pool_cap(8)
        db.set_pool_cap(3)
        assert db.get_pool_cap() == 3
        db.set_pool_cap(0)
        assert db.get_pool_cap() == 0
        with pytest.raises(ValueError):
            db.set_pool_cap(-1)
    finally:
        db.set_cluster_value("pool_cap", None)
        db.close()


def test_queue_cap_command(tmp_path):
    data = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    out = runner.invoke(main, [*data, "queue", "cap", "8"])
    assert out.exit_code == 0, out.output
    assert "cluster capacity: at most 8 tasks in flight; was no limit" in out.output
    out = runner.invoke(main, [*data, "queue", "cap"], env={"SPIDERFLOW_POOL_CAP": "4"})
    assert "at most 4 tasks in flight (this machine's pool_cap setting); was at most 8" in out.output
    out = runner.invoke(main, [*data, "queue", "cap", "0"])
    assert "cluster capacity: no limit; was at most 4" in out.output
    out = runner.invoke(main, [*data, "queue", "cap", "-2"])
    assert out.exit_code != 0 and "-2" in out.output


def test_scheduler_holds_tasks_in_flight_at_the_stored_cap(tmp_path):
    h = Harness(tmp_path, pool_cap=5)
    try:
        h.add_project()
        h.start("p")
        for i in range(20):
            h.new(f"http://example.com/{i}")
        h.run()
        assert len(h.sent_normal()) == 5                   # the pool_cap setting, none stored yet
        h.projectdb.set_pool_cap(2)
        h.run()
        assert h.sent_normal() == []                      # read again only after a second
        h.clock.advance(1.0)
        h.run(3)
        assert h.sent_normal() == []                       # 5 in flight, over the new cap of 2
        in_flight = list(h.scheduler.projects["p"].queue.in_flight())
        h.answer_all(in_flight[:4])
        h.run()
        assert len(h.sent_normal()) == 1                   # 1 left in flight: room for 1
        h.projectdb.set_pool_cap(0)                         # no limit, over the setting's 5
        h.clock.advance(1.0)
        h.run()
        assert len(h.sent_normal()) == 20 - 5 - 1
    finally:
        h.close()


# -- status and check -----------------------------------------------------------------------------------

def test_remote_status_without_a_scheduler_reads_the_databases(tmp_path, projectdb):
    store_project(projectdb, "books", script(1), ProjectStatus.RUNNING)
    projectdb.set_pool_cap(3)
    settings = Settings(data_dir=str(tmp_path), scheduler_port=1)
    report = remote_status(settings)
    assert [(p["name"], p["status"], p["rate"]) for p in report["projects"]] == [("books", "RUNNING", 50)]
    assert report["capacity"]["cap"] == 3 and report["scheduler"]["reachable"] is False
    assert any("taskdb" in e and "does not exist" in e for e in report["errors"])


def test_check_names_a_broken_script_an_unreachable_url_and_the_scheduler(tmp_path, httpbin):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "good.py").write_text(script(1, start=httpbin.url + "/html"))
    (scripts / "broken.py").write_text(BROKEN)
    (scripts / "unreach.py").write_text(script(1, start="http://127.0.0.1:1/start"))
    (scripts / "missing.py").write_text(script(1, start=httpbin.url + "/status/404"))
    settings = Settings(data_dir=str(tmp_path), scheduler_port=1)
    open_databases(settings).close()
    checks = run_checks(settings, read_script_dir(str(scripts)), timeout=5)
    failed = {c.name: c.detail for c in checks if c.ok is False}
    assert sorted(failed) == sorted(["scheduler http://127.0.0.1:1/api", f"script {scripts}/broken.py (project broken)",
                                     f"start URL {httpbin.url}/status/404 (project missing)",
                                     "start URL http://127.0.0.1:1/start (project unreach)"]), failed
    broken = next(d for n, d in failed.items() if "broken" in n)
    assert "does not compile" in broken and "line 4" in broken
    assert next(d for n, d in failed.items() if "unreach" in n).startswith("599 in ")
    assert next(d for n, d in failed.items() if "missing" in n).startswith("404 in ")
    good = next(c for c in checks if c.kind == "start URL" and c.project == "good")
    assert good.ok and good.status_code == 200 and good.detail.startswith("200 in ")

    out = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "queue", "check", str(scripts),
                                    "--scheduler-port", "1", "--timeout", "5"])
    assert out.exit_code == 1
    assert f"FAIL  script {scripts}/broken.py (project broken): project broken: the script does not compile" \
        in out.output
    assert "FAIL  start URL http://127.0.0.1:1/start (project unreach): 599 in" in out.output
    assert "4 of " in out.output and "checks failed" in out.output


def test_operations_never_print_a_password(tmp_path):
    down = "postgresql://crawler:s3cret@127.0.0.1:1/crawl"
    args = ["--projectdb", down, "--taskdb", down, "--resultdb", down, "--queue", "redis://:s3cret@127.0.0.1:1/0",
            "--scheduler-port", "1"]
    runner = CliRunner()
    for command in (["check", *args, "--timeout", "2"], ["status", "--remote", *args], ["cap", "3", "--projectdb", down]):
        out = runner.invoke(main, ["--data-dir", str(tmp_path), "queue", *command])
        assert out.exit_code != 0, out.output
        assert "s3cret" not in out.output and "crawler:***@127.0.0.1:1" in out.output, out.output
