"""The scheduler's control interface: HTTP + JSON on tornado, and a small sync client.

Served on ``scheduler_host:scheduler_port`` (127.0.0.1 by default) next to the loop, for
the command line and the web UI. Bound to any other address it refuses to start without a
token; with a token every request needs ``Authorization: Bearer <token>``.

==========================  ==============================================  ====================
``GET /api/size``           ACTIVE tasks of every project                   ``{"size": n}``
``GET /api/counters``       ``?project=&window=`` (5m, 1h, 1d, all)         ``{"counters": {...}}``
``GET /api/active_tasks``   ``?project=&limit=``                            ``{"tasks": [...]}``
``GET /api/paused``         ``?project=``                                   ``{"paused": ...}``
``GET /api/projects``       per-project state                               ``{"projects": [...]}``
``GET /api/nodes``          online nodes (``?all=1``: offline ones too)     ``{"nodes": [...]}``
``POST /api/newtask``       a task dict or a list of them                   ``{"accepted": n}``
``POST /api/send_task``     a task dict: dispatch now                       ``{"sent": bool}``
``POST /api/update_project``  re-read projectdb                             ``{"ok": true}``
``POST /api/run``           ``{"project": name}``: schedule on_start        ``{"taskid": "on_start"}``
``POST /api/message``       ``{"project": name, "message": any}``           ``{"ok": true}``
==========================  ==============================================  ====================

Errors are ``{"error": "..."}`` with status 400 (bad input), 401 (token), 404 (unknown
project or path), 405, or 503 (the node registry's database failed).
"""

from __future__ import annotations

import hmac
import json
import logging
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
from ..message import Task
from ..settings import is_loopback

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


# -- server ---------------------------------------------------------------------------

class _Handler(tornado.web.RequestHandler):
    @property
    def scheduler(self) -> Any:
        return self.application.settings["scheduler"]

    def prepare(self) -> None:
        token = self.application.settings.get("control_token")
        if token:
            header = self.request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                self.set_header("WWW-Authenticate", 'Bearer realm="spiderflow scheduler"')
                raise tornado.web.HTTPError(401, reason="missing or wrong token")

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
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
            return json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise tornado.web.HTTPError(400, "request body is not JSON: %s", exc) from None

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a scheduler operation, turning bad input into 400 and unknown names into 404."""
        try:
            return fn(*args)
        except KeyError as exc:
            raise tornado.web.HTTPError(404, "%s", exc.args[0] if exc.args else exc) from None
        except (SerializationError, ValueError, TypeError) as exc:
            raise tornado.web.HTTPError(400, "%s", exc) from None

    def int_arg(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, "%s must be an integer, not %r", name, raw) from None

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
        body = self.body()
        if not isinstance(body, (dict, list)) or (isinstance(body, list) and not body):
            raise tornado.web.HTTPError(400, "send a task object or a non-empty list of them")
        if isinstance(body, list) and not all(isinstance(t, dict) for t in body):
            raise tornado.web.HTTPError(400, "every task must be an object")
        self.reply({"accepted": self.call(self.scheduler.newtask, body)})


class SendTaskHandler(_Handler):
    def post(self) -> None:
        body = self.body()
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, "send a task object")
        self.reply({"sent": self.call(self.scheduler.send_task, body)})


class UpdateProjectHandler(_Handler):
    def post(self) -> None:
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
                     nodes: Callable[[bool], list[dict[str, Any]]] | None = None) -> tornado.web.Application:
    """The control interface of *scheduler* as a tornado Application.

    *nodes* answers ``GET /api/nodes``: ``nodes(include_offline)`` returns the registry's
    nodes (:func:`spiderflow.runtime.compose.node_lister`); it is called in a thread, off the loop.
    """
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
        control_token=token or None,
        nodes=nodes,
    )


def serve_control(scheduler: Any, host: str | None = None, port: int | None = None,
                  token: str | None = None, nodes: Callable[[bool], list[dict[str, Any]]] | None = None,
                  ) -> tuple[tornado.httpserver.HTTPServer, int]:
    """Serve the control interface (call from within the running event loop).

    *host*/*port*/*token* default to the scheduler's settings. Returns ``(server, port)``;
    port 0 picks a free port. Raises ConfigError when bound beyond loopback without a token.
    """
    settings = scheduler.settings
    host = settings.scheduler_host if host is None else host
    port = settings.scheduler_port if port is None else port
    token = settings.scheduler_token if token is None else token
    if not is_loopback(host) and not token:
        raise ConfigError(f"the scheduler control interface on {host!r} needs a token "
                          "(--scheduler-token / SPIDERFLOW_SCHEDULER_TOKEN) when not bound to 127.0.0.1")
    sockets = tornado.netutil.bind_sockets(port, host)
    server = tornado.httpserver.HTTPServer(make_control_app(scheduler, token, nodes), max_body_size=MAX_BODY)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    logger.info("scheduler control interface on http://%s:%d/api/", host, bound)
    return server, bound


# -- client ---------------------------------------------------------------------------

class ControlClient:
    """A synchronous client of the control interface (urllib), for the CLI and web UI."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        if not self.url.endswith("/api"):
            self.url += "/api"
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = f"{self.url}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = dumps(body).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
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
