"""``spiderflow queue`` on a running cluster: ``spiderflow all`` (sqlite, multiprocessing
queues) and separate component processes on redis:// + PostgreSQL.

One crawl per cluster, of a slow site (every page is the test server's ``/delay``), shows:

* ``queue cap 2`` holds the cluster at 2 tasks in flight or fewer (the scheduler's own
  count, sampled every 0.1 s) and reaches 2;
* ``queue update DIR`` with a changed script is picked up while the crawl runs, with no
  restart: results of the new version arrive, the project stays RUNNING and keeps the rate
  it was given at runtime;
* ``queue cap 8`` lets more tasks be in flight within a couple of seconds and the crawl
  runs faster;
* ``queue status --remote --json`` reports the project, the capacity and the nodes;
* ``queue check DIR`` fails, naming a broken script and an unreachable start URL, while the
  queues, the databases and the scheduler pass.

Every wait is bounded; the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from spiderflow.message import ProjectStatus
from spiderflow.scheduler import ControlClient
from spiderflow.scheduler.control import token_path
from spiderflow.storage import connect_projectdb, connect_resultdb

from .conftest import SPIDERFLOW, free_port, project_name, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

DELAY = 0.5          # seconds each page of the slow site takes to answer
PAGES = 150          # more than the test crawls: the crawl never runs dry while measured
SLOW_SCRIPT = '''\
"""A slow site: every page takes {delay} s to answer."""
# rate: 100
# burst: 100
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        for n in range({pages}):
            self.crawl("{base}/delay/{delay}?n=%d" % n, callback=self.page)

    def page(self, response):
        return {{"version": {version}, "url": response.url}}
'''
BROKEN_SCRIPT = "from spiderflow import *\n\nclass Handler(BaseHandler):\n    def on_start(self)\n        pass\n"
UNREACHABLE_SCRIPT = '''\
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("http://127.0.0.1:1/nothing-listens-here", callback=self.page)

    def page(self, response):
        return {"url": response.url}
'''


class Ops:
    """A cluster and the ``spiderflow`` command that operates it (its config file names everything)."""

    def __init__(self, procs, data_dir: Path, settings: dict[str, Any], projectdb: str, resultdb: str):
        self.procs = procs
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.projectdb, self.resultdb = projectdb, resultdb
        self.config = data_dir / "spiderflow.json"
        self.config.write_text(json.dumps({"heartbeat_interval": 2, "project_check_interval": 1,
                                           "scheduler_port": self.port, **settings}))

    def command(self, *args: str) -> list[str]:
        return [*SPIDERFLOW, "--data-dir", str(self.data_dir), "-c", str(self.config), *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60,
                             cwd=str(self.data_dir), env=self.procs.env, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"spiderflow {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def in_flight(self) -> int:
        """Tasks dispatched and not yet answered, as the scheduler counts them."""
        client = ControlClient(f"http://127.0.0.1:{self.port}", timeout=5, token_file=token_path(str(self.data_dir)))
        return sum(p["processing"] for p in client.projects())


def write_slow(directory: Path, name: str, base: str, version: int) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(SLOW_SCRIPT.format(delay=DELAY, pages=PAGES, base=base, version=version))


def sample(ops: Ops, seconds: float, results) -> tuple[int, float]:
    """(most tasks in flight seen, results per second) over *seconds*."""
    most, start, n0 = 0, time.monotonic(), results()
    while time.monotonic() - start < seconds:
        most = max(most, ops.in_flight())
        time.sleep(0.1)
    return most, (results() - n0) / (time.monotonic() - start)


def run_scenario(ops: Ops, httpbin, alive, name: str) -> None:
    """The crawl of the module docstring, as project *name*, on a cluster that is running;
    *alive* fails if a component died or was started again."""
    scripts = ops.data_dir / "scripts"
    write_slow(scripts, name, httpbin.url, version=1)
    projectdb = connect_projectdb(ops.projectdb)
    resultdb = connect_resultdb(ops.resultdb)
    try:
        assert "at most 2 tasks in flight" in ops.cli("queue", "cap", "2").stdout
        pushed = ops.cli("queue", "update", str(scripts), "--status", "RUNNING").stdout
        assert f"added      {name}  (RUNNING, rate 100, burst 100)" in pushed, pushed
        wait_for(lambda: ops.cli("project", "run", name, check=False).returncode == 0, 30,
                 "the scheduler to start the project", interval=0.3, alive=alive)

        def results(version: int | None = None) -> int:
            return sum(1 for r in resultdb.select(name) if version is None or r["result"]["version"] == version)

        wait_for(lambda: results() >= 2, 30, "the first results", alive=alive)
        most, slow_rate = sample(ops, 3.0, results)
        assert most == 2, f"with cap 2, {most} tasks were in flight at most"

        projectdb.update(name, rate=60)                 # changed at runtime (as the web UI does)
        write_slow(scripts, name, httpbin.url, version=2)
        pushed = ops.cli("queue", "update", str(scripts)).stdout
        assert f"updated    {name}  (script changed; RUNNING, rate 60, burst 100; kept status, rate, burst)" \
            in pushed, pushed
        most_during_update = 0

        def new_version() -> bool:
            nonlocal most_during_update
            most_during_update = max(most_during_update, ops.in_flight())
            return results(2) > 0

        wait_for(new_version, 15, "results of the pushed script", interval=0.1, alive=alive)
        assert most_during_update <= 2
        row = projectdb.get(name, ["status", "rate", "burst"])
        assert (row["status"], row["rate"], row["burst"]) == (ProjectStatus.RUNNING, 60, 100)

        assert "at most 8 tasks in flight; was at most 2" in ops.cli("queue", "cap", "8").stdout
        wait_for(lambda: ops.in_flight() > 2, 3, "more than 2 tasks in flight after `queue cap 8`", interval=0.05,
                 alive=alive)
        most, fast_rate = sample(ops, 3.0, results)
        assert 2 < most <= 8, most
        assert fast_rate > 1.5 * slow_rate, f"cap 2: {slow_rate:.1f} results/s, cap 8: {fast_rate:.1f} results/s"
        print(f"{name}: cap 2 -> {slow_rate:.1f} results/s, cap 8 -> {fast_rate:.1f} results/s (most in flight {most})")

        report = json.loads(ops.cli("queue", "status", "--remote", "--json").stdout)
        project = next(p for p in report["projects"] if p["name"] == name)
        assert project["status"] == "RUNNING" and project["rate"] == 60 and project["done"] > 0
        assert 0 <= project["in_flight"] <= 8 and project["active"] > 0
        assert report["capacity"]["cap"] == 8 and report["scheduler"]["reachable"]
        assert {n["kind"] for n in report["nodes"]} >= {"scheduler", "fetcher", "processor", "result-worker"}

        checks = ops.data_dir / "check"
        write_slow(checks, "good", httpbin.url, version=1)
        (checks / "broken.py").write_text(BROKEN_SCRIPT)
        (checks / "unreach.py").write_text(UNREACHABLE_SCRIPT)
        out = ops.cli("queue", "check", str(checks), "--max-urls", "2", "--timeout", "5", check=False)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"FAIL  script {checks}/broken.py (project broken): project broken: the script does not compile" \
            in out.stdout, out.stdout
        assert "FAIL  start URL http://127.0.0.1:1/nothing-listens-here (project unreach): 599 in" in out.stdout
        assert f"ok    start URL {httpbin.url}/delay/{DELAY}?n=0 (project good): 200 in" in out.stdout
        assert "ok    scheduler" in out.stdout and "ok    projectdb" in out.stdout and "ok    taskdb" in out.stdout
        assert "2 of " in out.stdout and "checks failed" in out.stdout
        alive()
    finally:
        projectdb.set_cluster_value("pool_cap", None)   # the database may be shared with other tests
        projectdb.close()
        resultdb.close()


def test_queue_operations_on_spiderflow_all(procs, httpbin, tmp_path):
    data = tmp_path / "data"
    ops = Ops(procs, data, {"log_level": "INFO"}, projectdb=f"sqlite:///{data}/project.db",
              resultdb=f"sqlite:///{data}/result.db")
    procs.start("all", ops.command("all", "--no-webui"))

    def alive() -> None:
        assert procs.alive("all"), "spiderflow all exited"
        assert sum(procs.grep("died").values()) == 0, "a component of `spiderflow all` died and was restarted"

    wait_for(lambda: sum(procs.grep("all: started").values()) >= 4, 30, "spiderflow all to start", alive=alive)
    run_scenario(ops, httpbin, alive, project_name("ops"))
    assert sum(procs.grep("all: started").values()) == 4    # no component was started again
    out = ops.cli("queue", "status", "--remote")
    assert "queues     not shared" in out.stdout and "capacity   no limit" in out.stdout


@pytest.mark.parametrize("backend", ["redis-postgresql"], indirect=True)
def test_queue_operations_on_redis_and_postgresql(make_cluster, backend, httpbin):
    cluster = make_cluster(backend)
    ops = Ops(cluster.procs, cluster.data_dir, {"log_level": "INFO", "queue": cluster.queue, "taskdb": cluster.db,
                                                "projectdb": cluster.db, "resultdb": cluster.db},
              projectdb=cluster.db, resultdb=cluster.db)
    assert ops.config == cluster.config          # the components read the same file
    cluster.port = ops.port
    name = project_name("ops")
    cluster.projects.append(name)                 # its rows are deleted afterwards
    names = cluster.start_all(fetchers=1, processors=1, result_workers=1)
    pids = {n: cluster.procs.pid(n) for n in names}

    def alive() -> None:
        cluster.check_alive()
        assert {n: cluster.procs.pid(n) for n in names} == pids and len(cluster.procs.history) == len(names)

    run_scenario(ops, httpbin, alive, name)
    out = ops.cli("queue", "status", "--remote")
    assert "queues     newtask_queue" in out.stdout and "scheduler2fetcher" in out.stdout, out.stdout
