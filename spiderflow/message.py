"""Every message that crosses a queue: Task, FetchResult, StatusPack, ResultPack.

Messages are dataclasses with ``to_dict()`` / ``from_dict()``; ``pack()`` and ``unpack()``
turn them into msgpack bytes with a type tag and a schema version (a packed message leaves
out the fields that hold their default, which ``from_dict`` fills back in). This is the only
module that imports msgpack. ``from_dict`` checks field types, so a foreign or corrupt payload
raises :class:`~spiderflow.exceptions.SerializationError` instead of travelling on.

A fetcher→processor message is the tuple ``(Task, FetchResult)``; ``pack`` accepts a tuple
of messages and ``unpack`` gives the tuple back.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import msgpack

from .exceptions import InvalidProjectName, SerializationError

SCHEMA_VERSION = 1

_PROJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_VALID_NAMES: set[str] = set()   # names that passed validate_project_name (bounded)


class TaskStatus(str, enum.Enum):
    ACTIVE = "ACTIVE"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    BAD = "BAD"

    def __str__(self) -> str:
        return self.value


class ProjectStatus(str, enum.Enum):
    TODO = "TODO"
    STOP = "STOP"
    CHECKING = "CHECKING"
    DEBUG = "DEBUG"
    RUNNING = "RUNNING"

    def __str__(self) -> str:
        return self.value

    @property
    def schedulable(self) -> bool:
        """Only DEBUG and RUNNING projects get tasks scheduled."""
        return self in (ProjectStatus.DEBUG, ProjectStatus.RUNNING)


#: Characters a task id may not hold: line breaks and other controls (they would forge log lines).
TASKID_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def validate_project_name(name: object) -> str:
    """Return *name* if it is a valid project name, else raise InvalidProjectName."""
    if type(name) is str and name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or not _PROJECT_NAME.fullmatch(name):
        raise InvalidProjectName(
            f"invalid project name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "not starting with '-'"
        )
    if type(name) is str:
        if len(_VALID_NAMES) >= 4096:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(name)
    return name


def _md5_constructor() -> Callable[[bytes], Any]:
    """CPython's builtin ``_md5.md5`` (cheaper per call than hashlib's OpenSSL one), else ``hashlib.md5``."""
    try:
        from _md5 import md5
    except ImportError:   # a build without the builtin module
        from hashlib import md5
    return md5


_md5 = _md5_constructor()


def md5_taskid(url: str) -> str:
    """The default task id: the md5 hex digest of the URL."""
    return _md5(url.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# field checking

_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_NUM = (int, float, type(None))
_ANY = object


def _check(cls_name: str, name: str, value: Any, types: Any) -> None:
    if types is _ANY:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _flatten(types)):
        raise SerializationError(
            f"{cls_name}.{name} must be {_type_names(types)}, not {type(value).__name__} ({value!r:.80})"
        )


def _flatten(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: Any) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in _flatten(types))


_SLOW: Any = object()   # "not decoded on the fast path": take the checked one
_new = object.__new__


class _Message:
    """Shared to_dict/from_dict for the message dataclasses.

    Each subclass lists ``_types``: field name → accepted types (``_ANY`` for anything
    msgpack can carry). Nested message fields are named in ``_nested``. :func:`_compile`
    gives each class a generated ``to_dict`` and a fast decoder for well-formed input;
    anything it is not sure of goes through the checked decoder, so both accept and reject
    exactly the same data with the same errors.
    """

    __slots__ = ()
    _types: ClassVar[dict[str, Any]] = {}
    _nested: ClassVar[dict[str, type]] = {}
    _required: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self._types:
            value = getattr(self, name)
            if name in self._nested and value is not None:
                value = value.to_dict()
            elif isinstance(value, enum.Enum):
                value = value.value
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any):
        obj = cls._fast_from_dict(data)
        if obj is not _SLOW:
            return obj
        return cls._checked_from_dict(data)

    @staticmethod
    def _fast_from_dict(data: Any) -> Any:
        """Replaced per class by :func:`_compile`: decode a well-formed dict, else return _SLOW."""
        return _SLOW

    @classmethod
    def _checked_from_dict(cls, data: Any):
        """The reference decoder: checks every field and raises the error that names it."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise SerializationError(f"{cls.__name__} must be a dict, not {type(data).__name__}")
        for name in cls._required:
            if data.get(name) is None:
                raise SerializationError(f"{cls.__name__} is missing required field {name!r}")
        kwargs: dict[str, Any] = {}
        types = cls._types
        for name, value in data.items():
            if name not in types:
                continue  # unknown keys from a newer schema are ignored
            if name in cls._nested:
                if value is None:
                    continue
                value = cls._nested[name].from_dict(value)
            else:
                _check(cls.__name__, name, value, types[name])
            kwargs[name] = value
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"bad {cls.__name__}: {exc}") from exc
        obj._post_decode()
        return obj

    def _post_decode(self) -> None:
        """Hook for enum conversion and cross-field checks after from_dict."""


_PLAIN = frozenset((str, int, float, bool, type(None), dict, list, bytes))


def _plain_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _default_source(ns: dict[str, Any], i: int, f: dataclasses.Field) -> str | None:
    """Source of an expression giving a fresh default of field *f* (None: it has none).

    A ``dict`` or ``list`` factory becomes a literal, which is cheaper than calling it.
    """
    if f.default is not dataclasses.MISSING:
        ns[f"_d{i}"] = f.default
        return f"_d{i}"
    if f.default_factory is dict:
        return "{}"
    if f.default_factory is list:
        return "[]"
    if f.default_factory is not dataclasses.MISSING:
        ns[f"_f{i}"] = f.default_factory
        return f"_f{i}()"
    return None


def _compile(cls: type) -> type:
    """Generate ``cls.to_dict``, ``cls._wire`` and ``cls._fast_from_dict`` from its fields (see
    :class:`_Message`), and ``cls._default`` when every field has a default; return *cls*.

    The fast decoder accepts a dict whose every known field has exactly an accepted type
    (``type(v) is T``, no subclasses) and whose required fields are present; it fills the
    missing ones with the dataclass defaults, as ``cls(**kwargs)`` would. On anything else
    it returns ``_SLOW`` and :meth:`_Message.from_dict` runs the checked decoder.

    ``cls._default()`` returns a new instance equal to ``cls()``, with fresh mutable parts,
    built by assigning the defaults to a bare ``object.__new__`` instance (cheaper than the
    dataclass ``__init__``, so a class with a ``__post_init__`` gets none). It is the default
    factory of the nested message fields, so a new or decoded Task gets its default parts this way.
    """
    name = cls.__name__
    ns: dict[str, Any] = {"_SLOW": _SLOW, "_M": _SLOW, "_new": _new, "cls": cls,
                          "_P": _PLAIN, "_plain": _plain_value, "_copysign": math.copysign}
    to_parts: list[str] = []
    wire = ["    out = {}"]
    make = ["    o = _new(cls)"]   # the body of _default, if every field has a default
    body = ["    if type(data) is not dict:", "        return data if isinstance(data, cls) else _SLOW",
            "    get = data.get", "    o = _new(cls)"]
    for i, f in enumerate(dataclasses.fields(cls)):
        fname = f.name
        default = _default_source(ns, i, f)
        if fname in cls._required and (default is not None or cls._types[fname] is _ANY
                                       or type(None) in _flatten(cls._types[fname])):
            # the field's code below returns _SLOW for a required field that is absent or None
            raise TypeError(f"{name}.{fname} is required: it must have no default and not accept None")
        if make and default is not None:
            make.append(f"    o.{fname} = {default}")
        else:
            make = []
        nested = cls._nested.get(fname)
        body.append(f"    v = get({fname!r}, _M)")
        wire.extend(_wire_field(ns, i, f, nested))
        if nested is not None:
            ns[f"_n{i}"] = nested
            to_parts.append(f"{fname!r}: None if (v{i} := self.{fname}) is None else v{i}.to_dict()")
            body.append("    if v is _M or v is None:")
            body.append(f"        o.{fname} = {default}" if default else "        return _SLOW")
            body.append("    elif type(v) is dict:")
            body.append(f"        v = _n{i}._fast_from_dict(v)")
            body.append("        if v is _SLOW:")
            body.append("            return _SLOW")
            body.append(f"        o.{fname} = v")
            body.append(f"    elif isinstance(v, _n{i}):")
            body.append(f"        o.{fname} = v")
            body.append("    else:")
            body.append("        return _SLOW")
            continue
        to_parts.append(f"{fname!r}: v{i} if type(v{i} := self.{fname}) in _P else _plain(v{i})")
        body.append("    if v is _M:")
        body.append(f"        o.{fname} = {default}" if default else "        return _SLOW")
        types = cls._types[fname]
        if types is _ANY:
            body.append("    else:")
        else:
            accepted = _flatten(types)
            ns[f"_t{i}"] = accepted[0] if len(accepted) == 1 else frozenset(accepted)
            body.append(f"    elif type(v) {'is' if len(accepted) == 1 else 'in'} _t{i}:")
        body.append(f"        o.{fname} = v")
        if types is not _ANY:
            body.append("    else:")
            body.append("        return _SLOW")
    if cls._post_decode is not _Message._post_decode:
        body.append("    o._post_decode()")
    body.append("    return o")
    wire.append("    return out")
    source = (f"def to_dict(self):\n    return {{{', '.join(to_parts)}}}\n\n"
              f"def _wire(self):\n" + "\n".join(wire) + "\n\n"
              "def _fast_from_dict(data):\n" + "\n".join(body) + "\n")
    if make and not hasattr(cls, "__post_init__"):
        source += "\ndef _default():\n" + "\n".join(make) + "\n    return o\n"
    exec(compile(source, f"<spiderflow.message {name}>", "exec"), ns)  # noqa: S102 - our own generated source
    ns["to_dict"].__qualname__ = f"{name}.to_dict"
    cls.to_dict = ns["to_dict"]
    cls._wire = ns["_wire"]
    cls._fast_from_dict = staticmethod(ns["_fast_from_dict"])
    if "_default" in ns:
        ns["_default"].__qualname__ = f"{name}._default"
        cls._default = staticmethod(ns["_default"])
    return cls


def _wire_field(ns: dict[str, Any], i: int, f: dataclasses.Field, nested: type | None) -> list[str]:
    """Source lines of ``_wire`` for field *f*: its plain value, left out when it equals the default.

    A left-out field decodes to that same default, so the message is unchanged by the trip;
    float defaults also compare the sign, so ``-0.0`` travels.
    """
    fname = f.name
    if f.default is not dataclasses.MISSING:
        default, has_default = f.default, True
    elif f.default_factory is not dataclasses.MISSING:
        default, has_default = f.default_factory(), True
    else:
        default, has_default = None, False
    if nested is not None:
        if not has_default:
            return [f"    v = self.{fname}", f"    out[{fname!r}] = None if v is None else v._wire()"]
        if default is None:       # e.g. StatusPack.schedule: None unless given; {} means a default Schedule
            return [f"    v = self.{fname}", "    if v is not None:", f"        out[{fname!r}] = v._wire()"]
        return [f"    v = self.{fname}", "    if v is None:", f"        out[{fname!r}] = None", "    else:",
                "        v = v._wire()", "        if v:", f"            out[{fname!r}] = v"]
    lines = [f"    v = self.{fname}"]
    value = "v if type(v) in _P else _plain(v)"
    if not has_default:
        return lines + [f"    out[{fname!r}] = {value}"]
    ns[f"_w{i}"], ns[f"_wt{i}"] = default, type(default)
    if default is None or type(default) is bool:
        same = f"v is _w{i}"     # the only value of its type equal to the default
    elif type(default) is dict and not default:
        same = "type(v) is dict and not v"
    else:
        same = f"type(v) is _wt{i} and v == _w{i}"
        if isinstance(default, float):
            same += f" and _copysign(1.0, v) == _copysign(1.0, _w{i})"
        if default == default:   # the default object itself (not NaN) passes the test above
            same = f"v is _w{i} or {same}"
    return lines + [f"    if not ({same}):", f"        out[{fname!r}] = {value}"]


@_compile
@dataclass(slots=True)
class Schedule(_Message):
    """How and when the scheduler runs a task."""

    priority: int = 0
    retries: int = 3
    retried: int = 0
    exetime: float = 0.0
    age: float = -1
    itag: str | None = None
    force_update: bool = False
    auto_recrawl: bool = False
    cancel: bool = False
    job: str | None = None      # the job running the project when the task was dispatched (spiderflow.jobs)

    _types: ClassVar[dict[str, Any]] = {
        "priority": int, "retries": int, "retried": int, "exetime": _NUM, "age": _NUM,
        "itag": _OPT_STR, "force_update": bool, "auto_recrawl": bool, "cancel": bool, "job": _OPT_STR,
    }


@_compile
@dataclass(slots=True)
class Fetch(_Message):
    """What the fetcher does for a task (the self.crawl fetch options).

    ``None`` means "use the fetcher's default". ``proxy=False`` turns the default proxy off;
    ``etag=True`` / ``last_modified=True`` reuse the values of the previous fetch's track.
    """

    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    data: bytes | str | dict | None = None
    files: dict[str, Any] | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    user_agent: str | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    allow_redirects: bool = True
    max_redirects: int | None = None
    validate_cert: bool = True
    proxy: str | bool | None = None
    etag: str | bool = True
    last_modified: str | bool = True
    use_gzip: bool = True
    robots_txt: bool = False
    fetch_type: str | None = None
    save: Any = None
    js_script: str | None = None          # fetch_type='js': a JS function run in the page
    js_run_at: str = "document-end"       # ... "document-start" or "document-end"
    js_viewport_width: int | None = None
    js_viewport_height: int | None = None
    load_images: bool = False

    _types: ClassVar[dict[str, Any]] = {
        "method": str, "headers": dict, "params": (dict, type(None)),
        "data": (bytes, str, dict, type(None)), "files": (dict, type(None)), "cookies": dict,
        "user_agent": _OPT_STR, "timeout": _OPT_NUM, "connect_timeout": _OPT_NUM,
        "allow_redirects": bool, "max_redirects": (int, type(None)), "validate_cert": bool,
        "proxy": (str, bool, type(None)), "etag": (str, bool), "last_modified": (str, bool),
        "use_gzip": bool, "robots_txt": bool, "fetch_type": _OPT_STR, "save": _ANY,
        "js_script": _OPT_STR, "js_run_at": str, "js_viewport_width": (int, type(None)),
        "js_viewport_height": (int, type(None)), "load_images": bool,
    }


@_compile
@dataclass(slots=True)
class Process(_Message):
    """Which callback handles the fetched page, and how long it may run."""

    callback: str | None = None
    time_limit: float | None = None

    _types: ClassVar[dict[str, Any]] = {"callback": _OPT_STR, "time_limit": _OPT_NUM}


@_compile
@dataclass(slots=True)
class Track(_Message):
    """What the last fetch and process reported (filled by the processor's status pack).

    ``fetch``: ok, status_code, time, error, headers of note (etag, last_modified), encoding.
    ``process``: ok, time, follows, logs (tail), exception (with traceback), result summary.
    """

    fetch: dict[str, Any] = field(default_factory=dict)
    process: dict[str, Any] = field(default_factory=dict)

    _types: ClassVar[dict[str, Any]] = {"fetch": dict, "process": dict}


@_compile
@dataclass(slots=True)
class Task(_Message):
    """One URL of one project, with everything needed to fetch, process and reschedule it."""

    taskid: str
    project: str
    url: str
    status: TaskStatus = TaskStatus.ACTIVE
    schedule: Schedule = field(default_factory=Schedule._default)
    fetch: Fetch = field(default_factory=Fetch._default)
    process: Process = field(default_factory=Process._default)
    track: Track = field(default_factory=Track._default)
    lastcrawltime: float | None = None
    updatetime: float = 0.0

    _types: ClassVar[dict[str, Any]] = {
        "taskid": str, "project": str, "url": str, "status": str,
        "schedule": Schedule, "fetch": Fetch, "process": Process, "track": Track,
        "lastcrawltime": _OPT_NUM, "updatetime": _NUM,
    }
    _nested: ClassVar[dict[str, type]] = {
        "schedule": Schedule, "fetch": Fetch, "process": Process, "track": Track,
    }
    _required: ClassVar[tuple[str, ...]] = ("project", "url")

    @classmethod
    def create(cls, project: str, url: str, taskid: str | None = None, **parts: Any) -> Task:
        """Build a new ACTIVE task; the task id defaults to md5(url)."""
        validate_project_name(project)
        return cls(taskid=taskid or md5_taskid(url), project=project, url=url,
                   updatetime=time.time(), **parts)

    @classmethod
    def follow(cls, taskid: str, project: str, url: str, callback: str | None, updatetime: float) -> Task:
        """``Task(taskid=taskid, project=project, url=url, process=Process(callback=callback),
        updatetime=updatetime)``, built cheaper: the new task of a plain ``self.crawl(url,
        callback=...)``. Like the constructor it checks nothing, and every part is a new object.
        """
        task = _new(cls)
        task.taskid = taskid
        task.project = project
        task.url = url
        task.status = TaskStatus.ACTIVE
        task.schedule = Schedule._default()
        task.fetch = Fetch._default()
        task.process = process = Process._default()
        process.callback = callback
        task.track = Track._default()
        task.lastcrawltime = None
        task.updatetime = updatetime
        return task

    @classmethod
    def from_dict(cls, data: Any) -> Task:
        if isinstance(data, dict) and data.get("taskid") is None and isinstance(data.get("url"), str):
            data = {**data, "taskid": md5_taskid(data["url"])}
        return _Message.from_dict.__func__(cls, data)  # slots=True classes break zero-arg super()

    def _post_decode(self) -> None:
        validate_project_name(self.project)
        status = self.status
        if type(status) is TaskStatus:
            return
        status = _STATUS_OF.get(status) if type(status) is str else None
        if status is not None:
            self.status = status
            return
        try:
            self.status = TaskStatus(self.status)
        except ValueError:
            raise SerializationError(f"Task.status {self.status!r} is not one of "
                                     f"{[s.value for s in TaskStatus]}") from None

    def copy(self) -> Task:
        """A deep copy (nested parts are copied too)."""
        return Task.from_dict(_deepcopy_dict(self.to_dict()))


@_compile
@dataclass(slots=True)
class FetchResult(_Message):
    """What the fetcher got for a task. Failures are status 599 (or the right code) with ``error``."""

    status_code: int
    url: str
    orig_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    cookies: dict[str, str] = field(default_factory=dict)
    time: float = 0.0
    error: str | None = None
    save: Any = None
    truncated: bool = False
    js_script_result: Any = None          # what a js fetch's js_script returned

    _types: ClassVar[dict[str, Any]] = {
        "status_code": int, "url": str, "orig_url": str, "headers": dict, "content": bytes,
        "cookies": dict, "time": _NUM, "error": _OPT_STR, "save": _ANY, "truncated": bool,
        "js_script_result": _ANY,
    }
    _required: ClassVar[tuple[str, ...]] = ("status_code", "url")

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status_code < 400


@_compile
@dataclass(slots=True)
class StatusPack(_Message):
    """Processor → scheduler: how a task went (its identity, its schedule, and ``track``)."""

    taskid: str
    project: str
    url: str
    track: Track = field(default_factory=Track._default)
    schedule: Schedule | None = None

    _types: ClassVar[dict[str, Any]] = {
        "taskid": str, "project": str, "url": str, "track": Track, "schedule": Schedule,
    }
    _nested: ClassVar[dict[str, type]] = {"track": Track, "schedule": Schedule}
    _required: ClassVar[tuple[str, ...]] = ("taskid", "project", "url")

    def _post_decode(self) -> None:
        validate_project_name(self.project)


@_compile
@dataclass(slots=True)
class ResultPack(_Message):
    """Processor → result worker: one result of one task, upserted by (project, taskid)."""

    project: str
    taskid: str
    url: str
    result: Any = None
    updatetime: float = 0.0

    _types: ClassVar[dict[str, Any]] = {
        "project": str, "taskid": str, "url": str, "result": _ANY, "updatetime": _NUM,
    }
    _required: ClassVar[tuple[str, ...]] = ("project", "taskid", "url")

    def _post_decode(self) -> None:
        validate_project_name(self.project)


# ---------------------------------------------------------------------------
# special tasks: scheduler <-> processor conventions
#
# Each is an ordinary Task of the project with a ``data:`` URL (fetched without network)
# and a fixed taskid/callback. The processor answers ``_on_get_info`` with a status pack
# whose ``track.process["save"]`` holds {"min_tick", "retry_delay", "crawl_config"};
# ``_on_cronjob`` carries {"tick": seconds since epoch} in ``fetch.save``;
# ``_on_message`` carries the message in ``fetch.save``.

SPECIAL_TASKS: dict[str, tuple[str, str]] = {
    # taskid: (url, callback)
    "on_start": ("data:,on_start", "on_start"),
    "on_finished": ("data:,on_finished", "on_finished"),
    "_on_get_info": ("data:,_on_get_info", "_on_get_info"),
    "_on_cronjob": ("data:,_on_cronjob", "_on_cronjob"),
    "_on_message": ("data:,_on_message", "_on_message"),
}


def special_task(project: str, taskid: str, *, save: Any = None, priority: int = 0,
                 exetime: float = 0.0, age: float = 0) -> Task:
    """Build one of the :data:`SPECIAL_TASKS` for *project*."""
    url, callback = SPECIAL_TASKS[taskid]
    return Task.create(
        project, url, taskid=taskid,
        schedule=Schedule(priority=priority, exetime=exetime, age=age, force_update=True, retries=0),
        fetch=Fetch(save=save),
        process=Process(callback=callback),
    )


_STATUS_OF: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}


MESSAGE_TYPES: dict[str, type] = {
    "task": Task,
    "fetch_result": FetchResult,
    "status": StatusPack,
    "result": ResultPack,
}
_TAG_OF = {cls: tag for tag, cls in MESSAGE_TYPES.items()}

Message = Task | FetchResult | StatusPack | ResultPack


def _deepcopy_dict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy_dict(v) for v in value]
    return value


def _encode_one(msg: Any) -> list:
    tag = _TAG_OF.get(type(msg))
    if tag is None:
        raise SerializationError(f"cannot pack {type(msg).__name__}: not a spiderflow message")
    return [tag, msg._wire()]


_PACKER_BUFFER = 64 * 1024
_PACKERS: list[msgpack.Packer] = []   # idle packers, see _packb


def _packb(value: Any) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)`` without making a Packer (and its buffer) per call.

    A call pops an idle packer or makes one, and puts it back after a pack that did not
    grow its buffer; ``list.pop`` and ``append`` are atomic, so threads and nested calls
    never share a packer, and the packers kept hold at most ``_PACKER_BUFFER`` bytes each.
    A pack that raises drops its packer. The bytes and errors are those of ``msgpack.packb``.
    """
    try:
        packer = _PACKERS.pop()
    except IndexError:
        packer = msgpack.Packer(use_bin_type=True, buf_size=_PACKER_BUFFER)
    data = packer.pack(value)
    if len(data) <= _PACKER_BUFFER:
        _PACKERS.append(packer)
    return data


def pack(msg: Message | tuple) -> bytes:
    """Serialize a message, or a tuple of messages, to msgpack bytes."""
    if isinstance(msg, tuple):
        body: Any = [_encode_one(m) for m in msg]
        kind = "tuple"
    else:
        body = _encode_one(msg)
        kind = "one"
    try:
        return _packb({"v": SCHEMA_VERSION, "k": kind, "b": body})
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot pack {type(msg).__name__}: {exc}") from exc


def _decode_one(item: Any):
    cls = MESSAGE_TYPES.get(item[0]) if isinstance(item, list) and len(item) == 2 and type(item[0]) is str else None
    if cls is None:
        raise SerializationError(f"not a tagged spiderflow message: {item!r:.80}")
    try:
        obj = cls._fast_from_dict(item[1])    # what from_dict does first, without its calls around it
        return cls.from_dict(item[1]) if obj is _SLOW else obj
    except InvalidProjectName as exc:         # bytes decode to a message or raise SerializationError
        raise SerializationError(str(exc)) from exc


def unpack(data: bytes) -> Message | tuple:
    """Deserialize bytes made by :func:`pack`; raise SerializationError for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"unpack needs bytes, not {type(data).__name__}")
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise SerializationError(f"corrupt message ({len(data)} bytes): {exc or type(exc).__name__}") from exc
    if not isinstance(envelope, dict) or "v" not in envelope or "b" not in envelope:
        raise SerializationError("not a spiderflow message: missing schema version envelope")
    version = envelope["v"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise SerializationError(
            f"message schema version {version!r} is not supported (this spiderflow reads 1..{SCHEMA_VERSION})"
        )
    if envelope.get("k") == "tuple":
        if not isinstance(envelope["b"], list):
            raise SerializationError("corrupt message tuple")
        return tuple(_decode_one(item) for item in envelope["b"])
    return _decode_one(envelope["b"])


def packb_value(value: Any) -> bytes:
    """msgpack an arbitrary plain value (counters, control payloads)."""
    try:
        return _packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot pack value: {exc}") from exc


def unpackb_value(data: bytes) -> Any:
    """Inverse of :func:`packb_value`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise SerializationError(f"corrupt value ({len(data)} bytes): {exc}") from exc


__all__ = [
    "SCHEMA_VERSION", "Fetch", "FetchResult", "MESSAGE_TYPES", "Message", "Process",
    "ProjectStatus", "ResultPack", "SPECIAL_TASKS", "Schedule", "StatusPack", "Task", "TaskStatus", "Track",
    "TASKID_CONTROLS", "md5_taskid", "pack", "packb_value", "special_task", "unpack", "unpackb_value",
    "validate_project_name",
]
