"""nodedb: one row per component process of a cluster (a node), kept fresh by its heartbeats.

It lives in the projectdb database, the one every node of a cluster shares::

    connect_nodedb(settings.db_url("projectdb"))

A node registers once (:meth:`NodeDB.register`), then updates its row every heartbeat
(:meth:`NodeDB.heartbeat`) and marks it stopped on a warm shutdown (:meth:`NodeDB.stop`).
Whether a node is online is decided when reading: a running node whose last heartbeat is
older than *timeout* seconds is ``offline``. A node is a dict with the keys of
:data:`FIELDS` plus ``status`` (``online``, ``offline`` or ``stopped``). Times are Unix
seconds from the clocks of the nodes, so the machines of a cluster should keep their clocks
in sync (NTP).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from .base import METADATA, MYSQL_TABLE, BaseDB

FIELDS = ("id", "name", "kind", "host", "pid", "version", "started_at", "last_seen", "stopped_at",
          "in_flight", "done", "errors", "cpu", "rss_mb")
STATS = ("in_flight", "done", "errors", "cpu", "rss_mb")
#: the order nodes are listed in: the pipeline's
KIND_ORDER = ("scheduler", "fetcher", "processor", "result-worker", "webui", "one")

RUNNING, STOPPED = "running", "stopped"       # stored
ONLINE, OFFLINE = "online", "offline"         # derived from last_seen when read

NODES = sa.Table(
    "spiderflow_node", METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("stopped_at", sa.Double, nullable=True),
    sa.Column("in_flight", sa.Integer, nullable=True),
    sa.Column("done", sa.BigInteger, nullable=True),
    sa.Column("errors", sa.BigInteger, nullable=True),
    sa.Column("cpu", sa.Double, nullable=True),
    sa.Column("rss_mb", sa.Double, nullable=True),
    **MYSQL_TABLE,
)
_c = NODES.c
sa.Index("ix_spiderflow_node_last_seen", _c.last_seen)


class NodeDB(BaseDB):
    """Nodes by id; written by the nodes themselves, read by ``spiderflow nodes`` and the UIs."""

    role = "nodedb"
    schema_version = 1
    tables = (NODES,)

    def register(self, node: dict[str, Any]) -> None:
        """Add (or, for a known id, replace) a node: id, name, kind, host, pid, version, started_at."""
        now = node.get("last_seen") or time.time()
        row = {f: node.get(f) for f in FIELDS}
        row.update(state=RUNNING, last_seen=now, stopped_at=None)
        if row["started_at"] is None:
            row["started_at"] = now
        with self._write("register") as conn:
            conn.execute(NODES.delete().where(_c.id == row["id"]))
            conn.execute(NODES.insert(), row)

    def heartbeat(self, node_id: str, stats: dict[str, Any] | None = None, now: float | None = None) -> bool:
        """Record a heartbeat with *stats* (keys of :data:`STATS`); False if the node is unknown."""
        values: dict[str, Any] = {k: v for k, v in (stats or {}).items() if k in STATS}
        values.update(last_seen=time.time() if now is None else now, state=RUNNING, stopped_at=None)
        with self._write("heartbeat") as conn:
            return conn.execute(NODES.update().where(_c.id == node_id), values).rowcount > 0

    def stop(self, node_id: str, stats: dict[str, Any] | None = None, now: float | None = None) -> bool:
        """Mark a node stopped (a warm shutdown); False if the node is unknown."""
        now = time.time() if now is None else now
        values: dict[str, Any] = {k: v for k, v in (stats or {}).items() if k in STATS}
        values.update(last_seen=now, state=STOPPED, stopped_at=now)
        with self._write("stop") as conn:
            return conn.execute(NODES.update().where(_c.id == node_id), values).rowcount > 0

    def get(self, node_id: str, *, timeout: float = 60.0, now: float | None = None) -> dict[str, Any] | None:
        with self._read("get") as conn:
            row = conn.execute(sa.select(NODES).where(_c.id == node_id)).mappings().first()
        return None if row is None else _node(row, time.time() if now is None else now, timeout)

    def list(self, include_offline: bool = True, *, timeout: float = 60.0,
             now: float | None = None) -> list[dict[str, Any]]:
        """Every node (or only the online ones), online first, in pipeline order, then by name."""
        now = time.time() if now is None else now
        query = sa.select(NODES)
        if not include_offline:
            query = query.where(_c.state == RUNNING, _c.last_seen >= now - timeout)
        with self._read("list") as conn:
            rows = conn.execute(query).mappings().all()
        nodes = [_node(r, now, timeout) for r in rows]
        nodes.sort(key=_order)
        return nodes

    def trim(self, *, keep: float = 24 * 3600.0, max_rows: int = 1000, timeout: float = 60.0,
             now: float | None = None) -> int:
        """Delete nodes last seen more than *keep* seconds ago, and the oldest offline ones beyond
        *max_rows*; online nodes are never deleted. Returns how many rows went."""
        now = time.time() if now is None else now
        gone = (_c.state == STOPPED) | (_c.last_seen < now - timeout)
        with self._write("trim") as conn:
            deleted = conn.execute(NODES.delete().where(_c.last_seen < now - keep)).rowcount
            # the last_seen of the newest row that does not fit, then everything gone at or before it
            edge = conn.execute(sa.select(_c.last_seen).order_by(_c.last_seen.desc())
                                .limit(1).offset(max(0, max_rows))).scalar()
            if edge is not None:
                deleted += conn.execute(NODES.delete().where(gone, _c.last_seen <= edge)).rowcount
        return max(0, deleted)


def _node(row: Any, now: float, timeout: float) -> dict[str, Any]:
    node = {f: row[f] for f in FIELDS}
    if row["state"] == STOPPED:
        node["status"] = STOPPED
    else:
        node["status"] = ONLINE if now - row["last_seen"] <= timeout else OFFLINE
    return node


def _order(node: dict[str, Any]) -> tuple:
    kind = node["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return (node["status"] != ONLINE, rank, kind, node["name"], node["started_at"])


__all__ = ["FIELDS", "KIND_ORDER", "NODES", "OFFLINE", "ONLINE", "STATS", "STOPPED", "NodeDB"]
