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


def script_rate(script: str, settings: Settings = Settings(), rate: float | None = None,
                burst: float | None = None) -> tuple[float, float]:
    """A project's rate and burst: given values > ``# rate: N`` / ``# burst: N`` comment lines > defaults."""
    found = {key.lower(): float(value) for key, value in _RATE_COMMENT.findall(script)}
    return (rate if rate is not None else found.get("rate", settings.default_rate),
            burst if burst is not None else found.get("burst", settings.default_burst))


def store_project(projectdb: Any, name: str, script: str, status: ProjectStatus = ProjectStatus.RUNNING,
                  settings: Settings = Settings(), rate: float | None = None, burst: float | None = None) -> None:
    """Insert or update a project's script, status, rate and burst in projectdb."""
    rate, burst = script_rate(script, settings, rate, burst)
    if projectdb.get(name, fields=["name"]) is None:
        projectdb.insert(name, script=script, status=status, rate=rate, burst=burst)
    else:
        projectdb.update(name, script=script, status=status, rate=rate, burst=burst)


def check_script(name: str, script: str) -> None:
    """Compile a script now so that a broken one is reported before anything starts."""
    from ..processor import load_project
    load_project(name, script)  # raises ScriptError naming the line


def start_task(project: str, url: str, callback: str) -> Task:
    """A task that crawls *url* with *callback*, forced to run now (``one --url``)."""
    from ..message import Schedule
    return Task.create(project, url, schedule=Schedule(force_update=True, priority=9),
                       fetch=Fetch(), process=Process(callback=callback))
