"""Monitoring in the web UI: Prometheus ``/metrics``, a node's heartbeat history, the Nodes page's charts.

``GET /metrics`` answers in the Prometheus text format (prometheus-client), read fresh for
each scrape: per project its tasks by status, the events and rates of the last 5 minutes,
hour and day and the mean fetch and process times (from the scheduler's counters, or
taskdb's totals when it is not reachable); the pipeline's queue sizes (when the web UI sees
the queues) and the scheduler's ACTIVE tasks; per node whether it is up, what it is, its
host's health, its tasks, throughput and errors. It follows the web UI's credentials like
every API (basic auth or a bearer token for scrapers). ``GET /api/nodes/<id>/history?since=S``
gives a node's heartbeats. :func:`node_charts` draws the Nodes page's charts of the last
hour as SVG polylines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from ..scheduler.control import ControlError
from ..storage import NodeDB
from .base import ApiHandler
from .helpers import fail
from .overview import counters_overview, list_nodes, queue_sizes

if TYPE_CHECKING:
    from .app import WebUIState

logger = logging.getLogger(__name__)

CHART_SECONDS = 3600.0           # the Nodes page charts the last hour
CHART_POINTS = 120               # at most this many points per line
CHART_WIDTH, CHART_HEIGHT = 160, 36
EVENTS = ("pending", "success", "retry", "failed")
WINDOWS = {"5m": 300.0, "1h": 3600.0, "1d": 86400.0}
NODE_LABELS = ("node", "name", "kind", "device", "host")


# -- what one scrape reads ------------------------------------------------------------------------------

async def snapshot(state: WebUIState) -> dict[str, Any]:
    """Everything /metrics reports, read now: nodes, counters, queues, the scheduler's state."""
    loop = asyncio.get_running_loop()
    nodes = await list_nodes(state, include_offline=True)
    try:
        counters, source = await counters_overview(state)
    except ControlError as exc:
        logger.debug("metrics: counters: %s", exc)
        counters, source = {}, "none"
    size = await state.scheduler.get("size", default=None)
    sizes = await loop.run_in_executor(state.executor, queue_sizes, state)
    return {"nodes": nodes, "counters": counters, "counter_source": source, "queues": sizes, "active": size,
            "scheduler_up": bool(state.scheduler.status.reachable), "now": time.time()}


class SnapshotCollector:
    """The metric families of one :func:`snapshot` (a registry of its own per scrape)."""

    def __init__(self, snap: dict[str, Any]):
        self.snap = snap

    def collect(self) -> Iterator[Any]:
        yield from self._scheduler()
        yield from self._projects()
        yield from self._nodes()

    def _scheduler(self) -> Iterator[Any]:
        snap = self.snap
        up = GaugeMetricFamily("spiderflow_scheduler_up",
                               "Whether the web UI reaches the scheduler's control interface.")
        up.add_metric([], 1.0 if snap["scheduler_up"] else 0.0)
        yield up
        if snap["active"] is not None:
            active = GaugeMetricFamily("spiderflow_scheduler_active_tasks", "ACTIVE tasks of every project.")
            active.add_metric([], float(snap["active"]))
            yield active
        if snap["queues"]:
            queues = GaugeMetricFamily("spiderflow_queue_messages", "Messages waiting in a pipeline queue.",
                                       labels=["queue"])
            for name, n in sorted(snap["queues"].items()):
                if n is not None:
                    queues.add_metric([name], float(n))
            yield queues

    def _projects(self) -> Iterator[Any]:
        counters = self.snap["counters"] or {}
        tasks = GaugeMetricFamily("spiderflow_project_tasks",
                                  "Tasks of a project by status (the scheduler's 'all' counters, or taskdb's).",
                                  labels=["project", "status"])
        events = GaugeMetricFamily("spiderflow_project_events", "Task events of a project in the last window.",
                                   labels=["project", "window", "event"])
        rates = GaugeMetricFamily("spiderflow_project_event_rate",
                                  "Task events of a project per second over the last 5 minutes.",
                                  labels=["project", "event"])
        fetch = GaugeMetricFamily("spiderflow_project_fetch_seconds", "Mean fetch time of a project's tasks.",
                                  labels=["project", "window"])
        process = GaugeMetricFamily("spiderflow_project_process_seconds",
                                    "Mean callback time of a project's tasks.", labels=["project", "window"])
        for project, by_window in sorted(counters.items()):
            for event in EVENTS:
                tasks.add_metric([project, event], float((by_window.get("all") or {}).get(event) or 0))
            for window in (*WINDOWS, "all"):
                c = by_window.get(window)
                if not c:
                    continue
                if window in WINDOWS:
                    for event in EVENTS:
                        events.add_metric([project, window, event], float(c.get(event) or 0))
                if c.get("fetch_time"):
                    fetch.add_metric([project, window], float(c["fetch_time"]))
                if c.get("process_time"):
                    process.add_metric([project, window], float(c["process_time"]))
            five = by_window.get("5m")
            if five:
                for event in EVENTS:
                    rates.add_metric([project, event], float(five.get(event) or 0) / WINDOWS["5m"])
        yield from (tasks, events, rates, fetch, process)

    def _nodes(self) -> Iterator[Any]:
        nodes = self.snap["nodes"]
        now = self.snap["now"]
        labels = list(NODE_LABELS)
        count = GaugeMetricFamily("spiderflow_nodes", "Registered nodes by status.", labels=["status"])
        for status in ("online", "offline", "stopped"):
            count.add_metric([status], float(sum(1 for n in nodes if n["status"] == status)))
        yield count
        up = GaugeMetricFamily("spiderflow_node_up", "1 while a node's heartbeats arrive, else 0.", labels=labels)
        info = InfoMetricFamily("spiderflow_node", "What a node is and runs.", labels=labels)
        seen = GaugeMetricFamily("spiderflow_node_last_heartbeat_timestamp_seconds",
                                 "When a node's last heartbeat came.", labels=labels)
        age = GaugeMetricFamily("spiderflow_node_heartbeat_age_seconds", "Seconds since a node's last heartbeat.",
                                labels=labels)
        gauges = {
            "cpu_percent": ("spiderflow_node_cpu_percent", "CPU use of the node's host, percent."),
            "memory_percent": ("spiderflow_node_memory_percent", "Memory use of the node's host, percent."),
            "disk_percent": ("spiderflow_node_disk_percent", "Use of the file system of the node's data directory."),
            "load1": ("spiderflow_node_load1", "1-minute load average of the node's host."),
            "load5": ("spiderflow_node_load5", "5-minute load average of the node's host."),
            "load15": ("spiderflow_node_load15", "15-minute load average of the node's host."),
            "in_flight": ("spiderflow_node_tasks_running", "Tasks the node is working on."),
            "rate": ("spiderflow_node_throughput", "Tasks the node finished per second since its last heartbeat."),
        }
        counters = {
            "done": ("spiderflow_node_tasks_done", "Tasks the node finished since it started."),
            "errors": ("spiderflow_node_errors", "Errors of the node since it started."),
            "cpu": ("spiderflow_node_process_cpu_seconds", "CPU seconds of the node's process."),
            "net_sent": ("spiderflow_node_network_sent_bytes", "Bytes the node's host sent since it booted."),
            "net_recv": ("spiderflow_node_network_received_bytes", "Bytes the node's host received since it booted."),
        }
        families = {key: GaugeMetricFamily(name, text, labels=labels) for key, (name, text) in gauges.items()}
        families.update({key: CounterMetricFamily(name, text, labels=labels) for key, (name, text) in counters.items()})
        rss = GaugeMetricFamily("spiderflow_node_process_resident_memory_bytes", "RSS of the node's process.",
                                labels=labels)
        for node in nodes:
            values = [str(node.get(k) or "") for k in ("id", "name", "kind", "device", "host")]
            online = node["status"] == "online"
            up.add_metric(values, 1.0 if online else 0.0)
            caps = node.get("capabilities") or {}
            info.add_metric(values, {"status": node["status"], "version": str(node.get("version") or ""),
                                     "python": str(node.get("python") or ""), "ip": str(node.get("ip") or ""),
                                     "port": str(node.get("port") or ""),
                                     "components": ",".join(caps.get("components") or [])})
            seen.add_metric(values, float(node["last_seen"]))
            age.add_metric(values, max(0.0, now - node["last_seen"]))
            if not online:
                continue   # the last values of a node that is gone are not its health now
            for key, family in families.items():
                if isinstance(node.get(key), (int, float)):
                    family.add_metric(values, float(node[key]))
            if isinstance(node.get("rss_mb"), (int, float)):
                rss.add_metric(values, node["rss_mb"] * 1024 * 1024)
        yield from (up, info, seen, age, *families.values(), rss)


def render_metrics(snap: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


class MetricsHandler(ApiHandler):
    """``GET /metrics``: the Prometheus text format (credentials as for every API)."""

    async def get(self) -> None:
        body = render_metrics(await snapshot(self.state))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


class NodeHistoryHandler(ApiHandler):
    """``GET /api/nodes/<id>/history?since=SECONDS&limit=N``: a node and its heartbeats, oldest first."""

    async def get(self, node_id: str) -> None:
        since = self.int_arg("since", int(CHART_SECONDS), minimum=1)
        limit = self.int_arg("limit", 10_000, minimum=1, maximum=100_000)
        now = time.time()

        def read() -> tuple[Any, list[dict[str, Any]]]:
            db = NodeDB(self.state.projectdb.engine)
            return (db.get(node_id, timeout=self.state.settings.node_timeout, now=now),
                    db.history(node_id, since=now - since, limit=limit))

        node, beats = await asyncio.get_running_loop().run_in_executor(self.state.executor, read)
        if node is None:
            raise fail(404, f"no node {node_id!r} in the registry")
        self.reply({"node": node, "history": beats})


async def node_histories(state: WebUIState, node_ids: Iterable[str], seconds: float = CHART_SECONDS
                         ) -> dict[str, list[dict[str, Any]]]:
    """The heartbeats of the last *seconds* of each node, read in a worker thread."""
    since = time.time() - seconds
    ids = list(node_ids)

    def read() -> dict[str, list[dict[str, Any]]]:
        return NodeDB(state.projectdb.engine).histories(ids, since=since)

    return await asyncio.get_running_loop().run_in_executor(state.executor, read)


# -- the Nodes page's charts ---------------------------------------------------------------------------

def node_charts(beats: list[dict[str, Any]], now: float, seconds: float = CHART_SECONDS) -> dict[str, Any]:
    """Polylines (SVG ``points``) of the last *seconds* of heartbeats: ``health`` has ``cpu``,
    ``memory`` and ``disk`` (0-100 %), ``rate`` the throughput scaled to its peak (``peak``)."""
    start = now - seconds
    beats = [b for b in beats if b["at"] >= start]
    points = _downsample(beats, start, seconds)

    def line(key: str, top: float) -> str:
        out = []
        for x, values in points:
            value = values.get(key)
            if value is None:
                continue
            y = CHART_HEIGHT - min(1.0, max(0.0, value / top)) * (CHART_HEIGHT - 2) - 1
            out.append(f"{x:.1f},{y:.1f}")
        return " ".join(out)

    rates = [v["rate"] for _, v in points if v.get("rate") is not None]
    peak = max(rates) if rates else 0.0
    health = {"cpu": line("cpu_percent", 100.0), "memory": line("memory_percent", 100.0),
              "disk": line("disk_percent", 100.0)}
    rate = line("rate", peak or 1.0)
    # the newest point of each line, drawn as a dot: a node heard from for a minute is a dot at the right
    last = {key: tuple(points_.rsplit(" ", 1)[-1].split(",")) for key, points_ in (*health.items(), ("rate", rate))
            if points_}
    return {"beats": len(beats), "width": CHART_WIDTH, "height": CHART_HEIGHT, "health": health,
            "rate": rate, "peak": peak, "last": last}


def _downsample(beats: list[dict[str, Any]], start: float, seconds: float) -> list[tuple[float, dict[str, float]]]:
    """``[(x, {key: mean})]``: the beats averaged into at most :data:`CHART_POINTS` buckets."""
    keys = ("cpu_percent", "memory_percent", "disk_percent", "rate")
    buckets: dict[int, list[dict[str, Any]]] = {}
    for beat in beats:
        index = min(CHART_POINTS - 1, int((beat["at"] - start) / seconds * CHART_POINTS))
        buckets.setdefault(index, []).append(beat)
    out = []
    for index in sorted(buckets):
        group = buckets[index]
        means = {}
        for key in keys:
            values = [b[key] for b in group if isinstance(b.get(key), (int, float))]
            if values:
                means[key] = sum(values) / len(values)
        x = (index + 0.5) / CHART_POINTS * CHART_WIDTH
        out.append((x, means))
    return out


__all__ = ["MetricsHandler", "NodeHistoryHandler", "SnapshotCollector", "node_charts", "node_histories",
           "render_metrics", "snapshot"]
