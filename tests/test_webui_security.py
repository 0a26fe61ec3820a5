"""Cross-site requests against the web UI, and the debugger's worker process and its limits.

The attack of the issue: a page on another port of 127.0.0.1 sets a cookie ``_xsrf=V``
(cookies ignore ports) and posts ``?_xsrf=V`` with a text/plain JSON body to
``/api/debug/<name>``. Every piece of it is refused on its own: the foreign Origin, the
token that is not the session's, the body that is not ``application/json``.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse

import pytest
import test_webui
from test_webui import Client, add_project

from spiderflow.webui import guard

# the web UI fixtures of test_webui, shared
dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client

ATTACKER = "http://127.0.0.1:18802"


def marker_script(path) -> str:
    return f"""
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        open({str(path)!r}, "w").write("the script ran")
"""


def raw(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request with exactly these headers (no cookie jar, no defaults); (status, headers, JSON or text)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, response.headers, json.loads(data)
    except ValueError:
        return response.status, response.headers, data.decode("utf-8", "replace")


def session_headers(client: Client) -> dict[str, str]:
    """The Cookie header of *client*'s session and its token, for raw requests."""
    token = client.xsrf()
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.jar)
    return {"Cookie": cookie, "X-XSRFToken": token}


# -- the rules, as functions ---------------------------------------------------------------------

def test_origin_rule():
    def check(host="127.0.0.1:5000", scheme="http", **headers):
        return guard.foreign_origin({k.replace("_", "-"): v for k, v in headers.items()}, host, scheme)

    assert check() is None                                             # curl, scripts: no Origin, no Referer
    assert check(Origin="http://127.0.0.1:5000") is None
    assert check(Referer="http://127.0.0.1:5000/debug/p?x=1") is None
    assert check("LOCALHOST:5000", Origin="http://localhost:5000") is None
    assert check("[::1]:5000", Origin="http://[::1]:5000") is None
    assert check("ui.example", "https", Origin="https://ui.example") is None
    assert check("ui.example:443", "https", Origin="https://ui.example") is None
    assert check("ui.example", "http", Origin="https://ui.example") is None   # TLS ended at a proxy
    assert check(Origin="http://127.0.0.1:5000", Sec_Fetch_Site="same-origin") is None
    for bad in ({"Origin": ATTACKER}, {"Origin": "http://localhost:5000"}, {"Origin": "null"},
                {"Origin": "http://127.0.0.1"}, {"Origin": "file://"}, {"Referer": ATTACKER + "/page"},
                {"Origin": "http://127.0.0.1:5000", "Sec-Fetch-Site": "same-site"},
                {"Sec-Fetch-Site": "cross-site"},
                {"Origin": ATTACKER, "Referer": "http://127.0.0.1:5000/"}):   # Origin decides
        why = guard.foreign_origin(bad, "127.0.0.1:5000", "http")
        assert why and why.startswith("cross-origin request refused"), bad
    assert guard.non_json_body("text/plain", b"{}") and guard.non_json_body(None, b"{}")
    assert guard.non_json_body("application/json; charset=utf-8", b"{}") is None
    assert guard.non_json_body("application/x-www-form-urlencoded", b"") is None   # nothing to read


# -- the attack of the issue -----------------------------------------------------------------------

def test_the_reported_attack_is_refused(dbs, client, tmp_path):
    add_project(dbs, "p")
    marker = tmp_path / "pwned"
    body = json.dumps({"script": marker_script(marker), "task": {"url": "data:,x", "process": {"callback": "on_start"}}})
    attack = {"Cookie": "_xsrf=V", "Content-Type": "text/plain", "Origin": ATTACKER}
    status, _h, answer = raw(client.url, "POST", "/api/debug/p?_xsrf=V", body.encode(), attack)
    assert status == 403 and "cross-origin request refused" in answer["error"] and ATTACKER in answer["error"]
    # without the Origin (an old browser, or a page that hid it): the token is not the session's
    status, _h, answer = raw(client.url, "POST", "/api/debug/p?_xsrf=V", body.encode(),
                             {k: v for k, v in attack.items() if k != "Origin"})
    assert status == 403 and "_xsrf" in answer["error"]
    # a Referer of the other port is refused like its Origin
    status, _h, answer = raw(client.url, "POST", "/api/debug/p?_xsrf=V", body.encode(),
                             {"Cookie": "_xsrf=V", "Content-Type": "text/plain", "Referer": ATTACKER + "/evil.html"})
    assert status == 403 and "Referer" in answer["error"]
    # the browser's own word (Sec-Fetch-Site) for the same page
    status, _h, answer = raw(client.url, "POST", "/api/debug/p", body.encode(),
                             {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"})
    assert status == 403 and "Sec-Fetch-Site: same-site" in answer["error"]
    assert not marker.exists()


def test_the_token_is_bound_to_a_signed_session(dbs, client, serve, tmp_path):
    add_project(dbs, "p")
    marker = tmp_path / "pwned"
    body = json.dumps({"script": marker_script(marker), "url": "data:,x", "callback": "on_start"}).encode()
    mine = session_headers(client)
    json_type = {"Content-Type": "application/json"}
    # an outsider's cookies: tornado's old _xsrf pair, an unsigned session, another UI's signed session
    _other_server, other_ui = serve()
    stranger = session_headers(other_ui)
    for cookie, token in (("_xsrf=V", "V"), ("spiderflow_session=" + "0" * 32 + ":", "V"),
                          (stranger["Cookie"], stranger["X-XSRFToken"]),        # signed with another secret
                          (mine["Cookie"], stranger["X-XSRFToken"]),            # another session's token
                          (mine["Cookie"], mine["X-XSRFToken"][:-1] + ("1" if mine["X-XSRFToken"][-1] == "0" else "0"))):
        status, _h, answer = raw(client.url, "POST", "/api/debug/p", body, {**json_type, "Cookie": cookie,
                                                                           "X-XSRFToken": token})
        assert status == 403 and "_xsrf" in answer["error"], (cookie, answer)
    # the real token, but in the query string (where it leaks) instead of the header
    status, _h, answer = raw(client.url, "POST", f"/api/debug/p?_xsrf={mine['X-XSRFToken']}", body,
                             {**json_type, "Cookie": mine["Cookie"]})
    assert status == 403 and "missing" in answer["error"]
    assert not marker.exists()
    # the session's own token works, from the UI's own origin or from a script without one
    own = {**json_type, **mine, "Origin": client.url, "Referer": client.url + "/debug/p"}
    status, _h, answer = raw(client.url, "POST", "/api/debug/p", body, own)
    assert status == 200 and answer["ok"], answer
    assert marker.read_text() == "the script ran"


def test_api_bodies_must_be_json(dbs, client):
    add_project(dbs, "p", status="STOP")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = client.patch("/api/projects/p", data=b'{"rate": 7}', headers=headers)
        assert answer.status == 415, (content_type, answer)
        assert "application/json" in answer.json["error"]
    assert dbs.projectdb.get("p")["rate"] == 1.0
    assert client.patch("/api/projects/p", data=b'{"rate": 7}',
                        headers={"Content-Type": "Application/JSON; charset=utf-8"}).status == 200
    assert client.post("/api/projects", {"name": "q"}).status == 201
    assert dbs.projectdb.get("p")["rate"] == 7.0


def test_forms_from_another_origin_are_refused(serve, dbs):
    _server, secured = serve(username="admin", password="pw")
    token = secured.xsrf()
    form = urllib.parse.urlencode({"username": "admin", "password": "pw", "_xsrf": token}).encode()
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = secured.post("/login", data=form, headers={**form_type, "Origin": ATTACKER})
    assert answer.status == 403 and "cross-origin request refused" in answer.text
    assert answer.headers["Content-Type"].startswith("text/html")
    answer = secured.post("/login", data=form, headers={**form_type, "Origin": secured.url})
    assert answer.status == 302
    # a DNS-rebound name is refused before anything else when there are no credentials
    _plain, client = serve()
    answer = client.post("/api/projects", {"name": "x"}, headers={"Host": "rebound.evil.test:80",
                                                                  "Origin": "http://rebound.evil.test"})
    assert answer.status == 403 and "loopback host name" in answer.json["error"]


# -- the debugger's worker process -----------------------------------------------------------------

WORKER_SCRIPT = """
import os, subprocess, sys
from spiderflow import *

print("printed while loading")


def open_files():
    files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:               # the listing's own descriptor, closed by now
            pass
    return files

class Handler(BaseHandler):
    def on_start(self):
        os.write(1, b"raw bytes on fd 1\\n")
        child = subprocess.Popen(["sleep", "30"])
        return {"pid": os.getpid(), "child": child.pid,
                "env": sorted(k for k in os.environ if "SPIDERFLOW" in k or "secret" in os.environ[k]),
                "files": open_files()}

    def spin(self, response):
        while True:
            pass

    def hog(self, response):
        hoard = []
        while True:
            hoard.append(bytearray(64 * 1024 * 1024))

    def crash(self, response):
        os._exit(7)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" in fh.read()       # a zombie nobody reaped (PID 1 of a container)
    except FileNotFoundError:
        return True


def debug(client, callback):
    return client.post("/api/debug/p", {"url": "data:,x", "callback": callback})


@pytest.fixture
def worker_ui(serve, dbs, monkeypatch):
    monkeypatch.setenv("SPIDERFLOW_TASKDB", "postgresql://crawler:secret@db-host/crawl")
    add_project(dbs, "p", script=WORKER_SCRIPT)
    server, client = serve()
    server.state.debugger.time_limit = 3
    server.state.debugger.memory_limit = 512 * 2**20
    return server, client


def test_debug_runs_in_a_worker_without_credentials(worker_ui):
    server, client = worker_ui
    report = debug(client, "on_start").json
    assert report["ok"], report
    result = report["results"][0]
    assert result["pid"] != os.getpid()
    assert result["env"] == []                          # no SPIDERFLOW_* database URL reached it
    assert not [f for f in result["files"] if f.endswith(".db")], result["files"]   # no database file open
    deadline = time.monotonic() + 5                     # what the script started dies with its worker
    while not _gone(result["child"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(result["child"])
    # the next run is another process: nothing a script leaves behind reaches the next one
    assert debug(client, "on_start").json["results"][0]["pid"] != result["pid"]
    workers = [proc.pid for proc in server.state.debugger._workers]
    assert workers                                      # the spare for the next run
    server.close()
    assert all(_gone(pid) for pid in workers)


def test_a_run_past_the_time_limit_is_killed_and_the_ui_answers(worker_ui):
    _server, client = worker_ui
    answers = {}
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answers.setdefault("spin", debug(client, "spin")))
    thread.start()
    time.sleep(0.5)
    listing = Client(client.url).get("/api/projects")
    assert listing.status == 200 and time.monotonic() - started < 2          # the UI is not held up
    thread.join(20)
    elapsed = time.monotonic() - started
    report = answers["spin"].json
    assert answers["spin"].status == 200 and not report["ok"] and report["limit"] == "time"
    assert "exceeded its time limit of 3 s" in report["exception"] and "killed" in report["exception"]
    assert 3 <= elapsed < 8
    assert debug(client, "on_start").json["ok"]          # and the debugger still works


def test_a_run_past_the_memory_limit_fails_clearly(worker_ui):
    _server, client = worker_ui
    report = debug(client, "hog").json
    assert not report["ok"] and report["limit"] == "memory"
    assert "MemoryError" in report["exception"]
    assert "memory limit of 512 MiB (debug_memory_limit)" in report["exception"]
    crashed = debug(client, "crash").json
    assert not crashed["ok"] and "exit status 7" in crashed["exception"]
    assert "printed while loading" in "\n".join(crashed["logs"])
