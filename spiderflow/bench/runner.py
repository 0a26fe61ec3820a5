"""Run one bench crawl: set up, watch it with a live progress line a second, and summarise it.

:func:`run_bench` starts the bench's site server (:mod:`.server`) in its own process (unless
the null fetcher makes the pages), stores the workload's project in a temporary data directory, starts the
components (:class:`~.pipeline.Processes` or :class:`~.inprocess.InProcess`), sends
``on_start`` and starts the clock. It polls the stored results ten times a second: a
``pyspider`` run ends when every reachable page has its result, a ``scrapy`` run after its
time (every run is also bounded by ``max_seconds``). The components are then stopped warm,
and latency and page size are read from taskdb.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ..exceptions import ConfigError, redact_url
from ..message import ProjectStatus
from ..runtime.scripts import store_project
from ..storage import open_databases
from ..settings import Settings
from .probe import SAMPLE_INTERVAL, cpu_seconds
from .progress import Progress
from .summary import Summary, percentile, task_figures
from .workloads import BURST, NULL_BASE, PROJECT, RATE, Workload, make_workload

POLL = 0.1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What to run; the process counts, poolsize and queue bound come from the settings."""

    workload: str = "pyspider"
    total: int = 10_000
    show: int = 20
    seconds: float = 10.0
    in_process: bool = False
    null_fetcher: bool = False
    max_seconds: float = 300.0
    progress: bool = True


@dataclass
class _End:
    elapsed: float
    wall: float
    pages: int
    complete: bool
    check: str = "ok"


class _Watch:
    """Polls the result count, prints progress once a second, and decides when the run is over."""

    def __init__(self, config: BenchConfig, workload: Workload, expected: int | None, topology: Any,
                 resultdb: Any, out: TextIO | None, project: str = PROJECT):
        self.config = config
        self.project = project
        self.workload = workload
        self.expected = expected
        self.topology = topology
        self.resultdb = resultdb
        self.progress = Progress(out) if out is not None else None
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.t0 = time.monotonic()
        if self.progress:
            self.progress.start(self.t0)

    def poll(self) -> _End | None:
        now = time.monotonic()
        elapsed = now - self.t0
        saved = self.resultdb.count(self.project)
        end = None
        finished = self.expected is not None and saved >= self.expected
        timed_out = self.workload.seconds is not None and elapsed >= self.workload.seconds
        if finished or timed_out:
            end = _End(elapsed, time.time(), saved, True)
        elif elapsed >= self.config.max_seconds:
            end = _End(elapsed, time.time(), saved, False, f"stopped after max_seconds={self.config.max_seconds:g}")
        else:
            dead = self.topology.dead()
            if dead:
                end = _End(elapsed, time.time(), saved, False, "died: " + ", ".join(dead))
        if self.progress and (end is not None or self.progress.due(now)):
            self.progress.line(now, self.topology.counts(), saved)
        return end


def run_bench(config: BenchConfig, settings: Settings | None = None, out: TextIO | None = sys.stderr) -> Summary:
    """Run one bench crawl and return its summary (progress lines go to *out*, None: quiet)."""
    from ..testing import serve_in_process
    from .server import serve

    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="spiderflow-bench-") as tmp:
        if settings.queue:     # on real backends (spiderflow.bench.distributed), apart from anything else there
            from .distributed import check_backends, run_tag
            if config.in_process:
                raise ConfigError("bench: --in-process runs on one event loop; leave out --queue (or --in-process)")
            check_backends(settings)
            if "prefix=" in settings.queue.split("?", 1)[-1] and "?" in settings.queue:
                raise ConfigError("bench --queue: leave ?prefix= out of the URL; each run uses a prefix of its own")
            tag = run_tag()
            project = f"{PROJECT}_{tag}"
            settings = dataclasses.replace(settings, data_dir=tmp, queue_prefix=f"sfbench{tag}")
        else:
            project = PROJECT
            settings = dataclasses.replace(settings, data_dir=tmp, taskdb=None, projectdb=None, resultdb=None,
                                           queue=None)
        server = None if config.null_fetcher else serve_in_process(serve=serve)
        try:
            workload = make_workload(config.workload, server.url if server else NULL_BASE,
                                     config.total, config.show, config.seconds)
            return _run(config, settings, workload, server.pid if server else None,
                        out if config.progress else None, project)
        finally:
            if server is not None:
                server.stop()


@dataclass
class _Observed:
    """What the parent saw of a run: its end, and the components' counters, peak RSS and CPU."""

    end: _End
    counts: dict[str, dict[str, float]]
    rss: dict[str, float]
    cpu: dict[str, float]


def _run(config: BenchConfig, settings: Settings, workload: Workload, server_pid: int | None,
         out: TextIO | None, project: str = PROJECT) -> Summary:
    expected_urls = workload.expected_urls()
    expected = None if expected_urls is None else len(expected_urls)
    dbs = open_databases(settings)
    try:
        store_project(dbs.projectdb, project, workload.script, ProjectStatus.RUNNING, settings, RATE, BURST)
        if config.in_process:
            from .inprocess import InProcess
            topology = InProcess(settings, config.null_fetcher, dbs, project)
            seen = asyncio.run(_watch_in_process(topology, _Watch(config, workload, expected, topology,
                                                                  dbs.resultdb, out, project), server_pid))
        else:
            if settings.queue:
                from .distributed import Distributed
                topology = Distributed(settings, config.null_fetcher)
            else:
                from .pipeline import Processes
                topology = Processes(settings, config.null_fetcher)
            seen = _watch_processes(topology, _Watch(config, workload, expected, topology, dbs.resultdb, out,
                                                     project), server_pid, project)
        end = seen.end
        latencies, mean_bytes = task_figures(dbs.taskdb, project, end.wall)
        check = end.check
        if check == "ok" and expected_urls is not None:
            stored = {row["url"] for row in dbs.resultdb.select(project)}
            missing, extra = len(expected_urls - stored), len(stored - expected_urls)
            if missing or extra:
                check = f"missing={missing},extra={extra}"
        if check == "ok" and end.pages == 0:
            check = "no pages stored"
        return Summary(
            workload=workload.name, topology=topology.name,
            fetcher="null" if config.null_fetcher else "http", pages=end.pages, seconds=end.elapsed,
            expected=expected, complete=end.complete, check=check,
            p50_latency_ms=percentile(latencies, 50), p99_latency_ms=percentile(latencies, 99),
            mean_page_bytes=mean_bytes, peak_rss_mb={k: round(v, 1) for k, v in seen.rss.items()},
            cpu_seconds={k: round(v, 2) for k, v in seen.cpu.items()},
            counts={kind: {k: int(v) for k, v in fields.items()} for kind, fields in seen.counts.items()},
            params={"total": workload.total if workload.finite else None, "show": workload.show,
                    "seconds": workload.seconds, "fetcher_num": settings.fetcher_num,
                    "processor_num": settings.processor_num, "result_worker_num": settings.result_worker_num,
                    "poolsize": settings.poolsize, "queue_maxsize": settings.queue_maxsize,
                    "newtask_queue_maxsize": settings.queue_bounds()["newtask_queue"],
                    "start_url": workload.start_url,
                    **({"queue": redact_url(settings.queue), "queue_prefix": settings.queue_prefix,
                        "project": project, "taskdb": redact_url(settings.db_url("taskdb")),
                        "projectdb": redact_url(settings.db_url("projectdb")),
                        "resultdb": redact_url(settings.db_url("resultdb"))} if settings.queue else {})},
        )
    finally:
        if project != PROJECT:      # a distributed run: its project leaves the shared databases
            for db in (dbs.taskdb, dbs.resultdb, dbs.projectdb):
                try:
                    db.drop(project)
                except Exception as exc:
                    logger.warning("bench: could not drop project %s from %s: %s", project, type(db).__name__, exc)
        dbs.close()


def _cpu(topology: Any, server_pid: int | None) -> dict[str, float]:
    cpu = topology.cpu()
    if server_pid is not None:
        value = cpu_seconds(server_pid)
        if value is not None:
            cpu["server"] = value
    return cpu


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _watch_processes(topology: Any, watch: _Watch, server_pid: int | None, project: str = PROJECT) -> _Observed:
    topology.start()
    try:
        cpu0 = _cpu(topology, server_pid)
        topology.kick(project)
        watch.start()
        while True:
            time.sleep(POLL)
            end = watch.poll()
            if end is not None:
                break
        cpu = _delta(_cpu(topology, server_pid), cpu0)
        time.sleep(SAMPLE_INTERVAL + 0.05)       # the components' counters as of the end, not before
        seen = _Observed(end, topology.counts(), {}, cpu)
    finally:
        topology.stop()
    seen.rss = topology.peak_rss()
    return seen


async def _watch_in_process(topology: Any, watch: _Watch, server_pid: int | None) -> _Observed:
    cpu0 = _cpu(topology, server_pid)
    topology.kick(PROJECT)
    topology.start()
    watch.start()
    try:
        while True:
            await asyncio.sleep(POLL)
            end = watch.poll()
            if end is not None:
                break
        seen = _Observed(end, topology.counts(), {}, _delta(_cpu(topology, server_pid), cpu0))
    finally:
        await topology.stop()
    seen.rss = topology.peak_rss()
    return seen
