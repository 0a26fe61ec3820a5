"""The dashboard (``/``) and the nodes page (``/nodes``).

The dashboard is rendered with what the databases and the scheduler say now; its script
then refreshes it from ``/api/projects``, ``/api/counters`` and ``/api/queues`` every few
seconds without a reload.
"""

from __future__ import annotations

import time

from ..message import ProjectStatus
from ..queues import QUEUE_NAMES
from .base import PageHandler
from .overview import counters_overview, list_nodes, projects_overview, queue_sizes

WINDOWS = ("5m", "1h", "1d", "all")
#: the dashboard's queue boxes: label → queues summed
QUEUE_GROUPS = (
    ("newtask + status → scheduler", ("newtask_queue", "status_queue")),
    ("scheduler → fetcher", ("scheduler2fetcher",)),
    ("fetcher → processor", ("fetcher2processor",)),
    ("processor → result worker", ("processor2result",)),
)
REFRESH_SECONDS = 3
NODES_REFRESH_SECONDS = 15
SEGMENTS = ("success", "retry", "failed", "pending")


def progress(counts: dict[str, float] | None) -> dict:
    """A progress bar of one window: segments ``(name, percent, n)``, the total and a tooltip."""
    counts = counts or {}
    values = [(name, int(counts.get(name) or 0)) for name in SEGMENTS]
    total = sum(n for _, n in values)
    segments = [(name, 100.0 * n / total if total else 0.0, n) for name, n in values]
    title = ", ".join(f"{name} {n}" for name, n in values)
    return {"segments": segments, "total": total, "title": title}


def avg_time(counters: dict[str, dict[str, float]] | None) -> str:
    """Average fetch + process time of the last hour (or of all time), e.g. ``0.120+0.004 s``."""
    for window in ("1h", "all"):
        c = (counters or {}).get(window) or {}
        if c.get("fetch_time") or c.get("process_time"):
            return f"{c.get('fetch_time', 0):.3f}+{c.get('process_time', 0):.3f} s"
    return "-"


def group_sizes(sizes: dict[str, int | None] | None) -> list[tuple[str, str, int | None]]:
    """``[(label, queue names, size or None)]`` for the dashboard's queue boxes."""
    out = []
    for label, names in QUEUE_GROUPS:
        values = [sizes.get(n) for n in names] if sizes else [None]
        total = None if any(v is None for v in values) else sum(values)
        out.append((label, " ".join(names), total))
    return out


class DashboardPage(PageHandler):
    async def get(self) -> None:
        projects = await projects_overview(self.state, self.authenticated)
        counters, source = await counters_overview(self.state)
        self.scheduler_status = self.state.scheduler.status
        self.render("dashboard.html", projects=projects, counters=counters, counter_source=source,
                    queues=group_sizes(queue_sizes(self.state)), windows=WINDOWS,
                    statuses=[s.value for s in ProjectStatus], refresh=REFRESH_SECONDS,
                    progress=progress, avg_time=avg_time)


class NodesPage(PageHandler):
    """``/nodes``: the components this web UI sees, and every node with its health and charts of the last hour."""

    async def get(self) -> None:
        from .metrics import CHART_SECONDS, node_charts, node_histories
        size = await self.state.scheduler.get("size", default=None)
        self.scheduler_status = self.state.scheduler.status
        sizes = queue_sizes(self.state)
        nodes = await list_nodes(self.state, include_offline=True)
        now = time.time()
        histories = await node_histories(self.state, [n["id"] for n in nodes])
        charts = {n["id"]: node_charts(histories.get(n["id"], []), now) for n in nodes}
        self.render("nodes.html", active=size, nodes=nodes, now=now, queue_names=QUEUE_NAMES, sizes=sizes,
                    webui_url=self.request.protocol + "://" + self.request.host, charts=charts,
                    chart_minutes=int(CHART_SECONDS // 60), refresh=NODES_REFRESH_SECONDS)
