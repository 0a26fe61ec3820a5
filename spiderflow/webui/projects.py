"""Project rules shared by the pages and the JSON API: validation, locking, CHECKING on save.

A project row from projectdb becomes JSON with :func:`project_json`, merged with what the
scheduler reports about it (pause state, queue counts) when it can be reached.
"""

from __future__ import annotations

import math
from typing import Any

from ..message import ProjectStatus, validate_project_name
from ..scheduler.project import split_group
from ..settings import Settings
from .helpers import fail, safe_href
from .sample import sample_script

LIST_FIELDS = ["name", "group", "status", "comments", "rate", "burst", "updatetime"]
EDITABLE = ("status", "group", "rate", "burst", "script", "comments")
#: Saving a new script of a project in one of these states sets it to CHECKING.
LIVE = (ProjectStatus.RUNNING, ProjectStatus.DEBUG)
LOCK_GROUP = "lock"


def is_locked(row: dict[str, Any]) -> bool:
    return LOCK_GROUP in split_group(row.get("group"))


def project_json(row: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 editable: bool = True) -> dict[str, Any]:
    """A project row as JSON, with the scheduler's view (``None`` when it is not reachable)."""
    out = {k: (str(v) if k == "status" else v) for k, v in row.items()}
    out["locked"] = is_locked(row)
    out["editable"] = editable
    if scheduler is not None:
        state = scheduler.get("pause")
        out["scheduler"] = {k: scheduler.get(k) for k in ("ready", "waiting", "processing", "active",
                                                          "pause", "fail_streak", "paused_at")}
        out["paused"] = state not in (None, "running")
    else:
        out["scheduler"] = None
        out["paused"] = None
    return out


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise fail(400, f"{name} must be a number >= 0, not {value!r}")
    return float(value)


def _text(name: str, value: Any, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise fail(400, f"{name} must be a string, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise fail(400, f"{name} must be at most {limit} characters")
    return value


def _status(value: Any) -> ProjectStatus:
    try:
        return ProjectStatus(str(value).upper())
    except ValueError:
        raise fail(400, f"status must be one of {', '.join(s.value for s in ProjectStatus)}, "
                        f"not {value!r}") from None


def parse_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of an update request, checked; 400 for anything else."""
    unknown = sorted(set(body) - set(EDITABLE) - {"name"})
    if unknown:
        raise fail(400, f"cannot change {', '.join(unknown)}; editable fields: {', '.join(EDITABLE)}")
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key == "name":
            continue
        if key == "status":
            changes[key] = _status(value)
        elif key in ("rate", "burst"):
            changes[key] = _number(key, value)
        elif key == "group":
            changes[key] = " ".join(split_group(_text(key, value, 255)))
        else:
            changes[key] = _text(key, value)
    return changes


def plan_update(row: dict[str, Any], changes: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The changes to write, with CHECKING for a live project whose script changed, and notes."""
    notes: list[str] = []
    script_changed = "script" in changes and changes["script"] != row.get("script")
    if script_changed and "status" not in changes and row.get("status") in LIVE:
        changes = {**changes, "status": ProjectStatus.CHECKING}
        notes.append(f"the script changed while the project was {row['status']}: it is now CHECKING; "
                     "set it to RUNNING again once it works")
    if script_changed:
        warning = compile_warning(row["name"], changes["script"])
        if warning:
            notes.append(warning)
    return changes, notes


def compile_warning(name: str, script: str) -> str | None:
    """The syntax error of *script*, if any (it is only compiled, never run, here)."""
    try:
        compile(script, f"<project {name}>", "exec")
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        return f"the script does not compile{where}: {exc.msg if isinstance(exc, SyntaxError) else exc}"
    return None


def new_project(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The projectdb.insert() arguments of a create request: name, script (or the sample), fields."""
    allowed = {"name", "script", "start_url", *EDITABLE}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise fail(400, f"unknown fields {', '.join(unknown)}; give {', '.join(sorted(allowed))}")
    name = body.get("name")
    try:
        validate_project_name(name)
    except ValueError as exc:
        raise fail(400, str(exc)) from None
    start_url = body.get("start_url")
    if start_url not in (None, ""):
        start_url = _text("start_url", start_url, 4096).strip()
        if safe_href(start_url) is None:
            raise fail(400, f"start_url must be an http:// or https:// URL, not {start_url!r}")
    script = body.get("script")
    if script in (None, ""):
        script = sample_script(name, start_url or None)
    changes = parse_changes({k: v for k, v in body.items() if k in EDITABLE and k != "script"})
    return {
        "name": name,
        "script": _text("script", script),
        "group": changes.get("group", ""),
        "status": changes.get("status", ProjectStatus.TODO),
        "comments": changes.get("comments", ""),
        "rate": changes.get("rate", settings.default_rate),
        "burst": changes.get("burst", settings.default_burst),
    }
