"""``spiderflow queue status --remote``: the state of the whole cluster in one report.

:func:`remote_status` gathers, each part on its own so that one unreachable part does not
hide the others: the projects stored in projectdb (status, group, rate, burst); per project
the ACTIVE, in-flight, done and failed tasks from the scheduler's control interface (or, when
the scheduler cannot be reached, ACTIVE, done and failed from taskdb); the sizes of the five
pipeline queues (when they are shared, redis:// or amqp://); the cluster's capacity; and the
nodes online. Nothing is created: a SQLite file that does not exist is reported, not made.
:func:`format_remote` prints the report for a terminal.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any

from ..exceptions import ControlError, redact_url
from ..message import TaskStatus
from ..queues import QUEUE_NAMES
from ..runtime.compose import LOCAL_QUEUES, control_client, open_queues, queue_scheme
from ..settings import Settings
from ..storage import connect_nodedb, connect_projectdb, connect_taskdb
from .capacity import describe, read_capacity
from .common import bounded, error_text, read_database

__all__ = ["format_remote", "queue_sizes", "remote_status", "shared_queue"]

logger = logging.getLogger(__name__)

PROJECT_FIELDS = ["name", "group", "status", "rate", "burst"]


def remote_status(settings: Settings, timeout: float = 10.0) -> dict[str, Any]:
    """The cluster's state; see the module docstring. Failures are listed under ``errors``."""
    report: dict[str, Any] = {"projects": [], "capacity": None, "queues": None, "queues_note": None,
                              "nodes": None, "scheduler": None, "counts_from": None, "errors": []}
    projects = _from_projectdb(settings, report, timeout)
    live = _from_scheduler(settings, report)
    if live is None:
        live = _from_taskdb(settings, report, timeout)
    names = sorted(set(projects) | set(live))
    report["projects"] = [{
        "name": name, **{k: projects.get(name, {}).get(k) for k in PROJECT_FIELDS[1:]},
        **{k: live.get(name, {}).get(k) for k in ("active", "in_flight", "done", "failed", "paused")},
    } for name in names]
    if report["capacity"] is not None:
        in_flight = [p["in_flight"] for p in report["projects"] if p["in_flight"] is not None]
        report["capacity"]["in_flight"] = sum(in_flight) if report["counts_from"] == "scheduler" else None
    _queue_sizes(settings, report, timeout)
    return report


def _from_projectdb(settings: Settings, report: dict[str, Any], timeout: float) -> dict[str, dict[str, Any]]:
    url = settings.db_url("projectdb")
    try:
        def read() -> tuple[list[dict[str, Any]], Any, list[dict[str, Any]]]:
            db = connect_projectdb(url)
            try:
                rows = db.list(fields=PROJECT_FIELDS)
                capacity = read_capacity(db, settings)
            finally:
                db.close()
            nodedb = connect_nodedb(url)
            try:
                nodes = nodedb.list(include_offline=False, timeout=settings.node_timeout)
            finally:
                nodedb.close()
            return rows, capacity, nodes

        rows, capacity, nodes = read_database("projectdb", url, read, timeout)
    except Exception as exc:  # each part on its own: report it, go on
        report["errors"].append(f"projectdb: {error_text(exc)}")
        return {}
    report["capacity"] = {**capacity.to_dict(), "source": capacity.source}
    report["nodes"] = nodes
    return {r["name"]: {**r, "status": r["status"].value} for r in rows}


def _from_scheduler(settings: Settings, report: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    client = control_client(settings, timeout=5.0)
    report["scheduler"] = {"url": client.url, "reachable": False, "error": None}
    try:
        counters = client.counters(window="all")
        projects = client.projects()
    except ControlError as exc:
        report["scheduler"]["error"] = str(exc)     # shown with the scheduler, not as an error:
        return None                                 # the rest of the report does without it
    report["scheduler"]["reachable"] = True
    report["counts_from"] = "scheduler"
    live: dict[str, dict[str, Any]] = {}
    for p in projects:
        counts = counters.get(p["name"], {}).get("all", {})
        live[p["name"]] = {"active": p.get("active"), "in_flight": p.get("processing"),
                           "done": int(counts.get("success", 0)), "failed": int(counts.get("failed", 0)),
                           "paused": p.get("pause") not in (None, "running")}
    return live


def _from_taskdb(settings: Settings, report: dict[str, Any], timeout: float) -> dict[str, dict[str, Any]]:
    url = settings.db_url("taskdb")
    try:
        def read() -> dict[str, dict[TaskStatus, int]]:
            db = connect_taskdb(url)
            try:
                return db.status_counts()
            finally:
                db.close()

        counts = read_database("taskdb", url, read, timeout)
    except Exception as exc:  # each part on its own: report it, go on
        report["errors"].append(f"taskdb: {error_text(exc)}")
        return {}
    report["counts_from"] = "taskdb"
    return {name: {"active": c[TaskStatus.ACTIVE], "in_flight": None, "done": c[TaskStatus.SUCCESS],
                   "failed": c[TaskStatus.FAILED], "paused": None} for name, c in counts.items()}


def _queue_sizes(settings: Settings, report: dict[str, Any], timeout: float) -> None:
    if not shared_queue(settings):
        report["queues_note"] = ("not shared: the queues of `spiderflow all` live inside its processes "
                                 "(its web UI dashboard shows them)")
        return
    try:
        report["queues"] = queue_sizes(settings, timeout)
    except Exception as exc:  # each part on its own: report it, go on
        report["errors"].append(f"queues: {error_text(exc)}")


def shared_queue(settings: Settings) -> bool:
    """Whether the settings name a queue backend that can be reached from another process (redis://, amqp://)."""
    return bool(settings.queue) and queue_scheme(settings, "multiprocessing://") not in LOCAL_QUEUES


def queue_sizes(settings: Settings, timeout: float) -> dict[str, int]:
    """``{queue name: messages}`` of the five pipeline queues on ``settings.queue`` (within *timeout* s)."""
    url = settings.queue

    def read() -> dict[str, int]:
        queues = open_queues(settings)
        try:
            return {name: queues[name].qsize() for name in QUEUE_NAMES}
        finally:
            for q in queues.values():
                with contextlib.suppress(Exception):
                    q.close()

    return bounded(read, timeout, f"the queue backend {redact_url(url)}")


# -- text ---------------------------------------------------------------------------------------

COLUMNS = ("NAME", "GROUP", "STATUS", "RATE", "BURST", "ACTIVE", "IN-FLIGHT", "DONE", "FAILED")


def format_remote(report: dict[str, Any]) -> str:
    lines = []
    sched = report["scheduler"] or {}
    lines.append(f"scheduler  {sched.get('url', '-')}: "
                 + ("answers" if sched.get("reachable") else f"not reachable ({sched.get('error')})"))
    cap = report["capacity"]
    if cap is not None:
        now = "" if cap.get("in_flight") is None else f"; {cap['in_flight']} in flight now"
        lines.append(f"capacity   {describe(cap['cap'])}, from {cap['source']}{now}")
    if report["queues"] is not None:
        lines.append("queues     " + "  ".join(f"{name} {size}" for name, size in report["queues"].items()))
    elif report["queues_note"]:
        lines.append(f"queues     {report['queues_note']}")
    if report["nodes"] is not None:
        kinds = Counter(n["kind"] for n in report["nodes"])
        lines.append(f"nodes      {len(report['nodes'])} online"
                     + (": " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()) if kinds else "")
                     + " (`spiderflow nodes` lists them)")
    lines.append("")
    if report["projects"]:
        cells = [COLUMNS] + [(
            p["name"], p["group"] or "-", (p["status"] or "-") + (" (paused)" if p["paused"] else ""),
            _num(p["rate"]), _num(p["burst"]), _num(p["active"]), _num(p["in_flight"]), _num(p["done"]),
            _num(p["failed"])) for p in report["projects"]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
        for row in cells:
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if report["counts_from"] == "taskdb":
            lines.append("(counts from taskdb: the scheduler cannot be reached, so tasks in flight are unknown)")
    elif report["capacity"] is None:
        lines.append("projects unknown: projectdb cannot be read (below)")
    else:
        lines.append("no projects stored: push some with `spiderflow queue update DIR`")
    for error in report["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
