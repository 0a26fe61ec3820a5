"""The stress test: ``spiderflow bench`` and ``python bench.py`` run :func:`run_bench`.

Two crawls of the local test server (:mod:`.workloads`): ``pyspider`` (a link farm crawled
until every reachable page is done) and ``scrapy`` (an ever-growing tree crawled for a fixed
time). By default the real ``all`` pipeline runs them (:mod:`.pipeline`: one process per
component, multiprocessing queues, sqlite in a temporary directory); ``--in-process`` runs
everything on one event loop (:mod:`.inprocess`); ``--null-fetcher`` answers from memory
instead of HTTP (:mod:`.nullfetch`). Progress comes from the components' own counters
(:mod:`.probe`), printed once a second (:mod:`.progress`); the run ends with one summary
line (:mod:`.summary`). :func:`run_micro` times taskdb and queue operations (:mod:`.micro`).
"""

from __future__ import annotations

from .micro import run_micro
from .runner import BenchConfig, run_bench
from .summary import Summary
from .workloads import WORKLOADS

__all__ = ["WORKLOADS", "BenchConfig", "Summary", "run_bench", "run_micro"]
