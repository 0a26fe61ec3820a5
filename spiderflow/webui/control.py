"""``/api/control/<command>``: the remote-control commands of ``spiderflow control`` / ``inspect`` as JSON calls.

``GET /api/control/<what>`` asks an inspect command (active, reserved, stats, registered,
revoked, conf, ping) with ``?destination=NAME`` (repeatable) and ``?timeout=S``; ``POST
/api/control/<command>`` sends any command with a JSON object of ``destination``,
``timeout`` and the command's arguments:

=================  =================================================
ping, shutdown     (none)
rate_limit         ``project``, ``rate`` (tasks/s, or "200/m"), ``burst``
time_limit         ``project``, ``seconds`` (null: drop it)
pause, resume      ``project``
revoke             ``taskids`` (list), ``project``, ``terminate``
pool_grow/shrink   ``n``
autoscale          ``max``, ``min``
=================  =================================================

The answer is ``{"replies": {node name: reply}}`` (``-`` in a command name stands for ``_``).
The same login, bearer token and xsrf rules as the rest of the API apply; a command on a
project of a locked group is refused (403) as its edits are. 503 when the cluster's bus
cannot be reached (e.g. no ``spiderflow all`` on this data directory).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from ..control.bus import BusUnavailable
from ..control.commands import COMMANDS, MAX_TIMEOUT, parse_rate
from ..control.state import ControlDB
from ..exceptions import StorageError
from .base import ApiHandler
from .helpers import fail

logger = logging.getLogger(__name__)

#: the longest a web request waits for replies
WEB_TIMEOUT = 10.0
PROJECT_COMMANDS = frozenset({"rate_limit", "time_limit", "pause", "resume"})


class ControlHandler(ApiHandler):
    """``GET`` (inspect) and ``POST`` (any command) ``/api/control/<command>``."""

    def _command(self, name: str) -> str:
        command = name.replace("-", "_")
        if command not in COMMANDS:
            raise fail(404, f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
        return command

    def _timeout(self, value: Any) -> float:
        if value is None:
            return 1.0
        try:
            timeout = float(value)
        except (TypeError, ValueError):
            raise fail(400, f"timeout is a number of seconds, not {value!r}") from None
        if not 0 < timeout <= min(WEB_TIMEOUT, MAX_TIMEOUT):
            raise fail(400, f"timeout is above 0 and at most {WEB_TIMEOUT:g} seconds")
        return timeout

    @staticmethod
    def _destination(value: Any) -> list[str] | None:
        if value in (None, [], ""):
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(400, "destination is a node name or id, or a list of them")
        return value

    async def get(self, name: str) -> None:
        command = self._command(name)
        if COMMANDS[command].type != "inspect" and command != "ping":
            raise fail(405, f"{command} changes things: POST it")
        destination = self._destination(self.get_query_arguments("destination"))
        timeout = self._timeout(self.get_query_argument("timeout", None))
        await self._send(command, {}, destination, timeout)

    async def post(self, name: str) -> None:
        command = self._command(name)
        body = dict(self.body_object())
        destination = self._destination(body.pop("destination", None))
        timeout = self._timeout(body.pop("timeout", None))
        if command in PROJECT_COMMANDS or (command == "revoke" and body.get("project")):
            project = body.get("project")
            if not isinstance(project, str):
                raise fail(400, f"{command} needs a project")
            self.require_editable(self.get_project(project, ["name", "group"]))
        await self._send(command, body, destination, timeout)

    async def _send(self, command: str, body: dict[str, Any], destination: list[str] | None, timeout: float) -> None:
        state = self.state

        def call() -> dict[str, Any]:
            from ..control import ControlClient
            with ControlClient(state.settings, projectdb=state.projectdb, controldb=controldb_of(state)) as client:
                return _dispatch(client, command, body, destination, timeout)

        try:
            replies = await asyncio.get_running_loop().run_in_executor(self.state.executor, call)
        except BusUnavailable as exc:
            raise fail(503, str(exc)) from None
        except (ValueError, TypeError) as exc:   # ConfigError is a ValueError: a bad argument, an unknown project
            raise fail(400, str(exc)) from None
        except StorageError as exc:
            raise fail(503, f"the database failed: {exc}") from None
        if command in ("shutdown", "rate_limit", "time_limit", "pause", "resume", "revoke"):
            logger.info("web UI: control %s from %s: %d node(s) replied", command,
                        self.current_user or self.request.remote_ip, len(replies))
        self.reply({"replies": replies})


_CONTROLDBS: weakref.WeakKeyDictionary[Any, ControlDB] = weakref.WeakKeyDictionary()


def controldb_of(state: Any) -> ControlDB:
    """The web UI's ControlDB (revokes, time limits), on its projectdb's engine."""
    db = _CONTROLDBS.get(state.projectdb)
    if db is None:
        db = _CONTROLDBS[state.projectdb] = ControlDB(state.projectdb.engine)
    return db


def _dispatch(client: Any, command: str, body: dict[str, Any], destination: list[str] | None,
              timeout: float) -> dict[str, Any]:
    kw = {"destination": destination, "timeout": timeout}

    def arg(name: str, default: Any = None) -> Any:
        return body.get(name, default)

    def only(*names: str) -> None:
        unknown = sorted(set(body) - set(names))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)} for {command}"
                             + (f"; give {', '.join(names)}" if names else ""))

    if command == "rate_limit":
        only("project", "rate", "burst")
        burst = arg("burst")
        return client.rate_limit(arg("project"), parse_rate(arg("rate")), None if burst is None else float(burst), **kw)
    if command == "time_limit":
        only("project", "seconds", "soft")
        return client.time_limit(arg("project"), arg("seconds"), arg("soft"), **kw)
    if command in ("pause", "resume"):
        only("project")
        return getattr(client, command)(arg("project"), **kw)
    if command == "revoke":
        only("taskids", "project", "terminate")
        taskids = arg("taskids", [])
        if not isinstance(taskids, list):
            raise ValueError("taskids is a list of task ids")
        return client.revoke(taskids, arg("project"), terminate=bool(arg("terminate", False)), **kw)
    return client.call(command, body or None, **kw)


def routes() -> list[tuple[str, type]]:
    return [(r"/api/control/([A-Za-z_-]+)", ControlHandler)]


__all__ = ["ControlHandler", "routes"]
