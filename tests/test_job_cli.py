"""``spiderflow job``: schedule, list, cancel, log and items on sqlite databases in a data directory.

The scheduler's part (start, finish) is done with JobDB's own methods here (``# scheduler:``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from spiderflow.cli import main
from spiderflow.jobs import connect_jobdb
from spiderflow.message import ResultPack, Task, Track
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb

SCRIPT = '''from spiderflow import BaseHandler


class Handler(BaseHandler):
    def on_start(self):
        pass
'''


@pytest.fixture
def data(tmp_path):
    directory = tmp_path / "data"
    projects = connect_projectdb(f"sqlite:///{directory}/project.db")
    projects.insert("books", script=SCRIPT)
    projects.close()
    return directory


def run(data, *args):
    result = CliRunner().invoke(main, ["--data-dir", str(data), "job", *args], catch_exceptions=False)
    return result


def test_schedule_list_cancel(data):
    made = run(data, "schedule", "books", "--jobid", "first", "-a", "page=2", "-a", "q=a=b", "-s", "DELAY=1",
               "--priority", "2")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == "first"
    second = run(data, "schedule", "books", "--spider", "Handler")
    assert second.exit_code == 0 and len(second.stdout.strip()) == 32
    listed = json.loads(run(data, "list", "--json").stdout)
    assert [j["id"] for j in listed] == ["first", second.stdout.strip()]
    assert listed[0]["args"] == {"page": "2", "q": "a=b"} and listed[0]["settings"] == {"DELAY": "1"}
    assert listed[0]["spider"] == "books" and listed[1]["spider"] == "Handler"
    assert "scheduled with `spiderflow job schedule`" in listed[0]["events"]
    table = run(data, "list", "--project", "books").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "PROJECT", "SPIDER", "STATE"] and len(table) == 3
    assert "no jobs of project other" in run(data, "list", "--project", "other").output

    jobdb = connect_jobdb(f"sqlite:///{data}/project.db")
    try:
        jobdb.start("first", now=1000.0, pid=1, node="n")                    # scheduler: starts it
        cancelled = run(data, "cancel", second.stdout.strip())
        assert cancelled.exit_code == 0 and "cancelled (it was pending)" in cancelled.output
        asked = run(data, "cancel", "first")
        assert asked.exit_code == 0 and "cancel requested" in asked.output
        assert jobdb.get("first")["cancel_requested"] is not None
        jobdb.finish("first", "cancelled", now=1010.0)                       # scheduler: ends it
        assert "finished already" in run(data, "cancel", "first").output
    finally:
        jobdb.close()
    assert "cancelling" not in run(data, "list").output
    states = [(j["status"], j["outcome"]) for j in json.loads(run(data, "list", "--json").stdout)]
    assert states == [("finished", "cancelled"), ("finished", "cancelled")]


@pytest.mark.parametrize("args, message", [
    (["schedule", "nope"], "no project named 'nope'"),
    (["schedule", "books", "--spider", "Other"], "has no spider 'Other'"),
    (["schedule", "books", "--jobid", "a/b"], "invalid job id"),
    (["schedule", "books", "-a", "novalue"], "is not NAME=VALUE"),
    (["schedule", "books", "--version", "v9"], "has no version 'v9'"),
    (["cancel", "nope"], "no job 'nope'"),
    (["log", "nope"], "no job 'nope'"),
    (["items", "nope"], "no job 'nope'"),
])
def test_errors_are_one_line(data, args, message):
    result = run(data, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_log_and_items(data):
    jobdb = connect_jobdb(f"sqlite:///{data}/project.db")
    taskdb = connect_taskdb(f"sqlite:///{data}/task.db")
    resultdb = connect_resultdb(f"sqlite:///{data}/result.db")
    try:
        jid = jobdb.schedule("books", "books", now=900.0)["id"]
        jobdb.start(jid, now=1000.0, pid=1, node="n")                           # scheduler
        for n in range(5):
            task = Task.create("books", f"http://a.test/{n}")
            task.track = Track(process={"ok": True, "logs": f"line of {n}"})
            task.updatetime = 1001.0 + n
            taskdb.insert(task)
            resultdb.upsert(ResultPack("books", task.taskid, task.url, {"n": n}, updatetime=1001.0 + n))
        resultdb.upsert(ResultPack("books", "old", "http://a.test/old", {"n": -1}, updatetime=10.0))
        jobdb.finish(jid, "finished", now=1010.0)                               # scheduler
    finally:
        for db in (jobdb, taskdb, resultdb):
            db.close()
    log = run(data, "log", jid)
    assert log.exit_code == 0
    assert [line.strip() for line in log.stdout.splitlines() if line.startswith("    ")] == [
        f"line of {n}" for n in range(5)]
    tail = run(data, "log", jid, "--tail", "2").stdout.splitlines()
    assert tail == log.stdout.splitlines()[-2:] and tail[-1] == "    line of 4"
    items = [json.loads(line) for line in run(data, "items", jid).stdout.splitlines()]
    assert [i["result"] for i in items] == [{"n": n} for n in range(5)]


def test_old_jobs_logs_are_not_kept(data, tmp_path):
    jobdb = connect_jobdb(f"sqlite:///{data}/project.db")
    try:
        for n in range(3):
            jobdb.schedule("books", "books", jobid=f"j{n}")
            jobdb.start(f"j{n}", now=1000.0 + n, pid=1, node="n")              # scheduler
            jobdb.finish(f"j{n}", "finished", now=1000.5 + n)
    finally:
        jobdb.close()
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"jobs_to_keep": 2}))
    # the real entry point, in a process of its own
    out = subprocess.run([sys.executable, "-m", "spiderflow.cli", "-c", str(config), "--data-dir", str(data),
                          "job", "log", "j0"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "no longer kept" in out.stderr
    out = subprocess.run([sys.executable, "-m", "spiderflow.cli", "-c", str(config), "--data-dir", str(data),
                          "job", "log", "j2"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
