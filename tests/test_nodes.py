"""Nodes: the registry (NodeDB), heartbeats, trimming, warm stop, SIGUSR1 thread dumps,
``spiderflow nodes`` after a real ``spiderflow all`` run, and GET /api/nodes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid

import pytest
from conftest import require_service

from spiderflow import storage
from spiderflow.cli.nodes import format_table
from spiderflow.exceptions import StorageError
from spiderflow.nodes import TRIM_EVERY, Node, fetcher_stats, format_threads, on_loop
from spiderflow.runtime.compose import node_lister, start_node
from spiderflow.scheduler import ControlClient, ControlError, serve_control
from spiderflow.scheduler.control import token_path
from spiderflow.settings import Settings
from spiderflow.storage.nodedb import NODES
from spiderflow.testing import link_farm_reachable, link_farm_url

T0 = 1_000_000.0  # 1970: far older than any real node on a shared test server
FOUR = {"scheduler", "fetcher", "processor", "result-worker"}


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(kind="fetcher", now=T0, **extra):
    return {"id": uuid.uuid4().hex, "name": f"{kind}@test:1", "kind": kind, "host": "test", "pid": 1,
            "version": "0", "started_at": now, "last_seen": now, **extra}


@pytest.fixture
def db_path(tmp_path):
    return f"sqlite:///{tmp_path}/data/project.db"


@pytest.fixture
def nodedb(db_path):
    db = storage.connect_nodedb(db_path)
    yield db
    db.close()


# -- NodeDB on sqlite, PostgreSQL and MySQL ---------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_nodedb_basics(backend, db_path):
    url = db_path if backend == "sqlite" else require_service(backend)
    db = storage.connect_nodedb(url)
    a, b = record("scheduler"), record("processor", name="proc-b")
    mine = {a["id"], b["id"]}
    try:
        db.register(a)
        db.register(b)
        assert db.heartbeat(a["id"], {"in_flight": 3, "done": 10, "errors": 1, "cpu": 1.5, "rss_mb": 40.0,
                                      "bogus": 1}, now=T0 + 30)
        assert not db.heartbeat("0" * 32, {}, now=T0 + 30)                    # unknown node
        nodes = {n["id"]: n for n in db.list(now=T0 + 70, timeout=60) if n["id"] in mine}
        assert nodes[a["id"]]["status"] == "online" and nodes[b["id"]]["status"] == "offline"
        assert (nodes[a["id"]]["in_flight"], nodes[a["id"]]["done"], nodes[a["id"]]["errors"]) == (3, 10, 1)
        assert nodes[a["id"]]["cpu"] == 1.5 and nodes[b["id"]]["done"] is None
        online = [n["id"] for n in db.list(False, now=T0 + 70, timeout=60) if n["id"] in mine]
        assert online == [a["id"]]
        assert db.stop(a["id"], now=T0 + 80)
        got = db.get(a["id"], now=T0 + 80)
        assert got["status"] == "stopped" and got["stopped_at"] == T0 + 80 and got["done"] == 10
        db.register({**b, "last_seen": T0 + 120})                               # registering again replaces
        assert db.get(b["id"], now=T0 + 120)["status"] == "online"
        assert db.trim(keep=50, now=T0 + 131) >= 1                               # a, last seen at T0+80: gone
        assert db.get(a["id"]) is None and db.get(b["id"], now=T0 + 131)["status"] == "online"
    finally:
        with db.engine.begin() as conn:
            conn.execute(NODES.delete().where(NODES.c.id.in_(mine)))
        db.close()


def test_trim_keeps_online_nodes_and_caps_the_rest(nodedb):
    now = T0 + 10_000
    online = [record(now=now - 5) for _ in range(3)]
    stopped = [record(now=now - 100 - i) for i in range(5)]
    crashed = [record(now=now - 1000 - i) for i in range(4)]
    for r in online + stopped + crashed:
        nodedb.register(r)
    for r in stopped:
        nodedb.stop(r["id"], now=r["last_seen"])
    assert nodedb.trim(keep=10**6, max_rows=5, timeout=60, now=now) == 7       # 12 rows, 5 kept
    left = {n["id"]: n["status"] for n in nodedb.list(now=now, timeout=60)}
    assert {r["id"] for r in online} <= set(left)
    assert sorted(left.values()) == ["online"] * 3 + ["stopped"] * 2             # the newest offline ones
    assert nodedb.trim(keep=10**6, max_rows=1, timeout=60, now=now) == 2         # never an online node
    assert sorted(n["status"] for n in nodedb.list(now=now, timeout=60)) == ["online"] * 3


# -- Node: registration, heartbeats, timeout, trimming, stop, outages ---------------------------------

def test_node_registers_beats_and_goes_offline_by_timeout(nodedb):
    clock = Clock()
    counts = {"in_flight": 2, "done": 7, "errors": 1}
    node = Node(nodedb, "processor", stats=lambda: dict(counts), interval=10, timeout=60, clock=clock)
    assert node.name == f"processor@{socket.gethostname()}:{os.getpid()}"
    assert node.register()
    row = nodedb.get(node.id, now=clock(), timeout=60)
    assert row["status"] == "online" and row["kind"] == "processor" and row["pid"] == os.getpid()
    assert row["version"] and row["started_at"] == T0 and row["done"] == 7
    assert row["cpu"] > 0 and row["rss_mb"] > 1

    counts.update(done=9, errors=2)
    clock.now += 50
    assert node.beat()
    row = nodedb.get(node.id, now=clock.now + 59, timeout=60)
    assert (row["status"], row["last_seen"], row["done"], row["errors"]) == ("online", T0 + 50, 9, 2)
    assert nodedb.get(node.id, now=clock.now + 61, timeout=60)["status"] == "offline"
    assert nodedb.list(False, now=clock.now + 61, timeout=60) == []


def test_heartbeats_trim_old_rows(nodedb):
    clock = Clock(T0 + 3 * 86400)
    old = record(now=T0)
    nodedb.register(old)
    node = Node(nodedb, "fetcher", clock=clock)
    node.register()                                   # registering trims
    assert nodedb.get(old["id"]) is None
    nodedb.register(old)
    for _ in range(TRIM_EVERY):                        # and so does every TRIM_EVERY-th beat
        assert node.beat()
    assert nodedb.get(old["id"]) is None
    assert nodedb.get(node.id) is not None


def test_stop_marks_the_node_stopped(db_path):
    node = Node(lambda: storage.connect_nodedb(db_path), "result-worker", interval=0.05)
    node.start()
    deadline = time.monotonic() + 5
    while not node.registered and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)                                    # a few beats
    node.stop()
    db = storage.connect_nodedb(db_path)
    try:
        row = db.get(node.id)
        assert row["status"] == "stopped" and row["stopped_at"] >= row["started_at"]
        assert not node._thread.is_alive()
    finally:
        db.close()


def test_a_database_outage_is_logged_once_and_never_raises(nodedb, caplog):
    caplog.set_level(logging.INFO, logger="spiderflow.nodes")
    node = Node(nodedb, "fetcher", clock=Clock())
    assert node.register()
    NODES.drop(nodedb.engine)                          # the table is gone: every write fails
    for _ in range(5):
        assert node.beat() is False
    failures = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failures) == 1 and "not logged again" in failures[0].getMessage()
    NODES.create(nodedb.engine)                        # back, but empty: the node registers again
    assert node.beat() and nodedb.get(node.id) is not None
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_an_unreachable_registry_never_delays_the_component(caplog):
    with socket.socket() as s:                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    pytest.importorskip("psycopg")
    started = time.monotonic()
    node = Node(lambda: storage.connect_nodedb(url), "fetcher", interval=0.05).start()
    time.sleep(0.3)
    node.stop()
    assert time.monotonic() - started < 3
    assert not node.registered
    assert len([r for r in caplog.records if "registration failed" in r.getMessage()]) == 1


def test_start_node_from_settings(tmp_path, db_path):
    assert start_node("fetcher", Settings(projectdb=db_path, heartbeat_interval=0)) is None
    fetcher = types.SimpleNamespace(in_flight=4, counters={"all": {"total": 12, "599": 2}})
    node = start_node("fetcher", Settings(projectdb=db_path, heartbeat_interval=0.05), fetcher)
    try:
        deadline = time.monotonic() + 5
        while not node.registered and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fetcher_stats(fetcher) == {"in_flight": 4, "done": 12, "errors": 2}
    finally:
        node.stop()
    rows = node_lister(Settings(projectdb=db_path))(True)
    assert [(r["kind"], r["status"], r["in_flight"], r["done"], r["errors"]) for r in rows] == \
        [("fetcher", "stopped", 4, 12, 2)]
    table = format_table(rows, now=rows[0]["last_seen"] + 125).splitlines()
    assert table[0].split() == ["NAME", "KIND", "HOST", "PID", "STATUS", "LAST-SEEN", "IN-FLIGHT", "DONE",
                                "ERRORS", "CPU", "RSS"]
    assert "stopped  2m ago" in table[1]


def test_on_loop_reads_stats_on_the_loop_and_never_waits_for_a_busy_one():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen = []

    def stats():
        seen.append(threading.current_thread() is thread)
        return {"done": len(seen)}

    read = on_loop(stats, loop, wait=0.2)
    try:
        assert read() == {"done": 1} and seen == [True]
        loop.call_soon_threadsafe(time.sleep, 0.6)                            # the loop is busy
        started = time.monotonic()
        assert read() == {"done": 1} and time.monotonic() - started < 0.5    # the last values, at once
        time.sleep(0.6)
        assert read()["done"] >= 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    with pytest.raises(RuntimeError):                                         # a closed loop: the beat logs it
        read()


def test_format_threads_names_every_thread():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="waiting-worker", daemon=True)
    worker.start()
    try:
        text = format_threads()
    finally:
        stop.set()
    assert "thread 'MainThread'" in text and "thread 'waiting-worker' (daemon)" in text
    assert text.index("'MainThread'") < text.index("'waiting-worker'")        # the main thread first
    assert "test_format_threads_names_every_thread" in text


# -- GET /api/nodes --------------------------------------------------------------------------------

class ControlServer:
    def __init__(self, nodes):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        scheduler = types.SimpleNamespace(settings=Settings())

        async def start():
            self.server, self.port = serve_control(scheduler, host="127.0.0.1", port=0, nodes=nodes, token="t")
            ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)
        self.client = ControlClient(f"http://127.0.0.1:{self.port}", "t")

    def close(self):
        async def stop():
            self.server.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_api_nodes(nodedb, db_path):
    now = time.time()
    live, gone = record("scheduler", now=now), record("fetcher", now=now - 3600)
    nodedb.register(live)
    nodedb.register(gone)
    server = ControlServer(node_lister(Settings(projectdb=db_path, node_timeout=60)))
    try:
        online = server.client.nodes()
        assert [(n["id"], n["status"]) for n in online] == [(live["id"], "online")]
        every = server.client.nodes(include_offline=True)
        assert [(n["id"], n["status"]) for n in every] == [(live["id"], "online"), (gone["id"], "offline")]
        assert set(every[0]) >= {"name", "kind", "host", "pid", "last_seen", "in_flight", "done", "errors",
                                 "cpu", "rss_mb", "version", "started_at", "stopped_at"}
    finally:
        server.close()


    def down(_include_offline):
        raise StorageError("nodedb list failed on sqlite:///x: down")

    server = ControlServer(down)
    try:
        with pytest.raises(ControlError) as info:
            server.client.nodes()
        assert info.value.status == 503 and "down" in info.value.message
    finally:
        server.close()
    server = ControlServer(None)                       # a scheduler without a registry
    try:
        assert server.client.nodes(include_offline=True) == []
    finally:
        server.close()


# -- real processes ------------------------------------------------------------------------------------

FARM = '''
# rate: 500
# burst: 500
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{start}", callback=self.index_page)

    def index_page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.index_page)
        return {{"n": int(response.url.rsplit("=", 1)[1])}}
'''

FAST = {"SPIDERFLOW_HEARTBEAT_INTERVAL": "0.3", "SPIDERFLOW_WEBUI_PORT": "0"}


def spiderflow(*args, cwd, env=None, timeout=60):
    full = {**os.environ, **FAST, **(env or {})}
    return subprocess.run([sys.executable, "-m", "spiderflow.cli", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def test_nodes_after_a_real_all_run(tmp_path, httpbin):
    total, show = 40, 3
    script = tmp_path / "farm.py"
    script.write_text(FARM.format(start=httpbin.url + link_farm_url(total, show, 0)))
    data = str(tmp_path / "data")
    out = spiderflow("--data-dir", data, "all", "--project", str(script), "--exit-when-done",
                     "--scheduler-port", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    listed = spiderflow("--data-dir", data, "nodes", "--all", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout)
    by_kind = {n["kind"]: n for n in nodes}
    assert FOUR <= set(by_kind) and {n["status"] for n in nodes} == {"stopped"}
    pages = len(link_farm_reachable(total, show))
    assert by_kind["result-worker"]["done"] == pages
    assert by_kind["processor"]["done"] >= pages and by_kind["fetcher"]["done"] >= pages
    assert by_kind["scheduler"]["done"] >= pages and by_kind["scheduler"]["in_flight"] == 0
    assert all(n["cpu"] > 0 and n["rss_mb"] > 0 and n["stopped_at"] for n in nodes)

    table = spiderflow("--data-dir", data, "nodes", "--all", cwd=tmp_path).stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "KIND", "HOST", "PID", "STATUS"]
    assert {line.split()[1] for line in table[1:]} >= FOUR
    online = spiderflow("--data-dir", data, "nodes", cwd=tmp_path)
    assert online.returncode == 0 and "no node online" in online.stdout
    empty = spiderflow("--data-dir", str(tmp_path / "nowhere"), "nodes", "--json", cwd=tmp_path)
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    assert not (tmp_path / "nowhere").exists()                        # listing creates nothing


def test_sigusr1_dumps_threads_and_sigterm_stops_every_node(tmp_path):
    data = tmp_path / "data"
    log = open(tmp_path / "all.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(data), "all",
                             "--scheduler-port", "0"], cwd=tmp_path, env={**os.environ, **FAST},
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        nodes = _wait_for(lambda: _online(data), lambda n: FOUR <= {x["kind"] for x in n}, "4 online nodes")
        processor = next(n for n in nodes if n["kind"] == "processor")
        # registered comes before the main loop: dump once it waits for tasks, not while it starts
        _wait_for(lambda: _read(log), lambda text: f"{processor['pid']} spiderflow.processor.processor] "
                  "processor starting" in text, "the processor's main loop")
        os.kill(processor["pid"], signal.SIGUSR1)
        dump = _wait_for(lambda: _read(log), lambda text: f"thread dump (pid {processor['pid']}" in text,
                         "a thread dump in the log")
        section = dump[dump.index(f"thread dump (pid {processor['pid']}"):]
        assert "thread 'MainThread'" in section and "spiderflow-node-processor" in section
        assert "processor.py" in section                                  # where its main thread waits
        time.sleep(1.0)                                                   # heartbeats go on
        again = {n["id"]: n for n in _online(data)}
        assert processor["id"] in again and again[processor["id"]]["last_seen"] > processor["last_seen"]

        port = int(re.search(r"scheduler control interface on http://127\.0\.0\.1:(\d+)/api/", dump).group(1))
        api = ControlClient(f"http://127.0.0.1:{port}", token_file=token_path(str(data))).nodes()
        assert {n["id"] for n in api} == set(again)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    db = storage.connect_nodedb(f"sqlite:///{data}/project.db")
    try:
        final = db.list()
    finally:
        db.close()
    assert FOUR <= {n["kind"] for n in final} and {n["status"] for n in final} == {"stopped"}


def test_a_stuck_warm_shutdown_turns_cold_after_its_grace(tmp_path):
    code = ("import os, signal, time, logging\n"
            "logging.basicConfig(level='INFO')\n"
            "from spiderflow.runtime.signals import install_stop_signals\n"
            "install_stop_signals(lambda: None, 'stuck', grace=0.3)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(20)\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and time.monotonic() - started < 10
    assert "warm shutdown did not end in 0.3 s" in out.stderr


def test_one_registers_only_with_a_projectdb(tmp_path, httpbin):
    script = tmp_path / "farm_one.py"
    script.write_text(FARM.format(start=httpbin.url + link_farm_url(7, 2, 0)))
    out = spiderflow("one", str(script), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "data").exists()
    url = f"sqlite:///{tmp_path}/shared/project.db"
    out = spiderflow("one", str(script), cwd=tmp_path, env={"SPIDERFLOW_PROJECTDB": url})
    assert out.returncode == 0, out.stderr[-2000:]
    db = storage.connect_nodedb(url)
    try:
        nodes = db.list()
    finally:
        db.close()
    assert [(n["kind"], n["status"]) for n in nodes] == [("one", "stopped")]
    assert nodes[0]["done"] > len(link_farm_reachable(7, 2))                # the pages and the special tasks


# -- helpers ---------------------------------------------------------------------------------------------

def _online(data) -> list[dict]:
    path = data / "project.db"
    if not path.exists():
        return []
    db = storage.connect_nodedb(f"sqlite:///{path}")
    try:
        return db.list(False, timeout=5)
    except StorageError:
        return []
    finally:
        db.close()


def _read(fh) -> str:
    fh.flush()
    fh.seek(0)
    return fh.read()


def _wait_for(get, ok, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    value = get()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:3000])
        time.sleep(0.1)
        value = get()
    return value
