"""``--in-process``: the whole crawl on one event loop, as ``spiderflow one`` runs it.

A :class:`~spiderflow.scheduler.OneScheduler` selects tasks, fetches them concurrently with
the real Fetcher (or the null fetcher), runs each page through the Processor and hands the
results to a ResultWorker, all in this process and without queues between the stages. The
result worker stores each pass's results in one transaction (``spiderflow one`` stores them
one by one). A pass selects up to ``loop_limit`` (1,000) tasks, so a time-bound run ends, and
stops, at the end of a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..fetcher import Fetcher
from ..message import ResultPack, Task, special_task
from ..processor import Processor
from ..result import ResultWorker
from ..scheduler import OneScheduler
from ..settings import Settings
from .nullfetch import NullFetcher
from .probe import LocalProbe, cpu_seconds, peak_rss_mb


class _BenchOneScheduler(OneScheduler):
    """OneScheduler that stores the results of each pass in one batch."""

    def __init__(self, *, flush: Callable[[], None], **kwargs: Any):
        super().__init__(**kwargs)
        self._flush_results = flush

    async def arun_once(self) -> int:
        ran = await super().arun_once()
        self._flush_results()
        return ran


class InProcess:
    """One process, one loop: scheduler, fetcher, processor and result worker."""

    name = "in-process"

    def __init__(self, settings: Settings, null_fetcher: bool, dbs: Any, project: str):
        self.settings = settings
        self.probe = LocalProbe()
        self.fetcher = (NullFetcher if null_fetcher else Fetcher)(None, None, settings)
        self.processor = Processor(projectdb=dbs.projectdb, settings=settings)
        self.worker = ResultWorker(None, dbs.resultdb, settings)
        self._results: list[ResultPack] = []
        self.scheduler = _BenchOneScheduler(
            projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb, fetcher=self.fetcher,
            process=self._process, result_sink=self._results.append, project=project, settings=settings,
            counter_file=None, flush=self._store)
        for kind, component in (("scheduler", self.scheduler), ("fetcher", self.fetcher),
                                ("processor", self.processor), ("result-worker", self.worker)):
            self.probe.watch(kind, component)
        self._run: asyncio.Task | None = None

    def _process(self, task: Task, result: Any):
        outcome = self.processor.process(task, result)
        return outcome.status_pack, outcome.new_tasks, outcome.results

    def _store(self) -> None:
        if self._results:
            batch, self._results[:] = list(self._results), []
            self.worker.handle(batch)

    def start(self) -> None:
        self._run = asyncio.get_running_loop().create_task(self.scheduler.run(burst=True))

    def kick(self, project: str) -> None:
        self.scheduler.newtask(special_task(project, "on_start", priority=9))

    def counts(self) -> dict[str, dict[str, float]]:
        return self.probe.read()

    def dead(self) -> list[str]:
        if self._run is not None and self._run.done():
            return ["the in-process scheduler (its loop ended)"]
        return []

    def peak_rss(self) -> dict[str, float]:
        return {"all": peak_rss_mb()}

    def cpu(self) -> dict[str, float]:
        return {"all": cpu_seconds()}

    async def stop(self) -> None:
        self.scheduler.stop()
        if self._run is not None:
            await self._run
        self._store()
        self.fetcher.close()


__all__ = ["InProcess"]
