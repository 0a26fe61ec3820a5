"""Project scripts: compile them, cache them by md5, and run one task of a project.

:func:`load_project` turns a script (or a Handler class) into a :class:`Project`; it raises
ScriptError with the compiler's message when the script is broken. :class:`ProjectManager`
keeps the projects of one processor: it loads a project from projectdb on its first task,
polls ``changed_since`` every ``check_interval`` seconds and recompiles a script only when
its md5 changed. A broken script is kept as a Project with ``error`` set, so its tasks fail
with that error while every other project runs on. Scripts run with the builtins of
:mod:`.pyspider_compat`, so pyspider scripts' ``from pyspider.libs.base_handler import *``
works in them, and only in them.
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import logging
import os
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ScriptError
from ..message import Task
from ..settings import Settings
from .capture import Capture, script_logger
from .handler import BaseHandler
from .pyspider_compat import script_builtins
from .response import Response
from .timelimit import PROTECTED_FILES, TimeLimit, TimeLimitExceeded

logger = logging.getLogger(__name__)

PROTECTED_FILES.add(__file__)  # Project.run's clean-up must not be interrupted by the time limit
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECK_INTERVAL = Settings().project_check_interval


@dataclass(slots=True)
class TaskRun:
    """What running one task's callback produced (before it becomes messages)."""

    results: list[Any] = field(default_factory=list)
    follows: list[Task] = field(default_factory=list)
    messages: list[Task] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    exception: str | None = None
    save: dict[str, Any] = field(default_factory=dict)


class Project:
    """One loaded project: its script's md5, a Handler instance, or the error that broke it."""

    def __init__(self, name: str, md5: str, handler: BaseHandler | None = None, *, error: str | None = None,
                 script: str | None = None, module: types.ModuleType | None = None, updatetime: float = 0.0):
        self.name = name
        self.md5 = md5
        self.handler = handler
        self.error = error
        self.script = script
        self.module = module
        self.updatetime = updatetime
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"error={self.error.splitlines()[0]!r}" if self.error else type(self.handler).__name__
        return f"<Project {self.name} {self.md5[:8]} {state}>"

    @property
    def ok(self) -> bool:
        return self.error is None

    def run(self, task: Task, response: Response, *, time_limit: float | None = None,
            capture_stdout: bool = True, now: float | None = None, soft_time_limit: float | None = None) -> TaskRun:
        """Run *task*'s callback on *response*; exceptions and logs are captured, never raised.

        At *soft_time_limit* seconds (when below *time_limit*) SoftTimeLimitExceeded is raised
        in the callback once: caught, the callback goes on and its results count; not caught,
        the task fails with it.
        """
        if self.error is not None:
            return TaskRun(exception=f"ScriptError: {self.error}")
        handler = self.handler
        with self._lock:
            handler._reset(task, response, time.time() if now is None else now)
            capture = Capture(capture_stdout)
            limit = TimeLimit(time_limit, soft_time_limit)
            exception = None
            try:
                with capture:
                    try:
                        with limit:
                            handler._run_task(task, response)
                    except TimeLimitExceeded as exc:
                        exception = format_exception(exc, limit_hint=time_limit)
                    except (Exception, SystemExit) as exc:  # sys.exit() in a script ends the task only
                        exception = format_exception(exc)
                        if limit.expired:  # it caught the time limit, then raised something else
                            exception += "\n\n" + format_exception(TimeLimitExceeded(), limit_hint=time_limit)
                    if exception is not None:
                        capture.add(f"[E {task.project}:{task.taskid}] {exception.rstrip()}")
                    if limit.expired:
                        _note_dropped(task, handler, capture)
                save = handler.save if isinstance(handler.save, dict) else {}
                if limit.expired:  # what a stopped callback produced may be cut short anywhere: none of it is kept
                    return TaskRun(logs=capture.lines(), exception=exception, save=save)
                return TaskRun(handler._results, handler._follows, handler._messages, capture.lines(),
                               exception, save)
            finally:
                handler._reset()


def _note_dropped(task: Task, handler: BaseHandler, capture: Capture) -> None:
    """Log what a callback over its time limit produced and loses (even if it caught TimeLimitExceeded)."""
    counts = ((len(handler._results), "result"), (len(handler._follows), "follow-up request"),
              (len(handler._messages), "message"))
    dropped = [f"{n} {what}{'s' if n > 1 else ''}" for n, what in counts if n]
    if dropped:
        capture.add(f"[W {task.project}:{task.taskid}] the time limit was exceeded: dropped the callback's "
                    f"{', '.join(dropped)}")


def format_exception(exc: BaseException, limit_hint: float | None = None) -> str:
    """The traceback of *exc* from the first frame of user code; just the message if there is none."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    if isinstance(exc, TimeLimitExceeded) and not str(exc):
        exc = TimeLimitExceeded(f"the callback ran past the process time limit of {limit_hint or 0:g} s")
        exc.__traceback__ = tb
    if tb is None:  # raised by spiderflow itself (HTTPError, a missing callback): the message says it all
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")
    cls = type(exc)
    if cls.__module__.startswith("spiderflow."):  # "spiderflow.processor.x.Error: ..." → "Error: ..."
        head, qualified, tail = text.rpartition(f"{cls.__module__}.{cls.__qualname__}")
        if qualified:
            text = head + cls.__qualname__ + tail
    return text


def script_md5(script: str) -> str:
    return hashlib.md5(script.encode("utf-8")).hexdigest()


def load_project(name: str, script: str | type[BaseHandler], *, env: dict[str, Any] | None = None,
                 time_limit: float | None = None, updatetime: float = 0.0) -> Project:
    """Compile *script* (source text, or a Handler class) into a Project; raise ScriptError if broken.

    *time_limit* bounds the script's top-level code and the Handler's construction.
    """
    if isinstance(script, type):
        if not issubclass(script, BaseHandler):
            raise ScriptError(f"project {name}: {script.__name__} is not a subclass of BaseHandler")
        md5 = script_md5(f"{script.__module__}.{script.__qualname__}:{id(script)}")
        return Project(name, md5, _instantiate(name, script, env, time_limit), updatetime=updatetime)
    if not isinstance(script, str):
        raise ScriptError(f"project {name}: a script must be text, not {type(script).__name__}")
    filename = f"<project {name}>"
    md5 = script_md5(script)
    try:
        code = compile(script, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
        raise ScriptError(f"project {name}: the script does not compile:\n{detail}") from None
    linecache.cache[filename] = (len(script), None, script.splitlines(True), filename)
    module = types.ModuleType(f"spiderflow_project_{name.replace('-', '_')}")
    module.__file__ = filename
    module.__builtins__ = script_builtins()  # pyspider's imports resolve in the script only
    module.logger = module.logging = script_logger(name)  # pyspider gave scripts both names
    try:
        with TimeLimit(time_limit):
            exec(code, module.__dict__)
    except (Exception, TimeLimitExceeded) as exc:
        raise ScriptError(f"project {name}: the script failed to load:\n{format_exception(exc, time_limit)}") from None
    handler_class = _find_handler(name, module)
    return Project(name, md5, _instantiate(name, handler_class, env, time_limit), script=script,
                   module=module, updatetime=updatetime)


def _find_handler(name: str, module: types.ModuleType) -> type[BaseHandler]:
    candidate = module.__dict__.get("Handler")
    if inspect.isclass(candidate) and issubclass(candidate, BaseHandler) and candidate is not BaseHandler:
        return candidate
    found = [obj for obj in module.__dict__.values()
             if inspect.isclass(obj) and issubclass(obj, BaseHandler) and obj is not BaseHandler
             and obj.__module__ == module.__name__]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ScriptError(f"project {name}: the script defines no class Handler(BaseHandler)")
    raise ScriptError(f"project {name}: the script defines several BaseHandler classes "
                      f"({', '.join(sorted(c.__name__ for c in found))}); name the one to run Handler")


def _instantiate(name: str, cls: type[BaseHandler], env: dict[str, Any] | None,
                 time_limit: float | None) -> BaseHandler:
    try:
        with TimeLimit(time_limit):
            handler = cls()
    except (Exception, TimeLimitExceeded) as exc:
        raise ScriptError(f"project {name}: {cls.__name__}() failed:\n{format_exception(exc, time_limit)}") from None
    handler._bind(name, script_logger(name), env)
    handler._reset()
    return handler


class ProjectManager:
    """The projects of one processor, loaded on demand from projectdb and cached by md5.

    Without a projectdb, projects come only from :meth:`add` (the debugger, ``one``, tests).
    """

    def __init__(self, projectdb: Any = None, *, env: dict[str, Any] | None = None,
                 check_interval: float = DEFAULT_CHECK_INTERVAL, clock: Callable[[], float] = time.time,
                 time_limit: float | None = None):
        self.projectdb = projectdb
        self.env = env
        self.check_interval = check_interval
        self.clock = clock
        self.time_limit = time_limit
        self._projects: dict[str, Project] = {}
        self._added: set[str] = set()
        self._missing: dict[str, float] = {}
        self._last_check: float | None = None
        self._watermark = 0.0

    def __contains__(self, name: str) -> bool:
        return name in self._projects

    def add(self, name: str, script: str | type[BaseHandler], updatetime: float = 0.0) -> Project:
        """Load *name* from *script* (text or Handler class); a broken script is kept with its error."""
        project = self._compile(name, script, updatetime)
        self._added.add(name)
        self._projects[name] = project
        return project

    def get(self, name: str) -> Project | None:
        """The project *name* (maybe broken: check ``.error``), or None if there is no such project."""
        if self.projectdb is not None:
            now = self.clock()
            if self._last_check is None or now - self._last_check >= self.check_interval:
                self.refresh(now)
        project = self._projects.get(name)
        if project is not None or self.projectdb is None or name in self._added:
            return project
        missing_since = self._missing.get(name)
        if missing_since is not None and self.clock() - missing_since < self.check_interval:
            return None
        row = self.projectdb.get(name, ["name", "script", "updatetime"])
        if row is None:
            self._missing[name] = self.clock()
            return None
        self._missing.pop(name, None)
        project = self._projects[name] = self._compile(name, row["script"], row["updatetime"])
        return project

    def refresh(self, now: float | None = None) -> None:
        """Reload every cached project whose script changed in projectdb since the last check."""
        self._last_check = self.clock() if now is None else now
        try:
            rows = self.projectdb.changed_since(self._watermark, ["name", "updatetime"])
        except Exception:
            logger.exception("processor: cannot check projectdb for script changes")
            return
        for row in rows:
            self._watermark = max(self._watermark, row["updatetime"])
            name = row["name"]
            self._missing.pop(name, None)
            cached = self._projects.get(name)
            if cached is None or name in self._added or cached.updatetime == row["updatetime"]:
                continue
            try:
                full = self.projectdb.get(name, ["name", "script", "updatetime"])
            except Exception:
                logger.exception("processor: cannot reload project %s", name)
                continue
            if full is None:
                self._projects.pop(name, None)
            elif script_md5(full["script"]) == cached.md5:
                cached.updatetime = full["updatetime"]  # status or rate changed, not the script
            else:
                self._projects[name] = self._compile(name, full["script"], full["updatetime"])

    def _compile(self, name: str, script: str | type[BaseHandler], updatetime: float) -> Project:
        try:
            project = load_project(name, script, env=self.env, time_limit=self.time_limit, updatetime=updatetime)
        except ScriptError as exc:
            md5 = script_md5(script) if isinstance(script, str) else ""
            logger.error("project %s is broken; its tasks fail until the script is fixed: %s", name, exc)
            return Project(name, md5, error=str(exc), script=script if isinstance(script, str) else None,
                           updatetime=updatetime)
        logger.info("project %s loaded (script md5 %s)", name, project.md5)
        return project

    def projects(self) -> dict[str, Project]:
        """The loaded projects by name."""
        return dict(self._projects)

    def errors(self) -> dict[str, str]:
        """{project: error} for every loaded project whose script is broken."""
        return {name: p.error for name, p in self._projects.items() if p.error is not None}


__all__ = ["DEFAULT_CHECK_INTERVAL", "Project", "ProjectManager", "TaskRun", "format_exception", "load_project"]
