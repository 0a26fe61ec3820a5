"""nodedb: the node registry of a cluster and the heartbeat history of its nodes.

It lives in the projectdb database, the one every node of a cluster shares::

    connect_nodedb(settings.db_url("projectdb"))

A node is one component process, or the machine of ``spiderflow standalone`` (a *device*).
It registers (:meth:`NodeDB.register`), updates its row every heartbeat and adds a row to
the history (:meth:`NodeDB.heartbeat`), and marks the row stopped on a warm shutdown
(:meth:`NodeDB.stop`). A node with a stable id (``--node-id``) registering again updates
its row (``starts`` counts the registrations, ``first_seen`` stays) and keeps its history;
while the row belongs to a live node of another process, registering is refused with a
ConfigError. Whether a node is online is decided when reading: a running node whose last
heartbeat is older than *timeout* seconds is ``offline``. A node is a dict with the keys of
:data:`FIELDS` plus ``status`` (``online``, ``offline`` or ``stopped``). Times are Unix
seconds from the clocks of the nodes, so the machines of a cluster should keep their clocks
in sync (NTP).

Schema version 2 widened the id, added the registration and health columns and the
``spiderflow_node_beat`` history table; a version 1 registry is migrated in place.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ..exceptions import ConfigError, StorageUnavailable
from .base import METADATA, MIGRATIONS, MYSQL_TABLE, TEXT, BaseDB, deadlocked

#: what a heartbeat carries: the component's counts, the process, the host's health
STATS = ("in_flight", "done", "errors", "rate", "cpu", "rss_mb", "cpu_percent", "memory_percent",
         "disk_percent", "load1", "load5", "load15", "net_sent", "net_recv")
#: what registration records besides the identity: where the node is and what it can do
INFO = ("device", "ip", "port", "python", "platform", "cpu_count", "memory_total", "capabilities")
FIELDS = ("id", "name", "kind", "host", "pid", "version", "started_at", "last_seen", "stopped_at",
          "first_seen", "starts", "named", *INFO, *STATS)
#: the columns of one heartbeat in the history
HISTORY = ("at", "in_flight", "done", "errors", "rate", "cpu", "rss_mb", "cpu_percent", "memory_percent",
           "disk_percent", "load1", "net_sent", "net_recv")
#: the order nodes are listed in: a device first, then the pipeline's
KIND_ORDER = ("device", "scheduler", "fetcher", "processor", "result-worker", "webui", "one")
MAX_ID = 128
#: tries of a registration the database ended over a deadlock (nodes starting at the same moment)
REGISTER_ATTEMPTS = 5

RUNNING, STOPPED = "running", "stopped"       # stored
ONLINE, OFFLINE = "online", "offline"         # derived from last_seen when read

NODE_ID = sa.String(MAX_ID).with_variant(mysql.VARCHAR(MAX_ID, charset="utf8mb4", collation="utf8mb4_bin"),
                                         "mysql", "mariadb")

NODES = sa.Table(
    "spiderflow_node", METADATA,
    sa.Column("id", NODE_ID, primary_key=True),
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
    # -- schema version 2 ------------------------------------------------------------------
    sa.Column("named", sa.Boolean, nullable=True),          # a stable id: kept, not trimmed by age
    sa.Column("session", sa.String(32), nullable=True),     # which registration owns the row now
    sa.Column("first_seen", sa.Double, nullable=True),
    sa.Column("starts", sa.Integer, nullable=True),
    sa.Column("device", NODE_ID, nullable=True),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("port", sa.Integer, nullable=True),
    sa.Column("python", sa.String(32), nullable=True),
    sa.Column("platform", sa.String(255), nullable=True),
    sa.Column("cpu_count", sa.Integer, nullable=True),
    sa.Column("memory_total", sa.BigInteger, nullable=True),
    sa.Column("capabilities", TEXT, nullable=True),          # JSON
    sa.Column("rate", sa.Double, nullable=True),
    sa.Column("cpu_percent", sa.Double, nullable=True),
    sa.Column("memory_percent", sa.Double, nullable=True),
    sa.Column("disk_percent", sa.Double, nullable=True),
    sa.Column("load1", sa.Double, nullable=True),
    sa.Column("load5", sa.Double, nullable=True),
    sa.Column("load15", sa.Double, nullable=True),
    sa.Column("net_sent", sa.BigInteger, nullable=True),
    sa.Column("net_recv", sa.BigInteger, nullable=True),
    **MYSQL_TABLE,
)
_c = NODES.c
sa.Index("ix_spiderflow_node_last_seen", _c.last_seen)

BEATS = sa.Table(
    "spiderflow_node_beat", METADATA,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("node_id", NODE_ID, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("in_flight", sa.Integer, nullable=True),
    sa.Column("done", sa.BigInteger, nullable=True),
    sa.Column("errors", sa.BigInteger, nullable=True),
    sa.Column("rate", sa.Double, nullable=True),
    sa.Column("cpu", sa.Double, nullable=True),
    sa.Column("rss_mb", sa.Double, nullable=True),
    sa.Column("cpu_percent", sa.Double, nullable=True),
    sa.Column("memory_percent", sa.Double, nullable=True),
    sa.Column("disk_percent", sa.Double, nullable=True),
    sa.Column("load1", sa.Double, nullable=True),
    sa.Column("net_sent", sa.BigInteger, nullable=True),
    sa.Column("net_recv", sa.BigInteger, nullable=True),
    **MYSQL_TABLE,
)
_b = BEATS.c
sa.Index("ix_spiderflow_node_beat_node_at", _b.node_id, _b.at)
sa.Index("ix_spiderflow_node_beat_at", _b.at)

#: ``alive(row)``: whether the process that registered *row* may still run (None: cannot tell)
Alive = Callable[[dict[str, Any]], "bool | None"]


def _migrate_1(conn: sa.Connection) -> None:
    """Version 1 → 2: the id widened to :data:`MAX_ID`, the new columns added (each only if
    missing, so a migration that raced another one's finishes); the history table is new."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(NODES.name)}
    for column in NODES.columns:
        if column.name not in have:
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {NODES.name} ADD COLUMN {ddl}"))
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ALTER TABLE {NODES.name} ALTER COLUMN id TYPE VARCHAR({MAX_ID})"))
    elif conn.dialect.name in ("mysql", "mariadb"):
        conn.execute(sa.text(f"ALTER TABLE {NODES.name} MODIFY id VARCHAR({MAX_ID}) "
                             "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"))
    # SQLite does not enforce VARCHAR lengths


MIGRATIONS[("nodedb", 1)] = _migrate_1


class NodeDB(BaseDB):
    """Nodes by id and their heartbeats; written by the nodes themselves, read by ``spiderflow nodes`` and the UIs."""

    role = "nodedb"
    schema_version = 2
    tables = (NODES, BEATS)

    # -- written by the nodes ----------------------------------------------------------------
    def register(self, node: dict[str, Any], *, timeout: float | None = None, alive: Alive | None = None) -> int:
        """Add a node, or update the row of its id; returns how many times the id has registered.

        *node* has the keys of :data:`FIELDS` it knows (at least id, name, kind, host, pid,
        version), optionally ``session`` and ``last_seen`` (now). With *timeout*, a row
        still owned by a live node of another session is refused with a ConfigError naming
        that node: it is live while running, heard from within *timeout* seconds, and
        ``alive(row)`` does not say its process is gone.
        """
        now = node.get("last_seen") or time.time()
        row = {f: node.get(f) for f in FIELDS}
        row.update(state=RUNNING, last_seen=now, stopped_at=None, session=node.get("session"),
                   named=bool(node.get("named")))
        if row.get("started_at") is None:
            row["started_at"] = now
        if isinstance(row.get("capabilities"), (dict, list)):
            row["capabilities"] = json.dumps(row["capabilities"], sort_keys=True)
        # nodes starting together: on MySQL their SELECT ... FOR UPDATE of ids not yet there take
        # gap locks, and their inserts then deadlock; the server ends one, which runs again
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                return self._register(row, now, timeout, alive)
            except StorageUnavailable as exc:
                if attempt == REGISTER_ATTEMPTS - 1 or not deadlocked(exc):
                    raise
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _register(self, row: dict[str, Any], now: float, timeout: float | None, alive: Alive | None) -> int:
        with self._write("register") as conn:
            query = sa.select(NODES).where(_c.id == row["id"])
            if self.dialect != "sqlite":      # SQLite's BEGIN IMMEDIATE already locks the database
                query = query.with_for_update()
            old = conn.execute(query).mappings().first()
            if old is None:
                row.update(first_seen=now, starts=1)
                conn.execute(NODES.insert(), row)
                return 1
            if timeout is not None:
                _check_free(dict(old), row, now, timeout, alive)
            again = row["session"] is not None and old["session"] == row["session"]
            row["starts"] = (old["starts"] or 1) + (0 if again else 1)
            row["first_seen"] = old["first_seen"] or old["started_at"]
            conn.execute(NODES.update().where(_c.id == row["id"]), row)
            return row["starts"]

    def heartbeat(self, node_id: str, stats: dict[str, Any] | None = None, now: float | None = None, *,
                  session: str | None = None, history: bool = True) -> bool:
        """Record a heartbeat with *stats* (keys of :data:`STATS`), in the row and the history;
        False if the node is unknown (or, with *session*, its row now belongs to another registration)."""
        now = time.time() if now is None else now
        values: dict[str, Any] = {k: v for k, v in (stats or {}).items() if k in STATS}
        values.update(last_seen=now, state=RUNNING, stopped_at=None)
        with self._write("heartbeat") as conn:
            found = conn.execute(NODES.update().where(*self._owned(node_id, session)), values).rowcount > 0
            if found and history:
                conn.execute(BEATS.insert(), _beat(node_id, now, stats))
        return found

    def stop(self, node_id: str, stats: dict[str, Any] | None = None, now: float | None = None, *,
             session: str | None = None) -> bool:
        """Mark a node stopped (a warm shutdown), with a last heartbeat; False if the node is unknown."""
        now = time.time() if now is None else now
        values: dict[str, Any] = {k: v for k, v in (stats or {}).items() if k in STATS}
        values.update(last_seen=now, state=STOPPED, stopped_at=now)
        with self._write("stop") as conn:
            found = conn.execute(NODES.update().where(*self._owned(node_id, session)), values).rowcount > 0
            if found:
                conn.execute(BEATS.insert(), _beat(node_id, now, stats))
        return found

    @staticmethod
    def _owned(node_id: str, session: str | None) -> list:
        where = [_c.id == node_id]
        if session is not None:
            where.append(_c.session == session)
        return where

    # -- read ----------------------------------------------------------------------------------
    def get(self, node_id: str, *, timeout: float = 300.0, now: float | None = None) -> dict[str, Any] | None:
        with self._read("get") as conn:
            row = conn.execute(sa.select(NODES).where(_c.id == node_id)).mappings().first()
        return None if row is None else _node(row, time.time() if now is None else now, timeout)

    def list(self, include_offline: bool = True, *, timeout: float = 300.0,
             now: float | None = None) -> list[dict[str, Any]]:
        """Every node (or only the online ones): online first, a device's nodes together, in
        pipeline order, then by name."""
        now = time.time() if now is None else now
        query = sa.select(NODES)
        if not include_offline:
            query = query.where(_c.state == RUNNING, _c.last_seen >= now - timeout)
        with self._read("list") as conn:
            rows = conn.execute(query).mappings().all()
        nodes = [_node(r, now, timeout) for r in rows]
        nodes.sort(key=_order)
        return nodes

    def find(self, key: str) -> list[str]:
        """The ids of the nodes *key* names: its id, else the ids that start with it, else the nodes of that name."""
        with self._read("find") as conn:
            if conn.execute(sa.select(_c.id).where(_c.id == key)).first() is not None:
                return [key]
            prefix = key.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
            ids = conn.execute(sa.select(_c.id).where(_c.id.like(prefix, escape="!")).order_by(_c.id)).scalars().all()
            if not ids:
                ids = conn.execute(sa.select(_c.id).where(_c.name == key).order_by(_c.id)).scalars().all()
        return list(ids)

    def history(self, node_id: str, *, since: float | None = None, until: float | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """The heartbeats of a node, oldest first (the newest *limit* of them)."""
        return self.histories([node_id], since=since, until=until, limit=limit).get(node_id, [])

    def histories(self, node_ids: Iterable[str], *, since: float | None = None, until: float | None = None,
                  limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """``{node id: heartbeats oldest first}`` of several nodes (the newest *limit* of each)."""
        ids = list(dict.fromkeys(node_ids))
        out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if not ids:
            return out
        columns = [_b.node_id, *(_b[f] for f in HISTORY)]
        with self._read("history") as conn:
            for node_id in ids:
                query = sa.select(*columns).where(_b.node_id == node_id)
                if since is not None:
                    query = query.where(_b.at >= since)
                if until is not None:
                    query = query.where(_b.at <= until)
                query = query.order_by(_b.at.desc(), _b.seq.desc())
                if limit is not None:
                    query = query.limit(max(0, limit))
                rows = conn.execute(query).mappings().all()
                out[node_id] = [{f: r[f] for f in HISTORY} for r in reversed(rows)]
        return out

    def device_totals(self, device: str) -> dict[str, Any]:
        """The tasks of *device*: in flight and done are its fetchers' (fetches running, pages
        fetched: each page passes every stage, so the stages are not added up), errors those of
        every node of it."""
        fetcher = _c.kind.in_(("fetcher", "one"))
        with self._read("device totals") as conn:
            row = conn.execute(sa.select(
                sa.func.sum(sa.case((fetcher & (_c.state == RUNNING), _c.in_flight), else_=0)),
                sa.func.sum(sa.case((fetcher, _c.done), else_=0)), sa.func.sum(_c.errors), sa.func.count(),
            ).where(_c.device == device, _c.id != device)).first()
        if not row or not row[3]:
            return {}
        return {"in_flight": int(row[0] or 0), "done": int(row[1] or 0), "errors": int(row[2] or 0)}

    # -- housekeeping ---------------------------------------------------------------------------
    def trim(self, *, keep: float = 24 * 3600.0, max_rows: int = 1000, timeout: float = 300.0,
             now: float | None = None) -> int:
        """Delete nodes without a stable id last seen more than *keep* seconds ago, and the oldest
        offline ones beyond *max_rows*; online nodes and named ones (a stable id, kept with their
        history until ``forget``) are never deleted. Returns how many rows went."""
        now = time.time() if now is None else now
        anonymous = (_c.named.is_(None)) | (_c.named == sa.false())
        gone = anonymous & ((_c.state == STOPPED) | (_c.last_seen < now - timeout))
        with self._write("trim") as conn:
            deleted = conn.execute(NODES.delete().where(anonymous, _c.last_seen < now - keep)).rowcount
            # the last_seen of the newest row that does not fit, then everything gone at or before it
            edge = conn.execute(sa.select(_c.last_seen).where(anonymous).order_by(_c.last_seen.desc())
                                .limit(1).offset(max(0, max_rows))).scalar()
            if edge is not None:
                deleted += conn.execute(NODES.delete().where(gone, _c.last_seen <= edge)).rowcount
        return max(0, deleted)

    def trim_history(self, *, keep: float = 24 * 3600.0, now: float | None = None) -> int:
        """Delete heartbeats older than *keep* seconds, and those of nodes no longer registered."""
        now = time.time() if now is None else now
        with self._write("trim history") as conn:
            deleted = conn.execute(BEATS.delete().where(_b.at < now - keep)).rowcount
            deleted += conn.execute(BEATS.delete().where(_b.node_id.not_in(sa.select(_c.id)))).rowcount
        return max(0, deleted)

    def forget(self, node_id: str) -> bool:
        """Delete a node and its history (``spiderflow nodes forget``); False if it is unknown."""
        with self._write("forget") as conn:
            conn.execute(BEATS.delete().where(_b.node_id == node_id))
            return conn.execute(NODES.delete().where(_c.id == node_id)).rowcount > 0


def _check_free(old: dict[str, Any], new: dict[str, Any], now: float, timeout: float, alive: Alive | None) -> None:
    if old["state"] != RUNNING or now - old["last_seen"] > timeout:
        return                                        # stopped, or offline: free
    if old.get("session") is not None and old["session"] == new.get("session"):
        return                                        # this registration's own row
    if alive is not None and alive(old) is False:
        return                                        # its process is gone (e.g. killed on this host)
    raise ConfigError(
        f"node id {new['id']!r} is taken by a live node: {old['name']} ({old['kind']}) on {old['host']} "
        f"pid {old['pid']}, last heartbeat {max(0.0, now - old['last_seen']):.0f} s ago; stop that process, "
        f"choose another --node-id (--device-id), or wait until it counts as offline "
        f"({timeout:g} s after its last heartbeat)")


def _beat(node_id: str, now: float, stats: dict[str, Any] | None) -> dict[str, Any]:
    row = {f: (stats or {}).get(f) for f in HISTORY}
    row.update(node_id=node_id, at=now)
    return row


def _node(row: Any, now: float, timeout: float) -> dict[str, Any]:
    node = {f: row[f] for f in FIELDS}
    node["named"] = bool(node["named"])
    caps = node["capabilities"]
    if isinstance(caps, str):
        try:
            node["capabilities"] = json.loads(caps)
        except ValueError:
            node["capabilities"] = None
    if row["state"] == STOPPED:
        node["status"] = STOPPED
    else:
        node["status"] = ONLINE if now - row["last_seen"] <= timeout else OFFLINE
    return node


def _order(node: dict[str, Any]) -> tuple:
    kind = node["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return (node["status"] != ONLINE, node["device"] or "", rank, kind, node["name"], node["started_at"])


__all__ = ["BEATS", "FIELDS", "HISTORY", "INFO", "KIND_ORDER", "MAX_ID", "NODES", "OFFLINE", "ONLINE", "STATS",
           "STOPPED", "NodeDB"]
