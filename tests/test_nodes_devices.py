"""Nodes as devices: stable ids, refusal of a second live node, host health in heartbeats, the
heartbeat history and its trimming, the v1 → v2 registry migration, and real processes:
``spiderflow standalone`` restarted, killed (-9) and stopped (SIGTERM), ``webui --node-id``,
``spiderflow nodes history`` and ``forget``."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa
from conftest import require_service

from spiderflow import storage
from spiderflow.exceptions import ConfigError, StorageError
from spiderflow.nodes import Node, check_node_id, component_identity
from spiderflow.runtime.compose import component_settings, start_node
from spiderflow.settings import Settings
from spiderflow.storage.nodedb import BEATS, NODES
from spiderflow.testing import link_farm_reachable, link_farm_url

T0 = 1_000_000.0
HOST = socket.gethostname()


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(node_id=None, *, kind="fetcher", host="elsewhere", pid=1, now=T0, **extra):
    return {"id": node_id or uuid.uuid4().hex, "name": f"{kind}@{host}:{pid}", "kind": kind, "host": host,
            "pid": pid, "version": "0", "started_at": now, "last_seen": now, **extra}


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path}/data/project.db"


@pytest.fixture
def nodedb(db_url):
    db = storage.connect_nodedb(db_url)
    yield db
    db.close()


def _url(backend, db_url):
    return db_url if backend == "sqlite" else require_service(backend)


def _drop(db, ids):
    with db.engine.begin() as conn:
        conn.execute(BEATS.delete().where(BEATS.c.node_id.in_(ids)))
        conn.execute(NODES.delete().where(NODES.c.id.in_(ids)))


# -- the registry: one row per id, refusal, history, trimming --------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_a_stable_id_keeps_one_row_and_its_history(backend, db_url):
    db = storage.connect_nodedb(_url(backend, db_url))
    node_id = f"box-{uuid.uuid4().hex[:8]}/fetcher#0"                 # the id of a device's component
    try:
        first = record(node_id, session="a" * 32, named=True, capabilities={"components": ["fetcher"]})
        assert db.register(first, timeout=60) == 1
        assert db.heartbeat(node_id, {"done": 5, "cpu_percent": 12.5}, now=T0 + 10, session="a" * 32)
        assert db.stop(node_id, {"done": 6}, now=T0 + 20, session="a" * 32)
        again = record(node_id, session="b" * 32, named=True, pid=2, now=T0 + 100)
        assert db.register(again, timeout=60) == 2                       # a restart: the same row
        assert db.heartbeat(node_id, {"done": 1}, now=T0 + 110, session="b" * 32)
        assert not db.heartbeat(node_id, {"done": 99}, now=T0 + 111, session="a" * 32)   # the old run's session
        rows = [n for n in db.list(now=T0 + 111, timeout=60) if n["id"] == node_id]
        assert len(rows) == 1
        row = rows[0]
        assert (row["starts"], row["first_seen"], row["started_at"], row["pid"], row["done"]) == \
            (2, T0, T0 + 100, 2, 1)
        assert row["named"] is True and row["status"] == "online"
        beats = db.history(node_id)
        assert [(b["at"], b["done"]) for b in beats] == [(T0 + 10, 5), (T0 + 20, 6), (T0 + 110, 1)]
        assert beats[0]["cpu_percent"] == 12.5
        assert [b["at"] for b in db.history(node_id, since=T0 + 15, limit=1)] == [T0 + 110]
        assert db.find(node_id) == [node_id] and db.find(node_id[:8]) == [node_id]
        assert db.find(node_id.replace("#", "_")) == []                  # LIKE wildcards are literal
    finally:
        _drop(db, [node_id])
        db.close()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_nodes_registering_at_the_same_moment_all_get_their_row(backend):
    """On MySQL the SELECT ... FOR UPDATE of ids not yet there takes gap locks and the inserts then
    deadlock: the server ends one registration, which must run again, not fail."""
    import threading
    url = require_service(backend)
    fresh = None
    if backend == "mysql":      # an empty table: its gaps are wide, as on a cluster's first start
        fresh = f"sfrace_{uuid.uuid4().hex[:8]}"
        server = sa.create_engine(url)
        with server.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {fresh}"))
        url = str(sa.engine.make_url(url).set(database=fresh).render_as_string(hide_password=False))
    count = 8
    dbs = [storage.connect_nodedb(url) for _ in range(count)]
    ids: list[str] = []
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            barrier.wait(10)
            dbs[i].register(record(ids[i], session=f"{i:032d}"), timeout=60)
        except BaseException as exc:    # noqa: BLE001 — reported below
            errors.append(exc)

    try:
        for _round in range(5):      # the deadlock needs the moments to line up: a few rounds
            ids[:] = [f"{uuid.uuid4().hex[:8]}-race" for _ in range(count)]    # spread over the index
            threads = [threading.Thread(target=register, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            assert {n["id"] for n in dbs[0].list(include_offline=True, timeout=60)} >= set(ids)
            _drop(dbs[0], ids)
    finally:
        _drop(dbs[0], ids)
        for db in dbs:
            db.close()
        if fresh is not None:
            with server.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE {fresh}"))
            server.dispose()


def test_a_live_node_of_another_process_keeps_its_id(nodedb):
    live = record("dev1", session="a" * 32, host="elsewhere", now=T0)
    nodedb.register(live, timeout=60)
    with pytest.raises(ConfigError, match=r"node id 'dev1' is taken by a live node: fetcher@elsewhere:1 .* "
                                          r"on elsewhere pid 1, last heartbeat 30 s ago"):
        nodedb.register(record("dev1", session="b" * 32, host="here", now=T0 + 30), timeout=60)
    assert nodedb.get("dev1", now=T0 + 30, timeout=60)["host"] == "elsewhere"     # untouched
    # the same registration again, an offline one, or a stopped one: free
    assert nodedb.register(record("dev1", session="a" * 32, host="elsewhere", now=T0 + 31), timeout=60) == 1
    nodedb.register(record("dev1", session="c" * 32, host="here", now=T0 + 200), timeout=60)   # offline by then
    assert nodedb.get("dev1", now=T0 + 200)["host"] == "here"
    nodedb.stop("dev1", now=T0 + 201, session="c" * 32)
    assert nodedb.register(record("dev1", session="d" * 32, now=T0 + 202), timeout=60) == 3
    # a live row whose process is gone (alive() says so) is free at once
    assert nodedb.register(record("dev1", session="e" * 32, now=T0 + 203), timeout=60, alive=lambda row: False) == 4


def test_a_node_whose_process_died_on_this_host_is_taken_over_at_once(nodedb):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        nodedb.register(record("crashed", host=HOST, pid=dead.pid, now=time.time(), session="x" * 32))
        nodedb.register(record("running", host=HOST, pid=sleeper.pid, now=time.time(), session="y" * 32))
        node = Node(nodedb, "fetcher", node_id="crashed", interval=60, timeout=300)
        assert node.register() and node.refused is None                   # its pid is gone: taken over
        assert nodedb.get("crashed")["pid"] == os.getpid()
        other = Node(nodedb, "fetcher", node_id="running", interval=60, timeout=300)
        assert not other.register() and "pid %d" % sleeper.pid in str(other.refused)
        assert nodedb.get("running")["pid"] == sleeper.pid                 # untouched
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_start_refuses_a_second_live_node_and_the_first_goes_on(db_url, caplog):
    settings = Settings(projectdb=db_url, heartbeat_interval=0.05, node_id="edge-1", node_name="edge one")
    first = start_node("fetcher", settings)
    try:
        db = storage.connect_nodedb(db_url)
        row = db.get("edge-1")
        assert row["name"] == "edge one" and row["pid"] == os.getpid() and row["named"] is True
        second = Node(lambda: storage.connect_nodedb(db_url), "fetcher", node_id="edge-1", interval=0.05)
        second.pid = -1                     # as if another process of this host: the first one's pid is alive
        with pytest.raises(ConfigError, match="node id 'edge-1' is taken by a live node: edge one"):
            second.start()
        assert not second._thread.is_alive()
        seen = row["last_seen"]
        time.sleep(0.3)
        after = db.get("edge-1")
        assert after["last_seen"] > seen and after["starts"] == 1 and after["started_at"] == first.started_at
    finally:
        first.stop()
    assert db.get("edge-1")["status"] == "stopped"
    db.close()
    with pytest.raises(ConfigError, match="--node-id 'bad id' is not a usable node id"):
        start_node("fetcher", Settings(projectdb=db_url, node_id="bad id"))
    assert check_node_id("box-1.a:b@c") == "box-1.a:b@c"
    assert component_identity("box", None, "fetcher", 2) == ("box/fetcher#2", f"{HOST}/fetcher#2")


def test_a_node_whose_id_was_taken_stops_beating(db_url, caplog):
    caplog.set_level(logging.INFO, logger="spiderflow.nodes")
    db = storage.connect_nodedb(db_url)
    node = Node(db, "processor", node_id="p-1", interval=60, timeout=300)
    assert node.register()
    db.register(record("p-1", host="other-box", now=time.time(), session="z" * 32), timeout=None)  # taken over
    assert node.beat() is False and node.refused is not None
    assert db.get("p-1")["host"] == "other-box"                           # the heartbeat did not overwrite it
    assert node.beat() is False                                           # and it does not try again
    assert any("this process goes on without heartbeats" in r.getMessage() for r in caplog.records)
    db.close()


def test_heartbeats_carry_host_health_capabilities_and_throughput(db_url, tmp_path):
    counts = {"in_flight": 3, "done": 0, "errors": 1}

    def stats():                                  # 10 more done at every sample
        counts["done"] += 10
        return dict(counts)

    node = Node(lambda: storage.connect_nodedb(db_url), "fetcher", node_id="health-1", interval=0.1,
                data_dir=str(tmp_path), port=8080, stats=stats,
                capabilities={"components": ["fetcher"], "fetch_types": ["http", "https"], "max_concurrent_tasks": 5})
    node.start()
    try:
        deadline = time.monotonic() + 10
        db = storage.connect_nodedb(db_url)
        while len(db.history("health-1")) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        node.stop()
    row = db.get("health-1")
    assert row["ip"] and row["port"] == 8080 and row["python"].count(".") == 2 and row["platform"]
    assert row["cpu_count"] == os.cpu_count() and row["memory_total"] > 100 * 2**20
    assert row["capabilities"] == {"components": ["fetcher"], "fetch_types": ["http", "https"],
                                   "max_concurrent_tasks": 5}
    beats = db.history("health-1")
    assert len(beats) >= 4
    for beat in beats:
        assert 0 <= beat["cpu_percent"] <= 100
        assert 0 < beat["memory_percent"] <= 100 and 0 < beat["disk_percent"] <= 100
        assert beat["load1"] >= 0 and beat["net_sent"] > 0 and beat["net_recv"] > 0
        assert beat["in_flight"] == 3 and beat["errors"] == 1 and beat["rss_mb"] > 1 and beat["cpu"] > 0
    rates = [b["rate"] for b in beats if b["rate"] is not None]
    assert len(rates) >= 3 and all(0 < r < 500 for r in rates)   # 10 per beat of about 0.1 s; none from the stop beat
    assert [b["done"] for b in beats] == sorted(b["done"] for b in beats)
    db.close()


def test_history_is_trimmed_by_age_and_named_nodes_are_kept(nodedb):
    clock = Clock(T0)
    node = Node(nodedb, "fetcher", node_id="keeper", clock=clock, history_keep=100, timeout=60)
    assert node.register()
    for _ in range(5):
        clock.now += 30
        assert node.beat()
    assert [b["at"] for b in nodedb.history("keeper")] == [T0 + 30 * i for i in range(1, 6)]
    anonymous = record(now=T0)
    nodedb.register(anonymous)
    nodedb.heartbeat(anonymous["id"], {"done": 1}, now=T0 + 1)
    assert nodedb.trim_history(keep=100, now=T0 + 150) == 2              # beats at T0+1 and T0+30
    assert [b["at"] for b in nodedb.history("keeper")] == [T0 + 60, T0 + 90, T0 + 120, T0 + 150]
    node.mark_stopped()
    later = T0 + 10 * 86400
    assert nodedb.trim(keep=86400, timeout=60, now=later) == 1            # the anonymous one went
    assert nodedb.get("keeper") is not None                              # a stable id stays
    assert nodedb.trim_history(keep=86400, now=later) >= 4               # its old history went, by age
    assert nodedb.history("keeper") == []
    assert nodedb.history(anonymous["id"]) == []
    assert nodedb.forget("keeper") and nodedb.get("keeper") is None and not nodedb.forget("keeper")


def test_a_device_counts_its_fetchers_tasks_and_every_error(nodedb):
    nodedb.register(record("d", kind="device", now=T0, device="d"))
    for kind, stats in (("fetcher", {"in_flight": 4, "done": 40, "errors": 1}),
                        ("processor", {"done": 39, "errors": 2}), ("result-worker", {"done": 30, "errors": 0})):
        nodedb.register(record(f"d/{kind}#0", kind=kind, now=T0, device="d", **stats))
    node = Node(nodedb, "device", node_id="d", device="d", aggregate=True, clock=Clock(T0 + 1))
    sample = node.sample()
    assert (sample["in_flight"], sample["done"], sample["errors"]) == (4, 40, 3)
    assert nodedb.device_totals("nothing") == {}
    assert [n["kind"] for n in nodedb.list(now=T0, timeout=60)] == ["device", "fetcher", "processor", "result-worker"]


# -- schema version 1 → 2 --------------------------------------------------------------------------------

def _v1_schema(engine) -> None:
    meta = sa.MetaData()
    sa.Table("spiderflow_meta", meta, sa.Column("key", sa.String(64), primary_key=True),
             sa.Column("value", sa.String(255), nullable=False))
    sa.Table("spiderflow_node", meta,
             sa.Column("id", sa.String(32), primary_key=True), sa.Column("name", sa.String(255), nullable=False),
             sa.Column("kind", sa.String(32), nullable=False), sa.Column("host", sa.String(255), nullable=False),
             sa.Column("pid", sa.Integer, nullable=False), sa.Column("version", sa.String(64), nullable=False),
             sa.Column("state", sa.String(16), nullable=False), sa.Column("started_at", sa.Double, nullable=False),
             sa.Column("last_seen", sa.Double, nullable=False), sa.Column("stopped_at", sa.Double),
             sa.Column("in_flight", sa.Integer), sa.Column("done", sa.BigInteger), sa.Column("errors", sa.BigInteger),
             sa.Column("cpu", sa.Double), sa.Column("rss_mb", sa.Double))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO spiderflow_meta (key, value) VALUES ('schema_version:nodedb', '1')"))
        conn.execute(sa.text("INSERT INTO spiderflow_node (id, name, kind, host, pid, version, state, started_at, "
                             "last_seen, done) VALUES ('0123456789abcdef0123456789abcdef', 'old@box:1', 'fetcher', "
                             "'box', 1, '0.0.9', 'stopped', 1, 2, 77)"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_1_registry_is_migrated_in_place(backend, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/v1.db"
        cleanup = None
    else:       # a schema of its own in this run's database, so the run's other tests keep theirs
        base = require_service("postgresql")
        schema = f"v1_{uuid.uuid4().hex[:8]}"
        admin = storage.create_engine(base)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        url = base + f"?options=-csearch_path%3D{schema}"

        def cleanup():
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    engine = storage.create_engine(url)
    try:
        _v1_schema(engine)
        db = storage.NodeDB(engine)
        try:
            old = db.get("0123456789abcdef0123456789abcdef")
            assert (old["name"], old["status"], old["done"], old["starts"], old["named"]) == \
                ("old@box:1", "stopped", 77, None, False)
            long_id = "a-device-with-a-long-name-in-the-rack-7/result-worker#12"
            assert db.register(record(long_id, named=True, session="s" * 32, now=T0)) == 1
            assert db.heartbeat(long_id, {"cpu_percent": 5.0}, now=T0 + 1)
            assert db.get(long_id)["cpu_percent"] == 5.0 and len(db.history(long_id)) == 1
            with engine.connect() as conn:
                version = conn.execute(sa.text("SELECT value FROM spiderflow_meta "
                                               "WHERE key = 'schema_version:nodedb'")).scalar()
            assert version == "2"
        finally:
            db.close()
    finally:
        engine.dispose()
        if cleanup:
            cleanup()


# -- real processes ---------------------------------------------------------------------------------------

FAST = {"SPIDERFLOW_HEARTBEAT_INTERVAL": "0.3", "SPIDERFLOW_WEBUI_PORT": "0"}

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


def cli(*args, cwd, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "spiderflow.cli", *args], cwd=cwd, env={**os.environ, **FAST, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def start(*args, cwd, log, env=None):
    return subprocess.Popen([sys.executable, "-m", "spiderflow.cli", *args], cwd=cwd,
                            env={**os.environ, **FAST, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log, text=True)


def registry(data, timeout: float = 300.0) -> list[dict]:
    path = data / "project.db"
    if not path.exists():
        return []
    db = storage.connect_nodedb(f"sqlite:///{path}")
    try:
        return db.list(True, timeout=timeout)
    except StorageError:
        return []
    finally:
        db.close()


def wait_for(get, ok, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    value = get()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:3000])
        time.sleep(0.1)
        value = get()
    return value


def stop(proc, sig=signal.SIGTERM, timeout=30):
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


DEVICE_KINDS = {"device", "scheduler", "fetcher", "processor", "result-worker", "webui"}


def device_rows(data, device, timeout: float = 300.0):
    return {n["id"]: n for n in registry(data, timeout) if n["device"] == device}


def online(rows, ids=None):
    return all(n["status"] == "online" for n in rows.values()) and (ids is None or set(rows) >= ids)


def test_standalone_restarts_as_the_same_device_and_sigterm_stops_it_at_once(tmp_path, httpbin):
    data = tmp_path / "data"
    script = tmp_path / "farm.py"
    script.write_text(FARM.format(start=httpbin.url + link_farm_url(20, 3, 0)))
    ids = {"rack7", *(f"rack7/{k}#0" for k in DEVICE_KINDS - {"device"})}
    log = open(tmp_path / "standalone.log", "w+")
    args = ("--data-dir", str(data), "standalone", "--device-id", "rack7", "--device-name", "rack seven",
            "--concurrent-tasks", "7", "--dispatch-interval", "0.5", "--scheduler-port", "0")
    proc = None
    try:
        proc = start(*args, "--project", str(script), cwd=tmp_path, log=log)
        pages = len(link_farm_reachable(20, 3))
        first = wait_for(lambda: device_rows(data, "rack7"), lambda r: online(r, ids) and       # as the beats tell
                         r["rack7/result-worker#0"]["done"] == pages and r["rack7/fetcher#0"]["done"] >= pages,
                         "the crawl on rack7")
        device = first["rack7"]
        assert (device["kind"], device["name"], device["starts"]) == ("device", "rack seven", 1)
        assert device["capabilities"]["components"] == ["scheduler", "fetcher", "processor", "result-worker", "webui"]
        assert device["capabilities"]["max_concurrent_tasks"] == 7 and "https" in device["capabilities"]["fetch_types"]
        assert first["rack7/fetcher#0"]["name"] == "rack seven/fetcher#0"
        assert first["rack7/webui#0"]["port"] > 0
        fetched = first["rack7/fetcher#0"]["done"]
        wait_for(lambda: device_rows(data, "rack7")["rack7"], lambda d: d["done"] >= fetched, "the device's sums")
        assert stop(proc) == 0
        stopped = device_rows(data, "rack7")                   # read at once: no waiting for a timeout
        assert {n["status"] for n in stopped.values()} == {"stopped"} and set(stopped) == ids
        first_run = [b["at"] for b in _history(data, "rack7")]
        assert len(first_run) >= 2 and first_run[-1] == stopped["rack7"]["stopped_at"]   # the stop's beat

        proc = start(*args, cwd=tmp_path, log=log)
        again = wait_for(lambda: device_rows(data, "rack7"),
                         lambda r: online(r, ids) and r["rack7"]["starts"] == 2, "rack7 online again")
        assert set(again) == ids                              # one row each, updated
        assert len([n for n in registry(data) if n["id"] == "rack7"]) == 1
        assert again["rack7"]["first_seen"] == device["first_seen"] < again["rack7"]["started_at"]
        assert again["rack7"]["pid"] == proc.pid != device["pid"]
        beats = wait_for(lambda: [b["at"] for b in _history(data, "rack7")], lambda at: len(at) > len(first_run),
                         "a heartbeat of the second run")
        assert beats[:len(first_run)] == first_run           # the history of the first run is kept
        listed = cli("--data-dir", str(data), "nodes", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        assert header.split()[:5] == ["NAME", "KIND", "HOST", "PID", "STATUS"] and "CPU%" in header
        assert "rack7/fetcher#0" in listed.stdout and "online" in listed.stdout
        assert stop(proc) == 0
    finally:
        if proc is not None:
            stop(proc)
        log.close()
    assert {n["status"] for n in device_rows(data, "rack7").values()} == {"stopped"}


def test_a_second_live_device_with_the_same_id_is_refused(tmp_path):
    shared = f"sqlite:///{tmp_path}/shared/project.db"
    log = open(tmp_path / "first.log", "w+")
    first = start("--data-dir", str(tmp_path / "d1"), "standalone", "--device-id", "twin", "--projectdb", shared,
                  "--scheduler-port", "0", "--no-webui", cwd=tmp_path, log=log)
    try:
        wait_for(lambda: device_rows(tmp_path / "shared", "twin"), lambda r: len(r) == 5 and online(r),
                 "twin and its 4 components online")
        config = tmp_path / "second.json"
        config.write_text('{"node_timeout": 120}')
        second = cli("--data-dir", str(tmp_path / "d2"), "standalone", "--device-id", "twin", "--projectdb", shared,
                     "--scheduler-port", "0", "--no-webui", "--config", str(config), cwd=tmp_path, timeout=60)
        assert second.returncode != 0
        assert f"node id 'twin' is taken by a live node: {HOST} (device) on {HOST} pid {first.pid}" in second.stderr
        assert "(120 s after its last heartbeat)" in second.stderr          # --config was read
        assert "Traceback" not in second.stderr
        rows = device_rows(tmp_path / "shared", "twin")
        assert rows["twin"]["pid"] == first.pid and rows["twin"]["starts"] == 1 and online(rows)
        bad = cli("standalone", "--device-id", "no spaces", cwd=tmp_path)
        assert bad.returncode != 0 and "--device-id 'no spaces' is not a usable node id" in bad.stderr
        missing = cli("standalone", cwd=tmp_path)
        assert missing.returncode == 2 and "Missing option '--device-id'" in missing.stderr
    finally:
        assert stop(first) == 0
        log.close()


def test_kill_9_shows_offline_after_the_timeout_and_a_killed_component_keeps_its_row(tmp_path):
    data = tmp_path / "data"
    env = {"SPIDERFLOW_NODE_TIMEOUT": "3"}

    def rows_now():
        return device_rows(data, "k9", timeout=3)
    log = open(tmp_path / "kill.log", "w+")
    proc = start("--data-dir", str(data), "standalone", "--device-id", "k9", "--scheduler-port", "0",
                 "--enable-monitoring", cwd=tmp_path, log=log, env=env)
    try:
        rows = wait_for(lambda: rows_now(), lambda r: len(r) == 6 and online(r), "k9 online")
        # a component killed -9: the supervisor restarts it under the same id, in the same row
        fetcher = rows["k9/fetcher#0"]
        os.kill(fetcher["pid"], signal.SIGKILL)
        back = wait_for(lambda: rows_now()["k9/fetcher#0"],
                        lambda n: n["pid"] != fetcher["pid"] and n["status"] == "online", "the fetcher restarted")
        assert back["starts"] == 2 and back["first_seen"] == fetcher["first_seen"]
        assert len([n for n in registry(data, 3) if n["kind"] == "fetcher"]) == 1

        # an outside node that stops beating is reported by the device's monitoring
        db = storage.connect_nodedb(f"sqlite:///{data}/project.db")
        db.register(record("outsider", host="far-box", now=time.time()))
        db.close()
        wait_for(lambda: _read(log), lambda text: "fetcher@far-box:1 (fetcher on far-box) is offline" in text,
                 "the device logging the outsider offline", timeout=20)
        assert f"node {HOST}: cpu " in _read(log)              # the device's own health line (named after the host)

        # the device killed -9: still online until node_timeout has passed, then offline
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
        device = rows_now()["k9"]
        assert device["status"] == "online"
        offline = wait_for(lambda: rows_now()["k9"], lambda n: n["status"] == "offline",
                           "k9 offline", timeout=15)
        assert time.time() - offline["last_seen"] > 3 and time.time() - killed_at < 10
        listed = json.loads(cli("--data-dir", str(data), "nodes", "--all", "--json", cwd=tmp_path, env=env).stdout)
        assert next(n for n in listed if n["id"] == "k9")["status"] == "offline"
        # its components got SIGTERM from the kernel (they die with their parent): stopped warmly
        comps = wait_for(lambda: rows_now(),
                         lambda r: all(n["status"] == "stopped" for i, n in r.items() if i != "k9"), "components stopped")
        assert len(comps) == 6
        # and a restart takes the offline device's id over
        proc = start("--data-dir", str(data), "standalone", "--device-id", "k9", "--scheduler-port", "0",
                     cwd=tmp_path, log=log, env=env)
        back = wait_for(rows_now, lambda r: online(r) and len(r) == 6 and r["k9"]["starts"] == 2
                        and r["k9/scheduler#0"]["starts"] == 2, "k9 and its components back")
        assert back["k9"]["pid"] == proc.pid
    finally:
        stop(proc)
        log.close()


def test_webui_node_id_history_and_forget_from_the_cli(tmp_path):
    data = tmp_path / "data"
    log = open(tmp_path / "webui.log", "w+")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start("--data-dir", str(data), "webui", "--port", str(port), "--node-id", "ui-1", "--node-name", "front ui",
                 cwd=tmp_path, log=log)
    try:
        row = wait_for(lambda: {n["id"]: n for n in registry(data)}.get("ui-1"),
                       lambda n: n is not None and n["status"] == "online" and len(_history(data, "ui-1")) >= 3,
                       "ui-1 with a few heartbeats")
        assert row["kind"] == "webui" and row["name"] == "front ui" and row["port"] == port
        twin = cli("--data-dir", str(data), "webui", "--port", "0", "--node-id", "ui-1", cwd=tmp_path, timeout=60)
        assert twin.returncode != 0 and "node id 'ui-1' is taken by a live node: front ui (webui)" in twin.stderr
        busy = cli("--data-dir", str(data), "nodes", "forget", "ui-1", cwd=tmp_path)
        assert busy.returncode != 0 and "is online" in busy.stderr
        assert stop(proc) == 0
        history = cli("--data-dir", str(data), "nodes", "history", "ui-1", cwd=tmp_path)
        assert history.returncode == 0, history.stderr
        lines = history.stdout.splitlines()
        assert lines[0].startswith("node ui-1: front ui (webui) stopped")
        header = next(i for i, line in enumerate(lines) if line.startswith("TIME"))
        assert lines[header].split() == ["TIME", "TASKS", "DONE", "RATE", "ERRORS", "CPU%", "MEM%", "DISK%", "LOAD",
                                         "NET-SENT", "NET-RECV", "RSS"]
        assert len(lines) - header - 1 == len(_history(data, "ui-1")) >= 3
        as_json = json.loads(cli("--data-dir", str(data), "nodes", "history", "ui-", "--json", "--limit", "2",
                                 cwd=tmp_path).stdout)
        assert as_json["node"]["id"] == "ui-1" and len(as_json["history"]) == 2
        assert as_json["history"][0]["at"] < as_json["history"][1]["at"]
        unknown = cli("--data-dir", str(data), "nodes", "history", "nobody", cwd=tmp_path)
        assert unknown.returncode != 0 and "no node 'nobody'" in unknown.stderr
        gone = cli("--data-dir", str(data), "nodes", "forget", "ui-1", cwd=tmp_path)
        assert gone.returncode == 0 and "forgot node ui-1" in gone.stdout
        assert registry(data) == [] and _history(data, "ui-1") == []
    finally:
        stop(proc)
        log.close()


def test_component_settings_name_a_devices_components():
    plain = Settings()
    assert component_settings(plain, "fetcher", 1) is plain
    device = Settings(node_id="rack", node_name="Rack", monitoring=True)
    child = component_settings(device, "fetcher", 1)
    assert (child.node_id, child.node_name, child.device_id, child.monitoring) == \
        ("rack/fetcher#1", "Rack/fetcher#1", "rack", False)


def _history(data, node_id):
    db = storage.connect_nodedb(f"sqlite:///{data}/project.db")
    try:
        return db.history(node_id)
    finally:
        db.close()


def _read(fh) -> str:
    fh.flush()
    fh.seek(0)
    return fh.read()
