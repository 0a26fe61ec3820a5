"""The Nodes page in a real browser: a device and its components beating for real, a stopped
node and one that went offline; a health and a throughput chart per node; the page refreshes
itself. The screenshot goes to the test's tmp directory."""

from __future__ import annotations

import time

from spiderflow import storage
from spiderflow.nodes import Node
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.storage.nodedb import BEATS
from spiderflow.webui import WebUIServer, make_app


def _node(url, node_id, kind, **kw):
    counts = {"done": 0}

    def stats():
        counts["done"] += 3
        return {"in_flight": 1, "done": counts["done"], "errors": 0}

    return Node(lambda: storage.connect_nodedb(url), kind, node_id=node_id, stats=stats, interval=0.1, **kw).start()


def test_nodes_page_charts_every_node(page, tmp_path):
    url = f"sqlite:///{tmp_path}/project.db"
    dbs = [connect_projectdb(url), connect_taskdb(f"sqlite:///{tmp_path}/task.db"),
           connect_resultdb(f"sqlite:///{tmp_path}/result.db")]
    nodedb = storage.connect_nodedb(url)
    nodes = [_node(url, "rack", "device", name="rack seven", device="rack", aggregate=True),
             _node(url, "rack/fetcher#0", "fetcher", name="rack seven/fetcher#0", device="rack"),
             _node(url, "rack/processor#0", "processor", name="rack seven/processor#0", device="rack")]
    done = _node(url, None, "result-worker")
    nodedb.register({"id": "far-1", "name": "far away <b>box</b>", "kind": "fetcher", "host": "far", "pid": 7,
                     "version": "0.0.1", "started_at": time.time() - 4000, "last_seen": time.time() - 3000,
                     "named": True})
    now = time.time()                    # the device's last hour, a heartbeat a minute, as an hour of beating wrote it
    with nodedb.engine.begin() as conn:
        conn.execute(BEATS.insert(), [{"node_id": "rack", "at": now - 3600 + 60 * i, "cpu_percent": 20.0 + i,
                                       "memory_percent": 40.0, "disk_percent": 23.0, "rate": float(i % 7),
                                       "done": 10 * i} for i in range(60)])
    server = WebUIServer(make_app(Settings(data_dir=str(tmp_path)), projectdb=dbs[0], taskdb=dbs[1],
                                  resultdb=dbs[2])).start()
    try:
        deadline = time.monotonic() + 10
        while min(len(nodedb.history(n.id)) for n in nodes) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        done.stop()
        p = page.page
        p.goto(server.url.rstrip("/") + "/nodes")
        p.wait_for_selector("body[data-refreshed]")                   # nodes.js ran (no CSP or script error)
        rows = p.locator("#nodes tr.node-row")
        assert rows.count() == 5
        ids = rows.evaluate_all("rows => rows.map(r => r.dataset.node)")
        assert ids[:3] == ["rack", "rack/fetcher#0", "rack/processor#0"]      # the device first, then its nodes
        statuses = dict(zip(ids, rows.evaluate_all("rows => rows.map(r => r.dataset.status)")))
        assert statuses["far-1"] == "offline" and statuses[done.id] == "stopped"
        assert [statuses[n.id] for n in nodes] == ["online"] * 3
        health = p.locator("svg.node-chart[data-metric=health]")
        assert health.count() == 5                                     # a chart for every node
        assert p.locator("svg.node-chart[data-metric=rate]").count() == 5
        for node in nodes:
            chart = p.locator(f'svg.node-chart[data-metric=health][data-node="{node.id}"]')
            assert int(chart.get_attribute("data-beats")) >= 10
            for line in ("cpu", "memory", "disk"):
                points = chart.locator(f"polyline.{line}").get_attribute("points").split()
                assert len(points) >= 1
                assert all(0 <= float(pt.split(",")[1]) <= 36 for pt in points)
            box = chart.bounding_box()
            assert box["width"] == 160 and box["height"] == 36             # drawn, at its size
            rate = p.locator(f'svg.node-chart[data-metric=rate][data-node="{node.id}"] polyline.rate')
            assert rate.count() == 1 and rate.get_attribute("points")
        hour = p.locator('svg.node-chart[data-metric=health][data-node="rack"] polyline.cpu')
        assert len(hour.get_attribute("points").split()) >= 50
        assert hour.bounding_box()["width"] > 140                      # a line across the hour, not a dot
        far = p.locator('svg.node-chart[data-metric=health][data-node="far-1"]')
        assert far.get_attribute("data-beats") == "0" and "no heartbeats" in far.text_content()
        assert p.locator('#nodes td.node', has_text="far away <b>box</b>").count() == 1   # escaped
        assert p.locator("#nodes b").count() == 0
        device = p.locator('#nodes tr[data-node="rack"] td').all_text_contents()
        assert device[1] == "device" and "%" in device[9]             # the host's CPU %
        shot = tmp_path / "nodes-page.png"
        p.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # the page refreshes itself: a node that registers now appears without a reload
        late = _node(url, "late-1", "fetcher", name="late fetcher")
        nodes.append(late)
        first = p.get_attribute("body", "data-refreshed")
        p.wait_for_selector('#nodes tr[data-node="late-1"]', timeout=30_000)
        assert p.get_attribute("body", "data-refreshed") != first
        assert p.locator("svg.node-chart[data-metric=health]").count() == 6
    finally:
        for node in nodes:
            node.stop()
        server.close()
        nodedb.close()
        for db in dbs:
            db.close()
