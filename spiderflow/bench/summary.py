"""The end of a bench run: one stable summary line and the same figures as JSON.

The line is ``bench: key=value key=value ...`` with keys always in the same order, so
scripts can grep it; :meth:`Summary.to_json` holds the same figures and a few more.

Task latency is measured from taskdb after the run: for every page task the scheduler
recorded done, ``lastcrawltime − exetime``. The scheduler stamps a new task's ``exetime``
with the time it accepted (stored) it and ``lastcrawltime`` with the time it recorded the
task's status pack, which the processor sends after it has handed the page's results to the
result worker. So it is "created → done", including the time the task waited in the
scheduler's queue behind the links found before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..message import TaskStatus

#: Short names of the components in the summary line.
SHORT = {"scheduler": "scheduler", "fetcher": "fetcher", "processor": "processor", "result-worker": "result",
         "all": "all"}


@dataclass
class Summary:
    """What one bench run measured (see the module docstring for latency)."""

    workload: str
    topology: str                      # "processes" or "in-process"
    fetcher: str                       # "http" or "null"
    pages: int                         # results stored within the measured time
    seconds: float
    expected: int | None = None        # pages a pyspider run must store (the reachable set)
    complete: bool = True              # pyspider: every reachable page stored; scrapy: ran its time
    check: str = "ok"                  # "ok" or what is wrong
    p50_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    mean_page_bytes: float | None = None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)       # per component kind (and the server)
    counts: dict[str, dict[str, float]] = field(default_factory=dict)   # the components' own counters at the end
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.complete and self.check == "ok"

    def line(self) -> str:
        """The one stable summary line."""
        rss = ",".join(f"{SHORT.get(k, k)}:{v:.0f}" for k, v in self.peak_rss_mb.items()) or "-"
        return (f"bench: workload={self.workload} topology={self.topology} fetcher={self.fetcher} "
                f"pages={self.pages} seconds={self.seconds:.2f} pages/s={self.pages_per_s:.1f} "
                f"pages/min={self.pages_per_s * 60:.0f} p50_latency_ms={_num(self.p50_latency_ms)} "
                f"p99_latency_ms={_num(self.p99_latency_ms)} peak_rss_mb={rss} "
                f"mean_page_bytes={_num(self.mean_page_bytes)} complete={'yes' if self.complete else 'no'} "
                f"check={self.check.replace(' ', '_')}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pages_per_s"] = round(self.pages_per_s, 1)
        data["pages_per_min"] = round(self.pages_per_s * 60)
        data["seconds"] = round(self.seconds, 3)
        data["ok"] = self.ok
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def percentile(values: list[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) of *values*, nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def task_figures(taskdb: Any, project: str, until: float) -> tuple[list[float], float | None]:
    """Latencies (ms) of the page tasks done by wall time *until*, and their mean page size."""
    rows = taskdb.select(project, TaskStatus.SUCCESS, limit=10 ** 9,
                         fields=["url", "schedule", "track", "lastcrawltime"])
    latencies: list[float] = []
    sizes: list[int] = []
    for row in rows:
        done = row.get("lastcrawltime")
        if not row["url"].startswith("http") or done is None or done > until:
            continue
        latencies.append(1000.0 * (done - row["schedule"]["exetime"]))
        size = (row.get("track") or {}).get("fetch", {}).get("content_length")
        if isinstance(size, int):
            sizes.append(size)
    return latencies, (sum(sizes) / len(sizes) if sizes else None)
