"""Small helpers shared by the handlers and templates: errors that reach the client, safe links, formatting."""

from __future__ import annotations

import datetime
import json
import urllib.parse
from typing import Any

import tornado.escape
import tornado.web


def error_message(status_code: int, exc_info: Any, reason: str) -> str:
    """The text of an error: an HTTPError's message, or the status reason for anything else."""
    exc = exc_info[1] if exc_info else None
    if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
        return exc.log_message % exc.args if exc.args else exc.log_message
    if status_code >= 500:
        return "internal error (see the web UI's log)"
    return reason


def fail(status: int, message: str, *args: Any) -> tornado.web.HTTPError:
    """An HTTPError whose message reaches the client (``raise fail(400, "bad %s", x)``)."""
    return tornado.web.HTTPError(status, "%s", message % args if args else message)


def safe_href(url: Any) -> str | None:
    """*url* if it may be a link target (http or https), else None: never ``javascript:``."""
    if not isinstance(url, str):
        return None
    scheme = urllib.parse.urlsplit(url.strip()).scheme.lower()
    return url if scheme in ("http", "https") else None


def path_escape(segment: Any) -> str:
    """One URL path segment with every reserved character escaped, ``/`` too."""
    return urllib.parse.quote(str(segment), safe="")


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def json_script(value: Any) -> str:
    """JSON to embed in ``<script type="application/json">`` (``</`` is escaped)."""
    return tornado.escape.json_encode(value)


def task_and_result(state: Any, project: str, taskid: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A task of taskdb (404 when missing) and its result, for the task page and its API."""
    task = state.taskdb.get(project, taskid)
    if task is None:
        raise fail(404, f"project {project!r} has no task {taskid!r}")
    return task, state.resultdb.get(project, taskid)
