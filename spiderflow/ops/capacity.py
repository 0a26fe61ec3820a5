"""The cluster-wide capacity: at most N tasks in flight (dispatched and not yet answered).

It is kept in the projectdb database, the one every node of the cluster shares
(:meth:`~spiderflow.storage.ProjectDB.get_pool_cap`), not in any node's config. The
scheduler reads it at most once a second and dispatches nothing more while N tasks are
in flight; when none is stored, it uses its own ``pool_cap`` setting. 0 means no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..settings import Settings

__all__ = ["Capacity", "describe", "read_capacity", "set_capacity"]


@dataclass(slots=True)
class Capacity:
    stored: int | None      # the cluster's (None: never set with `queue cap`)
    local: int              # this machine's pool_cap setting

    @property
    def effective(self) -> int:
        """What a scheduler with this machine's settings applies (0: no limit)."""
        return self.local if self.stored is None else self.stored

    @property
    def source(self) -> str:
        return "the pool_cap setting (none stored in the cluster)" if self.stored is None else "the cluster"

    def to_dict(self) -> dict[str, Any]:
        return {"cap": self.effective, "stored": self.stored, "pool_cap_setting": self.local}


def read_capacity(projectdb: Any, settings: Settings) -> Capacity:
    return Capacity(projectdb.get_pool_cap(), max(0, settings.pool_cap))


def set_capacity(projectdb: Any, cap: int | None, settings: Settings) -> tuple[Capacity, Capacity]:
    """Store *cap* (None: this machine's ``pool_cap`` setting) as the cluster's; returns (before, after)."""
    before = read_capacity(projectdb, settings)
    value = before.local if cap is None else cap
    projectdb.set_pool_cap(value)
    return before, Capacity(value, before.local)


def describe(cap: int) -> str:
    return f"at most {cap} task{'s' if cap != 1 else ''} in flight" if cap else "no limit"
