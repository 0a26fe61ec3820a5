"""The remote-control commands: their table, the wire format, and the client that broadcasts them.

A command is a JSON object of at most :data:`MAX_COMMAND` bytes::

    {"v": 1, "id": "<32 hex>", "command": "ping", "arguments": {}, "destination": null | [names],
     "reply_to": "<where replies go>", "sent_at": <unix time>, "ttl": <seconds>, "sig": "<hex>"?}

Every node of the cluster receives it (:mod:`.bus`); each answers with a reply object of at
most :data:`MAX_REPLY` bytes, ``{"v": 1, "id": ..., "node": name, "node_id": ..., "kind": ...,
"reply": {...}}``, where the reply is Celery's: ``{"ok": ...}`` or ``{"error": ...}`` for a
control command, the data itself for an inspect command. A node that a command without
``destination`` does not concern (a command for other kinds of node) answers
``{"skip": true}``, so the client knows it heard (and can stop waiting once every receiver
answered); the client leaves those out. A node not named in ``destination`` says nothing.
A command no node knows is answered ``{"error": "unknown command ..."}``.

:data:`COMMANDS` says, for each command, whether it changes things, which kinds of node act
on it and its arguments; :func:`check_arguments` checks them (a bad argument is an error
reply, never an exception in the node). With ``scheduler_token`` set, the client signs every
command (HMAC-SHA256 of the command without ``sig``) and a node that has the token refuses
a command that is unsigned, badly signed, or older than :data:`MAX_AGE`; without it the bus
trusts the queue backend's credentials, as Celery does: whoever can publish on the queue
backend (or, for ``spiderflow all``, open the owner-only socket) can send commands.

:class:`ControlClient` sends a command and collects the replies until ``timeout`` (or until
every node in ``destination`` answered, or every node the backend says received it):
``{node_name: reply}``. The commands that change the cluster's state (rate-limit,
time-limit, pause, resume, revoke) store the change in the shared database first, so it
holds for nodes started later and survives restarts; the broadcast makes the nodes apply it
at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError
from ..message import ProjectStatus, validate_project_name
from .state import MAX_REVOKES, Revoke, connect_controldb, revokes_for

VERSION = 1
MAX_COMMAND = 4 * 1024 * 1024     # a revoke of MAX_REVOKES ids fits
MAX_REPLY = 1024 * 1024
MAX_NAME = 255
MAX_DESTINATIONS = 1000
MAX_TIMEOUT = 300.0
#: a signed command older than this (or this far in the future) is refused: a replayed one
MAX_AGE = 300.0
#: a node's list answers (active, reserved, revoked, registered) stop at this many entries
MAX_ITEMS = 1000

ALL_KINDS = frozenset({"scheduler", "fetcher", "processor", "result-worker", "webui"})


class BadMessage(ValueError):
    """A message that is not a command or reply of this protocol (the reason is the text)."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One command: its kind (``control`` or ``inspect``), whether it changes things, the kinds
    of node that act on it, its arguments (name -> checker) and its help line."""

    name: str
    type: str
    mutating: bool
    kinds: frozenset[str]
    args: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    help: str = ""


def _project(value: Any) -> str:
    return validate_project_name(value)


def _number(low: float, high: float, low_open: bool = False):
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"not a number: {value!r}")
        if (value <= low if low_open else value < low) or value > high:
            raise ValueError(f"{value!r} is not {'above' if low_open else 'from'} {low:g} to {high:g}")
        return float(value)
    return check


def _count(low: int, high: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{value!r} is not a whole number from {low} to {high}")
        return value
    return check


def _revokes(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > MAX_REVOKES:
        raise ValueError(f"revokes is a list of 1-{MAX_REVOKES} entries")
    return [Revoke.from_dict(v).to_dict() for v in value]


def _soft(value: Any) -> None:
    if value is not None:
        raise ValueError("the soft time limit is not changed at run time: start the processors with "
                         "--soft-time-limit (process_soft_time_limit)")


RATE = _number(0.0, 1e6)
NODE = frozenset({"fetcher", "processor"})
COMMANDS: dict[str, Spec] = {s.name: s for s in (
    Spec("ping", "control", False, ALL_KINDS, help="Every live node answers pong, with its kind, pid, host and uptime."),
    Spec("shutdown", "control", True, ALL_KINDS, help="Warm shutdown: finish the work in hand, then exit."),
    Spec("rate_limit", "control", True, frozenset({"scheduler"}),
         {"project": _project, "rate": RATE, "burst": RATE}, ("project", "rate"),
         help="A project's rate (tasks/s) and burst, applied by the scheduler at once."),
    Spec("time_limit", "control", True, frozenset({"processor"}),
         {"project": _project, "seconds": _number(0.0, 86400.0, low_open=True), "soft": _soft}, ("project",),
         help="The time limit of a project's callbacks (None: back to the script's and the default)."),
    Spec("pause", "control", True, frozenset({"scheduler"}), {"project": _project}, ("project",),
         help="Set a project STOP: nothing more of it is dispatched."),
    Spec("resume", "control", True, frozenset({"scheduler"}), {"project": _project}, ("project",),
         help="Set a project RUNNING again."),
    Spec("revoke", "control", True, frozenset({"scheduler", "fetcher", "processor"}),
         {"revokes": _revokes}, ("revokes",),
         help="Tasks never fetched or processed; with terminate, one in flight is aborted."),
    Spec("pool_grow", "control", True, NODE, {"n": _count(1, 100_000)}, help="More concurrent fetches."),
    Spec("pool_shrink", "control", True, NODE, {"n": _count(1, 100_000)}, help="Fewer concurrent fetches."),
    Spec("autoscale", "control", True, NODE, {"max": _count(1, 100_000), "min": _count(1, 100_000)},
         ("max", "min"), help="Fetch slots between MIN and MAX, grown while the queue has work."),
    Spec("active", "inspect", False, NODE, help="Tasks in flight on each fetcher and processor."),
    Spec("reserved", "inspect", False, NODE, help="Tasks taken from a queue and not started."),
    Spec("stats", "inspect", False, ALL_KINDS, help="Counters, pool, pid, rusage, RSS and uptime."),
    Spec("registered", "inspect", False, frozenset({"scheduler", "processor"}),
         help="Projects loaded, with their script version."),
    Spec("revoked", "inspect", False, frozenset({"scheduler", "fetcher", "processor"}),
         help="The revokes in force."),
    Spec("conf", "inspect", False, ALL_KINDS, help="The node's settings (secrets hidden)."),
)}


def check_arguments(spec: Spec, arguments: Any) -> dict[str, Any]:
    """*arguments* checked against *spec*; ValueError names the first that is wrong."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ValueError("arguments is an object")
    unknown = sorted(set(arguments) - set(spec.args))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)} of {spec.name}"
                         + (f"; known: {', '.join(spec.args)}" if spec.args else ""))
    out: dict[str, Any] = {}
    for name, check in spec.args.items():
        if arguments.get(name) is None:
            if name in spec.required:
                raise ValueError(f"{spec.name} needs the argument {name}")
            continue
        try:
            out[name] = check(arguments[name])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"argument {name} of {spec.name}: {exc}") from None
    return out


# -- the wire ------------------------------------------------------------------------------------------

def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("ascii")


def _signature(message: dict[str, Any], token: str) -> str:
    body = {k: v for k, v in message.items() if k != "sig"}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=True)
    return hmac.new(token.encode("utf-8"), text.encode("ascii"), hashlib.sha256).hexdigest()


def make_command(command: str, arguments: dict[str, Any] | None = None, destination: Iterable[str] | None = None,
                 timeout: float = 1.0, token: str | None = None, reply_to: str = "") -> dict[str, Any]:
    """A command ready to send; ConfigError for an unknown command or bad arguments."""
    spec = COMMANDS.get(command)
    if spec is None:
        raise ConfigError(f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}")
    try:
        arguments = check_arguments(spec, arguments)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    names = None if destination is None else sorted(set(destination))
    if names is not None:
        if not names or len(names) > MAX_DESTINATIONS or not all(_name_ok(n) for n in names):
            raise ConfigError(f"a destination is 1-{MAX_DESTINATIONS} node names of 1-{MAX_NAME} printable "
                              "characters")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"the timeout is above 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout!r}")
    message = {"v": VERSION, "id": uuid.uuid4().hex, "command": command, "arguments": arguments,
               "destination": names, "reply_to": reply_to, "sent_at": time.time(), "ttl": float(timeout)}
    if token:
        message["sig"] = _signature(message, token)
    return message


def resign(message: dict[str, Any], token: str | None) -> dict[str, Any]:
    """*message* signed again (after the transport set ``reply_to``)."""
    if token:
        message["sig"] = _signature(message, token)
    return message


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable()


_ID = re.compile(r"[0-9a-f]{32}\Z")


def decode_command(data: bytes, token: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The command in *data*, its envelope checked (BadMessage says why not). The command name
    and its arguments are checked by the node, which answers an error for them."""
    if len(data) > MAX_COMMAND:
        raise BadMessage(f"a command of {len(data)} bytes (at most {MAX_COMMAND})")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise BadMessage("not a command of this protocol version")
    if not isinstance(message.get("id"), str) or not _ID.match(message["id"]):
        raise BadMessage("a command without a valid id")
    if not isinstance(message.get("command"), str) or len(message["command"]) > 64:
        raise BadMessage("a command without a name")
    if not isinstance(message.get("reply_to"), str) or len(message["reply_to"]) > 512:
        raise BadMessage("a command without reply_to")
    destination = message.get("destination")
    if destination is not None and (not isinstance(destination, list) or len(destination) > MAX_DESTINATIONS
                                    or not all(_name_ok(n) for n in destination)):
        raise BadMessage("a bad destination")
    for key in ("sent_at", "ttl"):
        value = message.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadMessage(f"a command without {key}")
    if token:
        sig = message.get("sig")
        if not isinstance(sig, str) or not hmac.compare_digest(sig, _signature(message, token)):
            raise BadMessage("a command not signed with this cluster's scheduler_token")
        now = time.time() if now is None else now
        if abs(now - message["sent_at"]) > MAX_AGE:
            raise BadMessage(f"a signed command sent {now - message['sent_at']:.0f} s ago (a replay?)")
    return message


def make_reply(command: dict[str, Any], node: dict[str, Any], reply: Any = None, *, skip: bool = False) -> bytes:
    """The reply of *node* (``name``, ``id``, ``kind``) to *command*, at most MAX_REPLY bytes."""
    message: dict[str, Any] = {"v": VERSION, "id": command["id"], "node": node["name"], "node_id": node["id"],
                               "kind": node["kind"]}
    if skip:
        message["skip"] = True
    else:
        message["reply"] = reply
    try:
        data = encode(message)
    except (TypeError, ValueError) as exc:
        message["reply"] = {"error": f"the reply could not be encoded: {exc}"}
        data = encode(message)
    if len(data) > MAX_REPLY:
        message["reply"] = {"error": f"the reply of {len(data)} bytes is over {MAX_REPLY}; ask fewer nodes or "
                                     "less (e.g. inspect active per node)"}
        data = encode(message)
    return data


def decode_reply(data: bytes, command_id: str) -> dict[str, Any] | None:
    """The reply in *data* to the command *command_id*, or None (another command's, or not a reply)."""
    if len(data) > MAX_REPLY + 1024:
        return None
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or message.get("id") != command_id or not _name_ok(message.get("node")):
        return None
    return message


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def error(value: Any) -> dict[str, Any]:
    return {"error": value}


# -- the client ------------------------------------------------------------------------------------------

def parse_rate(text: str | float) -> float:
    """Tasks per second from ``5``, ``5/s``, ``200/m`` or ``1000/h`` (Celery's rate syntax); ValueError if not."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, per = float(text), 1.0
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([smh]))?\s*", str(text))
        if not match:
            raise ValueError(f"a rate is N, N/s, N/m or N/h, not {text!r}")
        value, per = float(match.group(1)), {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    rate = value / per
    if not math.isfinite(rate) or not 0 <= rate <= 1e6:
        raise ValueError(f"a rate is from 0 to 1e6 tasks per second, not {text!r}")
    return rate


class ControlClient:
    """Sends commands to the nodes of the cluster of *settings* and collects their replies.

    *bus* is a :mod:`.bus` client (default: the one the settings name). The commands that
    store what they change use *projectdb* and *controldb* when given (the caller's, left
    open), else open the settings' projectdb database for the call.
    """

    def __init__(self, settings: Any, bus: Any = None, *, projectdb: Any = None, controldb: Any = None):
        from .bus import connect_client
        self.settings = settings
        self.projectdb = projectdb
        self.controldb = controldb
        self.bus = bus if bus is not None else connect_client(settings)

    def close(self) -> None:
        self.bus.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, command: str, arguments: dict[str, Any] | None = None, destination: Iterable[str] | None = None,
             timeout: float = 1.0) -> dict[str, Any]:
        """Broadcast *command* and return ``{node_name: reply}`` of the nodes that answered within
        *timeout* seconds (sooner once every node of *destination*, or every node the backend
        counted as a receiver, answered). Nodes the command does not concern are left out."""
        destination = None if destination is None else list(destination)
        token = self.settings.scheduler_token
        message = make_command(command, arguments, destination, timeout)
        message["reply_to"] = self.bus.reply_address(message["id"])
        resign(message, token)
        wanted = set(destination) if destination else None
        replies: dict[str, Any] = {}
        heard: set[str] = set()        # the names and ids of the nodes that answered
        answered = [0]

        def enough(received: int | None) -> bool:
            if wanted is not None and wanted <= heard:
                return True
            return received is not None and answered[0] >= received

        for reply in self.bus.call(message, timeout, enough):
            answered[0] += 1
            heard.add(reply["node"])
            if isinstance(reply.get("node_id"), str):
                heard.add(reply["node_id"])
            if reply.get("skip"):
                continue
            name = reply["node"]
            if name in replies:     # two nodes of one name: keep both, Celery warns
                name = f"{name} ({reply.get('node_id')})"
            replies[name] = reply.get("reply")
        return replies

    # -- commands that store what they change ------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self, given: Any, connect: Any) -> Iterator[Any]:
        if given is not None:
            yield given
            return
        db = connect(self.settings.db_url("projectdb"))
        try:
            yield db
        finally:
            db.close()

    def _update_project(self, project: str, **fields: Any) -> dict[str, Any]:
        from ..storage import connect_projectdb
        validate_project_name(project)
        with self._db(self.projectdb, connect_projectdb) as db:
            if not db.update(project, **fields):
                raise ConfigError(f"no project named {project!r}; see `spiderflow project list`")
            return db.get(project, ["name", "status", "rate", "burst"])

    def rate_limit(self, project: str, rate: float, burst: float | None = None, *,
                   destination: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        fields = {"rate": RATE(rate)}
        if burst is not None:
            fields["burst"] = RATE(burst)
        row = self._update_project(project, **fields)
        return self.call("rate_limit", {"project": project, "rate": row["rate"], "burst": row["burst"]},
                         destination, timeout)

    def time_limit(self, project: str, seconds: float | None, soft: float | None = None, *,
                   destination: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        try:
            _soft(soft)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        validate_project_name(project)
        with self._db(self.controldb, connect_controldb) as db:
            db.set_time_limit(project, seconds)
        arguments = {"project": project} if seconds is None else {"project": project, "seconds": seconds}
        return self.call("time_limit", arguments, destination, timeout)

    def pause(self, project: str, *, destination: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        self._update_project(project, status=ProjectStatus.STOP)
        return self.call("pause", {"project": project}, destination, timeout)

    def resume(self, project: str, *, destination: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        self._update_project(project, status=ProjectStatus.RUNNING)
        return self.call("resume", {"project": project}, destination, timeout)

    def revoke(self, taskids: Iterable[str], project: str | None = None, *, terminate: bool = False,
               destination: Iterable[str] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        try:
            entries = revokes_for(taskids, project, terminate=terminate, expires=self.settings.revoke_expires)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        with self._db(self.controldb, connect_controldb) as db:
            db.add_revokes(entries)
        return self.call("revoke", {"revokes": [e.to_dict() for e in entries]}, destination, timeout)


__all__ = ["COMMANDS", "MAX_COMMAND", "MAX_REPLY", "BadMessage", "ControlClient", "Spec", "check_arguments",
           "decode_command", "decode_reply", "encode", "error", "make_command", "make_reply", "ok", "parse_rate"]
