"""The scheduler's HTTP + JSON control interface and its client, on a real server on port 0."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import urllib.error
import urllib.request

import pytest
from test_scheduler import Harness

from spiderflow.exceptions import ConfigError
from spiderflow.message import Task
from spiderflow.scheduler import ControlClient, ControlError, ThreadedScheduler, serve_control
from spiderflow.scheduler.control import read_token_file, token_path


class ServerThread:
    """The control interface of *scheduler*, served from an event loop in a thread."""

    def __init__(self, scheduler, token=None):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server, self.port = serve_control(scheduler, host="127.0.0.1", port=0, token=token)
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        assert ready.wait(5)
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token or read_token_file(token_path(scheduler.settings.data_dir))

    def _run(self, start):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self):
        async def stop():
            self.server.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path, cls=ThreadedScheduler)     # its lock guards calls from the server thread
    harness.add_project(rate=1, burst=1)
    harness.start("p")
    yield harness
    harness.close()


@pytest.fixture
def server(h):
    srv = ServerThread(h.scheduler)
    yield srv
    srv.close()


def _raw(url, method="GET", body=None, headers=None, token=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
               **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"].startswith("application/json")
        return exc.code, json.loads(exc.read())


def test_client_round_trip(h, server):
    client = ControlClient(server.url, server.token)
    assert client.newtask({"project": "p", "url": "http://a/1"}) == 1
    assert client.newtask([Task.create("p", "http://a/2"), {"project": "p", "url": "http://a/3"}]) == 2
    h.run()
    assert client.size() == 3
    assert len(h.sent_normal()) == 1
    assert client.send_task({"project": "p", "url": "http://a/9"}) is True
    assert client.send_task({"project": "p", "url": "http://a/9"}) is False      # in flight
    tasks = client.active_tasks(project="p", limit=1)
    assert [t["url"] for t in tasks] == ["http://a/9"] and tasks[0]["event"] == "dispatched"
    assert client.paused() == {"p": {"paused": False, "state": "running", "fail_streak": 0}}
    assert client.paused("p") is False
    assert client.counters()["p"]["5m"]["pending"] == 4
    assert list(client.counters("p", "1h")["p"]) == ["1h"]
    assert client.projects()[0]["name"] == "p"
    assert client.run("p") == "on_start"
    client.send_message("p", {"hi": [1, 2]})
    client.update_project()
    h.clock.advance(10)
    h.run()
    sent = {t.taskid: t for t in h.sent()}
    assert sent["_on_message"].fetch.save == {"hi": [1, 2]}
    assert "on_start" in sent


def test_errors_are_json_with_status(h, server):
    api = server.url + "/api"
    raw = functools.partial(_raw, token=server.token)
    assert raw(f"{api}/newtask", "POST", {"project": "p"})[0] == 400               # missing url
    assert raw(f"{api}/newtask", "POST", {"project": "nope", "url": "http://x"})[0] == 404
    assert raw(f"{api}/newtask", "POST", b"{not json")[0] == 400
    assert raw(f"{api}/newtask", "POST", [])[0] == 400
    assert raw(f"{api}/newtask", "POST", [1, 2])[0] == 400
    assert raw(f"{api}/newtask", "POST", {"project": "p", "url": "http://x", "schedule": {"priority": "hi"}})[0] == 400
    assert raw(f"{api}/send_task", "POST", "a string")[0] == 400
    assert raw(f"{api}/run", "POST", {"project": "nope"}) == (404, {"error": "unknown project 'nope'"})
    assert raw(f"{api}/run", "POST", {})[0] == 400
    assert raw(f"{api}/message", "POST", {"project": "p"})[0] == 400
    assert raw(f"{api}/message", "POST", {"project": "nope", "message": 1})[0] == 404
    assert raw(f"{api}/paused?project=nope")[0] == 404
    assert raw(f"{api}/counters?project=nope")[0] == 404
    assert raw(f"{api}/counters?window=2h")[0] == 400
    assert raw(f"{api}/active_tasks?limit=many")[0] == 400
    assert raw(f"{api}/active_tasks?project=nope")[0] == 404
    status, body = raw(f"{api}/nothing-here")
    assert status == 404 and "no such endpoint" in body["error"]
    status, body = raw(f"{api}/size", "POST", {})
    assert status == 405 and "error" in body
    with pytest.raises(ControlError) as err:
        ControlClient(server.url, server.token).run("nope")
    assert err.value.status == 404 and "nope" in err.value.message


def test_token_is_required_when_set(h):
    srv = ServerThread(h.scheduler, token="s3cret")
    try:
        api = srv.url + "/api"
        status, body = _raw(f"{api}/size")
        assert status == 401 and "token" in body["error"]
        assert _raw(f"{api}/size", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _raw(f"{api}/size", headers={"Authorization": "Basic s3cret"})[0] == 401
        assert _raw(f"{api}/size", headers={"Authorization": "Bearer s3cret"}) == (200, {"size": 0})
        assert _raw(f"{api}/nothing", headers={})[0] == 401
        with pytest.raises(ControlError) as err:
            ControlClient(srv.url).size()
        assert err.value.status == 401
        assert ControlClient(srv.url, token="s3cret").size() == 0
    finally:
        srv.close()


def test_refuses_other_addresses_without_token(h):
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ConfigError, match="token"):
            serve_control(h.scheduler, host=host, port=0)


def test_client_reports_unreachable_server():
    with pytest.raises(ControlError) as err:
        ControlClient("http://127.0.0.1:1", timeout=2).size()
    assert err.value.status == 0 and "cannot reach" in err.value.message
