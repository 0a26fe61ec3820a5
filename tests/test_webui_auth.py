"""The web UI's security: the bind rule, logins, basic and bearer auth, xsrf, and locked projects."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from spiderflow.cli.webui import webui as webui_command
from spiderflow.exceptions import ConfigError
from spiderflow.settings import Settings
from spiderflow.webui import build_webui, check_webui_settings
import test_webui
from test_webui import Client, add_project

# the web UI fixtures of test_webui, shared
dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- binding -----------------------------------------------------------------------------------

def test_only_loopback_without_credentials(tmp_path):
    check_webui_settings(Settings())
    check_webui_settings(Settings(webui_host="::1"))
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        with pytest.raises(ConfigError, match="open to the network"):
            check_webui_settings(Settings(webui_host=host))
    check_webui_settings(Settings(webui_host="0.0.0.0", username="u", password="p"))
    check_webui_settings(Settings(webui_host="0.0.0.0", token="t"))
    with pytest.raises(ConfigError, match="both --username and --password"):
        check_webui_settings(Settings(webui_host="0.0.0.0", username="u"))
    with pytest.raises(ConfigError, match="open to the network"):
        build_webui(Settings(webui_host="0.0.0.0", data_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())            # refused before opening anything


def test_cli_refuses_an_open_address(tmp_path):
    result = CliRunner().invoke(webui_command, ["--host", "0.0.0.0", "--port", "0", "--projectdb",
                                                f"sqlite:///{tmp_path}/p.db"])
    assert result.exit_code == 1
    assert "open to the network" in result.output and "--username" in result.output


def test_cli_serves_and_stops_on_sigterm(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "from spiderflow.cli.webui import webui; webui()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--scheduler-port", "1"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SPIDERFLOW_DATA_DIR": str(tmp_path / "data")})
    try:
        lines = []
        while not any(f"web UI on http://127.0.0.1:{port}/" in line for line in lines):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)          # EOF: it exited
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert b"scheduler not reachable" in response.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


# -- credentials -----------------------------------------------------------------------------------

@pytest.fixture
def secured(serve, dbs):
    add_project(dbs, "p")
    return serve(username="admin", password="s3cret", token="tok")[1]


def test_pages_and_api_need_credentials(secured):
    page = secured.get("/")
    assert page.status == 302 and page.headers["Location"] == "/login?next=%2F"
    assert secured.get("/debug/p").headers["Location"].startswith("/login?next=")
    api = secured.get("/api/projects")
    assert api.status == 401 and "authentication required" in api.json["error"]
    assert api.headers["WWW-Authenticate"] == 'Basic realm="spiderflow"'
    ours = secured.get("/api/projects", headers={"X-Requested-With": "spiderflow"})
    assert ours.status == 401 and "WWW-Authenticate" not in ours.headers
    assert secured.get("/api/projects", headers=basic("admin", "wrong")).status == 401
    assert secured.get("/api/projects", headers={"Authorization": "Bearer nope"}).status == 401
    assert secured.get("/login").status == 200
    assert secured.get("/static/style.css").status == 200


def test_basic_auth_reads_but_writes_need_xsrf(secured):
    auth = basic("admin", "s3cret")
    assert secured.get("/api/projects", headers=auth).json["projects"][0]["name"] == "p"
    assert secured.get("/", headers=auth).status == 200
    refused = secured.patch("/api/projects/p", {"status": "STOP"}, headers=auth, xsrf=False)
    assert refused.status == 403 and "_xsrf" in refused.json["error"]


def test_bearer_token_needs_no_xsrf(secured, dbs):
    bearer = {"Authorization": "Bearer tok"}
    changed = secured.patch("/api/projects/p", {"status": "STOP"}, headers=bearer, xsrf=False)
    assert changed.status == 200, changed
    assert secured.post("/api/projects", {"name": "q"}, headers=bearer, xsrf=False).status == 201


def test_login_form_sets_a_session(secured):
    xsrf = secured.xsrf()
    form = {"username": "admin", "password": "wrong", "next": "/debug/p", "_xsrf": xsrf}
    body = urllib.parse.urlencode(form).encode()
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    failed = secured.post("/login", data=body, headers=form_type, xsrf=False)
    assert failed.status == 403 and "Wrong user name or password" in failed.text
    no_xsrf = urllib.parse.urlencode({**form, "password": "s3cret", "_xsrf": ""}).encode()
    assert secured.post("/login", data=no_xsrf, headers=form_type, xsrf=False).status == 403
    good = urllib.parse.urlencode({**form, "password": "s3cret"}).encode()
    answer = secured.post("/login", data=good, headers=form_type, xsrf=False)
    assert answer.status == 302 and answer.headers["Location"] == "/debug/p"
    assert secured.get("/debug/p").status == 200
    # the login started a new session: the token from before it is worthless
    assert secured.patch("/api/projects/p", {"comments": "old token"}, headers={"X-XSRFToken": xsrf}).status == 403
    secured._xsrf = None
    xsrf = secured.xsrf()
    assert secured.patch("/api/projects/p", {"comments": "via session"}).status == 200
    assert secured.patch("/api/projects/p", {"comments": "no xsrf"}, xsrf=False).status == 403
    # the token works in the password field too; next= never leaves the site
    other = Client(secured.url)
    login = {"username": "", "password": "tok", "next": "//evil.test/", "_xsrf": other.xsrf()}
    answer = other.post("/login", data=urllib.parse.urlencode(login).encode(), headers=form_type, xsrf=False)
    assert answer.status == 302 and answer.headers["Location"] == "/"
    # logging out ends the session
    out = secured.post("/logout", data=urllib.parse.urlencode({"_xsrf": xsrf}).encode(), headers=form_type, xsrf=False)
    assert out.status == 302 and secured.get("/").status == 302


# -- xsrf without credentials ----------------------------------------------------------------------

def test_every_state_change_needs_the_xsrf_token(client, dbs):
    add_project(dbs, "p", status="STOP")
    for method, path, body in (("POST", "/api/projects", {"name": "q"}), ("PATCH", "/api/projects/p", {"rate": 2}),
                               ("POST", "/api/projects/p", {"rate": 2}), ("DELETE", "/api/projects/p", None),
                               ("POST", "/api/projects/p/run", None), ("POST", "/api/debug/p", {"url": "data:,x"})):
        kwargs = {} if body is None else {"body": body}
        answer = client.request(method, path, xsrf=False, **kwargs)
        assert answer.status == 403, (method, path, answer)
        assert "_xsrf" in answer.json["error"]
        forged = client.request(method, path, xsrf=False, headers={"X-XSRFToken": "2|00|11|22"}, **kwargs)
        assert forged.status == 403
    assert dbs.projectdb.get("p")["rate"] == 1.0 and dbs.projectdb.get("q") is None
    assert client.patch("/api/projects/p", {"rate": 2}).status == 200


# -- the lock group ------------------------------------------------------------------------------------

def test_locked_projects_are_read_only_without_credentials(client, dbs):
    add_project(dbs, "p", group="team lock", status="STOP")
    assert client.get("/api/projects/p").json["project"]["locked"] is True
    assert client.get("/api/projects/p").json["project"]["editable"] is False
    for method, path, body in (("PATCH", "/api/projects/p", {"script": "x"}),
                               ("PATCH", "/api/projects/p", {"group": ""}),
                               ("DELETE", "/api/projects/p", None), ("POST", "/api/projects/p/run", None)):
        kwargs = {} if body is None else {"body": body}
        answer = client.request(method, path, **kwargs)
        assert answer.status == 403 and "locked" in answer.json["error"] and "read-only" in answer.json["error"]
    page = client.get("/debug/p").text
    assert "locked: read-only" in page and "readonly>" in page
    assert "disabled" in client.get("/").text.split('data-name="p"')[1].split("</tr>")[0]
    # the debugger runs code too: a locked project cannot be debugged, with its own script or another
    for body in ({"task": {"url": "data:,x", "process": {"callback": "on_start"}}},
                 {"url": "data:,x", "script": "print('hi')"}):
        answer = client.post("/api/debug/p", body)
        assert answer.status == 403 and "locked" in answer.json["error"] and "debug" in answer.json["error"]
    assert 'id="run"' in page and "log in to debug it" in page
    assert dbs.projectdb.get("p")["group"] == "team lock"


def test_locked_projects_are_editable_when_logged_in(serve, dbs):
    add_project(dbs, "p", group="lock")
    _server, client = serve(username="admin", password="pw")
    auth = basic("admin", "pw")
    assert client.get("/api/projects/p", headers=auth).json["project"]["editable"] is True
    assert client.post("/api/debug/p", {"url": "data:,x", "callback": "on_start"}, headers=auth).json["ok"] is True
    assert client.patch("/api/projects/p", {"group": ""}, headers=auth).status == 200
    assert dbs.projectdb.get("p")["group"] == ""


def test_without_credentials_only_loopback_host_names_are_served(client, serve):
    for host in ("localhost:5000", "127.0.0.1", "[::1]:80", "LOCALHOST"):
        assert client.get("/api/projects", headers={"Host": host}).status == 200, host
    for path in ("/", "/api/xsrf", "/api/projects", "/login"):
        answer = client.get(path, headers={"Host": "rebound.evil.test:5000"})
        assert answer.status == 403, path
        assert "loopback host name" in answer.text
    # with credentials any name may be used (the credentials protect it)
    _server, secured = serve(token="tok")
    assert secured.get("/api/projects", headers={"Host": "ui.example", "Authorization": "Bearer tok"}).status == 200
