"""The scheduler's control interface: HTTP + JSON on tornado, and a small sync client.

Served on ``scheduler_host:scheduler_port`` (127.0.0.1 by default) next to the loop, for
the command line and the web UI — never for a browser. Every request needs
``Authorization: Bearer <token>``: the configured ``scheduler_token``, or, when none is set
(only allowed on a loopback address), a random one made at each start and written,
readable by its owner only, to ``<data_dir>/scheduler.token``, where local clients read it
(:func:`token_path`; the client reads it again once when it gets a 401, so a restarted
scheduler is picked up). Before the token, a request is refused (403) when it names a
host other than a loopback one while the port is bound to loopback (DNS rebinding), or
comes from a web browser (``Origin``, ``Sec-Fetch-Site`` or a ``Sec-Fetch-Mode`` of a
navigation or a ``no-cors`` request); a POST body must be ``application/json`` (415), which
a page of another site can only send after a CORS preflight that is never answered.

==========================  ==============================================  ====================
``GET /api/size``           ACTIVE tasks of every project                   ``{"size": n}``
``GET /api/counters``       ``?project=&window=`` (5m, 1h, 1d, all)         ``{"counters": {...}}``
``GET /api/active_tasks``   ``?project=&limit=``                            ``{"tasks": [...]}``
``GET /api/paused``         ``?project=``                                   ``{"paused": ...}``
``GET /api/projects``       per-project state                               ``{"projects": [...]}``
``GET /api/nodes``          online nodes (``?all=1``: offline ones too)     ``{"nodes": [...]}``
``POST /api/newtask``       a task dict or a list of them                   ``{"accepted": n}``
``POST /api/send_task``     a task dict: dispatch now (RUNNING/DEBUG only)  ``{"sent": bool}``
``POST /api/update_project``  re-read projectdb                             ``{"ok": true}``
``POST /api/run``           ``{"project": name}``: schedule on_start        ``{"taskid": "on_start"}``
``POST /api/message``       ``{"project": name, "message": any}``           ``{"ok": true}``
==========================  ==============================================  ====================

Errors are ``{"error": "..."}`` with status 400 (bad input: also NaN, Infinity and numbers
out of range, named by their field), 401 (token), 403 (a browser or a foreign host name),
404 (unknown project or path), 405, 409 (``send_task`` for a project that is not RUNNING
or DEBUG), 415 (a body that is not JSON), or 503 (the node registry's database failed).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from ..exceptions import ConfigError, ControlError, SerializationError, StorageError
from ..files import make_private_dirs
from ..message import Task
from ..settings import is_loopback
from .checks import coerce_task

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
#: where a scheduler without a configured token writes the one it made, in its data directory
TOKEN_FILE = "scheduler.token"
JSON_TYPE = "application/json"
#: the deepest nesting of a request body
MAX_DEPTH = 100
#: ``Sec-Fetch-Mode`` values of requests a page makes without CORS (navigations, forms, images)
_BROWSER_MODES = frozenset(("navigate", "nested-navigate", "no-cors", "websocket"))
_INT32 = 2 ** 31
_SECONDS = 2 ** 53              # bound of every time field: exactly representable, any database stores it
#: task fields and the bound of their absolute value
_TASK_BOUNDS: dict[tuple[str, ...], int] = {
    ("schedule", "priority"): _INT32, ("schedule", "retries"): _INT32, ("schedule", "retried"): _INT32,
    ("schedule", "exetime"): _SECONDS, ("schedule", "age"): _SECONDS,
    ("updatetime",): _SECONDS, ("lastcrawltime",): _SECONDS,
    ("fetch", "timeout"): _SECONDS, ("fetch", "connect_timeout"): _SECONDS,
    ("fetch", "max_redirects"): _INT32, ("process", "time_limit"): _SECONDS,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


# -- the token file -------------------------------------------------------------------

def token_path(data_dir: str) -> str:
    """Where a scheduler with data directory *data_dir* keeps the token it made."""
    return os.path.join(data_dir, TOKEN_FILE)


def write_token_file(path: str, token: str) -> None:
    """Write *token* to *path*, readable and writable by its owner only (0600).

    A new file is created exclusively next to *path* and renamed over it, so the token is
    never readable by others, not even for a moment, and a link planted at *path* is replaced,
    not followed.
    """
    directory = os.path.dirname(path) or "."
    make_private_dirs(directory)
    temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), 0o600)      # whatever the umask
            fh.write(token + "\n")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def read_token_file(path: str) -> str:
    """The token in *path*; OSError if it cannot be read, ValueError if it is empty."""
    with open(path, encoding="ascii", errors="replace") as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError("the file is empty")
    return token


# -- request bodies -------------------------------------------------------------------

class _NonFinite:
    """NaN, Infinity or a number too large for a float, as written in the body (then refused)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body (empty: None); ValueError naming what is wrong.

    Python's json reads ``NaN``, ``Infinity`` and ``1e999`` as floats no database or queue
    keeps as they are; they are refused here with the field that holds them, and so are
    integers beyond 64 bits and bodies nested more than :data:`MAX_DEPTH` levels deep.
    """
    try:
        value = json.loads(raw or b"null", parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise ValueError(f"request body is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise ValueError(f"request body is not JSON: {exc}") from None
    escapes = b"\\u" in (raw or b"")    # only a \\u escape can make a lone surrogate
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"request body is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(item, dict):
            if escapes:
                for k in item:
                    _check_text(k, f"{path}.{k}" if path else k)
            stack.extend((v, f"{path}.{k}" if path else k, depth + 1) for k, v in item.items())
        elif escapes and isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, _NonFinite):
            raise ValueError(f"field {path or '(the body)'!r} is {item.text}: numbers must be finite")
        elif type(item) is int and not -2 ** 63 <= item < 2 ** 64:
            raise ValueError(f"field {path or '(the body)'!r} is an integer beyond 64 bits")
    return value


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"field {path or '(the body)'!r} holds text that is not valid Unicode "
                         f"({exc.object[exc.start:exc.end]!r}, a lone surrogate); send UTF-8 text") from None


def _json_type(value: Any) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_task(task: dict[str, Any], where: str = "") -> None:
    """ValueError naming the field when a time, priority or count of the task dict *task* is
    out of range, or a header or cookie is not a string (the rest is checked by Task.from_dict)."""
    for keys, bound in _TASK_BOUNDS.items():
        value: Any = task
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not -bound <= value < bound:
            name = where + ".".join(keys)
            limit = "a 32-bit integer" if bound == _INT32 else f"at most {bound} seconds either way"
            raise ValueError(f"field {name!r} is out of range ({value!r:.40}): it must be {limit}")
    fetch = task.get("fetch")
    for part in ("headers", "cookies"):
        values = fetch.get(part) if isinstance(fetch, dict) else None
        for key, value in values.items() if isinstance(values, dict) else ():
            if not isinstance(value, str):
                name = f"{where}fetch.{part}.{key}"
                raise ValueError(f"field {name[:100]!r} must be a string, not {_json_type(value)}")


def browser_request(headers: Any) -> str | None:
    """Why a request comes from a web browser, or None: the control interface has no browser clients."""
    origin = headers.get("Origin")
    if origin is not None:
        return f"the scheduler's control interface does not answer web pages (Origin: {origin:.100})"
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site and site != "none":
        return f"the scheduler's control interface does not answer web pages (Sec-Fetch-Site: {site:.40})"
    mode = (headers.get("Sec-Fetch-Mode") or "").strip().lower()
    if mode in _BROWSER_MODES:
        return f"the scheduler's control interface does not answer a browser (Sec-Fetch-Mode: {mode})"
    return None


# -- server ---------------------------------------------------------------------------

class _Handler(tornado.web.RequestHandler):
    @property
    def scheduler(self) -> Any:
        return self.application.settings["scheduler"]

    def prepare(self) -> None:
        """Host, browser, token, then a POST's content type: refused before any handler runs."""
        settings = self.application.settings
        if settings["loopback_only"]:
            host = self.request.host_name.strip("[]")
            if not is_loopback(host):
                raise tornado.web.HTTPError(403, "this scheduler control interface is bound to loopback and "
                                                 "answers only to a loopback host name (127.0.0.1, localhost, "
                                                 "::1), not %r", host[:100])
        why = browser_request(self.request.headers)
        if why:
            raise tornado.web.HTTPError(403, "%s", why)       # tornado logs it, with the client's address
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 settings["control_token"].encode()):
            raise tornado.web.HTTPError(401, reason="missing or wrong token")
        if self.request.method == "POST":
            media = (self.request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if media != JSON_TYPE:
                raise tornado.web.HTTPError(415, "send the body as Content-Type: %s, not %r",
                                            JSON_TYPE, media or "none")

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:          # set here: send_error() clears the headers set before
            self.set_header("WWW-Authenticate", 'Bearer realm="spiderflow scheduler"')
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = self._reason
        self.finish(dumps({"error": message}))

    def reply(self, value: Any) -> None:
        self.finish(dumps(value))

    def body(self) -> Any:
        try:
            return parse_body(self.request.body)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, "%s", exc) from None

    def task_body(self, many: bool) -> Any:
        """A task object (or, when *many*, a non-empty list of them), its numbers checked."""
        body = self.body()
        tasks = body if many and isinstance(body, list) else [body]
        if not tasks:
            raise tornado.web.HTTPError(400, "send a task object or a non-empty list of them")
        for i, task in enumerate(tasks):
            where = f"[{i}]." if tasks is body else ""
            if not isinstance(task, dict):
                want = "a task object or a non-empty list of them" if many else "a task object"
                raise tornado.web.HTTPError(400, "send %s; %s is %s", want,
                                            f"task [{i}]" if where else "the body", _json_type(task))
            try:
                check_task(task, where)
            except ValueError as exc:
                raise tornado.web.HTTPError(400, "%s", exc) from None
        return body

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a scheduler operation, turning bad input into 400 and unknown names into 404."""
        try:
            return fn(*args)
        except KeyError as exc:
            raise tornado.web.HTTPError(404, "%s", exc.args[0] if exc.args else exc) from None
        except (SerializationError, ValueError, TypeError, OverflowError) as exc:
            raise tornado.web.HTTPError(400, "%s", exc) from None
        except RecursionError:
            raise tornado.web.HTTPError(400, "the request is nested too deeply") from None

    def int_arg(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, "%s must be an integer, not %r", name, raw[:40]) from None
        if not -_INT32 <= value < _INT32:
            raise tornado.web.HTTPError(400, "%s is out of range (%s)", name, raw[:40])
        return value

    def str_arg(self, name: str) -> str | None:
        return self.get_query_argument(name, None) or None


class SizeHandler(_Handler):
    def get(self) -> None:
        self.reply({"size": self.scheduler.size()})


class CountersHandler(_Handler):
    def get(self) -> None:
        project, window = self.str_arg("project"), self.str_arg("window")
        if project is not None and project not in self.scheduler.projects:
            raise tornado.web.HTTPError(404, "unknown project %r", project)
        self.reply({"counters": self.call(self.scheduler.counters, project, window)})


class ActiveTasksHandler(_Handler):
    def get(self) -> None:
        limit = self.int_arg("limit", 100)
        if limit < 0:
            raise tornado.web.HTTPError(400, "limit must not be negative")
        self.reply({"tasks": self.call(self.scheduler.active_tasks, self.str_arg("project"), limit)})


class PausedHandler(_Handler):
    def get(self) -> None:
        project = self.str_arg("project")
        if project is None:
            self.reply({"paused": self.scheduler.pause_status()})
        else:
            self.reply({"project": project, "paused": self.call(self.scheduler.paused, project)})


class ProjectsHandler(_Handler):
    def get(self) -> None:
        self.reply({"projects": self.scheduler.projects_info()})


class NodesHandler(_Handler):
    """The node registry (``spiderflow nodes``), read off the loop; ``[]`` when none was given."""

    async def get(self) -> None:
        source = self.application.settings.get("nodes")
        include_offline = (self.get_query_argument("all", "") or "0").lower() not in ("0", "false", "no")
        if source is None:
            self.reply({"nodes": []})
            return
        try:
            nodes = await tornado.ioloop.IOLoop.current().run_in_executor(None, source, include_offline)
        except StorageError as exc:
            raise tornado.web.HTTPError(503, "%s", exc) from None
        self.reply({"nodes": nodes})


class NewTaskHandler(_Handler):
    def post(self) -> None:
        self.reply({"accepted": self.call(self.scheduler.newtask, self.task_body(many=True))})


class SendTaskHandler(_Handler):
    """Dispatch one task now, for a project that is RUNNING or DEBUG (409 otherwise)."""

    def post(self) -> None:
        self.reply({"sent": self.call(self._send, self.task_body(many=False))})

    def _send(self, body: dict[str, Any]) -> bool:
        scheduler = self.scheduler
        task = coerce_task(body)
        with scheduler._lock:          # the check and the dispatch at once (a real lock when threaded)
            p = scheduler._known(task.project, scheduler._clock())
            if not p.status.schedulable:
                raise tornado.web.HTTPError(
                    409, "project %r is %s: send_task runs tasks of RUNNING or DEBUG projects only "
                         "(spiderflow project set-status %s RUNNING)", p.name, p.status.value, p.name)
            return scheduler.send_task(task)


class UpdateProjectHandler(_Handler):
    def post(self) -> None:
        self.body()
        self.scheduler.update_project()
        self.reply({"ok": True})


def _project_arg(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("project"), str) or not body["project"]:
        raise tornado.web.HTTPError(400, 'send {"project": name, ...}')
    return body["project"]


class RunHandler(_Handler):
    def post(self) -> None:
        project = _project_arg(self.body())
        self.reply({"taskid": self.call(self.scheduler.run_project, project)})


class MessageHandler(_Handler):
    def post(self) -> None:
        body = self.body()
        project = _project_arg(body)
        if "message" not in body:
            raise tornado.web.HTTPError(400, 'send {"project": name, "message": value}')
        self.call(self.scheduler.send_message, project, body["message"])
        self.reply({"ok": True})


class NotFoundHandler(_Handler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, "no such endpoint: %s", self.request.path)


def make_control_app(scheduler: Any, token: str | None = None,
                     nodes: Callable[[bool], list[dict[str, Any]]] | None = None,
                     loopback_only: bool = True) -> tornado.web.Application:
    """The control interface of *scheduler* as a tornado Application; every request needs *token*.

    *nodes* answers ``GET /api/nodes``: ``nodes(include_offline)`` returns the registry's
    nodes (:func:`spiderflow.runtime.compose.node_lister`); it is called in a thread, off the loop.
    *loopback_only* (served on a loopback address): answer only to loopback host names.
    """
    if not token:
        raise ConfigError("the scheduler control interface needs a token")
    return tornado.web.Application(
        [
            (r"/api/size", SizeHandler),
            (r"/api/counters", CountersHandler),
            (r"/api/active_tasks", ActiveTasksHandler),
            (r"/api/paused", PausedHandler),
            (r"/api/projects", ProjectsHandler),
            (r"/api/nodes", NodesHandler),
            (r"/api/newtask", NewTaskHandler),
            (r"/api/send_task", SendTaskHandler),
            (r"/api/update_project", UpdateProjectHandler),
            (r"/api/run", RunHandler),
            (r"/api/message", MessageHandler),
        ],
        default_handler_class=NotFoundHandler,
        scheduler=scheduler,
        control_token=token,
        loopback_only=loopback_only,
        nodes=nodes,
    )


def serve_control(scheduler: Any, host: str | None = None, port: int | None = None,
                  token: str | None = None, nodes: Callable[[bool], list[dict[str, Any]]] | None = None,
                  token_file: str | None = None) -> tuple[tornado.httpserver.HTTPServer, int]:
    """Serve the control interface (call from within the running event loop).

    *host*/*port*/*token* default to the scheduler's settings. Without a token (allowed on
    loopback only: ConfigError elsewhere) a random one is made and written to *token_file*
    (default ``<data_dir>/scheduler.token``) once the port is bound. Returns
    ``(server, port)``; port 0 picks a free port.
    """
    settings = scheduler.settings
    host = settings.scheduler_host if host is None else host
    port = settings.scheduler_port if port is None else port
    token = settings.scheduler_token if token is None else token
    if not is_loopback(host) and not token:
        raise ConfigError(f"the scheduler control interface on {host!r} needs a token "
                          "(--scheduler-token / SPIDERFLOW_SCHEDULER_TOKEN) when not bound to 127.0.0.1")
    sockets = tornado.netutil.bind_sockets(port, host)
    where = "its configured token"
    if not token:
        token = secrets.token_urlsafe(32)
        path = token_file or token_path(settings.data_dir)
        try:
            write_token_file(path, token)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise ConfigError(f"cannot write the scheduler's token file {path!r} ({exc.strerror or exc}): "
                              "give the scheduler a writable --data-dir, or a token with --scheduler-token "
                              "(SPIDERFLOW_SCHEDULER_TOKEN)") from None
        where = f"the token in {path}"
    app = make_control_app(scheduler, token, nodes, loopback_only=is_loopback(host))
    server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    logger.info("scheduler control interface on http://%s:%d/api/ (requests need %s)", host, bound, where)
    return server, bound


# -- client ---------------------------------------------------------------------------

class ControlClient:
    """A synchronous client of the control interface (urllib), for the CLI and web UI.

    *token* is the configured ``scheduler_token``; without one the client reads the token a
    local scheduler wrote to *token_file* (:func:`token_path` of its data directory), and
    reads it again once when the scheduler answers 401 (it was restarted with a new one).
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0,
                 token_file: str | None = None):
        self.url = url.rstrip("/")
        if not self.url.endswith("/api"):
            self.url += "/api"
        self.token = token
        self.token_file = token_file
        self.timeout = timeout
        self._file_token: str | None = None

    @classmethod
    def for_settings(cls, settings: Any, timeout: float = 10.0) -> ControlClient:
        """The client of the scheduler at ``scheduler_host:scheduler_port`` of *settings*.

        A scheduler bound to every address (0.0.0.0 or ::) is reached on loopback. Without a
        ``scheduler_token`` the client reads the one the scheduler wrote to its data directory.
        """
        host = settings.scheduler_host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        return cls(f"http://{host}:{settings.scheduler_port}", settings.scheduler_token, timeout=timeout,
                   token_file=token_path(settings.data_dir))

    def _read_token(self) -> tuple[str | None, str | None]:
        """``(token, None)`` from the token file, or ``(None, why it cannot be read)``."""
        path = self.token_file
        if not path:
            return None, None
        try:
            self._file_token = read_token_file(path)
        except (OSError, ValueError) as exc:
            self._file_token = None
            return None, f"cannot read the scheduler's token file {path} ({getattr(exc, 'strerror', None) or exc})"
        return self._file_token, None

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = f"{self.url}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = dumps(body).encode() if method == "POST" else None
        token = self.token or self._file_token or self._read_token()[0]
        try:
            return self._send(method, url, data, token)
        except ControlError as exc:
            if exc.status != 401 or self.token:
                raise
            if not self.token_file:
                raise ControlError(401, f"{exc.message}: give the scheduler's token (--scheduler-token, "
                                        "SPIDERFLOW_SCHEDULER_TOKEN)") from None
            fresh, why = self._read_token()
            if fresh and fresh != token:        # the scheduler started again with a new token
                return self._send(method, url, data, fresh)
            why = why or f"the token in {self.token_file} is not this scheduler's"
            raise ControlError(401, f"{exc.message}: {why}; give --scheduler-token "
                                    "(SPIDERFLOW_SCHEDULER_TOKEN), or the same --data-dir as the scheduler "
                                    f"at {self.url}") from None

    def _send(self, method: str, url: str, data: bytes | None, token: str | None) -> Any:
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", JSON_TYPE)
        if data is not None:
            request.add_header("Content-Type", JSON_TYPE)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise ControlError(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlError(0, f"cannot reach {self.url}: {reason}") from None

    @staticmethod
    def _task(task: Any) -> Any:
        if isinstance(task, Task):
            return task.to_dict()
        if isinstance(task, (list, tuple)):
            return [t.to_dict() if isinstance(t, Task) else t for t in task]
        return task

    def size(self) -> int:
        return self._call("GET", "size")["size"]

    def counters(self, project: str | None = None, window: str | None = None) -> dict[str, Any]:
        return self._call("GET", "counters", {"project": project, "window": window})["counters"]

    def active_tasks(self, project: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "active_tasks", {"project": project, "limit": limit})["tasks"]

    def paused(self, project: str | None = None) -> Any:
        """``{project: {...}}`` for every project, or a bool for one."""
        return self._call("GET", "paused", {"project": project})["paused"]

    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "projects")["projects"]

    def nodes(self, include_offline: bool = False) -> list[dict[str, Any]]:
        """The registered nodes (``spiderflow nodes``): online ones, or every one kept."""
        return self._call("GET", "nodes", {"all": 1 if include_offline else None})["nodes"]

    def newtask(self, task: Any) -> int:
        return self._call("POST", "newtask", body=self._task(task))["accepted"]

    def send_task(self, task: Any) -> bool:
        return self._call("POST", "send_task", body=self._task(task))["sent"]

    def update_project(self) -> None:
        self._call("POST", "update_project", body={})

    def run(self, project: str) -> str:
        return self._call("POST", "run", body={"project": project})["taskid"]

    def send_message(self, project: str, message: Any) -> None:
        self._call("POST", "message", body={"project": project, "message": message})
