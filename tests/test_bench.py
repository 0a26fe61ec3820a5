"""`spiderflow bench` and `python bench.py` as real subprocesses (small runs, no speed assertions),
and the fast paths the bench work added: each must behave exactly like the code it replaced."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import re
import subprocess
import sys
import urllib.request

import pytest
from test_scheduler import Harness

from spiderflow.bench.summary import percentile
from spiderflow.bench.workloads import make_workload, render_page
from spiderflow.exceptions import InvalidProjectName, QueueFull, SerializationError
from spiderflow.message import (
    Fetch,
    FetchResult,
    Process,
    ResultPack,
    Schedule,
    StatusPack,
    Task,
    TaskStatus,
    Track,
    md5_taskid,
    pack,
    unpack,
)
from spiderflow.queues import connect_queue
from spiderflow.storage import codec
from spiderflow.testing import follow_url, link_farm_reachable, link_farm_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^bench: workload=(\w+) topology=([\w-]+) fetcher=(\w+) pages=(\d+) seconds=([\d.]+) "
                  r"pages/s=([\d.]+) pages/min=(\d+) p50_latency_ms=(\d+|-) p99_latency_ms=(\d+|-) "
                  r"peak_rss_mb=(\S+) mean_page_bytes=(\d+|-) complete=(yes|no) check=(\S+)$")


def bench(*args, cwd, entry=("-m", "spiderflow.cli", "bench"), timeout=60):
    return subprocess.run([sys.executable, *entry, *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def summary_line(text: str) -> re.Match:
    lines = [line for line in text.splitlines() if line.startswith("bench: ")]
    assert len(lines) == 1, text
    match = LINE.match(lines[0])
    assert match, lines[0]
    return match


# -- the bench, end to end ----------------------------------------------------------------------------

def test_pyspider_run_on_processes_stores_every_reachable_page(tmp_path):
    out = bench("--total", "300", "--show", "5", "--json", "summary.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = summary_line(out.stdout)
    reachable = len(link_farm_reachable(300, 5))
    assert line.group(1, 2, 3) == ("pyspider", "processes", "http")
    assert int(line.group(4)) == reachable and line.group(12, 13) == ("yes", "ok")
    assert "[bench " in out.stderr                                          # live progress went to stderr
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["pages"] == data["expected"] == reachable and data["ok"] is True
    assert data["pages_per_s"] == pytest.approx(data["pages"] / data["seconds"], rel=0.01)
    assert data["pages_per_min"] == pytest.approx(data["pages_per_s"] * 60, rel=0.01)
    assert 0 < data["p50_latency_ms"] <= data["p99_latency_ms"]
    assert set(data["peak_rss_mb"]) == {"scheduler", "fetcher", "processor", "result-worker"}
    assert all(v > 0 for v in data["peak_rss_mb"].values())
    counts = data["counts"]
    assert counts["result-worker"]["saved"] == reachable                   # each page stored once
    assert counts["processor"]["processed"] >= reachable                   # + on_start, _on_get_info
    assert counts["fetcher"]["fetched"] >= reachable and counts["fetcher"]["errors"] == 0
    assert counts["scheduler"]["done"] >= reachable and counts["scheduler"]["failed"] == 0
    assert data["mean_page_bytes"] > 0
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]              # data went to a temporary directory


def test_scrapy_run_for_two_seconds_writes_json_to_stdout(tmp_path):
    out = bench("--workload", "scrapy", "--seconds", "2", "--poolsize", "20", "--json", "-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = summary_line(out.stderr)                                        # stdout holds the JSON alone
    data = json.loads(out.stdout)
    assert (data["workload"], data["topology"], data["fetcher"]) == ("scrapy", "processes", "http")
    assert int(line.group(4)) == data["pages"] > 0 and data["expected"] is None
    assert 2.0 <= data["seconds"] < 5 and data["complete"] and data["check"] == "ok"
    assert data["params"]["poolsize"] == 20
    assert data["p50_latency_ms"] <= data["p99_latency_ms"]
    counts = data["counts"]
    assert counts["result-worker"]["saved"] >= data["pages"]               # stored by the end, maybe more since
    assert counts["processor"]["processed"] >= data["pages"] and counts["fetcher"]["fetched"] >= data["pages"]
    assert counts["scheduler"]["tasks"] > data["pages"]                    # every page found new links
    assert os.listdir(tmp_path) == []


def test_distributed_run_on_redis_and_postgresql_leaves_nothing_behind(tmp_path):
    from conftest import require_service

    from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
    redis_url, db = require_service("redis"), require_service("postgresql")
    out = bench("--queue", redis_url, "--taskdb", db, "--total", "200", "--show", "5", "--fetcher-num", "2",
                "--json", "summary.json", "-q", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    line = summary_line(out.stdout)
    reachable = len(link_farm_reachable(200, 5))
    assert line.group(2) == "distributed-redis" and int(line.group(4)) == reachable and line.group(13) == "ok"
    data = json.loads((tmp_path / "summary.json").read_text())
    params = data["params"]
    assert params["fetcher_num"] == 2 and params["queue_prefix"].startswith("sfbench")
    assert params["taskdb"] == params["projectdb"] == params["resultdb"]
    assert data["counts"]["result-worker"]["saved"] == reachable
    # the run's queues and project are gone from the shared services
    import redis
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{params['queue_prefix']}:*")) == []
    finally:
        client.close()
    project = params["project"]
    projectdb, taskdb, resultdb = connect_projectdb(db), connect_taskdb(db), connect_resultdb(db)
    try:
        assert projectdb.get(project) is None and resultdb.count(project) == 0
        assert sum(taskdb.status_count(project).values()) == 0
    finally:
        for handle in (projectdb, taskdb, resultdb):
            handle.close()
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]


def test_distributed_run_refuses_a_queue_processes_cannot_share(tmp_path):
    out = bench("--queue", "memory://", "--total", "10", cwd=tmp_path)
    assert out.returncode != 0 and "needs a queue that separate processes share" in out.stderr, out.stderr
    out = bench("--taskdb", "sqlite:///x.db", "--total", "10", cwd=tmp_path)
    assert out.returncode == 2 and "need --queue" in out.stderr, out.stderr


def test_null_fetcher_in_process_needs_no_server_and_finds_the_same_pages(tmp_path):
    out = bench("--total", "200", "--show", "5", "--null-fetcher", "--in-process", "--quiet", "--json", "s.json",
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = summary_line(out.stdout)
    assert line.group(2, 3) == ("in-process", "null") and int(line.group(4)) == len(link_farm_reachable(200, 5))
    assert "[bench " not in out.stderr                                     # --quiet: no progress lines
    data = json.loads((tmp_path / "s.json").read_text())
    assert list(data["peak_rss_mb"]) == ["all"] and data["ok"]
    assert data["counts"]["result-worker"]["saved"] == data["pages"]


def test_bench_py_runs_the_micro_benches(tmp_path):
    out = bench("--micro", "--count", "200", "--queue", "memory://", "--json", "-",
                cwd=tmp_path, entry=(os.path.join(ROOT, "bench.py"),))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["taskdb"]) >= {"insert_many", "insert", "update_many", "update", "get_many", "get"}
    assert set(data["queues"]) == {"memory://"}
    assert set(data["queues"]["memory://"]) == {"put", "get", "put_many", "get_many"}
    assert all(rate > 0 for rate in data["message"].values())
    assert "bench-micro: " in out.stderr and "queue.memory.put/s=" in out.stderr


def test_null_fetcher_pages_are_the_servers_pages(httpbin):
    for path in (link_farm_url(100, 7, 3), link_farm_url(100, 7, 99), follow_url(20, 5), follow_url(3, 2, 10)):
        with urllib.request.urlopen(httpbin.url + path) as response:
            assert render_page(httpbin.url + path) == response.read()
    assert render_page(httpbin.url + link_farm_url(100, 7, 100)) is None     # past the farm: the server says 404


def test_workloads_and_percentiles():
    pyspider = make_workload("pyspider", "http://h:1/", 50, 3)
    assert pyspider.start_url == "http://h:1" + link_farm_url(50, 3, 0) and pyspider.finite
    assert len(pyspider.expected_urls()) == len(link_farm_reachable(50, 3))
    scrapy = make_workload("scrapy", "http://h:1", seconds=2)
    assert scrapy.expected_urls() is None and scrapy.seconds == 2
    compile(pyspider.script, "bench", "exec")
    with pytest.raises(ValueError):
        make_workload("nope", "http://h:1")
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile(list(range(1, 101)), 99) == 99


# -- fast message decoding and packing ------------------------------------------------------------------

_VALUES = [None, 0, 1, -1, 2 ** 40, 0.0, -0.0, 1.5, math.inf, True, False, "", "x", "GET", "ACTIVE", "BAD",
           "bench", "-x", b"", b"\x00", {}, {"a": 1}, {1: 2}, [], [1, "a"], TaskStatus.SUCCESS]


def _random_dict(rnd: random.Random, cls: type) -> dict:
    data = {}
    for name in cls._types:
        roll = rnd.random()
        if roll < 0.4:
            continue
        if name in cls._nested and roll < 0.8:
            data[name] = _random_dict(rnd, cls._nested[name]) if rnd.random() < 0.9 else rnd.choice(_VALUES)
        else:
            data[name] = rnd.choice(_VALUES)
    if cls in (Task, StatusPack, ResultPack) and rnd.random() < 0.7:
        data.update(project="bench", url="http://a/", taskid="t")
    if rnd.random() < 0.1:
        data["from_a_newer_schema"] = 1
    return data


def _outcome(decode, data):
    """("ok", repr) or (error type, message): the two decoders must agree on both."""
    try:
        return "ok", repr(decode(data))
    except Exception as exc:  # noqa: BLE001 - any difference in what is raised must show
        return type(exc).__name__, str(exc)


def _checked(cls: type):
    """The reference decoder: the checked path, after Task's md5(url) for a missing taskid."""
    if cls is not Task:
        return cls._checked_from_dict

    def decode(data):
        if isinstance(data, dict) and data.get("taskid") is None and isinstance(data.get("url"), str):
            data = {**data, "taskid": md5_taskid(data["url"])}
        return Task._checked_from_dict(data)
    return decode


@pytest.mark.parametrize("cls", [Task, Schedule, Fetch, Process, Track, FetchResult, StatusPack, ResultPack])
def test_fast_decoder_accepts_and_rejects_exactly_like_the_checked_one(cls):
    rnd = random.Random(cls.__name__)
    for _ in range(3000):
        data = _random_dict(rnd, cls)
        if cls is Task and "url" in data and rnd.random() < 0.3:
            data.pop("taskid", None)                         # Task fills in md5(url)
        assert _outcome(cls.from_dict, data) == _outcome(_checked(cls), data), data


@pytest.mark.parametrize("cls", [Task, Schedule, Fetch, Process, Track, FetchResult, StatusPack, ResultPack])
def test_packed_messages_leave_out_defaults_and_come_back_the_same(cls):
    rnd = random.Random(cls.__name__ + "pack")
    for _ in range(2000):
        try:
            msg = _checked(cls)(_random_dict(rnd, cls))
        except (SerializationError, InvalidProjectName):
            continue
        if cls not in (Task, FetchResult, StatusPack, ResultPack):
            assert cls.from_dict(cls().to_dict()) == cls()
            continue
        try:
            data = pack(msg)
        except SerializationError:                        # e.g. a result msgpack cannot carry
            continue
        back = unpack(data)
        assert back.to_dict() == type(msg).from_dict(msg.to_dict()).to_dict()
        assert repr(back) == repr(type(msg).from_dict(msg.to_dict()))


def test_a_default_task_travels_small_and_exact():
    task = Task(taskid="t", project="p", url="http://a/", process=Process(callback="index_page"), updatetime=1.0)
    assert len(pack(task)) < 120
    assert unpack(pack(task)) == task and unpack(pack(task)).status is TaskStatus.ACTIVE
    signed = Task(taskid="t", project="p", url="http://a/", schedule=Schedule(exetime=-0.0))
    assert math.copysign(1.0, unpack(pack(signed)).schedule.exetime) == -1.0
    assert unpack(pack(StatusPack("t", "p", "u", schedule=Schedule()))).schedule == Schedule()
    assert unpack(pack(StatusPack("t", "p", "u"))).schedule is None


# -- taskdb's JSON parts ---------------------------------------------------------------------------------

def _reference_dumps(part) -> str:
    """dumps_part as it was: the JSON encoder over the non-default fields."""
    getter, fields = codec._layout(type(part))
    out = {}
    for (name, default, default_type), value in zip(fields, getter(part)):
        if type(value) is default_type and value == default:
            continue
        out[name] = value if type(value) is str else codec.encode_value(value)
    return codec._ENCODER.encode(out) if out else "{}"


@pytest.mark.parametrize("cls", [Schedule, Fetch, Process, Track])
def test_generated_part_encoder_writes_what_the_json_encoder_wrote(cls):
    rnd = random.Random(cls.__name__ + "codec")
    values = [*_VALUES, math.nan, -math.inf, 1e300, "é\u2028\"\\\n\x00", "日本", (1, 2), {"$b": 1}, {"a": [1, 2.5]}]
    for _ in range(3000):
        part = cls()
        for name in cls._types:
            if rnd.random() < 0.3:
                object.__setattr__(part, name, rnd.choice(values))
        assert _outcome(codec.dumps_part, part) == _outcome(_reference_dumps, part)


# -- the multiprocessing queue's batches ----------------------------------------------------------------------

def _task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def _produce(q, n):
    q.put_many([_task(i) for i in range(n)])


def test_multiprocessing_put_many_is_one_batch_counted_per_message():
    ctx = multiprocessing.get_context("fork")
    q = connect_queue("multiprocessing://", "q", 5, context=ctx)
    try:
        child = ctx.Process(target=_produce, args=(q, 12))                  # more than fit: sent in runs
        child.start()
        got = [q.get(timeout=10).taskid for _ in range(12)]
        child.join(10)
        assert got == [f"t{i}" for i in range(12)] and child.exitcode == 0
        q.put_many([_task(i) for i in range(3)])
        assert q.qsize() == 3 and q.get(timeout=5) == _task(0) and q.qsize() == 2   # the rest wait in a buffer
        with pytest.raises(QueueFull):
            q.put_many([_task(i) for i in range(3, 8)], timeout=0.1)         # room for three of five
        assert q.qsize() == 5
        assert [q.get(timeout=5).taskid for _ in range(5)] == ["t1", "t2", "t3", "t4", "t5"]
        assert q.qsize() == 0
    finally:
        q.close()


# -- the scheduler's memory of stored tasks ------------------------------------------------------------------

def test_repeat_links_to_stored_tasks_skip_taskdb_but_force_update_still_restarts(tmp_path, monkeypatch):
    h = Harness(tmp_path)
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1")
    assert h.status(task.taskid) == "SUCCESS" and task.taskid in h.scheduler.projects["p"].known
    lookups = []
    real_get_many = h.taskdb.get_many
    monkeypatch.setattr(h.taskdb, "get_many", lambda *a, **k: lookups.append(a[1]) or real_get_many(*a, **k))
    h.new("http://a/1")
    h.run()
    assert lookups == [] and h.sent_normal() == [] and h.status(task.taskid) == "SUCCESS"
    h.new("http://a/1", force_update=True)
    h.run()
    assert [t.taskid for t in h.sent_normal()] == [task.taskid] and h.status(task.taskid) == "ACTIVE"
    h.update_project("p", rate=999)                                           # a changed row forgets them
    h.run()
    assert h.scheduler.projects["p"].known == set()
    h.close()
