"""The web UI's pages and JSON API, on a real server on port 0 with sqlite databases.

Shared helpers (:class:`Client`, :func:`ui` fixtures) are imported by the other
``test_webui_*`` modules.
"""

from __future__ import annotations

import http.cookiejar
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest

from spiderflow.message import ProjectStatus, ResultPack, Task, Track
from spiderflow.result.export import export_results
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.webui import WebUIServer, make_app
from spiderflow.webui.sample import sample_script

_NO_BODY = object()


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:200]!r}>"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """A cookie-keeping HTTP client that sends the xsrf token unless told not to."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)
        self._xsrf: str | None = None

    def xsrf(self) -> str:
        if self._xsrf is None:
            self._xsrf = self.get("/api/xsrf").json["xsrf"]
        return self._xsrf

    def request(self, method: str, path: str, body=_NO_BODY, *, data: bytes | None = None, headers=None,
                xsrf: bool = True) -> Answer:
        headers = dict(headers or {})
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if xsrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-XSRFToken", self.xsrf())
        if data is None and method in ("POST", "PATCH", "PUT"):
            data = b""
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.headers, exc.read())

    def get(self, path: str, **kw) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=_NO_BODY, **kw) -> Answer:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body=_NO_BODY, **kw) -> Answer:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw) -> Answer:
        return self.request("DELETE", path, **kw)


@pytest.fixture
def dbs(tmp_path):
    d = SimpleNamespace(projectdb=connect_projectdb(f"sqlite:///{tmp_path}/project.db"),
                        taskdb=connect_taskdb(f"sqlite:///{tmp_path}/task.db"),
                        resultdb=connect_resultdb(f"sqlite:///{tmp_path}/result.db"))
    yield d
    for db in (d.projectdb, d.taskdb, d.resultdb):
        db.close()


@pytest.fixture
def serve(dbs, tmp_path):
    """``serve(control=None, queues=None, **settings) -> (server, client)``: a web UI on port 0."""
    servers = []

    def start(control=None, queues=None, **settings):
        settings.setdefault("data_dir", str(tmp_path / "data"))
        app = make_app(Settings(**settings), projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb,
                       control=control, queues=queues)
        server = WebUIServer(app, "127.0.0.1", 0).start()
        servers.append(server)
        return server, Client(server.url)

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def client(serve):
    return serve()[1]


def add_project(dbs, name="p", status="TODO", group="", script=None, **kw):
    dbs.projectdb.insert(name, status=status, group=group, script=script or sample_script(name, "http://a.test/"), **kw)


def add_task(dbs, project="p", url="http://a.test/page", status="SUCCESS", **track):
    task = Task.create(project, url)
    task.status = status
    task.track = Track(fetch={"ok": True, "status_code": 200, "time": 0.1},
                       process={"ok": True, "follows": 2, "results": 1, "logs": "a log line", **track})
    dbs.taskdb.insert(task)
    return task


# -- pages --------------------------------------------------------------------------------

def test_every_page_renders(dbs, client):
    add_project(dbs, "p", comments="c")
    task = add_task(dbs)
    dbs.resultdb.upsert(ResultPack("p", task.taskid, task.url, {"title": "Page A", "n": 1}))
    pages = {
        "/": ["Projects", 'data-name="p"', "Create project", "scheduler not reachable"],
        "/debug/p": ['id="script"', "def on_start(self):", "&quot;callback&quot;: &quot;on_start&quot;",
                     "http://a.test/"],
        "/tasks": ["Tasks in taskdb", task.taskid],
        "/tasks?project=p&status=success": [task.taskid],
        f"/task/p/{task.taskid}": ["Last track", "a log line", "Page A"],
        "/results/p": ["Results of", "Page A", "title", 'id="download-csv"'],
        "/nodes": ["Components", "no control interface configured"],
    }
    for path, wanted in pages.items():
        answer = client.get(path)
        assert answer.status == 200, (path, answer)
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
        for text in wanted:
            assert text in answer.text, (path, text)
    assert client.get("/login").status == 302          # nothing to log in to
    assert client.get(f"/debug/p?taskid={task.taskid}").text.count(task.url) >= 1


def test_missing_things_are_404_pages_and_json(dbs, client):
    answer = client.get("/no/such/page")
    assert answer.status == 404 and "no such page" in answer.text
    assert answer.headers["Content-Type"].startswith("text/html")
    assert client.get("/debug/nope").status == 404
    assert client.get("/task/p/nope").status == 404
    assert client.get("/debug/bad%20name").status == 400
    for path in ("/api/nope", "/api/projects/nope", "/api/tasks/p/nope"):
        answer = client.get(path)
        assert answer.status == 404, path
        assert answer.headers["Content-Type"].startswith("application/json")
        assert "error" in answer.json
    assert client.get("/api/projects/bad%20name").json["error"].startswith("invalid project name")


# -- the projects API -------------------------------------------------------------------------

def test_projects_api_crud(dbs, client):
    assert client.get("/api/projects").json["projects"] == []
    created = client.post("/api/projects", {"name": "shop", "start_url": "http://shop.test/start"})
    assert created.status == 201, created
    project = created.json["project"]
    assert project["name"] == "shop" and project["status"] == "TODO" and project["rate"] == 1.0
    script = client.get("/api/projects/shop").json["project"]["script"]
    assert "'http://shop.test/start'" in script and "class Handler(BaseHandler)" in script
    compile(script, "sample", "exec")

    assert client.post("/api/projects", {"name": "shop"}).status == 409
    assert client.post("/api/projects", {"name": "bad name"}).status == 400
    assert client.post("/api/projects", {"name": "x", "start_url": "javascript:alert(1)"}).status == 400
    assert client.post("/api/projects", {"name": "x", "colour": "red"}).status == 400
    assert client.post("/api/projects", [1]).status == 400

    changed = client.patch("/api/projects/shop", {"status": "running", "group": "a, b", "rate": 5, "burst": 10,
                                                  "comments": "hi"})
    assert changed.status == 200, changed
    assert changed.json["changed"] == ["burst", "comments", "group", "rate", "status"]
    row = dbs.projectdb.get("shop")
    assert (row["status"], row["group"], row["rate"], row["burst"], row["comments"]) == \
        (ProjectStatus.RUNNING, "a b", 5.0, 10.0, "hi")

    # a new script for a RUNNING project puts it in CHECKING; POST updates like PATCH
    saved = client.post("/api/projects/shop", {"script": script + "\n# v2\n"})
    assert saved.status == 200 and saved.json["project"]["status"] == "CHECKING"
    assert "CHECKING" in saved.json["notes"][0]
    # the same script again changes nothing else
    assert client.patch("/api/projects/shop", {"script": script + "\n# v2\n"}).json["project"]["status"] == "CHECKING"
    broken = client.patch("/api/projects/shop", {"script": "def (:"})
    assert broken.status == 200 and any("does not compile" in n for n in broken.json["notes"])

    for bad in ({"status": "FLYING"}, {"rate": -1}, {"burst": "x"}, {"name2": 1}, {}, {"script": 3}):
        answer = client.patch("/api/projects/shop", bad)
        assert answer.status == 400, (bad, answer)
        assert answer.json["error"]
    assert client.patch("/api/projects/nope", {"status": "STOP"}).status == 404
    not_json = client.patch("/api/projects/shop", data=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status == 400 and "not JSON" in not_json.json["error"]

    assert client.delete("/api/projects/shop").status == 409          # not stopped
    client.patch("/api/projects/shop", {"status": "STOP"})
    add_task(dbs, "shop")
    dbs.resultdb.upsert(ResultPack("shop", "t", "http://shop.test/", {}))
    deleted = client.delete("/api/projects/shop")
    assert deleted.json == {"deleted": "shop", "tasks": 1, "results": 1}
    assert client.get("/api/projects/shop").status == 404
    assert dbs.taskdb.count("shop") == 0


def test_run_without_a_scheduler_is_503(dbs, client):
    add_project(dbs, "p")
    answer = client.post("/api/projects/p/run")
    assert answer.status == 503 and "not reachable" in answer.json["error"]
    assert client.post("/api/projects/nope/run").status == 404
    assert client.get("/api/nodes").json == {"nodes": []}
    assert client.get("/api/queues").json == {"queues": None}


def test_counters_from_taskdb_without_scheduler(dbs, client):
    add_project(dbs, "p")
    add_task(dbs, url="http://a.test/1", status="SUCCESS")
    add_task(dbs, url="http://a.test/2", status="ACTIVE")
    add_task(dbs, url="http://a.test/3", status="FAILED")
    answer = client.get("/api/counters").json
    assert answer["source"] == "taskdb" and answer["scheduler"]["reachable"] is False
    assert answer["counters"]["p"]["all"]["success"] == 1
    assert answer["counters"]["p"]["all"]["pending"] == 1
    assert answer["counters"]["p"]["all"]["failed"] == 1
    assert client.get("/api/counters?window=1h").json["counters"] == {"p": {}}
    assert client.get("/api/counters?window=2h").status == 400
    assert 'title="all: success 1, retry 0, failed 1, pending 1"' in client.get("/").text


def test_tasks_api(dbs, client):
    add_project(dbs, "p")
    done = add_task(dbs, url="http://a.test/1", status="SUCCESS")
    add_task(dbs, url="http://a.test/2", status="ACTIVE")
    assert len(client.get("/api/tasks").json["tasks"]) == 2
    only = client.get("/api/tasks?project=p&status=success&limit=5").json["tasks"]
    assert [t["taskid"] for t in only] == [done.taskid]
    assert client.get("/api/tasks?limit=0").status == 400
    assert client.get("/api/tasks?limit=x").status == 400
    assert client.get("/api/tasks?status=DONE").status == 400
    assert client.get("/api/tasks?project=a%20b").status == 400
    one = client.get(f"/api/tasks/p/{done.taskid}").json
    assert one["task"]["url"] == "http://a.test/1" and one["task"]["track"]["process"]["logs"] == "a log line"
    assert one["result"] is None
    assert client.get("/api/active_tasks").status == 503


# -- escaping ------------------------------------------------------------------------------------

XSS = "<script>alert(1)</script>"


def test_results_and_urls_with_script_render_as_text(dbs, client):
    add_project(dbs, "p", group=f"g{XSS}", comments=XSS)
    task = add_task(dbs, url=f"http://a.test/?q={XSS}", exception=XSS)
    evil = Task.create("p", "javascript:alert(2)")
    dbs.taskdb.insert(evil)
    dbs.resultdb.upsert(ResultPack("p", task.taskid, task.url, {"title": XSS, XSS: [XSS], "n": 1}))
    dbs.resultdb.upsert(ResultPack("p", evil.taskid, evil.url, XSS))
    for path in ("/", "/tasks", "/tasks?project=p", f"/task/p/{task.taskid}", f"/task/p/{evil.taskid}",
                 "/results/p", f"/debug/p?taskid={task.taskid}"):
        html = client.get(path).text
        assert "<script>alert" not in html, path
        assert 'href="javascript:' not in html, path
    results = client.get("/results/p").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in results
    assert "javascript:alert(2)" in results                      # shown, but not as a link
    assert "&lt;script&gt;" in client.get(f"/task/p/{task.taskid}").text
    # embedded JSON cannot close its <script> element
    assert "<\\/script>" in client.get("/").text or XSS not in client.get("/").text
    # JSON answers are JSON, never HTML
    answer = client.get("/api/results/p")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json["results"][0]["result"]["title"] == XSS


# -- downloads -----------------------------------------------------------------------------------

def test_downloads_are_streamed_with_exact_content(dbs, client):
    packs = [ResultPack("p", f"t{i:05d}", f"http://a.test/{i}",
                        {"title": f"page {i} ünïcode", "n": i, "tags": ["a", i],
                         **({"extra": "x"} if i % 7 == 0 else {})},
                        updatetime=1_700_000_000 + i)
             for i in range(3000)]
    dbs.resultdb.upsert_many(packs)
    for fmt, content_type in (("json", "application/json"), ("jsonl", "application/x-ndjson"), ("csv", "text/csv")):
        expected = io.StringIO(newline="")
        export_results(dbs.resultdb, "p", fmt, expected)
        answer = client.get(f"/api/results/p.{fmt}")
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith(content_type)
        assert answer.headers["Content-Disposition"] == f'attachment; filename="p.{fmt}"'
        assert answer.headers["Transfer-Encoding"] == "chunked"          # streamed, not buffered
        assert len(answer.body) > 128 * 1024
        assert answer.body == expected.getvalue().encode("utf-8"), fmt
    assert client.get("/api/results/empty.json").body == b"[]\n"
    assert client.get("/api/results/empty.csv").body == b"taskid,url\r\n"
    assert client.get("/api/results/bad%20name.json").status == 400
    page = client.get("/api/results/p?offset=10&limit=2").json
    assert page["total"] == 3000 and [r["taskid"] for r in page["results"]] == ["t00010", "t00011"]
    assert client.get("/api/results/p?limit=100000").status == 400


def test_results_page_columns_and_paging(dbs, client):
    for i in range(25):
        dbs.resultdb.upsert(ResultPack("p", f"t{i:02d}", f"http://a.test/{i}", {"title": f"T{i}", "url": "inner"},
                                       updatetime=1_700_000_000 + i))
    html = client.get("/results/p").text
    assert "<th>title</th>" in html and "<th>result.url</th>" in html
    assert "T0<" in html and "T19<" in html and "T20<" not in html
    assert "next &rarr;" in html
    second = client.get("/results/p?offset=20").text
    assert "T24<" in second and "21-25 of 25" in second


# -- the debugger -----------------------------------------------------------------------------------

DEBUG_SCRIPT = """
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        self.crawl(START, callback=self.index_page)

    def index_page(self, response):
        self.logger.info("index %s", response.url)
        print("printed")
        for each in response.doc('a[href^="http"]').items():
            self.crawl(each.attr.href, callback=self.index_page)
        self.send_message("other", {"seen": response.url})
        return {"title": response.doc("title").text(), "debugger": self.is_debugger()}

    def broken(self, response):
        return 1 / 0
"""


def test_debug_runs_one_task_without_touching_the_crawl(dbs, client, httpbin):
    start = httpbin.url + "/links?total=10&show=3&n=0"
    script = DEBUG_SCRIPT.replace("START", repr(start))
    add_project(dbs, "p", script=script)
    first = client.post("/api/debug/p", {"task": {"taskid": "on_start", "url": "data:,on_start",
                                                  "process": {"callback": "on_start"}}})
    assert first.status == 200, first
    report = first.json
    assert report["ok"] and report["exception"] is None
    assert [f["url"] for f in report["follows"]] == [start]
    assert report["follows"][0]["process"] == {"callback": "index_page"}

    second = client.post("/api/debug/p", {"task": report["follows"][0]}).json
    assert second["ok"], second["exception"]
    assert second["fetch_result"]["status_code"] == 200
    assert "link farm page 0" in second["fetch_result"]["text"]
    assert second["fetch_result"]["content_type"].startswith("text/html")
    assert len(second["follows"]) == 3
    assert second["results"] == [{"title": "link farm page 0 of 10", "debugger": True}]
    assert second["messages"] == [{"project": "other", "sender": "p", "message": {"seen": start}}]
    logs = "\n".join(second["logs"])
    assert "index " + start in logs and "printed" in logs

    by_url = client.post("/api/debug/p", {"url": start, "callback": "broken"}).json
    assert not by_url["ok"] and "ZeroDivisionError" in by_url["exception"]
    assert "Traceback" in by_url["exception"] and "return 1 / 0" in by_url["exception"]

    # the editor's unsaved script is what runs
    edited = client.post("/api/debug/p", {"script": "def (:", "task": report["follows"][0]}).json
    assert not edited["ok"] and edited["exception"].startswith("ScriptError") and edited["fetch_result"] is None

    for bad in ({"task": "{nope"}, {"task": [1]}, {"task": {"url": 3}}, {}, {"script": 1, "url": start}):
        answer = client.post("/api/debug/p", bad)
        assert answer.status == 400, (bad, answer)
    assert client.post("/api/debug/nope", {"url": start}).status == 404

    # nothing reached taskdb or resultdb
    assert dbs.taskdb.count("p") == 0 and dbs.resultdb.count("p") == 0
    assert dbs.taskdb.count("other") == 0


def test_abandoned_downloads_do_not_hold_workers(dbs, client, caplog):
    import http.client
    import logging
    import time

    caplog.set_level(logging.INFO, logger="spiderflow.webui")

    dbs.resultdb.upsert_many([ResultPack("p", f"t{i:05d}", f"http://a.test/{i}", {"text": "x" * 500})
                              for i in range(4000)])                       # ~2 MB of JSON
    host, port = urllib.parse.urlsplit(client.url).netloc.split(":")
    for _ in range(10):                # more than the web UI's worker threads
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/api/results/p.jsonl")
        response = conn.getresponse()
        assert response.status == 200
        response.read(1000)
        conn.sock.close()
        conn.close()
    answer = client.get("/api/results/p.json")
    assert answer.status == 200 and len(json.loads(answer.body)) == 4000
    deadline = time.monotonic() + 10
    while caplog.text.count("cancelled by the client") < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert caplog.text.count("cancelled by the client") == 10


def test_task_links_survive_odd_task_ids(dbs, client):
    task = Task.create("p", "http://a.test/odd", taskid="a b/c#d+e")
    dbs.taskdb.insert(task)
    dbs.resultdb.upsert(ResultPack("p", "a b/c#d+e#1", task.url, {"second": True}))
    listing = client.get("/tasks").text
    href = listing.split('href="/task/p/', 1)[1].split('"', 1)[0]
    assert href == "a%20b%2Fc%23d%2Be"          # "/" escaped too: no dot-segment surprises
    page = client.get(f"/task/p/{href}")
    assert page.status == 200 and "a b/c#d+e" in page.text
    results = client.get("/results/p").text
    assert 'href="/task/p/a%20b%2Fc%23d%2Be"' in results                 # the task of its second result
    assert client.get(f"/api/tasks/p/{href}").json["task"]["url"] == "http://a.test/odd"
