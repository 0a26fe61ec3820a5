"""``spiderflow nodes``: the nodes in the registry (in projectdb), their health and heartbeat history.

``nodes`` lists them (``--all``: offline and stopped ones too; ``--json``: every field),
``nodes history ID`` prints a node's heartbeats, ``nodes forget ID`` deletes a node that is
not online, with its history.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from typing import Any

import click

from ..exceptions import ConfigError
from ..storage import NodeDB, connect_nodedb, resolve_url
from . import get_settings
from .options import handles_errors

COLUMNS = ("NAME", "KIND", "HOST", "PID", "STATUS", "LAST-SEEN", "IN-FLIGHT", "DONE", "ERRORS", "CPU", "RSS")
#: the columns of ``spiderflow nodes``: the node, its tasks, its host's health, its id
HEALTH_COLUMNS = ("NAME", "KIND", "HOST", "PID", "STATUS", "LAST-SEEN", "TASKS", "DONE", "RATE", "ERRORS",
                  "CPU%", "MEM%", "DISK%", "LOAD", "RSS", "ID")
HISTORY_COLUMNS = ("TIME", "TASKS", "DONE", "RATE", "ERRORS", "CPU%", "MEM%", "DISK%", "LOAD", "NET-SENT",
                   "NET-RECV", "RSS")
RIGHT = {"PID", "IN-FLIGHT", "TASKS", "DONE", "RATE", "ERRORS", "CPU", "RSS", "CPU%", "MEM%", "DISK%", "LOAD",
         "NET-SENT", "NET-RECV"}
PROJECTDB = "spiderflow.nodes.projectdb"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def projectdb_option(func):
    return click.option("--projectdb", default=None, metavar="URL",
                        help="projectdb URL, where the nodes register [sqlite in the data directory].")(func)


@click.group("nodes", invoke_without_command=True)
@click.option("--all", "include_offline", is_flag=True,
              help="Include offline and stopped nodes (those without a stable id are kept for a day).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of nodes, as GET /api/nodes gives).")
@projectdb_option
@click.pass_context
@handles_errors
def nodes(ctx: click.Context, include_offline: bool, as_json: bool, projectdb: str | None) -> None:
    """List the nodes (devices, schedulers, fetchers, processors, result workers, ...): their
    last heartbeat, tasks and errors, and their host's CPU, memory, disk and load.

    A node is online while its heartbeats arrive, offline once the last one is older than
    node_timeout (300 s), stopped after a warm shutdown. `spiderflow nodes history ID` shows
    one node's heartbeats.
    """
    if ctx.invoked_subcommand is not None:
        ctx.meta[PROJECTDB] = projectdb     # `nodes --projectdb URL history ID` works too
        return
    settings = get_settings(ctx, projectdb=projectdb)
    rows: list[dict[str, Any]] = []
    with _registry(settings.db_url("projectdb")) as db:
        if db is not None:
            rows = db.list(include_offline, timeout=settings.node_timeout)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no node online; `spiderflow nodes --all` lists offline and stopped ones too"
                   if not include_offline else "no node has registered")
        return
    click.echo(format_table(rows, health=True))


@nodes.command("history")
@click.argument("node")
@click.option("--since", default="1h", metavar="AGE", help="Heartbeats of the last AGE: 90s, 30m, 2h, 1d [1h].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most the newest N heartbeats.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the node and its heartbeats, oldest first.")
@projectdb_option
@click.pass_context
@handles_errors
def history(ctx: click.Context, node: str, since: str, limit: int | None, as_json: bool,
            projectdb: str | None) -> None:
    """Print the heartbeats of NODE (an id, the start of one, or a name), oldest first."""
    settings = get_settings(ctx, projectdb=projectdb or ctx.meta.get(PROJECTDB))
    now = time.time()
    with _registry(settings.db_url("projectdb")) as db:
        found = _one_node(db, node)
        row = db.get(found, timeout=settings.node_timeout, now=now)
        beats = db.history(found, since=now - parse_age(since), limit=limit)
    if as_json:
        click.echo(json.dumps({"node": row, "history": beats}, indent=2))
        return
    click.echo(describe(row, now))
    if not beats:
        click.echo(f"no heartbeat in the last {since}")
        return
    click.echo(format_history(beats))


@nodes.command("forget")
@click.argument("node")
@projectdb_option
@click.pass_context
@handles_errors
def forget(ctx: click.Context, node: str, projectdb: str | None) -> None:
    """Delete NODE (offline or stopped) and its heartbeat history from the registry."""
    settings = get_settings(ctx, projectdb=projectdb or ctx.meta.get(PROJECTDB))
    with _registry(settings.db_url("projectdb")) as db:
        found = _one_node(db, node)
        row = db.get(found, timeout=settings.node_timeout)
        if row is not None and row["status"] == "online":
            raise ConfigError(f"node {found!r} is online (last heartbeat {time.time() - row['last_seen']:.0f} s ago); "
                              "stop it first")
        db.forget(found)
    click.echo(f"forgot node {found}")


# -- helpers -----------------------------------------------------------------------------------------

class _registry:
    """The registry at *url*, or None for a sqlite file that does not exist (reading never creates one)."""

    def __init__(self, url: str):
        self.url = url
        self.db: NodeDB | None = None

    def __enter__(self) -> NodeDB | None:
        if not _missing_sqlite_file(self.url):
            self.db = connect_nodedb(self.url)
        return self.db

    def __exit__(self, *exc: object) -> None:
        if self.db is not None:
            self.db.close()


def _one_node(db: NodeDB | None, key: str) -> str:
    ids = db.find(key) if db is not None else []
    if not ids:
        raise ConfigError(f"no node {key!r} in the registry; `spiderflow nodes --all` lists them")
    if len(ids) > 1:
        raise ConfigError(f"{key!r} names {len(ids)} nodes ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}); "
                          "give more of the id")
    return ids[0]


def parse_age(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not match:
        raise ConfigError(f"--since {text!r}: give an age like 90s, 30m, 2h or 1d")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def format_table(rows: list[dict[str, Any]], now: float | None = None, *, health: bool = False) -> str:
    """The nodes as a table: the classic columns, or with *health* the host's health and the id."""
    now = time.time() if now is None else now
    if not health:
        cells = [COLUMNS] + [(
            r["name"], r["kind"], r["host"], str(r["pid"]), r["status"], _ago(now - r["last_seen"]),
            _num(r["in_flight"]), _num(r["done"]), _num(r["errors"]),
            "-" if r["cpu"] is None else f"{r['cpu']:.1f}s",
            "-" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}MB",
        ) for r in rows]
        return _table(COLUMNS, cells)
    cells = [HEALTH_COLUMNS] + [(
        r["name"], r["kind"], r["host"], str(r["pid"]), r["status"], _ago(now - r["last_seen"]),
        _num(r.get("in_flight")), _num(r.get("done")), _rate(r.get("rate")), _num(r.get("errors")),
        _pct(r.get("cpu_percent")), _pct(r.get("memory_percent")), _pct(r.get("disk_percent")),
        _load(r.get("load1")), "-" if r.get("rss_mb") is None else f"{r['rss_mb']:.0f}MB",
        r["id"] if r.get("named") else r["id"][:8],
    ) for r in rows]
    return _table(HEALTH_COLUMNS, cells)


def format_history(beats: list[dict[str, Any]], today: datetime.date | None = None) -> str:
    today = today or datetime.date.today()
    cells = [HISTORY_COLUMNS]
    for b in beats:
        at = datetime.datetime.fromtimestamp(b["at"])
        cells.append((
            at.strftime("%H:%M:%S" if at.date() == today else "%Y-%m-%d %H:%M:%S"),
            _num(b["in_flight"]), _num(b["done"]), _rate(b["rate"]), _num(b["errors"]),
            _pct(b["cpu_percent"]), _pct(b["memory_percent"]), _pct(b["disk_percent"]), _load(b["load1"]),
            _bytes(b["net_sent"]), _bytes(b["net_recv"]), "-" if b["rss_mb"] is None else f"{b['rss_mb']:.0f}MB",
        ))
    return _table(HISTORY_COLUMNS, cells)


def describe(row: dict[str, Any], now: float) -> str:
    """One node's identity and registration, a few lines."""
    caps = row.get("capabilities") or {}
    lines = [f"node {row['id']}: {row['name']} ({row['kind']}) {row['status']}, last heartbeat "
             f"{_ago(now - row['last_seen'])}"]
    where = row["host"] + (f" {row['ip']}" if row.get("ip") else "")
    where += f":{row['port']}" if row.get("port") else ""
    lines.append(f"  host {where}, pid {row['pid']}" + (f", device {row['device']}" if row.get("device") else ""))
    system = [f"spiderflow {row['version']}"]
    if row.get("python"):
        system.append(f"Python {row['python']}")
    if row.get("platform"):
        system.append(row["platform"])
    if row.get("cpu_count"):
        system.append(f"{row['cpu_count']} CPUs")
    if row.get("memory_total"):
        system.append(f"{_bytes(row['memory_total'])} memory")
    lines.append("  " + ", ".join(system))
    if caps:
        lines.append("  capabilities: " + "; ".join(
            f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(caps.items())))
    if row.get("first_seen"):
        lines.append(f"  first seen {_ago(now - row['first_seen'])}, started {row.get('starts') or 1} time(s), "
                     f"this run since {_ago(now - row['started_at'])}")
    return "\n".join(lines)


def _table(columns: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.rjust(w) if col in RIGHT else cell.ljust(w)
                  for col, cell, w in zip(columns, row, widths)).rstrip()
        for row in cells)


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _load(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TB"  # pragma: no cover


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _missing_sqlite_file(url: str) -> bool:
    parsed = resolve_url(url)
    path = parsed.database or ""
    return (parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:")
            and not parsed.query.get("uri") and not os.path.exists(path))


COMMANDS = [nodes]
