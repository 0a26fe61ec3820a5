"""The web UI's monitoring: ``/metrics`` parsed with prometheus-client's own parser (project
counts, rates and fetch times from a real scheduler, queue sizes, node health from real
heartbeats), its credentials, ``/api/nodes/<id>/history``, and the Nodes page's charts."""

from __future__ import annotations

import base64
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

import test_webui
import test_webui_scheduler
from spiderflow import storage
from spiderflow.message import StatusPack, Task, Track
from spiderflow.nodes import Node
from spiderflow.webui.metrics import CHART_POINTS, node_charts
from test_webui import add_project, add_task

dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client
scheduler = test_webui_scheduler.scheduler


def metrics(answer) -> dict[str, list]:
    """``{family name: [(sample name, labels, value)]}`` of a /metrics answer."""
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(answer.text):
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def value(families, family, **labels):
    found = [v for _, got, v in families[family] if all(got.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (family, labels, families.get(family))
    return found[0]


def beating(db_url, node_id, kind, stats, **kw):
    """A real node beating every 0.05 s, with a few heartbeats in the registry; each beat finds 5 more done."""
    def grow():
        stats["done"] = stats.get("done", 0) + 5
        return dict(stats)

    node = Node(lambda: storage.connect_nodedb(db_url), kind, node_id=node_id, stats=grow, interval=0.05, **kw).start()
    db = storage.connect_nodedb(db_url)
    try:
        deadline = time.monotonic() + 10
        while len(db.history(node_id)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        db.close()
    return node


def test_metrics_of_projects_queues_and_nodes(dbs, serve, scheduler, tmp_path):
    db_url = f"sqlite:///{tmp_path}/project.db"
    add_project(dbs, "p", status="RUNNING")
    sched, queues = scheduler.scheduler, scheduler.queues
    sched.run_once()
    queues["status_queue"].put(StatusPack(taskid="_on_get_info", project="p", url="data:,_on_get_info",
                                          track=Track(process={"ok": True, "save": {}})))
    task = Task.create("p", "http://a.test/page")
    queues["newtask_queue"].put(task)
    for _ in range(5):
        sched.run_once()
    sent = {t.taskid for t in queues["scheduler2fetcher"].get_many(100)}
    assert task.taskid in sent
    queues["status_queue"].put(StatusPack(taskid=task.taskid, project="p", url=task.url, track=Track(
        fetch={"ok": True, "status_code": 200, "time": 0.25}, process={"ok": True, "time": 0.02})))
    for _ in range(3):
        sched.run_once()
    for _ in range(3):
        queues["fetcher2processor"].put(Task.create("p", f"http://a.test/{_}"))   # three waiting messages

    fetcher = beating(db_url, "box/fetcher#0", "fetcher", {"in_flight": 2, "errors": 1}, device="box")
    gone = beating(db_url, "old-one", "processor", {"errors": 0})
    gone.stop()
    try:
        _server, web = serve(control=scheduler.client, queues=queues)
        families = metrics(web.get("/metrics"))
    finally:
        fetcher.stop()

    assert value(families, "spiderflow_scheduler_up") == 1.0
    assert value(families, "spiderflow_scheduler_active_tasks") >= 0
    assert value(families, "spiderflow_queue_messages", queue="fetcher2processor") == 3.0
    assert value(families, "spiderflow_queue_messages", queue="scheduler2fetcher") == 0.0
    assert value(families, "spiderflow_project_tasks", project="p", status="success") >= 1
    assert value(families, "spiderflow_project_events", project="p", window="5m", event="success") >= 1
    assert value(families, "spiderflow_project_event_rate", project="p", event="success") == pytest.approx(
        value(families, "spiderflow_project_events", project="p", window="5m", event="success") / 300)
    assert value(families, "spiderflow_project_fetch_seconds", project="p", window="5m") == pytest.approx(0.25)
    assert value(families, "spiderflow_project_process_seconds", project="p", window="1h") == pytest.approx(0.02)

    assert value(families, "spiderflow_nodes", status="online") == 1.0
    assert value(families, "spiderflow_nodes", status="stopped") == 1.0
    node = {"node": "box/fetcher#0", "kind": "fetcher", "device": "box"}
    assert value(families, "spiderflow_node_up", **node) == 1.0
    assert value(families, "spiderflow_node_up", node="old-one") == 0.0
    assert value(families, "spiderflow_node_info", node="old-one", status="stopped") == 1.0
    assert 0 <= value(families, "spiderflow_node_cpu_percent", **node) <= 100
    assert 0 < value(families, "spiderflow_node_memory_percent", **node) <= 100
    assert 0 < value(families, "spiderflow_node_disk_percent", **node) <= 100
    assert value(families, "spiderflow_node_load1", **node) >= 0
    assert value(families, "spiderflow_node_tasks_running", **node) == 2.0
    assert value(families, "spiderflow_node_errors", **node) == 1.0                     # a counter: *_total
    assert families["spiderflow_node_errors"][0][0] == "spiderflow_node_errors_total"
    assert value(families, "spiderflow_node_tasks_done", **node) >= 15
    assert value(families, "spiderflow_node_throughput", **node) > 0
    assert value(families, "spiderflow_node_network_received_bytes", **node) > 0
    assert value(families, "spiderflow_node_process_resident_memory_bytes", **node) > 2**20
    assert value(families, "spiderflow_node_heartbeat_age_seconds", **node) < 60
    assert not [s for s in families["spiderflow_node_cpu_percent"] if s[1]["node"] == "old-one"]   # gone: no health


def test_metrics_without_a_scheduler_count_taskdb(dbs, client):
    add_project(dbs, "p")
    add_task(dbs, status="SUCCESS")
    add_task(dbs, url="http://a.test/2", status="ACTIVE")
    families = metrics(client.get("/metrics"))
    assert value(families, "spiderflow_scheduler_up") == 0.0
    assert "spiderflow_scheduler_active_tasks" not in families and "spiderflow_queue_messages" not in families
    assert value(families, "spiderflow_project_tasks", project="p", status="success") == 1.0
    assert value(families, "spiderflow_project_tasks", project="p", status="pending") == 1.0
    assert families["spiderflow_project_event_rate"] == [] and families["spiderflow_node_up"] == []
    assert value(families, "spiderflow_nodes", status="online") == 0.0


def test_metrics_need_the_web_uis_credentials(dbs, serve):
    _server, web = serve(username="admin", password="pw", token="tok")
    refused = web.get("/metrics")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert web.get("/metrics", headers={"Authorization": f"Basic {wrong}"}).status == 401
    basic = base64.b64encode(b"admin:pw").decode()
    metrics(web.get("/metrics", headers={"Authorization": f"Basic {basic}"}))   # a Prometheus scrape config
    metrics(web.get("/metrics", headers={"Authorization": "Bearer tok"}))
    assert web.get("/api/nodes/x/history").status == 401


def test_node_history_api_and_the_nodes_page(dbs, client, tmp_path):
    db_url = f"sqlite:///{tmp_path}/project.db"
    node = beating(db_url, "rack/fetcher#0", "fetcher", {"in_flight": 1}, device="rack")
    node.stop()
    path = "/api/nodes/" + urllib.parse.quote("rack/fetcher#0", safe="") + "/history"
    answer = client.get(path)
    assert answer.status == 200, answer
    body = answer.json
    assert body["node"]["id"] == "rack/fetcher#0" and body["node"]["status"] == "stopped"
    assert len(body["history"]) >= 3 and body["history"][0]["at"] <= body["history"][-1]["at"]
    assert {"cpu_percent", "memory_percent", "disk_percent", "load1", "net_sent", "rate"} <= set(body["history"][0])
    assert len(client.get(path + "?limit=2").json["history"]) == 2
    assert client.get("/api/nodes/nobody/history").status == 404
    assert client.get(path + "?since=0").status == 400
    page = client.get("/nodes").text
    assert 'data-node="rack/fetcher#0" data-metric="health"' in page and 'class="cpu" points="' in page
    assert "/metrics" in page


def test_node_charts_scale_and_bound_their_points():
    now = 10_000.0
    beats = [{"at": now - 3600 + i, "cpu_percent": 50.0, "memory_percent": 100.0, "disk_percent": 0.0,
              "rate": float(i % 10)} for i in range(0, 3600, 2)]
    beats.append({"at": now - 7200, "cpu_percent": 99.0, "memory_percent": 1.0, "disk_percent": 1.0, "rate": 1e9})
    chart = node_charts(beats, now)
    assert chart["beats"] == 1800                                  # the one older than an hour is left out
    cpu = [tuple(map(float, p.split(","))) for p in chart["health"]["cpu"].split()]
    assert len(cpu) == CHART_POINTS and all(0 <= x <= chart["width"] for x, _ in cpu)
    assert all(abs(y - chart["height"] / 2) <= 1 for _, y in cpu)           # 50 %: the middle
    assert {float(p.split(",")[1]) for p in chart["health"]["memory"].split()} == {1.0}       # 100 %: the top
    assert chart["peak"] == pytest.approx(4.0, abs=0.5)                 # of the means drawn: 0, 2, 4, 6, 8
    empty = node_charts([], now)
    assert empty["beats"] == 0 and empty["rate"] == "" and empty["health"]["cpu"] == ""
