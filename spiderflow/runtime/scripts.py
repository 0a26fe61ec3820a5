"""Project scripts on disk and in projectdb: read, check, store, and a start task."""

from __future__ import annotations

import os
import re
from typing import Any

from ..exceptions import ConfigError, InvalidProjectName
from ..message import Fetch, Process, ProjectStatus, Task, validate_project_name
from ..settings import Settings

# -- project scripts -------------------------------------------------------------------------------

def read_script(path: str, name: str | None = None) -> tuple[str, str]:
    """Read a project script; its project name defaults to the file name without ``.py``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read project script {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"project script {path!r} is not UTF-8 text: {exc}") from exc
    if name is None:
        name = re.sub(r"\.py$", "", os.path.basename(path))
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name).lstrip("-") or "project"
    try:
        validate_project_name(name)
    except InvalidProjectName as exc:
        raise ConfigError(f"{exc} (from script {path!r}; pass --name)") from exc
    return name, text


_RATE_COMMENT = re.compile(r"^\s*#\s*(rate|burst)\s*[:=]\s*(\d+(?:\.\d+)?)\s*$", re.I | re.M)


def rate_comments(script: str) -> dict[str, float]:
    """The ``# rate: N`` and ``# burst: N`` comment lines of a script: ``{"rate": N, "burst": N}`` (those present)."""
    return {key.lower(): float(value) for key, value in _RATE_COMMENT.findall(script)}


def script_rate(script: str, settings: Settings = Settings(), rate: float | None = None,
                burst: float | None = None) -> tuple[float, float]:
    """A project's rate and burst: given values > ``# rate: N`` / ``# burst: N`` comment lines > defaults."""
    found = rate_comments(script)
    return (rate if rate is not None else found.get("rate", settings.default_rate),
            burst if burst is not None else found.get("burst", settings.default_burst))


#: what :func:`store_project` did
ADDED, UPDATED, UNCHANGED = "added", "updated", "unchanged"


def store_project(projectdb: Any, name: str, script: str, status: ProjectStatus | None = None,
                  settings: Settings = Settings(), rate: float | None = None, burst: float | None = None, *,
                  group: str | None = None, new_status: ProjectStatus = ProjectStatus.TODO) -> str:
    """Insert or update a project in projectdb; returns :data:`ADDED`, :data:`UPDATED` or :data:`UNCHANGED`.

    A new project gets *status* (else *new_status*), *rate*/*burst* (else its script's
    ``# rate:``/``# burst:`` lines, else the defaults) and *group*. An existing one gets the
    new script, but keeps its status unless *status* is given, and keeps its rate and burst
    (which may have been changed at runtime) unless they are given or the script's comment
    line for them differs from the stored script's. Nothing is written when nothing changes,
    so pushing an unchanged script does not make the nodes reload it.
    """
    old = projectdb.get(name, fields=["name", "group", "status", "script", "rate", "burst"])
    if old is None:
        rate, burst = script_rate(script, settings, rate, burst)
        projectdb.insert(name, script=script, status=status or new_status, rate=rate, burst=burst,
                         group=group or "")
        return ADDED
    changes = {"script": script, "status": status, "group": group,
               **_rate_changes(old["script"], script, rate, burst)}
    changes = {k: v for k, v in changes.items() if v is not None and v != old[k]}
    if not changes:
        return UNCHANGED
    projectdb.update(name, **changes)
    return UPDATED


def _rate_changes(old_script: str, script: str, rate: float | None, burst: float | None) -> dict[str, float | None]:
    """The rate and burst a new version of a script sets: those given, else those whose comment line changed."""
    before, after = rate_comments(old_script), rate_comments(script)
    given = {"rate": rate, "burst": burst}
    return {key: given[key] if given[key] is not None
            else after[key] if key in after and after.get(key) != before.get(key) else None
            for key in given}


def read_script_dir(path: str) -> list[tuple[str, str, str]]:
    """The project scripts of directory *path*: ``(name, text, file)`` for every ``*.py`` in it
    (not below it) whose name does not start with ``_`` or ``.``, sorted by name."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the script directory {path!r}: {exc.strerror or exc}") from exc
    scripts: list[tuple[str, str, str]] = []
    files: dict[str, str] = {}
    for entry in entries:
        full = os.path.join(path, entry)
        if not entry.endswith(".py") or entry.startswith(("_", ".")) or not os.path.isfile(full):
            continue
        name, text = read_script(full)
        if name in files:
            raise ConfigError(f"{files[name]!r} and {full!r} would both be project {name!r}; rename one")
        files[name] = full
        scripts.append((name, text, full))
    return sorted(scripts)


def check_script(name: str, script: str) -> None:
    """Compile a script now so that a broken one is reported before anything starts."""
    from ..processor import load_project
    load_project(name, script)  # raises ScriptError naming the line


def start_task(project: str, url: str, callback: str) -> Task:
    """A task that crawls *url* with *callback*, forced to run now (``one --url``)."""
    from ..message import Schedule
    return Task.create(project, url, schedule=Schedule(force_update=True, priority=9),
                       fetch=Fetch(), process=Process(callback=callback))
