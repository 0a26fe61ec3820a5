"""BaseHandler and its decorators: the API a project script is written against.

A script defines ``class Handler(BaseHandler)`` with ``crawl_config``, ``on_start`` and
callbacks, as in pyspider. Callbacks take ``(self, response)`` or ``(self, response, task)``
(``task`` is the task as a dict, as pyspider passed it; ``self.task`` is the typed Task).
A callback that returns a dict, or yields several, produces results; ``self.crawl()``
produces follows. The special callbacks ``_on_message``, ``_on_cronjob`` and
``_on_get_info`` implement the scheduler conventions of :data:`spiderflow.message.SPECIAL_TASKS`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable
from types import MethodType
from typing import Any

from ..message import Task, md5_taskid, special_task, validate_project_name
from .crawl import CrawlError, build_task, check_options, merge_options, resolve_url
from .response import Response

_NOTSET: Any = object()
_ARITY: dict[Any, int] = {}
_MESSAGE_URL = "data:,_on_message"
_PYSPIDER_MESSAGE_URL = "data:,on_message"


def catch_status_code_error(func: Callable) -> Callable:
    """Let non-2xx responses (and failed fetches) reach this callback instead of failing the task."""
    func._catch_status_code_error = True
    return func


def not_send_status(func: Callable) -> Callable:
    """Accepted for pyspider scripts; a no-op here: every task answers the scheduler's lease."""
    return func


def config(_config: dict[str, Any] | None = None, **kwargs: Any) -> Callable:
    """Default ``self.crawl`` options for every task whose callback is the decorated method."""
    options = {**(_config or {}), **kwargs}

    def wrapper(func: Callable) -> Callable:
        func._config = options
        return func
    return wrapper


def every(minutes: Any = _NOTSET, seconds: Any = _NOTSET) -> Callable:
    """Run the decorated method every *minutes* and/or *seconds* (default: every minute).

    ``@every`` without arguments works too. The scheduler drives it with ``_on_cronjob``.
    """
    if callable(minutes) and seconds is _NOTSET:  # bare @every
        return every()(minutes)
    if minutes is _NOTSET and seconds is _NOTSET:
        minutes = 1
    period = (0 if minutes is _NOTSET else minutes) * 60 + (0 if seconds is _NOTSET else seconds)
    if not isinstance(period, (int, float)) or period <= 0 or int(period) != period:
        raise ValueError(f"@every needs a whole, positive number of seconds, not {period!r}")

    def wrapper(func: Callable) -> Callable:
        func.is_cronjob = True
        func.tick = int(period)
        return func
    return wrapper


def _marker(func: Callable, name: str, default: Any = None) -> Any:
    """``getattr(func, name, default)`` for a mark set by a decorator (``_config``, ...).

    A bound method looks such a name up on its function, so ask the function directly:
    a miss on the method raises and catches an AttributeError inside, which costs a
    microsecond on every ``self.crawl()``.
    """
    if type(func) is MethodType:
        func = func.__func__
    return getattr(func, name, default)


def _arity(func: Callable) -> int:
    """How many positional arguments *func* takes (-1: any number)."""
    key = getattr(func, "__func__", func)
    n = _ARITY.get(key)
    if n is None:
        code = getattr(key, "__code__", None)
        if code is None or code.co_flags & inspect.CO_VARARGS:
            n = -1
        else:
            n = code.co_argcount - (1 if hasattr(func, "__self__") else 0)
        _ARITY[key] = n
    return n


class BaseHandler:
    """Base class of every project script's ``Handler``.

    Class attributes a script may set: ``crawl_config`` (default ``self.crawl`` options),
    ``retry_delay`` ({retried: seconds}, ``-1`` or ``''`` for any later retry; empty: the
    scheduler's default). Per task: ``self.task``, ``self.response``, ``self.save`` (a dict
    reported in the task's track), ``self.job`` (the job's ``id``, ``args`` and ``settings``
    when a job runs the project, else None), ``self.project_name``, ``self.logger``.
    """

    crawl_config: dict[str, Any] = {}
    retry_delay: dict[Any, float] = {}
    project_name: str | None = None
    logger: logging.Logger = logging.getLogger("spiderflow.script")
    _cron_jobs: tuple[tuple[str, int], ...] = ()
    _min_tick: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jobs: dict[str, int] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if inspect.isfunction(attr):
                    if getattr(attr, "is_cronjob", False):
                        jobs[name] = attr.tick
                    else:
                        jobs.pop(name, None)  # overridden without @every
        cls._cron_jobs = tuple(sorted(jobs.items()))
        cls._min_tick = math.gcd(*jobs.values()) if jobs else 0

    # -- per-task state (set by the processor; a script's __init__ need not call super) ---------
    task: Task | None = None
    response: Response | None = None
    job: Any = None     # the task's job (spiderflow.jobs.Job: id, args, settings), or None
    save: dict[str, Any] = {}
    _env: dict[str, Any] = {}
    _now: float = 0.0
    _follows: list[Task] = []
    _follow_keys: set[str] = set()
    _messages: list[Task] = []
    _results: list[Any] = []

    def _bind(self, project: str, logger: logging.Logger, env: dict[str, Any] | None = None) -> None:
        self.project_name = project
        self.logger = logger
        self._env = dict(env or {})

    def _reset(self, task: Task | None = None, response: Response | None = None, now: float = 0.0) -> None:
        self.task = task
        self.response = response
        self.save = {}
        self._now = now
        self._follows = []
        self._follow_keys = set()
        self._messages = []
        self._results = []

    # -- the script API -------------------------------------------------------------------------
    def crawl(self, url: str | Iterable[str], **kwargs: Any) -> Task | list[Task]:
        """Queue *url* (or each of a list of URLs) to be fetched and passed to ``callback``.

        Options: callback, taskid, params, every fetch option (method, data, files, headers,
        user_agent, cookies, timeout, connect_timeout, allow_redirects, max_redirects,
        validate_cert, proxy, etag, last_modified, use_gzip, robots_txt, fetch_type, save),
        every schedule option (priority, retries, exetime, age, itag, force_update,
        auto_recrawl, cancel) and time_limit. Relative URLs resolve against the current page.
        """
        if isinstance(url, str):
            return self._crawl(url, kwargs)
        if isinstance(url, (bytes, dict)) or not isinstance(url, Iterable):
            raise CrawlError(f"self.crawl(): url must be a string or a list of strings, not {type(url).__name__}")
        return [self._crawl(each, kwargs) for each in url]

    def get_taskid(self, task: dict[str, Any]) -> str:
        """The task id of a new task (a dict with url, fetch, schedule, process); override me."""
        return md5_taskid(task["url"])

    def is_debugger(self) -> bool:
        """True when the task runs in the web UI's debugger."""
        return bool(self._env.get("debugger"))

    def send_message(self, project: str, msg: Any, url: str = _MESSAGE_URL) -> None:
        """Send *msg* (JSON data) to *project*, whose ``on_message(sender, msg)`` runs with it.

        The message travels as the special task ``_on_message`` with ``fetch.save =
        {"sender": <this project>, "message": msg}``; *url* only labels it, and is never
        fetched: a ``data:`` URL becomes the task's URL, any other goes in ``save["url"]``.
        A labelled message's results are keyed by the md5 of its URL (pyspider's way of
        making one result per message).
        """
        validate_project_name(project)
        _check_message(msg)
        save = {"sender": self.project_name, "message": msg}
        labelled = url not in (_MESSAGE_URL, _PYSPIDER_MESSAGE_URL)
        if labelled and not url.startswith("data:"):
            save["url"] = url
        task = special_task(project, "_on_message", save=save)
        task.updatetime = self._now or task.updatetime
        if labelled and "url" not in save:
            task.url = url
        self._messages.append(task)

    def on_message(self, project: str, msg: Any) -> Any:
        """Receive *msg* sent by *project* (or by the command line); override me."""

    def on_result(self, result: Any) -> None:
        """Receive each result a callback returns or yields; override to send results elsewhere."""
        if result is not None:
            self._results.append(result)

    def on_finished(self, response: Response, task: dict[str, Any]) -> Any:
        """Called when the project's queue has drained; override me."""

    # -- special callbacks -------------------------------------------------------------------------
    def _on_message(self, response: Response, task: dict[str, Any]) -> Any:
        """Unpack a message: ``{"sender", "message"[, "url"]}`` from send_message, else a bare one (sender None)."""
        save = response.save if response.save is not None else (task.get("fetch") or {}).get("save")
        if isinstance(save, dict) and save.keys() in ({"sender", "message"}, {"sender", "message", "url"}):
            return self.on_message(save["sender"], save["message"])
        return self.on_message(None, save)

    def _on_cronjob(self, response: Response, task: dict[str, Any]) -> None:
        """Run every @every method due at ``save["tick"]`` (or since ``save["last_tick"]``)."""
        save = response.save
        if not isinstance(save, dict) or save.get("tick") is None:
            return
        tick = int(save["tick"])
        last = save.get("last_tick")
        last = tick - 1 if last is None else int(last)
        first_error: BaseException | None = None
        for name, period in self._cron_jobs:
            if tick // period <= last // period:  # no multiple of period in (last, tick]
                continue
            try:
                _call(getattr(self, name), response, task)
            except Exception as exc:
                self.logger.exception("@every %s() failed", name)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _on_get_info(self, response: Response, task: dict[str, Any]) -> None:
        """Report min_tick, retry_delay and crawl_config to the scheduler (in track.process.save)."""
        self.save["min_tick"] = self._min_tick
        self.save["retry_delay"] = _retry_delay_table(self.retry_delay)
        self.save["crawl_config"] = json.loads(json.dumps(self.crawl_config or {}, default=str))

    # -- internals -----------------------------------------------------------------------------------
    def _crawl(self, url: str, kwargs: dict[str, Any]) -> Task:
        if not self.project_name:
            raise CrawlError("self.crawl(): the handler is not bound to a project")
        callback = kwargs.get("callback")
        func_config = None
        if callback is not None:
            name, func = self._resolve_callback(callback)
            func_config = _marker(func, "_config")
        elif callable(self):
            name = "__call__"
        else:
            raise CrawlError(f"self.crawl({url!r}) needs callback=, a method of {type(self).__name__}")
        opts = merge_options(self.crawl_config, func_config, kwargs)
        check_options(opts)
        base = self.response.url if self.response is not None else None
        url = resolve_url(url, base, opts.get("params"))
        get_taskid = None if type(self).get_taskid is BaseHandler.get_taskid else self.get_taskid
        task = build_task(self.project_name, url, opts, name, get_taskid, self._now)
        if task.taskid not in self._follow_keys:
            self._follow_keys.add(task.taskid)
            self._follows.append(task)
        return task

    def _resolve_callback(self, callback: Any) -> tuple[str, Callable]:
        if isinstance(callback, str):
            func = getattr(self, callback, None)
            if callable(func):
                return callback, func
            raise CrawlError(f"self.crawl(): callback {callback!r} is not a method of {type(self).__name__}")
        if callable(callback) and getattr(callback, "__self__", None) is self:
            name = getattr(callback, "__name__", "")
            if callable(getattr(self, name, None)):
                return name, callback
        raise CrawlError(f"self.crawl(): callback must be a method of {type(self).__name__} "
                         f"(self.method) or its name, not {callback!r:.80}")

    def _run_task(self, task: Task, response: Response) -> None:
        """Run the task's callback; its results go to on_result. Exceptions propagate."""
        name = task.process.callback or "__call__"
        func = getattr(self, name, None)
        if not callable(func):
            raise NotImplementedError(f"self.{name}() is not defined in {type(self).__name__}")
        if not _marker(func, "_catch_status_code_error", False):
            if response.status_code == 304 and not response.error:
                return  # not modified: nothing new to process
            response.raise_for_status(allow_redirects=not task.fetch.allow_redirects)
        result = _call(func, response, task)
        if inspect.isgenerator(result):
            for each in result:
                self._emit(each, response, task)
        else:
            self._emit(result, response, task)

    def _emit(self, result: Any, response: Response, task: Task) -> None:
        if result is None or isinstance(result, Task):
            return  # `return self.crawl(...)` is a follow, not a result
        if isinstance(result, list) and result and all(isinstance(r, Task) for r in result):
            return
        _call(self.on_result, result, response, task)


def _call(func: Callable, response: Any, task: Any, *more: Any) -> Any:
    """Call *func* with as many of (response, task, ...) as it takes; task as a dict."""
    n = _arity(func)
    if n == 0:
        return func()
    if n == 1:
        return func(response)
    args = [response, task, *more]
    if isinstance(args[1], Task):
        args[1] = args[1].to_dict()
    elif len(args) > 2 and isinstance(args[2], Task):  # on_result(result, response, task)
        args[2] = args[2].to_dict()
    return func(*args) if n < 0 else func(*args[:n])


def _retry_delay_table(table: Any) -> dict[int, float]:
    """Normalise a script's retry_delay to {retried: seconds} with -1 for "any later retry"."""
    out: dict[int, float] = {}
    for key, value in dict(table or {}).items():
        out[-1 if key in ("", None) else int(key)] = float(value)
    return out


def _check_message(msg: Any) -> None:
    try:
        json.dumps(msg)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"send_message(): the message must be JSON data: {exc}") from None


__all__ = ["BaseHandler", "catch_status_code_error", "config", "every", "not_send_status"]
