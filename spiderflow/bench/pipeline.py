"""The bench's default topology: the ``all`` pipeline, every component its own process.

The components are built by :mod:`spiderflow.runtime` exactly as ``spiderflow all`` builds them
(multiprocessing queues, sqlite in the run's data directory) and started by its supervisor;
the only additions are a :class:`~.probe.Probe` that copies each component's counters to
shared memory, and, with ``--null-fetcher``, a :class:`~.nullfetch.NullFetcher` in place of
the fetcher. The scheduler's control interface is not started (no port to collide with).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import threading
import time

from ..message import special_task
from ..queues import BaseQueue, connect_queues
from ..runtime.component import run_component
from ..runtime.signals import install_stop_signals
from ..runtime.supervisor import Supervisor, child_process
from ..settings import Settings
from .nullfetch import NullFetcher
from .probe import Probe, cpu_seconds, peak_rss_mb

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0


def component_main(kind: str, settings: Settings, queues: dict[str, BaseQueue], *, probe: Probe,
                   null_fetcher: bool) -> None:
    """A component process of the bench (compare :func:`spiderflow.runtime.supervisor.child_main`)."""
    with child_process(f"bench: {kind}", queues):
        if kind == "fetcher" and null_fetcher:
            fetcher = NullFetcher(queues["scheduler2fetcher"], queues["fetcher2processor"], settings)
            probe.watch(kind, fetcher)
            install_stop_signals(fetcher.stop, kind, sigint=False)
            asyncio.run(fetcher.run())
        else:
            run_component(kind, settings, queues, control=False, sigint=False, observe=probe.watch)


class Processes:
    """Start, watch and stop the component processes of one bench run."""

    name = "processes"

    def __init__(self, settings: Settings, null_fetcher: bool, queues: dict[str, BaseQueue] | None = None):
        self.settings = settings
        self.ctx = multiprocessing.get_context("fork")
        self.queues = queues if queues is not None else connect_queues("multiprocessing://", settings.queue_bounds(),
                                                                      context=self.ctx)
        self.plan = [("scheduler", 1), ("fetcher", max(1, settings.fetcher_num)),
                     ("processor", max(1, settings.processor_num)),
                     ("result-worker", max(1, settings.result_worker_num))]
        self.probe = Probe(self.ctx, sum(n for _, n in self.plan))
        target = functools.partial(component_main, probe=self.probe, null_fetcher=null_fetcher)
        self.supervisor = Supervisor(self.ctx, settings, self.queues, target=target)
        self._rss: dict[tuple[str, int], float] = {}
        self._cpu: dict[tuple[str, int], float] = {}

    def start(self) -> None:
        for kind, count in self.plan:
            for index in range(count):
                self.supervisor.start(kind, index)

    def kick(self, project: str) -> None:
        """Start the crawl: the project's on_start, as ``all`` sends it."""
        self.queues["newtask_queue"].put(special_task(project, "on_start", priority=9), timeout=30)

    def counts(self) -> dict[str, dict[str, float]]:
        counts = self.probe.read()
        counts["queues"] = {name: float(q.qsize()) for name, q in self.queues.items()}
        return counts

    def dead(self) -> list[str]:
        """Components whose process has exited."""
        return [f"{kind} #{index} (exit code {proc.exitcode})"
                for (kind, index), proc in self.supervisor.procs.items() if not proc.is_alive()]

    def peak_rss(self) -> dict[str, float]:
        """Peak RSS (MB) per component kind, the largest process of each kind."""
        for key, proc in self.supervisor.procs.items():
            value = peak_rss_mb(proc.pid)
            if value is not None:
                self._rss[key] = max(value, self._rss.get(key, 0.0))
        out: dict[str, float] = {}
        for (kind, _), value in self._rss.items():
            out[kind] = max(value, out.get(kind, 0.0))
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far per component kind (all its processes)."""
        for key, proc in self.supervisor.procs.items():
            value = cpu_seconds(proc.pid)
            if value is not None:
                self._cpu[key] = value
        out: dict[str, float] = {}
        for (kind, _), value in self._cpu.items():
            out[kind] = out.get(kind, 0.0) + value
        return out

    def stop(self) -> None:
        """Warm stop of every process; the queues are drained meanwhile so no producer stays blocked."""
        self.peak_rss()
        stopper = threading.Thread(target=self.supervisor.stop_all, kwargs={"timeout": STOP_TIMEOUT},
                                   name="bench-stop", daemon=True)
        stopper.start()
        while stopper.is_alive():
            for q in self.queues.values():
                with contextlib.suppress(Exception):
                    q.get_many(10_000, 0)
            time.sleep(0.02)
        for q in self.queues.values():
            q.close()


__all__ = ["Processes", "component_main"]
