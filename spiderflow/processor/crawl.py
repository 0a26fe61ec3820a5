"""``self.crawl()`` options: merge the layers, check them, and build the new Task.

Precedence, the pyspider way: keyword arguments of the call > ``@config(...)`` of the
callback > the class's ``crawl_config``. ``headers``, ``cookies`` and ``params`` merge key
by key across the layers; every other option is replaced as a whole. A bad option raises
:class:`CrawlError` (a TypeError) inside the callback, which the processor reports in the
task's track.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from ..exceptions import CrawlError, SerializationError
from ..message import TASKID_CONTROLS, Fetch, Process, Schedule, Task, md5_taskid
from ..storage.base import MAX_TASKID
from .urls import url_joiner

#: Options that go to Task.fetch (``params`` is merged into the URL instead).
FETCH_OPTIONS = frozenset((
    "method", "headers", "data", "files", "cookies", "user_agent", "timeout", "connect_timeout",
    "allow_redirects", "max_redirects", "validate_cert", "proxy", "etag", "last_modified",
    "use_gzip", "robots_txt", "fetch_type", "save",
    "js_script", "js_run_at", "js_viewport_width", "js_viewport_height", "load_images",
))
SCHEDULE_OPTIONS = frozenset(("priority", "retries", "exetime", "age", "itag", "force_update", "auto_recrawl", "cancel"))
PROCESS_OPTIONS = frozenset(("time_limit",))
OTHER_OPTIONS = frozenset(("callback", "taskid", "params"))
CRAWL_OPTIONS = FETCH_OPTIONS | SCHEDULE_OPTIONS | PROCESS_OPTIONS | OTHER_OPTIONS

_MERGED = frozenset(("headers", "cookies", "params"))
_ALIASES = {"last_modifed": "last_modified"}  # pyspider's spelling in its option list
_URL_SCHEMES = ("http", "https", "data")
_ABSOLUTE = ("http://", "https://")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_PLAIN = (str, int, float, bool, bytes, type(None))
_CALLBACK_ONLY = frozenset(("callback",))


def merge_options(base: dict[str, Any] | None, mid: dict[str, Any] | None,
                  top: dict[str, Any] | None) -> dict[str, Any]:
    """Merge crawl_config (*base*), the callback's @config (*mid*) and the call's kwargs (*top*)."""
    if not base and not mid and top is not None and "last_modifed" not in top:
        return top  # the common case: no crawl_config, no @config
    out: dict[str, Any] = {}
    for layer in (base, mid, top):
        if not layer:
            continue
        for key, value in layer.items():
            key = _ALIASES.get(key, key)
            old = out.get(key)
            if key in _MERGED and isinstance(value, dict) and isinstance(old, dict):
                out[key] = {**old, **value}
            else:
                out[key] = value
    return out


def check_options(opts: dict[str, Any]) -> None:
    """Raise CrawlError for an option name self.crawl does not know."""
    if opts.keys() <= CRAWL_OPTIONS:  # cheaper than building the set of unknown names
        return
    unknown = opts.keys() - CRAWL_OPTIONS
    raise CrawlError(f"self.crawl() got unexpected keyword argument(s): {', '.join(sorted(unknown))}; "
                     f"known options: {', '.join(sorted(CRAWL_OPTIONS))}")


def resolve_url(url: Any, base: str | None, params: dict[str, Any] | None = None) -> str:
    """Make *url* absolute against *base* (the current page's URL) and append *params*."""
    if not isinstance(url, str):
        raise CrawlError(f"self.crawl(): a URL must be a string, not {type(url).__name__}")
    url = url.strip()
    if url.startswith(_ABSOLUTE):  # the common case (links are absolute after response.doc)
        return _add_params(url, params) if params else url
    if not url:
        raise CrawlError("self.crawl(): empty URL")
    match = _SCHEME.match(url)
    if match is None:
        try:
            joined = url_joiner(base)(url) if base and base.startswith(("http://", "https://")) else None
        except ValueError as exc:
            raise CrawlError(f"self.crawl(): cannot resolve {url!r} against {base!r}: {exc}") from None
        if joined is None:
            raise CrawlError(f"self.crawl(): cannot resolve the relative URL {url!r} without the URL "
                             "of a fetched page; give an absolute http(s) URL")
        url = joined
    elif match.group(1).lower() not in _URL_SCHEMES:
        raise CrawlError(f"self.crawl(): unsupported URL scheme {match.group(1)!r} in {url!r}; "
                         "use http, https or data")
    return _add_params(url, params) if params else url


def _add_params(url: str, params: Any) -> str:
    """*url* with *params* appended to its query, before any fragment."""
    if not isinstance(params, dict):
        raise CrawlError(f"self.crawl(): params must be a dict, not {type(params).__name__}")
    base_url, _, fragment = url.partition("#")
    url = f"{base_url}{'&' if '?' in base_url else '?'}{urlencode(params, doseq=True)}"
    if fragment:
        url += "#" + fragment
    return url


def _check_plain(value: Any, name: str, depth: int = 0) -> None:
    """Options that travel in messages must be plain data (msgpack/JSON-able)."""
    if isinstance(value, _PLAIN):
        return
    if depth > 32:
        raise CrawlError(f"self.crawl(): {name} is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CrawlError(f"self.crawl(): {name} has a key of type {type(k).__name__}; use str keys")
            _check_plain(v, name, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, name, depth + 1)
    else:
        raise CrawlError(f"self.crawl(): {name} holds a {type(value).__name__}, which cannot be sent "
                         "in a message; use dicts, lists, strings, numbers, booleans, bytes or None")


def _str_dict(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CrawlError(f"self.crawl(): {name} must be a dict, not {type(value).__name__}")
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items() if v is not None}


def build_task(project: str, url: str, opts: dict[str, Any], callback: str | None, get_taskid: Any,
               now: float) -> Task:
    """The Task for one URL; *opts* are merged and checked, *callback* is a method name."""
    if get_taskid is None and opts.keys() <= _CALLBACK_ONLY:
        # the common self.crawl(url, callback=...): every part at its default
        return Task.follow(md5_taskid(url), project, url, callback, now)
    fetch_kw: dict[str, Any] = {}
    schedule_kw: dict[str, Any] = {}
    time_limit = None
    taskid = None
    for key, value in opts.items():
        if key in FETCH_OPTIONS:
            fetch_kw[key] = value
        elif key in SCHEDULE_OPTIONS:
            schedule_kw[key] = value
        elif key == "taskid":
            taskid = value
        elif key == "time_limit":
            time_limit = value
    if fetch_kw:
        for name in ("headers", "cookies"):
            if name in fetch_kw:
                fetch_kw[name] = _str_dict(fetch_kw[name], name)
        for name in ("save", "data", "files"):
            if name in fetch_kw:
                _check_plain(fetch_kw[name], name)
        if ("data" in fetch_kw and fetch_kw["data"] is not None or fetch_kw.get("files")) and "method" not in fetch_kw:
            fetch_kw["method"] = "POST"
        if isinstance(fetch_kw.get("method"), str):
            fetch_kw["method"] = fetch_kw["method"].upper()
    if "itag" in schedule_kw and schedule_kw["itag"] is not None and not isinstance(schedule_kw["itag"], str):
        schedule_kw["itag"] = str(schedule_kw["itag"])
    try:
        fetch = Fetch.from_dict(fetch_kw) if fetch_kw else Fetch()
        schedule = Schedule.from_dict(schedule_kw) if schedule_kw else Schedule()
        process = Process(callback=callback, time_limit=time_limit)
        if time_limit is not None:
            Process.from_dict(process.to_dict())
    except SerializationError as exc:
        text = str(exc)
        for prefix in ("Fetch.", "Schedule.", "Process."):
            text = text.replace(prefix, "")
        raise CrawlError(f"self.crawl({url!r}): {text}") from None
    if taskid is None:
        if get_taskid is None:
            taskid = md5_taskid(url)
        else:
            taskid = get_taskid({"project": project, "url": url, "fetch": fetch.to_dict(),
                                 "schedule": schedule.to_dict(), "process": process.to_dict()})
    if not isinstance(taskid, str) or not taskid:
        raise CrawlError(f"self.crawl({url!r}): taskid must be a non-empty string, not {taskid!r:.80}")
    if len(taskid) > MAX_TASKID or TASKID_CONTROLS.search(taskid):
        raise CrawlError(f"self.crawl({url!r}): taskid must be at most {MAX_TASKID} characters without line "
                         f"breaks or other control characters, not {taskid!r:.80}")
    return Task(taskid=taskid, project=project, url=url, schedule=schedule, fetch=fetch,
                process=process, updatetime=now)


__all__ = ["CRAWL_OPTIONS", "CrawlError", "FETCH_OPTIONS", "PROCESS_OPTIONS", "SCHEDULE_OPTIONS",
           "build_task", "check_options", "merge_options", "resolve_url"]
