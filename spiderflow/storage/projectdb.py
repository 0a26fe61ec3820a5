"""projectdb: one row per project (its script, status, group and rate limits).

The scheduler polls :meth:`ProjectDB.changed_since` to pick up edits; the web UI and the
processor read scripts with :meth:`ProjectDB.get`. A project is a dict with the keys of
:data:`FIELDS`; ``status`` is a :class:`~spiderflow.message.ProjectStatus`.

The projectdb database is the one every node of a cluster shares, so it also keeps the
cluster-wide values set by ``spiderflow queue`` (:meth:`ProjectDB.get_pool_cap`), as
``cluster:<name>`` rows of ``spiderflow_meta``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import sqlalchemy as sa

from ..exceptions import ConfigError, StorageError
from ..message import ProjectStatus, validate_project_name
from .base import LONGTEXT, META, METADATA, MYSQL_TABLE, NAME, BaseDB, check_fields

FIELDS = ("name", "group", "status", "script", "comments", "rate", "burst", "updatetime")
#: spiderflow_meta keys of the cluster-wide values (the rest of that table is schema versions)
CLUSTER_PREFIX = "cluster:"

PROJECTS = sa.Table(
    "spiderflow_project", METADATA,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("group", sa.String(255), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("script", LONGTEXT, nullable=False),
    sa.Column("comments", LONGTEXT, nullable=False),
    sa.Column("rate", sa.Double, nullable=False),
    sa.Column("burst", sa.Double, nullable=False),
    sa.Column("updatetime", sa.Double, nullable=False),
    **MYSQL_TABLE,
)


class ProjectDB(BaseDB):
    """Projects by name."""

    role = "projectdb"
    schema_version = 1
    tables = (PROJECTS,)

    def insert(self, name: str, *, group: str = "", status: ProjectStatus | str = ProjectStatus.TODO,
               script: str = "", comments: str = "", rate: float = 1.0, burst: float = 3.0,
               updatetime: float | None = None) -> None:
        """Add a project; raises StorageError if it exists."""
        row = _row(name=validate_project_name(name), group=group, status=status, script=script,
                   comments=comments, rate=rate, burst=burst,
                   updatetime=time.time() if updatetime is None else updatetime)
        try:
            with self._write("insert") as conn:
                conn.execute(PROJECTS.insert(), row)
        except StorageError as exc:
            if self.get(name, ["name"]) is not None:
                raise StorageError(f"project {name!r} already exists in {self.url}") from exc
            raise

    def update(self, name: str, **fields: Any) -> bool:
        """Change some fields of a project; False if there is no such project."""
        validate_project_name(name)
        check_fields(fields, FIELDS[1:], "project")
        fields.setdefault("updatetime", time.time())
        with self._write("update") as conn:
            result = conn.execute(PROJECTS.update().where(PROJECTS.c.name == name), _row(**fields))
        return result.rowcount > 0

    def get(self, name: str, fields: list[str] | tuple[str, ...] | None = None) -> dict | None:
        validate_project_name(name)
        query = self._select(fields).where(PROJECTS.c.name == name)
        with self._read("get") as conn:
            row = conn.execute(query).mappings().first()
        return _project(row) if row is not None else None

    def list(self, fields: list[str] | tuple[str, ...] | None = None) -> list[dict]:
        """Every project, ordered by name."""
        with self._read("list") as conn:
            rows = conn.execute(self._select(fields).order_by(PROJECTS.c.name)).mappings().all()
        return [_project(r) for r in rows]

    def changed_since(self, timestamp: float, fields: list[str] | tuple[str, ...] | None = None) -> list[dict]:
        """Projects whose updatetime is after *timestamp*, ordered by name."""
        query = self._select(fields).where(PROJECTS.c.updatetime > timestamp).order_by(PROJECTS.c.name)
        with self._read("changed_since") as conn:
            rows = conn.execute(query).mappings().all()
        return [_project(r) for r in rows]

    def drop(self, name: str) -> bool:
        """Delete a project row; False if there was none."""
        validate_project_name(name)
        with self._write("drop") as conn:
            return conn.execute(PROJECTS.delete().where(PROJECTS.c.name == name)).rowcount > 0

    # -- cluster-wide values ------------------------------------------------------------
    def get_cluster_value(self, name: str) -> str | None:
        """The cluster-wide value *name* (a string), or None when it was never set."""
        query = sa.select(META.c.value).where(META.c.key == CLUSTER_PREFIX + name)
        with self._read("get_cluster_value") as conn:
            return conn.execute(query).scalar()

    def set_cluster_value(self, name: str, value: str | None) -> None:
        """Store the cluster-wide value *name*; None deletes it."""
        key = CLUSTER_PREFIX + name
        with self._write("set_cluster_value") as conn:
            if value is None:
                conn.execute(META.delete().where(META.c.key == key))
            elif conn.execute(sa.select(META.c.key).where(META.c.key == key)).first() is None:
                conn.execute(META.insert().values(key=key, value=value))
            else:
                conn.execute(META.update().where(META.c.key == key).values(value=value))

    def get_pool_cap(self) -> int | None:
        """The cluster's cap on tasks in flight (0: no limit), or None when ``queue cap`` never set one."""
        value = self.get_cluster_value("pool_cap")
        if value is None:
            return None
        try:
            return max(0, int(value))
        except ValueError:
            raise StorageError(f"projectdb in {self.url}: unreadable pool_cap {value!r} in spiderflow_meta; "
                               "set it again with `spiderflow queue cap N`") from None

    def set_pool_cap(self, cap: int) -> None:
        """Set the cluster's cap on tasks in flight (0: no limit); every scheduler reads it within a second."""
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"pool_cap must be a whole number >= 0, not {cap!r}")
        self.set_cluster_value("pool_cap", str(cap))

    @staticmethod
    def _select(fields) -> sa.Select:
        if fields is None:
            return sa.select(PROJECTS)
        check_fields(fields, FIELDS, "project")
        names = ["name", *(f for f in fields if f != "name")]
        return sa.select(*(PROJECTS.c[f] for f in names))


#: The largest rate or burst a project may have (tasks per second; a bound, not a target).
MAX_RATE = 1e6


def check_rate(name: str, value: Any) -> float:
    """*value* as a project's rate or burst: a finite number from 0 to :data:`MAX_RATE`, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_RATE:
        raise ConfigError(f"{name} must be a number from 0 to {MAX_RATE:.15g}, not {value!r}")
    return float(value)


def _row(**fields: Any) -> dict[str, Any]:
    for key in ("rate", "burst"):
        if key in fields:
            fields[key] = check_rate(key, fields[key])
    if "status" in fields:
        fields["status"] = ProjectStatus(fields["status"]).value
    return fields


def _project(row) -> dict[str, Any]:
    out = dict(row)
    if "status" in out:
        out["status"] = ProjectStatus(out["status"])
    return out
