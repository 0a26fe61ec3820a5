"""The scrapyd-compatible service API and /api/jobs, on a real web UI on port 0 with sqlite databases.

Until the scheduler runs jobs, these tests move jobs through their states with JobDB's
own start() and finish() where the scheduler would (marked ``# scheduler:``); the
end-to-end run of a job through a real pipeline belongs with the scheduler's tests.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import socket
import subprocess
import time
import urllib.parse
import zipfile

import pytest
import test_webui
from test_webui import add_project

from spiderflow.jobs import connect_jobdb
from spiderflow.jobs.code import script_from_upload, spiders
from spiderflow.message import ProjectStatus, ResultPack, Task, TaskStatus, Track

dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client

HANDLER = '''from spiderflow import BaseHandler


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("http://a.test/", callback=self.index_page)

    def index_page(self, response):
        return {"title": "x"}
'''
TWO_SPIDERS = '''import no_such_module_anywhere   # never imported: the script is parsed, not run
raise SystemExit("never run")

import spiderflow


class Base(spiderflow.BaseHandler):
    pass


class Books(Base):
    pass


class NotOne:
    pass
'''


@pytest.fixture
def jobdb(dbs):
    """The jobs of the web UI's projectdb (the same sqlite file)."""
    db = connect_jobdb(dbs.projectdb.engine.url.render_as_string(hide_password=False))
    yield db
    db.close()


def form(client, path: str, fields, headers=None, **kw):
    """POST *fields* (a dict, or a list of pairs) urlencoded, as scrapyd clients and curl -d do."""
    body = urllib.parse.urlencode(fields, doseq=True).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return client.post(path, data=body, headers=headers, xsrf=False, **kw)


def multipart(client, path: str, fields: dict[str, str], files: dict[str, bytes], headers=None):
    """POST multipart/form-data, as ``curl -F egg=@file`` does."""
    boundary = "----spiderflowtest"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.egg"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})}
    return client.post(path, data=body, headers=headers, xsrf=False)


def ok(answer) -> dict:
    assert answer.status == 200, answer
    data = answer.json
    assert data.pop("status") == "ok", data
    assert data.pop("node_name") == socket.gethostname()
    assert answer.body.endswith(b"\n")
    return data


def error(answer) -> str:
    assert answer.status == 200, answer
    data = answer.json
    assert data["status"] == "error" and set(data) == {"status", "message", "node_name"}, data
    return data["message"]


def egg(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


# -- code: spiders and eggs ---------------------------------------------------------------------------

def test_spiders_are_found_by_parsing_not_running():
    assert spiders(HANDLER) == ["Handler"]
    assert spiders(TWO_SPIDERS) == ["Base", "Books"]
    assert spiders("class A(object): pass") == [] and spiders("def (:") == []


def test_script_from_an_egg():
    helper = "def helper():\n    return 1\n"
    assert script_from_upload(HANDLER.encode(), "p") == HANDLER
    assert script_from_upload(egg({"EGG-INFO/PKG-INFO": "x", "p/util.py": helper, "p/spider.py": HANDLER}),
                              "p") == HANDLER
    two = egg({"a/books.py": HANDLER, "a/other.py": TWO_SPIDERS})
    assert script_from_upload(two, "books") == HANDLER
    with pytest.raises(ValueError, match="several project scripts .*a/books.py, a/other.py"):
        script_from_upload(two, "nope")
    with pytest.raises(ValueError, match="no project script"):
        script_from_upload(egg({"p/util.py": helper}), "p")
    with pytest.raises(ValueError, match="neither a ZIP file nor a UTF-8"):
        script_from_upload(b"\xff\xfe\x00", "p")
    with pytest.raises(ValueError, match="does not parse"):
        script_from_upload(b"class (", "p")


# -- versions, projects, spiders ------------------------------------------------------------------------

def test_addversion_listversions_listprojects_listspiders(serve, dbs):
    _, c = serve()
    assert ok(c.get("/listprojects.json")) == {"projects": []}
    added = ok(multipart(c, "/addversion.json", {"project": "books", "version": "r1"}, {"egg": HANDLER.encode()}))
    assert added == {"project": "books", "version": "r1", "spiders": 1}
    row = dbs.projectdb.get("books")
    assert row["script"] == HANDLER and row["status"] is ProjectStatus.TODO
    dbs.projectdb.update("books", status=ProjectStatus.RUNNING)
    # an egg (a zip) with two spiders, as a urlencoded field
    added = ok(form(c, "/addversion.json", {"project": "books", "version": "r2",
                                            "egg": egg({"books/spiders.py": TWO_SPIDERS})}))
    assert added["spiders"] == 2
    row = dbs.projectdb.get("books")
    assert row["script"] == TWO_SPIDERS and row["status"] is ProjectStatus.RUNNING      # status kept
    assert ok(c.get("/listversions.json?project=books")) == {"versions": ["r1", "r2"]}
    assert ok(c.get("/listversions.json?project=nope")) == {"versions": []}
    assert ok(c.get("/listprojects.json")) == {"projects": ["books"]}
    assert ok(c.get("/listspiders.json?project=books")) == {"spiders": ["Base", "Books"]}
    assert ok(c.get("/listspiders.json?project=books&_version=r1")) == {"spiders": ["Handler"]}
    assert error(c.get("/listspiders.json?project=books&_version=r9")) == "version 'r9' not found"
    assert error(c.get("/listspiders.json?project=nope")) == "project 'nope' not found"
    assert error(c.get("/listspiders.json")) == "'project' parameter is required"
    assert error(form(c, "/addversion.json", {"project": "books", "version": "r3"})) == "'egg' parameter is required"
    assert "not parse" in error(form(c, "/addversion.json", {"project": "books", "version": "r3", "egg": "x = ("}))
    assert "invalid project name" in error(form(c, "/addversion.json", {"project": "../p", "version": "v",
                                                                         "egg": HANDLER}))


def test_delversion_and_the_latest_script(serve, dbs, jobdb):
    _, c = serve()
    for version, script in (("1", HANDLER), ("2", TWO_SPIDERS)):
        ok(form(c, "/addversion.json", {"project": "books", "version": version, "egg": script}))
    assert error(form(c, "/delversion.json", {"project": "books", "version": "9"})) == "version '9' not found"
    assert ok(form(c, "/delversion.json", {"project": "books", "version": "2"})) == {}
    assert jobdb.list_versions("books") == ["1"]
    assert dbs.projectdb.get("books")["script"] == HANDLER      # the processors run the latest: the one before


def test_delproject(serve, dbs, jobdb):
    _, c = serve()
    ok(form(c, "/addversion.json", {"project": "books", "version": "1", "egg": HANDLER}))
    dbs.taskdb.insert(Task.create("books", "http://a.test/"))
    dbs.resultdb.upsert(ResultPack("books", "t1", "http://a.test/", {"a": 1}))
    job = ok(form(c, "/schedule.json", {"project": "books", "spider": "Handler"}))["jobid"]
    jobdb.start(job, now=time.time(), pid=1, node="n")                          # scheduler: starts it
    assert "cannot be deleted while job" in error(form(c, "/delproject.json", {"project": "books"}))
    jobdb.finish(job, "finished", now=time.time())                              # scheduler: finishes it
    assert ok(form(c, "/delproject.json", {"project": "books"})) == {}
    assert dbs.projectdb.get("books") is None and dbs.taskdb.count("books") == 0 and dbs.resultdb.count("books") == 0
    assert jobdb.list_versions("books") == [] and jobdb.get(job) is None
    assert error(form(c, "/delproject.json", {"project": "books"})) == "project 'books' not found"


# -- schedule, cancel, status, listjobs, daemonstatus -------------------------------------------------------

def test_schedule_errors_match_scrapyd(client, dbs):
    add_project(dbs, "books", script=HANDLER)
    assert error(form(client, "/schedule.json", {"spider": "x"})) == "'project' parameter is required"
    assert error(form(client, "/schedule.json", {"project": "books"})) == "'spider' parameter is required"
    assert error(form(client, "/schedule.json", {"project": "nope", "spider": "x"})) == "project 'nope' not found"
    assert error(form(client, "/schedule.json", {"project": "books", "spider": "x"})) == "spider 'x' not found"
    assert error(form(client, "/schedule.json", {"project": "books", "spider": "Handler", "_version": "v9"})) \
        == "version 'v9' not found"
    assert error(form(client, "/schedule.json", {"project": "books", "spider": "Handler", "priority": "high"})) \
        == "priority is invalid: could not convert string to float: 'high'"
    assert "NAME=VALUE" in error(form(client, "/schedule.json", {"project": "books", "spider": "Handler",
                                                                  "setting": "NOEQUALS"}))
    assert "invalid job id" in error(form(client, "/schedule.json", {"project": "books", "spider": "Handler",
                                                                      "jobid": "a/b"}))
    assert ok(client.get("/listjobs.json")) == {"pending": [], "running": [], "finished": []}


def test_schedule_and_listjobs_fields(serve, dbs, jobdb):
    _, c = serve()
    ok(form(c, "/addversion.json", {"project": "books", "version": "v1", "egg": HANDLER}))
    add_project(dbs, "other", script=HANDLER)
    first = ok(form(c, "/schedule.json", [("project", "books"), ("spider", "Handler"), ("setting", "DOWNLOAD_DELAY=2"),
                                          ("setting", "A=b=c"), ("start", "1"), ("q", "é"), ("_version", "v1"),
                                          ("priority", "1.5")]))
    assert set(first) == {"jobid"} and len(first["jobid"]) == 32
    mine = ok(form(c, "/schedule.json?jobid=mine-1", {"project": "other", "spider": "other"}))
    assert mine == {"jobid": "mine-1"}                       # query fields count, as in scrapyd
    assert "is taken" in error(form(c, "/schedule.json", {"project": "other", "spider": "other", "jobid": "mine-1"}))
    jobs = ok(c.get("/listjobs.json"))
    assert jobs["running"] == [] and jobs["finished"] == []
    assert jobs["pending"] == [
        {"id": first["jobid"], "project": "books", "spider": "Handler", "version": "v1",
         "settings": {"DOWNLOAD_DELAY": "2", "A": "b=c"}, "args": {"start": "1", "q": "é"}},
        {"id": "mine-1", "project": "other", "spider": "other", "version": None, "settings": {}, "args": {}},
    ]
    assert jobdb.get(first["jobid"])["priority"] == 1.5
    assert ok(c.get("/listjobs.json?project=other"))["pending"][0]["id"] == "mine-1"
    assert error(c.get("/listjobs.json?project=nope")) == "project 'nope' not found"
    assert ok(c.get("/daemonstatus.json")) == {"pending": 2, "running": 0, "finished": 0}

    start = 1_700_000_000.25
    jobdb.start(first["jobid"], now=start, pid=4242, node="sched")          # scheduler: starts it
    jobdb.start("mine-1", now=start, pid=4242, node="sched")
    jobdb.finish("mine-1", "finished", now=start + 61)                    # scheduler: finishes it
    jobs = ok(c.get("/listjobs.json"))
    assert jobs["pending"] == []
    assert jobs["running"] == [{
        "id": first["jobid"], "project": "books", "spider": "Handler", "pid": 4242,
        "start_time": str(datetime.datetime.fromtimestamp(start)),
        "log_url": f"/logs/books/Handler/{first['jobid']}.log", "items_url": f"/items/books/Handler/{first['jobid']}.jl"}]
    assert jobs["finished"] == [{
        "id": "mine-1", "project": "other", "spider": "other",
        "start_time": str(datetime.datetime.fromtimestamp(start)),
        "end_time": str(datetime.datetime.fromtimestamp(start + 61)),
        "log_url": "/logs/other/other/mine-1.log", "items_url": "/items/other/other/mine-1.jl"}]
    assert jobs["running"][0]["start_time"].endswith(".250000")
    assert ok(c.get("/daemonstatus.json")) == {"pending": 0, "running": 1, "finished": 1}


def test_cancel_and_status(client, dbs, jobdb):
    add_project(dbs, "books", script=HANDLER)
    add_project(dbs, "other", script=HANDLER)
    pending = ok(form(client, "/schedule.json", {"project": "books", "spider": "Handler"}))["jobid"]
    running = ok(form(client, "/schedule.json", {"project": "other", "spider": "Handler"}))["jobid"]
    assert ok(client.get(f"/status.json?job={pending}")) == {"currstate": "pending"}
    jobdb.start(running, now=time.time(), pid=1, node="n")                   # scheduler: starts it
    assert ok(client.get(f"/status.json?job={running}&project=other")) == {"currstate": "running"}
    assert ok(client.get(f"/status.json?job={running}&project=books")) == {"currstate": None}
    assert ok(client.get("/status.json?job=nope")) == {"currstate": None}
    assert error(client.get("/status.json?job=x&project=nope")) == "project 'nope' not found"

    assert ok(form(client, "/cancel.json", {"project": "books", "job": pending})) == {"prevstate": "pending"}
    assert ok(client.get(f"/status.json?job={pending}")) == {"currstate": "finished"}
    assert jobdb.get(pending)["outcome"] == "cancelled"
    assert ok(form(client, "/cancel.json", {"project": "books", "job": pending})) == {"prevstate": None}
    assert ok(form(client, "/cancel.json", {"project": "books", "job": running})) == {"prevstate": None}  # other's
    assert ok(form(client, "/cancel.json", {"project": "other", "job": running, "signal": "KILL"})) \
        == {"prevstate": "running"}
    job = jobdb.get(running)
    assert job["status"] == "running" and job["cancel_requested"] is not None      # the scheduler ends it
    assert "signal KILL" in job["events"]
    assert running in jobdb.cancelled_since(time.time())
    assert error(form(client, "/cancel.json", {"project": "nope", "job": "x"})) == "project 'nope' not found"
    assert error(form(client, "/cancel.json", {"project": "books"})) == "'job' parameter is required"


def test_listjobs_trims_and_keeps_logs_of_the_latest_jobs(serve, dbs, jobdb):
    _, c = serve(finished_to_keep=4, jobs_to_keep=2)
    add_project(dbs, "books", script=HANDLER)
    ids = []
    for n in range(6):
        jid = ok(form(c, "/schedule.json", {"project": "books", "spider": "Handler"}))["jobid"]
        jobdb.start(jid, now=1000.0 + n, pid=1, node="n")                 # scheduler
        jobdb.finish(jid, "finished", now=1000.5 + n)
        ids.append(jid)
    finished = ok(c.get("/listjobs.json"))["finished"]
    assert [j["id"] for j in finished] == ids[:1:-1]                      # the newest 4, newest first
    assert [j["log_url"] is not None for j in finished] == [True, True, False, False]
    assert jobdb.get(ids[0]) is None
    old = c.get(f"/logs/books/Handler/{ids[2]}.log")
    assert old.status == 404 and "no longer kept" in old.text and "jobs_to_keep" in old.text
    assert c.get(f"/items/books/Handler/{ids[2]}.jl").status == 404
    assert c.get(f"/logs/books/Handler/{ids[5]}.log").status == 200


# -- logs, items, crawllog -----------------------------------------------------------------------------------

def _task(dbs, url, updatetime, **process):
    task = Task.create("books", url)
    task.status = TaskStatus.FAILED if process.get("exception") else TaskStatus.SUCCESS
    task.track = Track(fetch={"ok": True, "status_code": 200, "time": 0.25, "error": process.pop("error", None)},
                       process={"ok": True, "follows": 3, **process})
    task.updatetime = updatetime
    dbs.taskdb.insert(task)


def test_log_and_items_of_a_job(serve, dbs, jobdb):
    _, c = serve()
    add_project(dbs, "books", script=HANDLER)
    jid = ok(form(c, "/schedule.json", {"project": "books", "spider": "Handler"}))["jobid"]
    t0 = time.time() + 1                                                    # after the job was scheduled
    jobdb.start(jid, now=t0, pid=1, node="n")                               # scheduler
    jobdb.add_event(jid, "started by the scheduler", now=t0)
    _task(dbs, "http://a.test/before", t0 - 50, logs="BEFORE")               # an earlier run's
    _task(dbs, "http://a.test/one", t0 + 10, logs="first line\nsecond line")
    _task(dbs, "http://a.test/two", t0 + 20, exception="Traceback (most recent call last):\nValueError: boom",
          error="HTTP 599: timeout")
    dbs.resultdb.upsert(ResultPack("books", "old", "http://a.test/before", {"n": 0}, updatetime=t0 - 50))
    for n in range(3):
        dbs.resultdb.upsert(ResultPack("books", f"r{n}", f"http://a.test/{n}", {"n": n, "t": "é"},
                                       updatetime=t0 + 10 + n))
    jobdb.finish(jid, "finished", now=t0 + 30)                               # scheduler
    jobdb.add_event(jid, "finished: 2 pages", now=t0 + 30)
    dbs.resultdb.upsert(ResultPack("books", "later", "http://a.test/later", {"n": 9}, updatetime=t0 + 40))
    _task(dbs, "http://a.test/later", t0 + 40, logs="LATER")

    log = c.get(f"/logs/books/Handler/{jid}.log")
    assert log.status == 200 and log.headers["Content-Type"].startswith("text/plain")
    lines = log.text.splitlines()
    assert lines[0].endswith("scheduled through the scrapyd API (spider Handler, priority 0)")
    assert lines[1].endswith("started by the scheduler")
    assert "SUCCESS http://a.test/one (task" in lines[2] and "HTTP 200" in lines[2]
    assert lines[3:5] == ["    first line", "    second line"]
    assert "FAILED http://a.test/two" in lines[5]
    assert lines[6:] == ["    fetch error: HTTP 599: timeout", "    exception: Traceback (most recent call last):",
                         "    ValueError: boom", lines[-1]]
    assert lines[-1].endswith("finished: 2 pages")
    assert "BEFORE" not in log.text and "LATER" not in log.text

    items = c.get(f"/items/books/Handler/{jid}.jl")
    assert items.status == 200
    records = [json.loads(line) for line in items.text.splitlines()]
    assert [r["result"] for r in records] == [{"n": 0, "t": "é"}, {"n": 1, "t": "é"}, {"n": 2, "t": "é"}]
    assert set(records[0]) == {"taskid", "url", "result", "updatetime"}

    tail = ok(c.get(f"/crawllog.json?project=books&job={jid}&lines=3"))
    assert tail["log"].splitlines() == lines[-3:] and tail["currstate"] == "finished"
    assert error(c.get(f"/crawllog.json?project=other&job={jid}")) == "project 'other' not found"
    assert error(c.get("/crawllog.json?project=books&job=nope")) == "job 'nope' not found"
    assert "lines is invalid" in error(c.get(f"/crawllog.json?project=books&job={jid}&lines=0"))

    for path in (f"/logs/books/Other/{jid}.log", "/logs/books/Handler/nope.log", f"/items/other/Handler/{jid}.jl"):
        missing = c.get(path)
        assert missing.status == 404 and "no job" in missing.text, path


def test_log_streams_many_tasks(serve, dbs, jobdb):
    _, c = serve()
    add_project(dbs, "books", script=HANDLER)
    jid = jobdb.schedule("books", "Handler")["id"]
    jobdb.start(jid, now=1000.0, pid=1, node="n")                          # scheduler
    tasks = []
    for n in range(1203):                                                   # several chunks and batches
        task = Task.create("books", f"http://a.test/{n}")
        task.updatetime = 1001.0 + (n // 7)                                 # ties across chunk edges
        tasks.append(task)
        dbs.resultdb.upsert(ResultPack("books", task.taskid, task.url, n, updatetime=task.updatetime))
    dbs.taskdb.insert_many(tasks)
    log = c.get(f"/logs/books/Handler/{jid}.log")
    assert sum(" (task " in line for line in log.text.splitlines()) == 1203
    items = c.get(f"/items/books/Handler/{jid}.jl").text.splitlines()
    assert sorted(json.loads(line)["result"] for line in items) == list(range(1203))


# -- pullcode ------------------------------------------------------------------------------------------------

def _git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_pullcode(serve, dbs, jobdb, tmp_path):
    _, unset = serve()
    assert "needs the projects_dir setting" in error(form(unset, "/pullcode.json", {}))
    plain = tmp_path / "plain"
    plain.mkdir()
    _, not_git = serve(projects_dir=str(plain))
    assert "is not a git repository" in error(form(not_git, "/pullcode.json", {}))

    origin, work, checkout = tmp_path / "origin.git", tmp_path / "work", tmp_path / "checkout"
    _git(tmp_path, "init", "--bare", "-b", "main", str(origin))
    _git(tmp_path, "clone", str(origin), str(work))
    (work / "books.py").write_text(HANDLER)
    (work / "helper.py").write_text("x = 1\n")
    _git(work, "add", ".")
    _git(work, "commit", "-m", "one")
    _git(work, "push", "origin", "HEAD:main")
    _git(tmp_path, "clone", str(origin), str(checkout))
    _, c = serve(projects_dir=str(checkout))

    (work / "books.py").write_text(TWO_SPIDERS)
    (work / "news.py").write_text(HANDLER)
    _git(work, "add", ".")
    _git(work, "commit", "-m", "two")
    _git(work, "push", "origin", "HEAD:main")
    commit = _git(work, "rev-parse", "--short=12", "HEAD").strip()
    pulled = ok(form(c, "/pullcode.json", {}))
    assert pulled["commit"] == commit
    assert pulled["updated"] == [{"project": "books", "version": commit, "spiders": 2},
                                 {"project": "news", "version": commit, "spiders": 1}]
    assert [s["reason"] for s in pulled["skipped"]] == ["defines no BaseHandler subclass"]
    assert dbs.projectdb.get("books")["script"] == TWO_SPIDERS and jobdb.list_versions("news") == [commit]
    again = ok(form(c, "/pullcode.json", {}))
    assert again["updated"] == [] and again["commit"] == commit           # nothing changed: nothing stored


# -- auth, origins, methods -----------------------------------------------------------------------------------

def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_as_scrapyd_and_the_login_limit(serve, dbs):
    _, c = serve(username="admin", password="s3cret", login_max_failures=3)
    add_project(dbs, "books", script=HANDLER)
    refused = c.get("/listprojects.json")
    assert refused.status == 401 and refused.text == "Unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert form(c, "/schedule.json", {"project": "books", "spider": "Handler"}).status == 401
    auth = _basic("admin", "s3cret")
    assert ok(c.get("/listprojects.json", headers=auth)) == {"projects": ["books"]}
    scheduled = ok(form(c, "/schedule.json", {"project": "books", "spider": "Handler"}, headers=auth))
    assert c.get(f"/logs/books/Handler/{scheduled['jobid']}.log").status == 401
    assert c.get(f"/logs/books/Handler/{scheduled['jobid']}.log", headers=auth).status == 200
    for _ in range(3):
        assert c.get("/listjobs.json", headers=_basic("admin", "guess")).status == 401
    limited = c.get("/listjobs.json", headers=auth)                        # even the right password, for now
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    assert limited.json["status"] == "error"


def test_form_posts_pass_the_origin_rule_without_xsrf(client, dbs):
    add_project(dbs, "books", script=HANDLER)
    fields = {"project": "books", "spider": "Handler"}
    for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Referer": "http://127.0.0.1:1/page"}):
        refused = form(client, "/schedule.json", fields, headers=headers)
        assert refused.status == 403 and "cross-origin" in refused.json["message"], headers
    same = client.url.split("//", 1)[1]
    assert ok(form(client, "/schedule.json", fields, headers={"Origin": f"http://{same}"}))["jobid"]
    answer = client.get("/listjobs.json", headers={"Origin": "http://evil.test"})
    assert answer.status == 200 and "Access-Control-Allow-Origin" not in answer.headers
    assert client.get("/listjobs.json", headers={"Host": "evil.test"}).status == 403      # DNS rebinding


def test_methods(client):
    wrong = client.get("/schedule.json")
    assert wrong.status == 405 and wrong.json["status"] == "error" and wrong.headers["Allow"] == "OPTIONS, HEAD, POST"
    options = client.request("OPTIONS", "/listjobs.json")
    assert options.status == 204 and options.headers["Allow"] == "OPTIONS, HEAD, GET"
    assert client.request("OPTIONS", "/logs/a/b/c.log").headers["Allow"] == "OPTIONS, HEAD, GET"


def test_node_name_setting(serve):
    _, c = serve(node_name="master")
    assert c.get("/daemonstatus.json").json["node_name"] == "master"


# -- /api/jobs and /jobs -----------------------------------------------------------------------------------------

def test_api_jobs(client, dbs, jobdb):
    add_project(dbs, "books", script=HANDLER)
    add_project(dbs, "locked", group="lock", script=HANDLER)
    assert client.post("/api/jobs", {"project": "nope"}).status == 404
    assert client.post("/api/jobs", {"project": "locked"}).status == 403
    assert client.post("/api/jobs", {"project": "books", "spider": "Nope"}).status == 400
    assert client.post("/api/jobs", {"project": "books", "args": {"a": ["x"]}}).status == 400
    assert client.post("/api/jobs", {"project": "books"}, xsrf=False).status == 403
    as_form = client.post("/api/jobs", data=b"project=books",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert as_form.status == 415
    made = client.post("/api/jobs", {"project": "books", "jobid": "j1", "args": {"page": 2}, "priority": 3})
    assert made.status == 201, made
    job = made.json["job"]
    assert (job["id"], job["spider"], job["args"], job["priority"], job["status"]) == ("j1", "books", {"page": "2"},
                                                                                       3, "pending")
    assert job["log_url"] == "/logs/books/books/j1.log" and "events" not in job
    assert client.post("/api/jobs", {"project": "books", "jobid": "j1"}).status == 409
    listed = client.get("/api/jobs?status=pending").json
    assert [j["id"] for j in listed["jobs"]] == ["j1"] and listed["counts"]["pending"] == 1
    assert client.get("/api/jobs?status=done").status == 400
    one = client.get("/api/jobs/j1").json["job"]
    assert "scheduled in the web UI" in one["events"]
    assert client.get("/api/jobs/nope").status == 404
    cancelled = client.post("/api/jobs/j1/cancel")
    assert cancelled.status == 200 and cancelled.json["prevstate"] == "pending"
    assert cancelled.json["job"]["outcome"] == "cancelled"
    assert client.post("/api/jobs/j1/cancel", xsrf=False).status == 403
    assert client.post("/api/jobs/nope/cancel").status == 404


def test_jobs_page(client, dbs, jobdb):
    add_project(dbs, "books", script=HANDLER)
    add_project(dbs, "news", script=HANDLER)
    jobdb.schedule("books", "Handler", jobid="waiting", args={"page": "<b>2</b>"})
    jobdb.schedule("news", "Handler", jobid="going")
    jobdb.start("going", now=time.time() - 5, pid=1, node="n")              # scheduler
    page = client.get("/jobs")
    assert page.status == 200
    html = page.text
    assert 'href="/jobs"' in html and 'id="jobs-pending"' in html and 'id="jobs-running"' in html
    assert 'data-job="waiting"' in html and 'href="/logs/news/Handler/going.log"' in html
    assert "page=&lt;b&gt;2&lt;/b&gt;" in html and "<b>2</b>" not in html
    assert 'id="no-finished"' in html and "jobs.js" in html
