"""A directory of project scripts against the shared projectdb: push it, or compare it.

:func:`push` (``spiderflow queue update DIR``) stores every script of the directory as a
project, through :func:`~spiderflow.runtime.scripts.store_project`: a new script becomes a
project, a changed one replaces the stored script and keeps the project's status and its
rate and burst (unless the script's ``# rate:`` / ``# burst:`` line changed), an unchanged
one is not written at all. Every scheduler and processor picks the new versions up at its
next project check, without a restart. With *delete*, projects whose scripts are not in the
directory are removed from projectdb (their tasks and results stay). Every script is
loaded first: if one is broken, nothing is pushed.

:func:`compare` (``spiderflow queue status DIR``) says, per project, whether the directory's
script is new, changed or in sync with projectdb, or is only stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..exceptions import ConfigError, ScriptError
from ..message import ProjectStatus
from ..runtime.scripts import ADDED, UNCHANGED, UPDATED, check_script, store_project
from ..settings import Settings
from ..storage import connect_projectdb
from .common import missing_sqlite_file

__all__ = ["ADDED", "CHANGED", "DELETED", "IN_SYNC", "NEW", "ONLY_STORED", "UNCHANGED", "UPDATED", "Change",
           "check_delete", "check_scripts", "compare", "push", "stored_projects"]

DELETED = "deleted"
#: states of a project in :func:`compare`
NEW, CHANGED, IN_SYNC, ONLY_STORED = "new", "changed", "in sync", "only stored"

Script = tuple[str, str, str]       # (project name, script text, file), as read_script_dir gives


@dataclass(slots=True)
class Change:
    """What a push did to one project (or, in :func:`compare`, how it stands)."""

    name: str
    action: str                     # added, updated, unchanged, deleted; or new, changed, in sync, only stored
    file: str | None = None
    status: str | None = None       # the stored project's, after the push
    rate: float | None = None
    burst: float | None = None
    kept: tuple[str, ...] = ()      # updated: what the push left as it was (status, rate, burst)
    changed: tuple[str, ...] = ()   # updated: what it changed (script, rate, burst)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def check_delete(scripts: list[Script], delete: bool) -> None:
    if delete and not scripts:
        raise ConfigError("the directory holds no project script (*.py); refusing --delete, which would "
                          "remove every stored project")


def check_scripts(scripts: list[Script]) -> None:
    """Load every script (compile, run its top level, make its Handler); ConfigError naming each broken one."""
    broken = []
    for name, text, path in scripts:
        try:
            check_script(name, text)
        except ScriptError as exc:
            broken.append(f"{path}: {exc}")
    if broken:
        raise ConfigError(f"{len(broken)} of {len(scripts)} scripts do not load, so nothing was pushed; "
                          "fix them (`spiderflow queue check DIR` checks them all):\n" + "\n".join(broken))


def push(projectdb: Any, scripts: list[Script], *, delete: bool = False,
         new_status: ProjectStatus = ProjectStatus.TODO, settings: Settings = Settings(),
         checked: bool = False) -> list[Change]:
    """Store *scripts* in *projectdb*; see the module docstring. Returns one Change per project, by name.

    *checked*: :func:`check_scripts` was called already (before opening the database).
    """
    check_delete(scripts, delete)
    if not checked:
        check_scripts(scripts)
    fields = ["name", "status", "rate", "burst", "script"]
    before = {row["name"]: row for row in projectdb.list(fields=fields)}
    changes = []
    for name, text, path in scripts:
        action = store_project(projectdb, name, text, None, settings, new_status=new_status)
        row = projectdb.get(name, fields=fields)
        change = Change(name, action, path, row["status"].value, row["rate"], row["burst"])
        old = before.get(name)
        if action == UPDATED and old is not None:
            change.changed = tuple(k for k in ("script", "rate", "burst") if row[k] != old[k])
            change.kept = tuple(k for k in ("status", "rate", "burst") if k not in change.changed)
        changes.append(change)
    if delete:
        pushed = {name for name, _text, _path in scripts}
        for name, row in sorted(before.items()):
            if name not in pushed and projectdb.drop(name):
                changes.append(Change(name, DELETED, None, row["status"].value, row["rate"], row["burst"]))
    return sorted(changes, key=lambda c: c.name)


def compare(stored: list[dict[str, Any]], scripts: list[Script]) -> list[Change]:
    """How each of *scripts* stands against the *stored* projects (rows with name, status,
    rate, burst, script), and which stored projects have no script; by name."""
    rows = {row["name"]: row for row in stored}
    out = []
    for name, text, path in scripts:
        row = rows.pop(name, None)
        if row is None:
            out.append(Change(name, NEW, path))
        else:
            out.append(Change(name, IN_SYNC if row["script"] == text else CHANGED, path,
                              _status(row), row["rate"], row["burst"]))
    out += [Change(name, ONLY_STORED, None, _status(row), row["rate"], row["burst"]) for name, row in rows.items()]
    return sorted(out, key=lambda c: c.name)


def stored_projects(settings: Settings) -> list[dict[str, Any]]:
    """The stored projects with their scripts, for :func:`compare`; none when the SQLite
    projectdb does not exist yet (it is not created)."""
    url = settings.db_url("projectdb")
    if missing_sqlite_file(url):
        return []
    db = connect_projectdb(url)
    try:
        return db.list(fields=["name", "status", "rate", "burst", "script"])
    finally:
        db.close()


def _status(row: dict[str, Any]) -> str:
    status = row["status"]
    return status.value if isinstance(status, ProjectStatus) else str(status)
