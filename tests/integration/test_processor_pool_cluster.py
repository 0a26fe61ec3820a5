"""A prefork processor in a cluster of separate processes on redis:// + PostgreSQL.

``spiderflow processor --concurrency 2 --max-tasks-per-child 3`` with a scheduler, a fetcher
and a result worker crawls 20 pages of the test server's link farm: exactly 20 results, no
ACTIVE task, every task given to a child exactly once, the children replaced every 3 tasks.
Then ``control pool-grow/pool-shrink/autoscale`` change its pool (seen in ``inspect stats``)
and a warm stop ends it and its children. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from spiderflow.testing import link_farm_reachable, link_farm_url

from .conftest import project_name, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

TOTAL, SHOW = 21, 3          # 20 pages reachable from page 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("backend", ["redis-postgresql"], indirect=True)
def test_a_prefork_processor_in_a_cluster(make_cluster, backend, httpbin):
    cluster = make_cluster(backend)
    expected = len(link_farm_reachable(TOTAL, SHOW))
    assert expected == 20
    name = project_name("pool")
    cluster.add_project(name, httpbin.url + link_farm_url(TOTAL, SHOW, 0))
    for kind in ("scheduler", "fetcher", "result-worker"):
        cluster.start(kind)
    cluster.procs.start("processor-1", cluster.component_args("processor")
                        + ["--concurrency", "2", "--max-tasks-per-child", "3"])
    cluster.run_project(name)
    cluster.wait_done(name, expected, timeout=60)
    where = ["--queue", cluster.queue, "--projectdb", cluster.db, "--timeout", "3"]

    def processor_stats() -> dict:
        replies = json.loads(cluster.cli("inspect", "stats", "--json", *where).stdout)
        [stats] = [r for r in replies.values() if r.get("kind") == "processor"]
        return stats

    # _on_get_info (the scheduler loads the project), on_start, the 20 pages, then on_finished
    # once the queue is drained: each given to a child once (no retry)
    tasks = expected + 3
    wait_for(lambda: processor_stats()["pool"]["writes"]["total"] == tasks
             and cluster.active_count(name) == 0, 20, "on_finished done", interval=0.3)
    time.sleep(1.0)                                     # nothing more arrives
    assert cluster.result_count(name) == expected and cluster.active_count(name) == 0
    assert {r["url"] for r in cluster.results(name)} == {httpbin.url + link_farm_url(TOTAL, SHOW, n)
                                                           for n in link_farm_reachable(TOTAL, SHOW)}
    counts = cluster.status_count(name)
    assert counts["FAILED"] == 0 and counts["BAD"] == 0, counts

    stats = processor_stats()
    pool = stats["pool"]
    assert stats["pid"] == cluster.procs.pid("processor-1") and pool["implementation"] == "prefork"
    assert pool["max-concurrency"] == 2 and len(pool["processes"]) == 2 and stats["pid"] not in pool["processes"]
    assert pool["max-tasks-per-child"] == 3
    assert pool["writes"]["total"] == tasks
    assert pool["replaced"]["max-tasks-per-child"] >= 6 and pool["replacements"] >= 6
    assert stats["total"]["done"] == tasks and stats["total"]["errors"] == 0

    # control: the pool's size, as inspect stats sees it
    out = cluster.cli("control", "pool-grow", "2", *where).stdout
    assert "pool will grow" in out and "max-concurrency 4" in out, out
    wait_for(lambda: len(processor_stats()["pool"]["processes"]) == 4, 20, "4 children", interval=0.3)
    out = cluster.cli("control", "pool-shrink", "3", *where).stdout
    assert "pool will shrink" in out and "max-concurrency 1" in out, out
    wait_for(lambda: len(processor_stats()["pool"]["processes"]) == 1, 20, "1 child", interval=0.3)
    out = cluster.cli("control", "autoscale", "3", "2", *where).stdout
    assert "autoscale now max=3 min=2" in out and "max-concurrency 2" in out, out
    wait_for(lambda: len(processor_stats()["pool"]["processes"]) == 2, 20, "2 children", interval=0.3)
    stats = processor_stats()
    assert stats["pool"]["autoscaler"] == {"max": 3, "min": 2, "current": 2}
    active = json.loads(cluster.cli("inspect", "active", "--json", *where).stdout)
    assert all(a == [] for a in active.values()), active

    # a warm stop ends the processor and its children
    children = stats["pool"]["processes"]
    assert all(_alive(pid) for pid in children)
    assert cluster.procs.stop(["processor-1"]) == {"processor-1": 0}
    assert not any(_alive(pid) for pid in children)
    assert os.path.exists(cluster.procs.current["processor-1"].log)
