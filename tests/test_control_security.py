"""The scheduler control port's defences, on a real server: the token it always requires (made
and written to the data directory when none is configured), the host and browser checks,
JSON bodies, send_task for scheduled projects only, and the checks of what a body holds."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import tornado.httpserver
import tornado.netutil
from click.testing import CliRunner
from test_scheduler import Harness

from spiderflow.cli import main
from spiderflow.message import md5_taskid
from spiderflow.runtime.compose import control_client
from spiderflow.scheduler import ControlClient, ControlError, ThreadedScheduler
from spiderflow.scheduler.control import make_control_app, serve_control, token_path
from spiderflow.settings import Settings
from spiderflow.webui.scheduler_link import SchedulerLink, SchedulerUnavailable


class Control:
    """The control port of *scheduler* on an event loop in a thread; *start* makes the server."""

    def __init__(self, scheduler, start=None, **kwargs):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        start = start or (lambda: serve_control(scheduler, host="127.0.0.1", port=kwargs.pop("port", 0), **kwargs))

        async def serve():
            try:
                self.server, self.port = start()
            finally:
                ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        async def stop():
            self.server.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def request(port, method, path, body=None, headers=None, token=None):
    """``(status, json, headers)`` of one request; *body* is sent as is when bytes, else as JSON."""
    headers = dict(headers or {})
    if token:
        headers.setdefault("Authorization", f"Bearer {token}")
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None), response.headers
    finally:
        conn.close()


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path, cls=ThreadedScheduler)       # data_dir: tmp_path/data
    harness.add_project("p")
    harness.add_project("dbg", status="DEBUG")
    for status in ("TODO", "STOP", "CHECKING"):
        harness.add_project(status.lower(), status=status)
    harness.start("p", "dbg")
    yield harness
    harness.close()


@pytest.fixture
def ctl(h):
    """Served with no token configured, like `spiderflow scheduler` by default."""
    served = Control(h.scheduler)
    served.token = open(token_path(h.settings.data_dir)).read().strip()
    yield served
    served.close()


def received_nothing(h) -> None:
    """Nothing reached the scheduler: no request queued, no task stored or dispatched."""
    h.run()
    assert h.scheduler.size() == 0
    assert sum(h.taskdb.count(name) for name in ("p", "dbg", "todo", "stop", "checking")) == 0
    assert h.sent_normal() == []


# -- the token ---------------------------------------------------------------------------------------

def test_without_a_configured_token_one_is_made_and_written_owner_only(h, tmp_path):
    path = token_path(h.settings.data_dir)
    first = Control(h.scheduler)
    try:
        token = open(path).read().strip()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(token) >= 32
        assert sorted(os.listdir(h.settings.data_dir)) == ["scheduler.token"]      # no temporary file left
        status, body, headers = request(first.port, "GET", "/api/size")
        assert status == 401 and "token" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert request(first.port, "POST", "/api/newtask", {"project": "p", "url": "http://a/1"})[0] == 401
        assert request(first.port, "GET", "/api/size", token=token)[:2] == (200, {"size": 0})
    finally:
        first.close()
    second = Control(h.scheduler)                         # every start makes a new one
    try:
        again = open(path).read().strip()
        assert again != token and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert request(second.port, "GET", "/api/size", token=token)[0] == 401
        assert request(second.port, "GET", "/api/size", token=again)[0] == 200
    finally:
        second.close()
    received_nothing(h)

    explicit = Control(h.scheduler, token="s3cret")          # a configured token: as before, nothing written
    try:
        assert open(path).read().strip() == again
        assert request(explicit.port, "GET", "/api/size", token="s3cret")[0] == 200
        assert request(explicit.port, "GET", "/api/size", token=again)[0] == 401
        settings = Settings(data_dir=h.settings.data_dir, scheduler_port=explicit.port, scheduler_token="s3cret")
        assert control_client(settings).size() == 0
    finally:
        explicit.close()


def test_the_local_client_reads_the_token_from_the_data_directory(h, ctl):
    settings = Settings(data_dir=h.settings.data_dir, scheduler_port=ctl.port)
    client = control_client(settings)
    assert client.newtask({"project": "p", "url": "http://a/1"}) == 1
    h.run()
    assert client.size() == 1 and {p["name"] for p in client.projects()} >= {"p", "dbg", "stop"}
    with pytest.raises(ControlError) as err:
        ControlClient(ctl.url).size()                   # no token and no data directory
    assert err.value.status == 401 and "--scheduler-token" in err.value.message


def test_the_cli_reaches_the_scheduler_with_the_same_data_dir_only(h, ctl, tmp_path):
    dbs = ["--projectdb", f"sqlite:///{tmp_path}/project.db", "--taskdb", f"sqlite:///{tmp_path}/task.db"]

    def remote_status(data_dir):
        out = CliRunner().invoke(main, ["--data-dir", str(data_dir), "queue", "status", "--remote", "--json",
                                        "--scheduler-port", str(ctl.port), *dbs])
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)["scheduler"]

    assert remote_status(h.settings.data_dir) == {"url": f"{ctl.url}/api", "reachable": True, "error": None}
    elsewhere = remote_status(tmp_path / "elsewhere")
    assert elsewhere["reachable"] is False and "401" in elsewhere["error"]
    assert "cannot read the scheduler's token file" in elsewhere["error"]
    assert str(tmp_path / "elsewhere" / "scheduler.token") in elsewhere["error"]
    assert "--scheduler-token" in elsewhere["error"] and "--data-dir" in elsewhere["error"]


def test_a_restarted_scheduler_is_reached_by_reading_the_token_again(h, tmp_path):
    first = Control(h.scheduler)
    port = first.port
    client = control_client(Settings(data_dir=h.settings.data_dir, scheduler_port=port))
    try:
        assert client.size() == 0
    finally:
        first.close()
    second = Control(h.scheduler, port=port)        # a new token in the same file
    try:
        assert client.size() == 0                    # a 401, the file read again, the request sent again
        with open(token_path(h.settings.data_dir), "w") as fh:
            fh.write("not-the-token\n")
        assert client.size() == 0                    # the token it holds still works
        with pytest.raises(ControlError) as err:
            control_client(Settings(data_dir=h.settings.data_dir, scheduler_port=port)).size()
        assert err.value.status == 401 and "is not this scheduler's" in err.value.message
        assert "--scheduler-token" in err.value.message and "--data-dir" in err.value.message
    finally:
        second.close()


# -- host and browser checks -----------------------------------------------------------------------

def test_a_foreign_host_name_is_refused_on_loopback(h, ctl):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own name."""
    for host in ("evil.example", f"evil.example:{ctl.port}", "127.0.0.1.evil.example", "0.0.0.0"):
        status, body, _ = request(ctl.port, "GET", "/api/size", headers={"Host": host}, token=ctl.token)
        assert status == 403 and "loopback host name" in body["error"], host
        status, body, _ = request(ctl.port, "POST", "/api/newtask", {"project": "p", "url": "http://evil/1"},
                                  headers={"Host": host}, token=ctl.token)
        assert status == 403, host
    for host in (f"127.0.0.1:{ctl.port}", f"localhost:{ctl.port}", "LOCALHOST", f"[::1]:{ctl.port}"):
        assert request(ctl.port, "GET", "/api/size", headers={"Host": host}, token=ctl.token)[0] == 200, host
    received_nothing(h)

    # bound beyond loopback (with its token), clients use whatever name the machine has
    def start():
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(make_control_app(h.scheduler, "t", loopback_only=False))
        server.add_sockets(sockets)
        return server, sockets[0].getsockname()[1]

    served = Control(h.scheduler, start=start)
    try:
        assert request(served.port, "GET", "/api/size", headers={"Host": "crawl-1.lan:23333"}, token="t")[0] == 200
        assert request(served.port, "GET", "/api/size", headers={"Host": "crawl-1.lan"})[0] == 401
    finally:
        served.close()


@pytest.mark.parametrize("headers", [
    {"Origin": "http://127.0.0.1:8000"}, {"Origin": "null"}, {"Origin": "http://localhost:23333"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}, {"Sec-Fetch-Mode": "no-cors"},
])
def test_requests_from_a_browser_are_refused(h, ctl, headers):
    task = {"project": "p", "url": "http://attacker/1"}
    for method, path, body in (("GET", "/api/size", None), ("POST", "/api/newtask", task),
                               ("POST", "/api/send_task", task), ("OPTIONS", "/api/newtask", None)):
        status, answer, response = request(ctl.port, method, path, body, headers=headers, token=ctl.token)
        assert status == 403 and "does not answer" in answer["error"], (method, path)
        assert "Access-Control-Allow-Origin" not in response
    received_nothing(h)


def test_post_bodies_must_be_declared_json(h, ctl):
    task = json.dumps({"project": "p", "url": "http://attacker/1"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/json",
                         None):
        headers = {"Content-Type": content_type} if content_type else {}
        for path in ("/api/newtask", "/api/send_task", "/api/run", "/api/update_project"):
            status, body, _ = request(ctl.port, "POST", path, task, headers=headers, token=ctl.token)
            assert status == 415 and "application/json" in body["error"], (path, content_type)
    received_nothing(h)
    status, body, _ = request(ctl.port, "POST", "/api/newtask", task,
                              headers={"Content-Type": "application/json; charset=utf-8"}, token=ctl.token)
    assert (status, body) == (200, {"accepted": 1})


# -- send_task and newtask -----------------------------------------------------------------------------

def test_send_task_runs_only_running_or_debug_projects(h, ctl):
    for name, status in (("todo", "TODO"), ("stop", "STOP"), ("checking", "CHECKING")):
        code, body, _ = request(ctl.port, "POST", "/api/send_task", {"project": name, "url": "http://a/1"},
                                token=ctl.token)
        assert code == 409, name
        assert body["error"] == (f"project {name!r} is {status}: send_task runs tasks of RUNNING or DEBUG "
                                 f"projects only (spiderflow project set-status {name} RUNNING)")
    assert request(ctl.port, "POST", "/api/send_task", {"project": "nope", "url": "http://a/1"},
                   token=ctl.token)[:2] == (404, {"error": "unknown project 'nope'"})
    assert request(ctl.port, "POST", "/api/newtask", {"project": "nope", "url": "http://a/1"},
                   token=ctl.token)[:2] == (404, {"error": "unknown project 'nope'"})
    received_nothing(h)

    client = ControlClient(ctl.url, ctl.token)
    with pytest.raises(ControlError) as err:
        client.send_task({"project": "stop", "url": "http://a/1"})
    assert err.value.status == 409
    assert client.send_task({"project": "p", "url": "http://a/p"}) is True
    assert client.send_task({"project": "dbg", "url": "http://a/dbg"}) is True
    assert sorted(t.url for t in h.sent_normal()) == ["http://a/dbg", "http://a/p"]


# -- what a body holds -----------------------------------------------------------------------------------

TASK = '"project": "p", "url": "http://a/x"'


@pytest.mark.parametrize("raw, field", [
    ('{%s, "schedule": {"exetime": NaN}}' % TASK, "'schedule.exetime' is NaN"),
    ('{%s, "schedule": {"age": Infinity}}' % TASK, "'schedule.age' is Infinity"),
    ('{%s, "updatetime": -Infinity}' % TASK, "'updatetime' is -Infinity"),
    ('{%s, "lastcrawltime": 1e999}' % TASK, "'lastcrawltime' is 1e999"),
    ('{%s, "process": {"time_limit": NaN}}' % TASK, "'process.time_limit' is NaN"),
    ('{%s, "fetch": {"save": {"page": [1, NaN]}}}' % TASK, "'fetch.save.page[1]' is NaN"),
    ('[{"project": "p", "url": "http://a/1"}, {%s, "fetch": {"timeout": Infinity}}]' % TASK,
     "'[1].fetch.timeout' is Infinity"),
])
def test_nan_and_infinity_are_refused_naming_the_field(h, ctl, raw, field):
    paths = ["/api/newtask"] + ([] if raw.startswith("[") else ["/api/send_task"])
    for path in paths:
        status, body, _ = request(ctl.port, "POST", path, raw.encode(),
                                  headers={"Content-Type": "application/json"}, token=ctl.token)
        assert status == 400 and field in body["error"] and "finite" in body["error"], (path, body)
    status, body, _ = request(ctl.port, "POST", "/api/message", b'{"project": "p", "message": {"n": NaN}}',
                              headers={"Content-Type": "application/json"}, token=ctl.token)
    assert status == 400 and "'message.n' is NaN" in body["error"]
    received_nothing(h)
    assert h.taskdb.get_task("p", md5_taskid("http://a/x")) is None


@pytest.mark.parametrize("raw, field", [
    ('{"project": "p", "url": "http://a/\\ud800"}', "'url'"),
    ('{%s, "fetch": {"save": {"k": ["ok", "\\udfff"]}}}' % TASK, "'fetch.save.k[1]'"),
    ('{%s, "fetch": {"headers": {"\\ud800": "v"}}}' % TASK, "'fetch.headers.\\ud800'"),
])
def test_a_lone_surrogate_is_refused_naming_the_field(h, ctl, raw, field):
    """It could be neither packed nor stored: accepted, it would fail the scheduler's every write."""
    status, body, _ = request(ctl.port, "POST", "/api/newtask", raw.encode(),
                              headers={"Content-Type": "application/json"}, token=ctl.token)
    assert status == 400 and field in body["error"] and "not valid Unicode" in body["error"], body
    received_nothing(h)


@pytest.mark.parametrize("task, field", [
    ({"schedule": {"exetime": 10 ** 30}}, "schedule.exetime"),
    ({"schedule": {"age": -(10 ** 20)}}, "schedule.age"),
    ({"schedule": {"exetime": 1e300}}, "schedule.exetime"),
    ({"schedule": {"priority": 2 ** 40}}, "schedule.priority"),
    ({"schedule": {"retries": 10 ** 30}}, "schedule.retries"),
    ({"schedule": {"retried": 2 ** 31}}, "schedule.retried"),
    ({"updatetime": 10 ** 30}, "updatetime"),
    ({"fetch": {"timeout": 10 ** 30}}, "fetch.timeout"),
    ({"fetch": {"max_redirects": 2 ** 40}}, "fetch.max_redirects"),
    ({"fetch": {"save": 2 ** 80}}, "fetch.save"),
])
def test_numbers_out_of_range_are_refused_naming_the_field(h, ctl, task, field):
    for path in ("/api/newtask", "/api/send_task"):
        status, body, _ = request(ctl.port, "POST", path, {"project": "p", "url": "http://a/x", **task},
                                  token=ctl.token)
        assert status == 400 and f"'{field}'" in body["error"], (path, body)
    received_nothing(h)


DEEP = "[" * 5000 + "]" * 5000
MALFORMED = [
    ("/api/newtask", '[{%s}, 5]' % TASK), ("/api/newtask", '["http://a/x"]'), ("/api/newtask", '[[]]'),
    ("/api/newtask", '"http://a/x"'), ("/api/newtask", "null"), ("/api/newtask", "{}"),
    ("/api/send_task", '[{%s}]' % TASK), ("/api/send_task", "5"),
    ("/api/newtask", '{"project": 5, "url": "http://a/x"}'), ("/api/newtask", '{"project": "p", "url": []}'),
    ("/api/newtask", '{%s, "schedule": "soon"}' % TASK), ("/api/send_task", '{%s, "schedule": [1]}' % TASK),
    ("/api/newtask", '{%s, "fetch": {"headers": {"X-N": 1}}}' % TASK),
    ("/api/send_task", '{%s, "fetch": {"cookies": {"c": null}}}' % TASK),
    ("/api/newtask", '{%s, "fetch": {"method": 1}}' % TASK), ("/api/send_task", '{%s, "status": 7}' % TASK),
    ("/api/newtask", '{%s, "taskid": ""}' % TASK), ("/api/send_task", '{%s, "process": "cb"}' % TASK),
    ("/api/newtask", '{"project": "p", "url": "http://a/x", "fetch": {"save": %s}}' % DEEP),
    ("/api/send_task", '{"project": "p", "url": "http://a/x", "fetch": {"save": %s}}' % DEEP),
    ("/api/message", '{"project": "p", "message": %s}' % DEEP), ("/api/run", DEEP),
    ("/api/active_tasks?limit=99999999999999999999", None), ("/api/newtask", "{not json"),
]


def test_malformed_input_is_a_400_with_a_message(h, ctl):
    wrong = []
    for path, raw in MALFORMED:
        method = "GET" if raw is None else "POST"
        status, body, _ = request(ctl.port, method, path, None if raw is None else raw.encode(),
                                  headers={"Content-Type": "application/json"}, token=ctl.token)
        if status != 400 or not body["error"] or "Internal Server Error" in body["error"]:
            wrong.append((path, (raw or "")[:80], status, body))
    assert not wrong, "\n".join(map(str, wrong))
    received_nothing(h)


# -- the web UI's link --------------------------------------------------------------------------------

def test_the_web_ui_link_reports_a_refusing_scheduler_as_unavailable(h, ctl, tmp_path):
    async def status_of(client):
        link = SchedulerLink(client, executor)
        with pytest.raises(SchedulerUnavailable):
            await link.call("size")
        assert await link.get("projects", default="none") == "none"
        return link.status

    with ThreadPoolExecutor(2) as executor:
        # 0.0.0.0 reaches this machine, but is not a loopback name: the port refuses it
        status = asyncio.run(status_of(ControlClient(f"http://0.0.0.0:{ctl.port}", ctl.token)))
        assert status.reachable is False and status.error.startswith("403 ") and "loopback host name" in status.error
        missing = str(tmp_path / "elsewhere" / "scheduler.token")
        status = asyncio.run(status_of(ControlClient(ctl.url, token_file=missing)))
        assert status.reachable is False and status.error.startswith("401 ") and missing in status.error
        link = SchedulerLink(ControlClient(ctl.url, token_file=token_path(h.settings.data_dir)), executor)
        assert asyncio.run(link.call("size")) == 0 and link.status.reachable is True
