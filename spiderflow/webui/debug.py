"""The debugger's Run: fetch one task and run its callback, without touching the live crawl.

The web UI checks the request (:func:`build_task`) and hands the run to a worker process
(:mod:`.debug_worker`), which calls :func:`run_debug`: the script from the editor (or
projectdb) is compiled for this run only, with ``is_debugger()`` true, the task is
fetched and its callback run. Nothing is written to taskdb or resultdb and nothing is put
on a queue: follows, results and messages are only reported back, and a follow can be run
as the next step.
"""

from __future__ import annotations

import json
from typing import Any

from ..exceptions import InvalidProjectName, ScriptError, SerializationError
from ..fetcher import Fetcher
from ..message import Fetch, FetchResult, Process, Schedule, Task
from ..processor import Processor, ProjectManager, load_project
from ..processor.response import Response
from ..settings import Settings
from .helpers import fail

DEBUG_ENV = {"debugger": True}
#: Bytes of a fetched page sent back to the browser for the HTML and rendered-page tabs.
MAX_TEXT = 2 * 1024 * 1024
#: The settings a debug worker gets: how to fetch and process, never a database or a credential.
WORKER_SETTINGS = ("timeout", "connect_timeout", "user_agent", "proxy", "max_body_size", "max_redirects",
                   "robots_txt_ttl", "process_time_limit", "log_tail", "block_private_addresses")
_DEFAULTS = {"schedule": Schedule().to_dict(), "fetch": Fetch().to_dict(), "process": Process().to_dict()}


def start_task(project: str) -> dict[str, Any]:
    """The task the debugger offers first: the project's on_start."""
    return {"taskid": "on_start", "project": project, "url": "data:,on_start", "process": {"callback": "on_start"}}


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def compact_task(task: Task | dict[str, Any]) -> dict[str, Any]:
    """A task as short JSON for the task box: identity plus the options that differ from the defaults."""
    data = task.to_dict() if isinstance(task, Task) else dict(task)
    out: dict[str, Any] = {"taskid": data.get("taskid"), "project": data.get("project"), "url": data.get("url")}
    for part, defaults in _DEFAULTS.items():
        values = data.get(part) or {}
        changed = {k: _plain(v) for k, v in values.items() if k in defaults and v != defaults[k]}
        if changed:
            out[part] = changed
    return out


def build_task(project: str, body: dict[str, Any]) -> Task:
    """The task of a debug request: ``{"task": {...}}`` or ``{"url", "callback"}``; 400 if malformed."""
    data = body.get("task")
    if data is None:
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise fail(400, 'send {"task": {...}} or {"url": ..., "callback": ...}')
        data = {"url": url, "process": {"callback": body.get("callback") or "index_page"}}
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise fail(400, f"the task is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise fail(400, "the task must be a JSON object")
    try:
        task = Task.from_dict({**data, "project": project})
    except (SerializationError, InvalidProjectName) as exc:
        raise fail(400, f"bad task: {exc}") from None
    if not isinstance(task.url, str) or not task.url:
        raise fail(400, "the task needs a url")
    return task


def fetch_report(result: FetchResult, task: Task) -> dict[str, Any]:
    response = Response.from_fetch_result(result, task)
    content = result.content
    encoding = response.encoding if content else None
    text = content[:MAX_TEXT].decode(encoding, "replace") if encoding else ""
    return {
        "status_code": result.status_code, "url": result.url, "orig_url": result.orig_url, "ok": result.ok,
        "error": result.error, "time": result.time, "headers": dict(result.headers),
        "content_type": response.headers.get("content-type"), "content_length": len(content),
        "encoding": encoding, "truncated": result.truncated,
        "text": text, "text_truncated": len(content) > MAX_TEXT, "save": _plain(result.save),
    }


def new_report(task: Task | dict[str, Any]) -> dict[str, Any]:
    """A report of a run that has not got anywhere yet."""
    return {"task": compact_task(task), "ok": False, "fetch_result": None, "follows": [], "messages": [],
            "results": [], "logs": [], "exception": None, "track": None}


def run_debug(name: str, script: str, task: Task, settings: Settings) -> dict[str, Any]:
    """Load *script*, fetch *task* and run its callback; a report for the debugger's tabs.

    Runs in a debug worker's main thread, so the callback's time limit is a signal.
    """
    report = new_report(task)
    try:
        project = load_project(name, script, env=DEBUG_ENV, time_limit=settings.process_time_limit)
    except ScriptError as exc:
        report["exception"] = f"ScriptError: {exc}"
        return report
    result = Fetcher(None, None, settings).fetch_sync(task)
    report["fetch_result"] = fetch_report(result, task)
    processor = Processor(settings=settings, projects=ProjectManager(env=DEBUG_ENV), capture_stdout=True)
    outcome = processor.process(task, result, project)
    for new in outcome.new_tasks:
        if new.taskid == "_on_message":
            save = new.fetch.save if isinstance(new.fetch.save, dict) else {}
            report["messages"].append({"project": new.project, "sender": save.get("sender"),
                                       "message": _plain(save.get("message", new.fetch.save))})
        else:
            report["follows"].append(compact_task(new))
    report["results"] = [_plain(pack.result) for pack in outcome.results]
    report["logs"] = list(outcome.logs)
    report["exception"] = outcome.exception
    report["ok"] = outcome.exception is None
    report["track"] = _plain(outcome.status_pack.track.to_dict())
    return report
