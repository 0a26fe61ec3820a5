"""Distributed mode: one scheduler, 2 fetchers, 2 processors and 1 result worker as separate
OS processes, on shared queues (redis:// or amqp://) and a shared database (PostgreSQL or
MySQL), crawl the test server's link farm to completion with exact counts, also when a
fetcher, a processor and the result worker are killed with SIGKILL mid-crawl and restarted,
or the scheduler is (on the growth tree, where a lost request loses a subtree); and
``spiderflow nodes`` lists the six processes online during a crawl.

What "exact" means here: resultdb holds one result per reachable page (the set of URLs is
the site's reachable set, no duplicate), taskdb has no ACTIVE, FAILED or BAD task left for
the project, and the test server saw every reachable page fetched: exactly once when
nothing was killed, at least once otherwise (a killed component's tasks are fetched again).

The processes, backends and cleanup are in conftest.py. Every wait is bounded.
"""

from __future__ import annotations

import collections
import signal
import time

import pytest

from spiderflow.testing import follow_url, link_farm_reachable, link_farm_url

from .conftest import project_name, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

BOTH = pytest.mark.parametrize("backend", ["redis-postgresql", "amqp-mysql"], indirect=True)
REDIS_PG = pytest.mark.parametrize("backend", ["redis-postgresql"], indirect=True)

TOTAL, SHOW = 300, 5
DEADLINE = 90.0                      # seconds a crawl may take to complete
# the kill tests: tasks lost with a killed component are re-sent after a few seconds
FAST_LEASE = {"lease_time": 5, "retry_delay": [[0, 1], [-1, 1]]}
FAST_VISIBILITY = {"visibility_timeout": 3}
# the crawl the kill tests interrupt: the scheduler sends as fast as the queues take, but each
# callback takes SLOW_CALLBACK s, so every queue and fetcher fills up (backpressure) and a
# killed fetcher or processor dies holding tasks; the crawl lasts a few seconds
SLOW_CALLBACK = 0.02
TREE_TOTAL = 1500                    # pages of the growth tree the scheduler-kill test crawls
SCHEDULER_KILLS = 4


class Crawl:
    """The crawl of one test: its project, start URL and the exact set of pages it must find.

    ``site="links"``: the link farm, from page 0 (every page links to *show* random pages, so
    most pages are reached several ways). ``site="follow"``: the growth tree cut at *total*
    pages (every page has exactly one parent, so a lost request loses a whole subtree).
    """

    def __init__(self, httpbin, total: int = TOTAL, show: int = SHOW, site: str = "links"):
        self.httpbin = httpbin
        self.total, self.show, self.site = total, show, site
        self.name = project_name()
        if site == "links":
            self.paths = {link_farm_url(total, show, n) for n in link_farm_reachable(total, show)}
            self.start_url = httpbin.url + link_farm_url(total, show, 0)
        else:
            self.paths = {follow_url(show, n, total) for n in range(total)}
            self.start_url = httpbin.url + follow_url(show, 0, total)
        self.urls = {httpbin.url + p for p in self.paths}
        self.hits_before = collections.Counter(httpbin.hits)

    @property
    def expected(self) -> int:
        return len(self.paths)

    def fetches(self) -> dict[str, int]:
        """How many times this test fetched each page of its site (its pages and any other)."""
        prefix = f"/links?total={self.total}&show={self.show}&" if self.site == "links" else \
            f"/follow?total={self.total}&show={self.show}&"
        return {uri: n - self.hits_before[uri] for uri, n in self.httpbin.hits.items()
                if uri.startswith(prefix) and n - self.hits_before[uri] > 0}


def check_complete(cluster, crawl: Crawl, exactly_once: bool) -> None:
    """One result per reachable page, nothing ACTIVE or failed, every page fetched (once)."""
    results = cluster.results(crawl.name)
    taskids = [r["taskid"] for r in results]
    urls = [r["url"] for r in results]
    assert len(taskids) == len(set(taskids)), "a task has two results"
    assert collections.Counter(urls) == collections.Counter(crawl.urls), (
        f"results differ from the reachable pages: missing {sorted(crawl.urls - set(urls))[:5]}, "
        f"extra {sorted(set(urls) - crawl.urls)[:5]}, duplicated "
        f"{[u for u, n in collections.Counter(urls).items() if n > 1][:5]}")
    assert all(r["result"]["url"] == r["url"] for r in results)
    counts = cluster.status_count(crawl.name)
    assert counts["ACTIVE"] == 0 and counts["FAILED"] == 0 and counts["BAD"] == 0, counts
    assert counts["SUCCESS"] >= crawl.expected, counts
    fetches = crawl.fetches()
    missing = crawl.paths - set(fetches)
    assert not missing, f"{len(missing)} reachable pages never fetched, e.g. {sorted(missing)[:5]}"
    assert set(fetches) == crawl.paths, f"pages outside the reachable set fetched: {sorted(set(fetches) - crawl.paths)[:5]}"
    if exactly_once:
        twice = {uri: n for uri, n in fetches.items() if n != 1}
        assert not twice, f"{len(twice)} pages fetched more than once: {dict(list(twice.items())[:5])}"


def start_crawl(cluster, crawl: Crawl, rate: float = 1000, burst: float = 1000, delay: float = 0.0) -> None:
    cluster.add_project(crawl.name, crawl.start_url, rate=rate, burst=burst, delay=delay)
    cluster.start_all(fetchers=2, processors=2, result_workers=1)
    cluster.run_project(crawl.name)


def recovery(cluster) -> str:
    """What the logs say was recovered (for -s output and failure reports)."""
    signs = {"reclaimed": "stopped answering", "leases expired": "expired; sending it again",
             "stale status packs": "not in flight"}
    return ", ".join(f"{label} {sum(cluster.procs.grep(text).values())}" for label, text in signs.items())


def mid_crawl(cluster, crawl: Crawl) -> int:
    """Wait until a quarter of the results exist; fail if the crawl is already over."""
    n = cluster.wait_results(crawl.name, crawl.expected // 4, timeout=DEADLINE)
    assert n < crawl.expected, f"the crawl finished ({n} results) before the kill: slow it down"
    return n


# -- 1. no kill: exact counts, each page fetched exactly once, warm shutdown ------------------------

@BOTH
def test_crawl_to_completion_with_exact_counts(backend, make_cluster, httpbin):
    cluster = make_cluster(backend)
    crawl = Crawl(httpbin)
    started = time.monotonic()
    start_crawl(cluster, crawl)
    cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # anything still in flight would show as an extra fetch or result now
    check_complete(cluster, crawl, exactly_once=True)
    codes = cluster.procs.stop(timeout=20)
    assert codes == dict.fromkeys(codes, 0), f"warm shutdown (SIGTERM) did not exit 0 everywhere: {codes}"
    print(f"{backend.name}: {crawl.expected} pages in {elapsed:.1f}s (process start included)")


# -- 2. a fetcher, a processor and the result worker killed with SIGKILL mid-crawl, then restarted -----

@BOTH
def test_killed_fetcher_processor_and_result_worker_lose_nothing(backend, make_cluster, httpbin):
    """What the killed processes held comes back: redelivered by the queue (redis: once
    visibility_timeout passes; RabbitMQ: at once) or re-sent when the scheduler's lease ends."""
    cluster = make_cluster(backend, settings=FAST_LEASE, queue_options=FAST_VISIBILITY)
    crawl = Crawl(httpbin)
    start_crawl(cluster, crawl, delay=SLOW_CALLBACK)
    killed_at = mid_crawl(cluster, crawl)
    killed = ("fetcher-1", "processor-1", "result-worker-1")
    for name in killed:
        assert cluster.procs.kill(name, signal.SIGKILL) == -signal.SIGKILL
    assert cluster.result_count(crawl.name) < crawl.expected
    time.sleep(1.0)
    for name in killed:
        kind, index = name.rsplit("-", 1)
        cluster.start(kind, int(index))
    cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
    time.sleep(0.5)
    check_complete(cluster, crawl, exactly_once=False)
    refetched = sum(n - 1 for n in crawl.fetches().values())
    print(f"{backend.name}: killed at {killed_at}/{crawl.expected} results; {refetched} pages fetched again; "
          f"{recovery(cluster)}")


# -- 3. the scheduler killed with SIGKILL mid-crawl; a new one recovers from taskdb -----------------

@REDIS_PG
def test_restarted_scheduler_recovers_from_taskdb(backend, make_cluster, httpbin):
    """Four times, kill -9 the scheduler and start a new one. On the growth tree a request
    the dead scheduler had taken but not stored would lose its whole subtree."""
    cluster = make_cluster(backend, queue_options=FAST_VISIBILITY)
    crawl = Crawl(httpbin, total=TREE_TOTAL, show=SHOW, site="follow")
    start_crawl(cluster, crawl)     # full speed: the scheduler is busiest with requests then
    killed_at = []
    for k in range(1, SCHEDULER_KILLS + 1):
        n = cluster.wait_results(crawl.name, crawl.expected * k // (SCHEDULER_KILLS + 2), timeout=DEADLINE)
        assert n < crawl.expected, f"the crawl finished ({n} results) before kill {k}: slow it down"
        assert cluster.procs.kill("scheduler-1", signal.SIGKILL) == -signal.SIGKILL
        killed_at.append(n)
        cluster.start("scheduler", 1)   # the same control port: the killed one's socket is closed
    cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
    time.sleep(0.5)
    check_complete(cluster, crawl, exactly_once=False)
    refetched = sum(n - 1 for n in crawl.fetches().values())
    print(f"{backend.name}: scheduler killed at {killed_at}/{crawl.expected} results; {refetched} pages "
          f"fetched again; {recovery(cluster)}")


# -- 4. `spiderflow nodes` lists the six processes online during the crawl --------------------------

@REDIS_PG
def test_nodes_lists_the_six_processes_during_the_crawl(backend, make_cluster, httpbin):
    cluster = make_cluster(backend)
    crawl = Crawl(httpbin)
    start_crawl(cluster, crawl, delay=SLOW_CALLBACK)
    pids = {name: cluster.procs.pid(name) for name in cluster.procs.current}

    def online() -> list[dict]:
        rows = [r for r in cluster.nodes() if r["status"] == "online"]
        return rows if len(rows) == 6 else []

    rows = wait_for(online, 30, "6 nodes online")
    assert cluster.result_count(crawl.name) < crawl.expected, "the crawl ended before the nodes were listed"
    kinds = collections.Counter(r["kind"] for r in rows)
    assert kinds == {"scheduler": 1, "fetcher": 2, "processor": 2, "result-worker": 1}, kinds
    assert {r["pid"] for r in rows} == set(pids.values())
    for r in rows:
        assert r["name"] and r["version"] and r["started_at"] <= r["last_seen"], r
    cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
    codes = cluster.procs.stop(timeout=20)
    assert codes == dict.fromkeys(codes, 0), f"warm shutdown (SIGTERM) did not exit 0 everywhere: {codes}"
    after = {r["pid"]: r["status"] for r in cluster.nodes(include_offline=True)}
    assert after == dict.fromkeys(pids.values(), "stopped"), after
