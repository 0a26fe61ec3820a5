"""``spiderflow control`` / ``inspect`` on running clusters: ``spiderflow all`` (sqlite, multiprocessing
queues, the web UI), and separate component processes on redis:// + PostgreSQL and amqp:// + MySQL.

One crawl per cluster: N slow pages (the test server's ``/delay``) and three link-farm pages
the test server counts (``httpbin.hits``), at rate 2/s with the link-farm pages last. On it:

* ``control ping`` reaches every node (scheduler, 2 fetchers, processor, result worker; the
  web UI too under ``all``), each with its kind and pid;
* page A is revoked before the crawl starts and page B while it is queued: neither is ever
  fetched (0 hits; page C, in the same place in the queue, is fetched once) and both end BAD;
  page T is revoked with ``--terminate`` while its 30 s fetch is in flight: the fetch ends at
  once, T has no result and ends BAD;
* ``control rate-limit`` is in force in the scheduler within a second;
* a fetcher with fetches in flight gets ``control shutdown``: it exits 0, those fetches end
  with results, and the crawl ends with exactly N + 1 results and no ACTIVE task;
* ``inspect stats/active/reserved/registered/revoked/conf`` answer in their documented shapes,
  and ``pool-grow``, ``autoscale``, ``time-limit``, ``pause`` and ``resume`` are answered by the
  nodes that act on them;
* a node killed with SIGKILL is simply absent from the next ping, which takes at most its
  timeout + 0.5 s.

Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import signal
import socket
import subprocess
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from spiderflow.control import ControlClient
from spiderflow.exceptions import ConfigError, redact_url
from spiderflow.message import TaskStatus
from spiderflow.scheduler.control import ControlClient as SchedulerClient
from spiderflow.scheduler.control import token_path
from spiderflow.settings import load_settings
from spiderflow.storage import connect_resultdb, connect_taskdb

from .conftest import SPIDERFLOW, free_port, project_name, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(240)]

N = 8            # slow pages
DELAY = 5        # seconds each takes to answer: long enough to catch fetches in flight
SCRIPT = '''\
"""Remote-control test crawl: slow pages first, the counted link-farm pages last (priority -1)."""
# rate: 2
# burst: 1
from spiderflow import BaseHandler


class Handler(BaseHandler):
    def on_start(self):
        for url in {slow!r}:
            self.crawl(url, callback=self.page)
        for url in {last!r}:
            self.crawl(url, callback=self.page, priority=-1)

    def page(self, response):
        return {{"url": response.url}}
'''


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Crawl:
    """The cluster's config file, the ``spiderflow`` command on it, and an in-process client."""

    def __init__(self, procs, data_dir: Path, config: dict[str, Any], httpbin):
        self.procs = procs
        self.data_dir = data_dir
        self.config = data_dir / "control.json"
        self.scheduler_port = config.setdefault("scheduler_port", free_port())
        self.config.write_text(json.dumps({"heartbeat_interval": 2, "project_check_interval": 1, **config}))
        self.settings = load_settings(str(self.config), overrides={"data_dir": str(data_dir)})
        base = httpbin.url
        self.slow = [f"{base}/delay/{DELAY}?n={i}" for i in range(N)]
        # pages of their own (the test server counts hits per URL for the whole session)
        self.a, self.b, self.c = (f"{base}/links?total=1000000000&show=0&n={n}"
                                  for n in random.sample(range(10**9), 3))
        self.t = f"{base}/delay/30?n=99"     # terminated in flight
        self.httpbin = httpbin

    def command(self, *args: str) -> list[str]:
        return [*SPIDERFLOW, "--data-dir", str(self.data_dir), "-c", str(self.config), *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60,
                             cwd=str(self.data_dir), env=self.procs.env, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"spiderflow {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def cli_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.cli(*args, "--json").stdout)

    def client(self) -> ControlClient:
        return ControlClient(self.settings)

    def call(self, command: str, **kwargs: Any) -> dict[str, Any]:
        with self.client() as client:
            return client.call(command, **kwargs)

    def hits(self, url: str) -> int:
        return self.httpbin.hits[url[len(self.httpbin.url):]]

    def scheduler_rate(self, name: str) -> float | None:
        client = SchedulerClient(f"http://127.0.0.1:{self.scheduler_port}", timeout=5,
                                 token_file=token_path(str(self.data_dir)))
        return next((p["rate"] for p in client.projects() if p["name"] == name), None)


def run_scenario(crawl: Crawl, kinds: dict[str, int], alive, fetcher_ended, kill) -> int:
    """The crawl of the module docstring on a running cluster. *kinds*: how many nodes of each
    kind answer; *fetcher_ended(pid)* waits for a fetcher's process to end and returns its exit
    code; *kill(kind)* SIGKILLs a node of *kind* and returns its pid."""
    host = socket.gethostname()
    name = project_name("ctl")

    # every node answers ping, with its kind and pid
    def all_online() -> dict[str, Any] | None:
        alive()
        try:
            replies = crawl.call("ping", timeout=2)
        except ConfigError:     # `spiderflow all` has not made its socket yet
            return None
        counts = {k: sum(1 for r in replies.values() if r.get("kind") == k) for k in kinds}
        return replies if counts == kinds else None

    replies = wait_for(all_online, 60, f"a pong from every node ({kinds})", interval=0.5)
    assert all(r["ok"] == "pong" and r["host"] == host and r["uptime"] >= 0 for r in replies.values())
    assert all(n == f"{r['kind']}@{host}:{r['pid']}" for n, r in replies.items())
    out = crawl.cli("control", "ping")
    assert f"{sum(kinds.values())} nodes online." in out.stdout, out.stdout
    fetchers = sorted(n for n, r in replies.items() if r["kind"] == "fetcher")
    scheduler_node = next(n for n, r in replies.items() if r["kind"] == "scheduler")

    # the project; A is revoked before anything of it exists
    script = crawl.data_dir / f"{name}.py"
    script.write_text(SCRIPT.format(slow=[*crawl.slow, crawl.t], last=[crawl.a, crawl.b, crawl.c]))
    crawl.cli("project", "add", str(script), "--name", name, "--status", "RUNNING")
    revoked = crawl.cli_json("control", "revoke", "--project", name, md5(crawl.a))
    assert {r["ok"] for r in revoked.values()} == {f"tasks {name}:{md5(crawl.a)} flagged as revoked"}
    assert {r for r in revoked} == {n for n, r in replies.items() if r["kind"] in ("scheduler", "fetcher", "processor")}
    wait_for(lambda: crawl.cli("project", "run", name, "--scheduler-port", str(crawl.scheduler_port),
                               check=False).returncode == 0, 30, "the scheduler to start the project", interval=0.3)
    taskdb = connect_taskdb(crawl.settings.db_url("taskdb"))
    resultdb = connect_resultdb(crawl.settings.db_url("resultdb"))
    try:
        wait_for(lambda: taskdb.get(name, md5(crawl.b), ["status"]), 20, "page B in taskdb", interval=0.1, alive=alive)
        with crawl.client() as client:     # B is queued behind the slow pages at 2/s: revoke it now
            revoked = client.revoke([md5(crawl.b)], name, timeout=2)
            scheduler = next(r for r in revoked.values() if "marked_bad" in r)
            assert scheduler["marked_bad"] == 1, revoked
            assert crawl.hits(crawl.b) == 0

            # rate-limit: in force in the scheduler within a second of the command, measured from
            # here while the command runs (and collects its replies)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                start = time.monotonic()
                call = pool.submit(client.rate_limit, name, 50, 50, timeout=2, destination=[scheduler_node])
                wait_for(lambda: crawl.scheduler_rate(name) == 50, 1.0, "the new rate in the scheduler",
                         interval=0.02)
                assert time.monotonic() - start <= 1.0
                replies = call.result(10)
            assert [r["ok"] for r in replies.values()] == ["new rate limit set successfully"], replies
            assert list(replies.values())[0]["rate"] == 50

            # revoke --terminate: the fetch of T (30 s) is aborted at once, and T is never retried
            def fetching_t() -> bool:
                active = client.call("active", destination=fetchers, timeout=2)
                return any(a["id"] == md5(crawl.t) for tasks in active.values() for a in tasks)

            wait_for(fetching_t, 20, "the fetch of page T in flight", interval=0.05, alive=alive)
            replies = client.revoke([md5(crawl.t)], name, terminate=True, timeout=2,
                                    destination=[scheduler_node, *fetchers])
            assert sum(1 for r in replies.values() if r["ok"] == f"terminate: {name}:{md5(crawl.t)}") == 1, replies
            wait_for(lambda: not fetching_t(), 2, "the fetch of T to end", interval=0.05)

            # a fetcher with fetches in flight is shut down: they end, it exits 0
            def busy_fetcher() -> tuple[str, list] | None:
                active = client.call("active", destination=fetchers, timeout=2)
                found = [(n, a) for n, a in active.items() if a]
                return found[0] if found else None

            victim, in_flight = wait_for(busy_fetcher, 20, "a fetcher with fetches in flight", interval=0.05,
                                         alive=alive)
            assert {"id", "project", "url", "time_start"} <= set(in_flight[0]) and in_flight[0]["project"] == name
            reply = client.call("shutdown", destination=[victim], timeout=2)
            assert reply[victim]["ok"].startswith("shutting down"), reply
        assert fetcher_ended(int(victim.rsplit(":", 1)[1])) == 0
        wait_for(lambda: resultdb.count(name) >= N + 1 and taskdb.count(name, TaskStatus.ACTIVE) == 0, 60,
                 "every result and no ACTIVE task", interval=0.2, alive=alive)
        time.sleep(1.0)    # nothing more arrives
        assert resultdb.count(name) == N + 1
        stored = {r["taskid"] for r in resultdb.select(name)}
        assert {t["id"] for t in in_flight} <= stored, "the fetches in flight at the shutdown were lost"
        assert md5(crawl.t) not in stored and taskdb.get(name, md5(crawl.t), ["status"])["status"] == TaskStatus.BAD
        assert crawl.hits(crawl.a) == 0 and crawl.hits(crawl.b) == 0 and crawl.hits(crawl.c) == 1
        for page in (crawl.a, crawl.b):
            assert taskdb.get(name, md5(page), ["status"])["status"] == TaskStatus.BAD
        assert taskdb.get(name, md5(crawl.c), ["status"])["status"] == TaskStatus.SUCCESS
    finally:
        taskdb.close()
        resultdb.close()

    # inspect: the shapes
    live = {k: v - (1 if k == "fetcher" else 0) for k, v in kinds.items()}
    stats = crawl.cli_json("inspect", "stats")
    assert sorted(r["kind"] for r in stats.values()) == sorted(k for k, n in live.items() for _ in range(n))
    for node, s in stats.items():
        assert {"pid", "host", "uptime", "total", "pool", "rusage", "rss_mb", "cpu", "broker", "version"} <= set(s)
        assert s["rusage"]["maxrss"] > 0 and s["pool"]["processes"] == [s["pid"]]
    fetcher_stats = next(s for s in stats.values() if s["kind"] == "fetcher")
    assert fetcher_stats["pool"]["max-concurrency"] == 100 and fetcher_stats["revoked"] == 3
    assert next(s for s in stats.values() if s["kind"] == "scheduler")["scheduler"]["in_flight"] == 0
    registered = crawl.cli_json("inspect", "registered")
    processor = next(r for n, r in registered.items() if n.startswith("processor@"))
    assert [p["version"] for p in processor if p["project"] == name] == [hashlib.md5(script.read_bytes()).hexdigest()]
    scheduler = next(r for n, r in registered.items() if n.startswith("scheduler@"))
    assert {"project": name, "status": "RUNNING", "rate": 50.0}.items() <= next(p for p in scheduler
                                                                               if p["project"] == name).items()
    revoked_lists = crawl.cli_json("inspect", "revoked")
    assert all({(e["project"], e["taskid"]) for e in entries} >= {(name, md5(crawl.a)), (name, md5(crawl.b))}
               for entries in revoked_lists.values())
    conf = crawl.cli_json("inspect", "conf")
    queue = redact_url(crawl.settings.queue) if crawl.settings.queue else "multiprocessing://"
    assert all(c["queue"] == queue and c["data_dir"] and c["poolsize"] == 100 for c in conf.values()), conf
    assert "guest:guest" not in json.dumps(conf)      # URLs without their passwords
    active = crawl.cli_json("inspect", "active")
    assert all(a == [] for a in active.values()) and len(active) == live["fetcher"] + 1, active

    # pool and time limits
    out = crawl.cli("control", "pool-grow", "10").stdout
    assert "pool will grow" in out and "max-concurrency 110" in out, out
    assert "processor pool is fixed at 1 worker" in out
    out = crawl.cli("control", "autoscale", "200", "50").stdout
    assert "autoscale now max=200 min=50" in out and "max-concurrency 110" in out, out
    reserved = crawl.cli_json("inspect", "reserved")
    assert len(reserved) == live["fetcher"] + 1 and all(isinstance(r, list) for r in reserved.values()), reserved
    out = crawl.cli("control", "time-limit", name, "5").stdout
    assert "time limits set successfully" in out, out
    out = crawl.cli("control", "pause", name).stdout
    assert f"project {name} paused (status STOP)" in out, out
    out = crawl.cli("control", "resume", name).stdout
    assert f"project {name} resumed (status RUNNING)" in out, out
    out = crawl.cli("control", "-d", "nobody@nowhere:1", "ping", check=False)
    assert out.returncode == 1 and "no node replied within 1 s" in out.stderr

    # a killed node is absent, and costs no more than the timeout
    killed = kill("result-worker")
    replies, took = _timed(crawl.call, "ping", timeout=1.0)
    assert f"result-worker@{host}:{killed}" not in replies
    assert {r["kind"] for r in replies.values()} >= {"scheduler", "fetcher", "processor"}
    assert took <= 1.5, f"a dead node made ping take {took:.2f} s with a 1 s timeout"
    return killed


def _timed(fn, *args, **kwargs):
    start = time.monotonic()
    value = fn(*args, **kwargs)
    return value, time.monotonic() - start


def test_control_on_spiderflow_all(procs, httpbin, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    webui_port = free_port()
    crawl = Crawl(procs, data, {"log_level": "INFO", "fetcher_num": 2, "webui_port": webui_port}, httpbin)
    procs.start("all", crawl.command("all"))

    def alive() -> None:
        assert procs.alive("all"), "spiderflow all exited"

    def fetcher_ended(pid: int) -> int:
        line = wait_for(lambda: _grep(procs, "was shut down by remote control"), 30,
                        "the supervisor to see the fetcher leave", alive=alive)
        assert "fetcher #" in line and "(exit code 0)" in line, line
        assert sum(procs.grep("not restarting it").values()) == 1
        return 0

    def kill(kind: str) -> int:
        replies = crawl.call("ping", timeout=2)
        pid = next(r["pid"] for r in replies.values() if r["kind"] == kind)
        import os
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        return pid

    kinds = {"scheduler": 1, "fetcher": 2, "processor": 1, "result-worker": 1, "webui": 1}
    killed = run_scenario(crawl, kinds, alive, fetcher_ended, kill)

    # the supervisor starts the killed result worker again, and the new one answers
    def restarted() -> bool:
        return any(r["kind"] == "result-worker" and r["pid"] != killed
                   for r in crawl.call("ping", timeout=1).values())
    wait_for(restarted, 30, "the restarted result worker to answer ping", interval=0.2, alive=alive)
    assert _grep(procs, "all: result-worker #0 died (exit code -9); restarting it")

    # the web UI: the same commands as JSON calls, with its auth rules
    base = f"http://127.0.0.1:{webui_port}"
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/api/control/ping?timeout=2", timeout=10) as response:
        replies = json.loads(response.read())["replies"]
    assert {r["kind"] for r in replies.values()} >= {"scheduler", "fetcher", "processor", "webui"}
    fetcher = next(n for n, r in replies.items() if r["kind"] == "fetcher")
    with opener.open(f"{base}/api/xsrf", timeout=10) as response:
        xsrf = json.loads(response.read())["xsrf"]
    body = json.dumps({"destination": [fetcher], "max": 50, "min": 5, "timeout": 2}).encode()
    request = urllib.request.Request(f"{base}/api/control/autoscale", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-XSRFToken": xsrf})
    with opener.open(request, timeout=10) as response:
        assert json.loads(response.read())["replies"][fetcher]["max-concurrency"] == 50
    refused = urllib.request.Request(f"{base}/api/control/shutdown", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(refused, timeout=10)
    assert info.value.code == 403        # no xsrf token: refused like every other change
    with opener.open(f"{base}/nodes", timeout=10) as response:
        page = response.read().decode()
    assert 'data-control="shutdown"' in page and 'data-control="pool_grow"' in page

    # shutdown of every node ends `spiderflow all`
    out = crawl.cli("control", "shutdown", "--timeout", "3")
    assert out.stdout.count("shutting down") >= 5, out.stdout
    assert procs.current["all"].popen.wait(60) == 0
    assert _grep(procs, "every component was shut down by remote control")


def _grep(procs, text: str) -> str | None:
    for proc in procs.history:
        try:
            for line in proc.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
        except OSError:
            continue
    return None


@pytest.mark.parametrize("backend", ["redis-postgresql", "amqp-mysql"], indirect=True)
def test_control_on_separate_processes(make_cluster, backend, httpbin):
    cluster = make_cluster(backend)
    crawl = Crawl(cluster.procs, cluster.data_dir,
                  {"log_level": "INFO", "queue": cluster.queue, "taskdb": cluster.db, "projectdb": cluster.db,
                   "resultdb": cluster.db, "scheduler_port": cluster.port}, httpbin)
    names = cluster.start_all(fetchers=2, processors=1, result_workers=1)
    pids = {cluster.procs.pid(n): n for n in names}

    def fetcher_ended(pid: int) -> int:
        proc = cluster.procs.current[pids[pid]]
        proc.how = "control shutdown"        # expected to end: check_alive leaves it out
        return proc.popen.wait(30)

    def kill(kind: str) -> int:
        name = next(n for n in names if n.startswith(kind))
        pid = cluster.procs.pid(name)
        assert cluster.procs.kill(name, signal.SIGKILL) is not None
        return pid

    kinds = {"scheduler": 1, "fetcher": 2, "processor": 1, "result-worker": 1}
    try:
        run_scenario(crawl, kinds, cluster.check_alive, fetcher_ended, kill)
    finally:
        cluster.projects.extend(p.stem for p in crawl.data_dir.glob("ctl_*.py"))
