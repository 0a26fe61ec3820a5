"""The web UI with a real scheduler behind its control interface, and with one that is down."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from spiderflow.message import ProjectStatus, StatusPack, Task, Track
from spiderflow.queues import QUEUE_NAMES, connect_queue
from spiderflow.scheduler import ControlClient, ThreadedScheduler, serve_control
from spiderflow.settings import Settings
from spiderflow.storage import NodeDB
import test_webui
from test_webui import add_project, add_task

# the web UI fixtures of test_webui, shared
dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client


class ControlServer:
    """The control interface of *scheduler* on its own event loop in a thread."""

    def __init__(self, scheduler):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server, self.port = serve_control(scheduler, host="127.0.0.1", port=0, token="ctl")
            ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
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


@pytest.fixture
def scheduler(dbs, tmp_path):
    queues = {name: connect_queue("memory://", name) for name in QUEUE_NAMES}
    sched = ThreadedScheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb,
                              newtask_queue=queues["newtask_queue"], status_queue=queues["status_queue"],
                              out_queue=queues["scheduler2fetcher"], settings=Settings(data_dir=str(tmp_path)),
                              counter_file=None)
    server = ControlServer(sched)
    yield SimpleNamespace(scheduler=sched, client=ControlClient(server.url, "ctl"), queues=queues)
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dashboard_and_api_with_a_running_scheduler(dbs, serve, scheduler):
    add_project(dbs, "p", status="RUNNING")
    scheduler.scheduler.run_once()
    _server, client = serve(control=scheduler.client, queues=scheduler.queues)
    projects = client.get("/api/projects").json
    assert projects["scheduler"]["reachable"] is True
    p = projects["projects"][0]
    assert p["name"] == "p" and p["paused"] is False and p["scheduler"]["pause"] == "running"

    # Run asks the scheduler for on_start; it is dispatched to scheduler2fetcher
    answer = client.post("/api/projects/p/run")
    assert answer.status == 200 and answer.json == {"project": "p", "taskid": "on_start", "status": "RUNNING"}
    for _ in range(3):
        scheduler.scheduler.run_once()
    out = scheduler.queues["scheduler2fetcher"]
    assert client.get("/api/queues").json["queues"]["scheduler2fetcher"] == out.qsize() > 0
    sent = [out.get(timeout=1).taskid for _ in range(out.qsize())]
    assert "_on_get_info" in sent                      # on_start waits for the script's answer
    assert dbs.taskdb.get("p", "on_start")["status"] == "ACTIVE"
    scheduler.queues["status_queue"].put(StatusPack(taskid="_on_get_info", project="p", url="data:,_on_get_info",
                                                    track=Track(process={"ok": True, "save": {}})))
    for _ in range(3):
        scheduler.scheduler.run_once()
    assert [t.taskid for t in out.get_many(10)] == ["on_start"]
    scheduler.queues["newtask_queue"].put(Task.create("p", "http://a.test/x"))
    assert client.get("/api/queues").json["queues"]["newtask_queue"] == 1
    assert '<span class="qsize">1</span>' in client.get("/").text

    counters = client.get("/api/counters").json
    assert counters["source"] == "scheduler" and "5m" in counters["counters"]["p"]
    assert counters["counters"]["p"]["all"]["pending"] >= 1
    assert client.get("/api/counters?project=p&window=5m").json["counters"]["p"].keys() == {"5m"}

    active = client.get("/api/active_tasks?project=p").json["tasks"]
    assert any(t["taskid"] == "on_start" for t in active)
    page = client.get("/tasks?project=p").text
    assert "Recent activity" in page and "on_start" in page and "scheduler connected" in page

    # a status change reaches the scheduler at once (no wait for its projectdb poll)
    client.patch("/api/projects/p", {"status": "STOP"})
    scheduler.scheduler.run_once()
    assert scheduler.scheduler.projects["p"].status is ProjectStatus.STOP
    assert "not reachable" not in client.get("/nodes").text


def test_run_of_a_stopped_project_says_it_waits(dbs, serve, scheduler):
    add_project(dbs, "p", status="TODO")
    _server, client = serve(control=scheduler.client)
    answer = client.post("/api/projects/p/run").json
    assert answer["taskid"] == "on_start" and "waits until it is RUNNING or DEBUG" in answer["note"]


def test_pages_render_when_the_scheduler_is_down(dbs, serve):
    add_project(dbs, "p", status="RUNNING")
    task = add_task(dbs)
    _server, client = serve(control=ControlClient(f"http://127.0.0.1:{free_port()}", timeout=2))
    for path in ("/", "/tasks", "/tasks?project=p", "/nodes", "/debug/p", f"/task/p/{task.taskid}", "/results/p"):
        answer = client.get(path)
        assert answer.status == 200, path
    dashboard = client.get("/").text
    assert "scheduler not reachable" in dashboard and 'id="scheduler-banner"' in dashboard
    assert 'data-name="p"' in dashboard
    assert "not reachable at http://127.0.0.1:" in client.get("/nodes").text
    assert task.taskid in client.get("/tasks").text
    projects = client.get("/api/projects").json
    assert projects["scheduler"]["reachable"] is False and "cannot reach" in projects["scheduler"]["error"]
    assert projects["projects"][0]["paused"] is None
    assert client.get("/api/counters").json["source"] == "taskdb"
    assert client.post("/api/projects/p/run").status == 503
    assert client.patch("/api/projects/p", {"status": "STOP"}).status == 200   # the databases still work


def test_a_wrong_scheduler_token_counts_as_unreachable(dbs, serve, scheduler):
    add_project(dbs, "p")
    _server, client = serve(control=ControlClient(scheduler.client.url, "wrong"))
    status = client.get("/api/projects").json["scheduler"]
    assert status["reachable"] is False and "401" in status["error"]



def test_nodes_page_and_api_show_the_registry(dbs, client):
    """Nodes registered in the projectdb database appear, escaped, on /nodes and /api/nodes."""
    now = time.time()
    nodedb = NodeDB(dbs.projectdb.engine)
    nodedb.register({"id": "a1", "name": "fetcher@box:1", "kind": "fetcher", "host": "box", "pid": 1,
                     "version": "0.1.0", "started_at": now})
    nodedb.register({"id": "b2", "name": "processor@<script>x", "kind": "processor", "host": "box", "pid": 2,
                     "version": "0.1.0", "started_at": now - 1000, "last_seen": now - 500})
    online = client.get("/api/nodes").json["nodes"]
    assert [n["name"] for n in online] == ["fetcher@box:1"]
    everyone = client.get("/api/nodes?all=1").json["nodes"]
    assert [(n["name"], n["status"]) for n in everyone] == [("fetcher@box:1", "online"),
                                                             ("processor@<script>x", "offline")]
    page = client.get("/nodes").text
    assert "fetcher@box:1" in page and "processor@&lt;script&gt;x" in page and "<script>x" not in page
