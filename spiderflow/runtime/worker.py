"""The process around a serving command, as Celery's ``celery worker`` has it: node name
(``-n/--hostname``), log file, pid file, running as a daemon, and restarting in place on SIGHUP.

Every serving command (``scheduler``, ``fetcher``, ``processor``, ``result-worker``, ``all``,
``standalone``, ``webui``) runs its body through :func:`serve`
(:func:`spiderflow.cli.options.worker_options` is the click side), in this order:

1. ``--detach``: a double fork and ``setsid``; stdin, stdout and stderr on ``/dev/null``, the
   working directory kept, the umask kept (but never letting group or others write). This
   happens before any thread, queue connection or database is opened. The command's own
   process waits (at most :data:`READY_WAIT` seconds) until the daemon says it runs, or why it
   failed, prints one line with its pid and log file and exits 0 (1 if it failed).
2. ``--logfile``: the root logger's one handler becomes that file (appended; it and its
   directory created owner-only; reopened when log rotation moves it), same format and filter
   as stderr.
3. ``--pidfile``: this process's pid, written atomically (owner-only), removed at exit;
   refused when the file names a running spiderflow process, replaced (and logged) when the
   process it names has gone.
4. SIGHUP (from then on, in the main process): a warm stop, as SIGTERM gives, then
   ``os.execv`` of the same interpreter and arguments: the same pid, the pid file kept, no
   ``--detach`` again (the defaults it chose are given as ``--logfile``/``--pidfile``).

Expansion (:func:`expand_hostname`, :func:`expand_path`): in ``-n`` ``%h`` is the host name,
``%n`` its part before the first dot, ``%d`` the part after it; in ``--logfile`` and
``--pidfile`` ``%p`` is the node name, ``%n`` its part before ``@``, ``%h`` its part after
``@`` (without ``@``, the host name), ``%d`` the domain of that host, ``%i`` the process index
(0: the command's process; under ``all`` 1, 2, ... for its components, see
:func:`pool_process`) and ``%I`` the same as ``''``, ``-1``, ``-2``, ...; ``%%`` is ``%``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..exceptions import ConfigError, SpiderflowError
from ..files import create_private_file, make_private_dirs, open_private
from ..nodes import process_alive
from .signals import StartupInterrupted, _interrupt_startup

logger = logging.getLogger(__name__)

#: seconds the command's process waits for its daemon to say it runs (then it says it still starts)
READY_WAIT = 60.0
_CODE = re.compile(r"%(.)", re.S)

#: this process as a serving command: set by :func:`serve` (see :func:`serving`)
_state: dict[str, Any] = {"pid": None, "command": None, "node_name": None, "logfile": None,
                          "ready_fd": None, "restart": False, "reexec_args": []}


# -- expansion -----------------------------------------------------------------------------------

def _expand(pattern: str, keys: dict[str, str], what: str) -> str:
    def one(match: re.Match) -> str:
        code = match.group(1)
        if code == "%":
            return "%"
        if code not in keys:
            known = " ".join(f"%{k}" for k in keys)
            raise ConfigError(f"{what} {pattern!r}: unknown %{code}; known: {known} and %% (a %)")
        return keys[code]
    if _CODE.sub("", pattern).endswith("%"):
        raise ConfigError(f"{what} {pattern!r} ends with a lone %; write %% for a %")
    return _CODE.sub(one, pattern)


def host_keys(host: str | None = None) -> dict[str, str]:
    """``%h``, ``%n``, ``%d`` of *host* (this machine's name, ``socket.gethostname()``, by default)."""
    host = host or socket.gethostname()
    name, _, domain = host.partition(".")
    return {"h": host, "n": name, "d": domain}


def expand_hostname(pattern: str, host: str | None = None) -> str:
    """The node name of ``-n/--hostname`` *pattern*: ``%h`` the host name (``socket.gethostname()``),
    ``%n`` its part before the first dot, ``%d`` the part after it, ``%%`` a ``%``."""
    name = _expand(pattern, host_keys(host), "-n/--hostname").strip()
    if not name:
        raise ConfigError(f"-n/--hostname {pattern!r} gives an empty node name")
    return name


def index_keys(index: int) -> dict[str, str]:
    """``%i`` and ``%I`` of process *index* (0: the command's process)."""
    return {"i": str(index), "I": f"-{index}" if index else ""}


def expand_path(pattern: str, node_name: str, index: int = 0, host: str | None = None) -> str:
    """The path of ``--logfile``/``--pidfile`` *pattern* for process *index* of node *node_name*:
    ``%p`` the node name, ``%n`` its part before ``@``, ``%h`` its part after ``@`` (else the host
    name), ``%d`` the domain of that host, ``%i`` the index, ``%I`` ``''`` for 0 else ``-index``."""
    short, at, rest = node_name.partition("@")
    keys = host_keys(rest if at and rest else host)
    keys.update(n=short, p=node_name, **index_keys(index))
    return _expand(pattern, keys, "--logfile/--pidfile")


def per_process(pattern: str | None) -> bool:
    """Whether *pattern* names a file per process (it has ``%i`` or ``%I``)."""
    return bool(pattern) and any(m.group(1) in "iI" for m in _CODE.finditer(pattern))


def escape(path: str) -> str:
    """*path* as a pattern that expands to itself."""
    return path.replace("%", "%%")


# -- the log file --------------------------------------------------------------------------------

class LogFile(logging.handlers.WatchedFileHandler):
    """A log file: appended, created owner-only with its directories, reopened when it is moved."""

    def __init__(self, path: str):
        super().__init__(os.path.abspath(path), mode="a", encoding="utf-8")

    def _open(self):
        make_private_dirs(os.path.dirname(self.baseFilename))
        create_private_file(self.baseFilename)
        fd = open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def retarget(self, path: str) -> None:
        """Write to *path* from now on (a component of ``all`` with a file of its own)."""
        with self.lock:
            if self.stream is not None:
                self.stream.close()
            self.baseFilename = os.path.abspath(path)
            self.stream = self._open()
            self._statstream()


def log_file() -> LogFile | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h, LogFile)), None)


# -- the pid file --------------------------------------------------------------------------------

def read_pid(path: str) -> int | None:
    """The pid in pid file *path* (None: no file, or no pid in it)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(64).strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def spiderflow_process(pid: int) -> bool:
    """Whether *pid* is a running spiderflow process (where ``/proc`` cannot tell: whether it runs)."""
    if not process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"spiderflow" in fh.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")   # gone meanwhile; or no /proc at all
    except OSError:
        return True


class Pidfile:
    """Pid file *path* of this process (see the module docstring)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def acquire(self) -> Pidfile:
        pid = os.getpid()
        make_private_dirs(os.path.dirname(self.path))
        tmp = f"{self.path}.{pid}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = open_private(tmp, os.O_WRONLY | os.O_EXCL)
        try:
            os.write(fd, f"{pid}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            self._place(tmp, pid)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pid = pid
        return self

    def _place(self, tmp: str, pid: int) -> None:
        try:
            os.link(tmp, self.path)      # atomic, and only if there is no pid file yet
            return
        except FileExistsError:
            pass
        except OSError:                  # no hard links here: check, then replace
            if not os.path.lexists(self.path):
                os.replace(tmp, self.path)
                return
        other = read_pid(self.path)
        if other == pid:
            logger.info("pid file %s names this process (restarted in place)", self.path)
        elif other is not None and spiderflow_process(other):
            raise ConfigError(f"pid file {self.path} names pid {other}, a running spiderflow process: "
                              f"stop it (kill {other}) or give another --pidfile")
        else:
            logger.warning("pid file %s named %s; replacing it", self.path,
                           f"pid {other}, which is not a running spiderflow process" if other else "no pid")
        os.replace(tmp, self.path)
        now = read_pid(self.path)
        if now != pid:   # another process replaced the stale file at the same time, after us
            raise ConfigError(f"pid file {self.path} was taken by pid {now} while this process started")

    def release(self) -> None:
        """Remove the pid file if it still names this process."""
        if self.pid is not None and self.pid == os.getpid() and read_pid(self.path) == self.pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.pid = None


# -- the daemon ----------------------------------------------------------------------------------

def _tell(**message: Any) -> None:
    """Tell the command's process, waiting in :func:`_detach`, how the daemon is doing."""
    fd = _state["ready_fd"]
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())
    if "started" not in message:     # the last word
        _state["ready_fd"] = None
        with contextlib.suppress(OSError):
            os.close(fd)


def _await_daemon(fd: int, what: str, logfile: str, pidfile: str) -> int:
    """In the command's process: wait for the daemon's word, say it, return the exit status."""
    deadline = time.monotonic() + READY_WAIT
    buffer, pid, last = b"", None, None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not readable:
                continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                pid = message.get("started", pid)
                last = message
        if last is not None and "started" not in last:
            break
    where = f"logging to {logfile}, pid file {pidfile}"
    if last is not None and "error" in last:
        see = f" (see {logfile})" if os.path.exists(logfile) else ""
        print(f"Error: {last['error']}{see}", file=sys.stderr)
        return 1
    if last is not None and ("ready" in last or "restarting" in last):
        print(f"{what}: running in the background as pid {last.get('ready') or pid}; {where}")
        return 0
    if pid is not None and time.monotonic() >= deadline:
        print(f"{what}: started in the background as pid {pid}, still starting after {READY_WAIT:g} s; {where}")
        return 0
    print(f"Error: {what}: the daemon{f' (pid {pid})' if pid else ''} ended during start-up; see {logfile}",
          file=sys.stderr)
    return 1


def _detach(what: str, logfile: str, pidfile: str) -> None:
    """Become a daemon (see the module docstring); returns in the daemon only."""
    if threading.active_count() > 1:    # a fork copies only this thread: whatever the others hold is lost
        logger.warning("%s: detaching with %d threads running", what, threading.active_count())
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        try:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)
            code = _await_daemon(read_end, what, logfile, pidfile)
        finally:
            os.close(read_end)
        raise SystemExit(code)
    os.close(read_end)
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
    except BaseException:
        os._exit(1)
    umask = os.umask(0o077)
    os.umask(umask | 0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    _state["ready_fd"] = write_end


def ready() -> None:
    """The command runs (its stop signals are installed): the waiting command's process may exit."""
    if _state["pid"] == os.getpid():
        _tell(ready=os.getpid())


# -- SIGHUP: restart in place ----------------------------------------------------------------------

def restarts_here() -> bool:
    """Whether SIGHUP restarts this process (the main process of a serving command)."""
    return _state["pid"] is not None and _state["pid"] == os.getpid()


def request_restart() -> None:
    """SIGHUP: after the warm stop it starts, :func:`serve` re-executes the process."""
    if not _state["restart"]:
        _state["restart"] = True
        logger.info("%s: SIGHUP received, restarting in place", _state["command"])


def _hup_during_startup(signum: int, frame: Any) -> None:
    request_restart()
    _interrupt_startup(signum, frame)


def reexec_argv() -> list[str]:
    """The interpreter, its options and the program of this process, then its arguments without
    ``--detach`` (which :func:`serve` replaced with the ``--logfile``/``--pidfile`` it chose)."""
    args = list(sys.argv[1:])
    orig = list(getattr(sys, "orig_argv", []))
    if len(orig) > len(args) and orig[len(orig) - len(args):] == args:
        prefix = orig[1:len(orig) - len(args)]
    else:
        prefix = ["-m", "spiderflow.cli"]
    if "--detach" in args:
        at = args.index("--detach")
        args = args[:at] + _state["reexec_args"] + [a for a in args[at + 1:] if a != "--detach"]
    return [sys.executable, *prefix, *args]


def _reexec() -> None:
    argv = reexec_argv()
    logger.info("%s: restarting in place (pid %d): %s", _state["command"], os.getpid(), " ".join(argv[1:]))
    _tell(restarting=os.getpid())
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os.execv(sys.executable, argv)


# -- the components of `all` -------------------------------------------------------------------

def pool_process(index: int, target: Callable[..., None], *args: Any) -> None:
    """The body of process *index* (1, 2, ...) of ``all``: its own log file when ``--logfile``
    has ``%i``/``%I``; SIGHUP ignored (the supervisor restarts everything); then *target*."""
    with contextlib.suppress(ValueError):      # not the main thread: nothing to set
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, _state["ready_fd"] = _state["ready_fd"], None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    pattern = _state["logfile"]
    handler = log_file()
    if per_process(pattern) and handler is not None:
        handler.retarget(expand_path(pattern, _state["node_name"], index))
    target(*args)


# -- the whole --------------------------------------------------------------------------------

def serving() -> bool:
    """Whether this process already runs a serving command (``standalone`` runs ``all``'s)."""
    return _state["pid"] == os.getpid()


def default_paths(command: str, data_dir: str) -> tuple[str, str]:
    """``--detach``'s log file and pid file: ``DATA_DIR/logs/COMMAND.log``, ``DATA_DIR/COMMAND.pid``."""
    data_dir = os.path.abspath(data_dir)
    return os.path.join(data_dir, "logs", f"{command}.log"), os.path.join(data_dir, f"{command}.pid")


def serve(command: str, body: Callable[[], int | None], *, node_name: str, data_dir: str,
          logfile: str | None = None, pidfile: str | None = None, detach: bool = False,
          use_logfile: Callable[[str], None] | None = None) -> int:
    """Run *body* as the serving command *command* of node *node_name* (see the module docstring).

    *body* returns the command's exit status (0 or None: a clean exit). *use_logfile(path)*
    makes *path* the log's one handler (:func:`spiderflow.cli.setup_logging`). Returns the
    status; raises what *body* raises. After a SIGHUP's warm stop it does not return: the
    process re-executes itself.
    """
    what = f"spiderflow {command}"
    reexec_args: list[str] = []
    if detach:
        default_log, default_pid = default_paths(command, data_dir)
        if logfile is None:
            logfile = escape(default_log)
            reexec_args += ["--logfile", logfile]
        if pidfile is None:
            pidfile = escape(default_pid)
            reexec_args += ["--pidfile", pidfile]
    logfile = os.path.abspath(logfile) if logfile else None
    pidfile = os.path.abspath(pidfile) if pidfile else None
    log_path = expand_path(logfile, node_name) if logfile else None
    pid_path = expand_path(pidfile, node_name) if pidfile else None
    if detach:
        _detach(what, log_path, pid_path)      # from here on, in the daemon
    _state.update(pid=os.getpid(), command=command, node_name=node_name, logfile=logfile, restart=False,
                  reexec_args=reexec_args)
    pid = None
    restarting = False
    try:
        if log_path is not None and use_logfile is not None:
            with _naming("--logfile", log_path):
                use_logfile(log_path)
        logger.info("%s: starting (pid %d%s)", what, os.getpid(), f", pid file {pid_path}" if pid_path else "")
        if pid_path is not None:
            with _naming("--pidfile", pid_path):
                pid = Pidfile(pid_path).acquire()
        _tell(started=os.getpid())          # a daemon: its log file and pid file are in place
        signal.signal(signal.SIGHUP, _hup_during_startup)
        code = body()
        if code not in (0, None):
            _failed(what, f"exited with status {code}", log_path)
        restarting = code in (0, None) and _state["restart"]
    except StartupInterrupted as exc:
        if not (_state["restart"] and exc.signum == signal.SIGHUP):
            _failed(what, f"stopped by {exc.signal_name} during start-up", log_path)
            raise
        code, restarting = 0, True
    except SystemExit as exc:       # a stop during a component's start-up ends in SystemExit(0)
        if exc.code not in (0, None):
            _failed(what, f"exited with status {exc.code}", log_path)
            raise
        if not _state["restart"]:
            raise
        code, restarting = 0, True
    except BaseException as exc:
        _failed(what, exc, log_path)
        raise
    finally:
        if not restarting:
            _tell(error=f"{what} ended during start-up")
            if pid is not None:
                pid.release()
    if restarting:
        try:
            _reexec()
        except OSError as exc:
            logger.error("%s: cannot restart in place: %s", what, exc)
            if pid is not None:
                pid.release()
            return 1
    return code


@contextlib.contextmanager
def _naming(option: str, path: str) -> Iterator[None]:
    """An OSError opening *path* as a ConfigError naming *option* (one line, no traceback)."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror or exc}") from None


def _failed(what: str, failure: BaseException | str, log_path: str | None) -> None:
    """A failure of the command: the daemon's parent hears of it, the log file gets it."""
    exc = failure if isinstance(failure, BaseException) else None
    if exc is None:
        text = str(failure)
    elif hasattr(exc, "format_message"):            # click's errors (spiderflow's errors end up as those)
        text = exc.format_message()
    elif isinstance(exc, SpiderflowError):           # the pid file's (serve's own, outside click's)
        text = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    else:
        text = f"{type(exc).__name__}: {exc}"
    _tell(error=text)
    if log_path is None or log_file() is None:
        return              # the log is stderr: click or Python print it there
    if isinstance(exc, Exception) and not isinstance(exc, SpiderflowError) and not hasattr(exc, "format_message"):
        logger.exception("%s failed", what)
    else:
        logger.error("%s: %s", what, text)


__all__ = ["LogFile", "Pidfile", "READY_WAIT", "default_paths", "escape", "expand_hostname", "expand_path",
           "host_keys", "index_keys", "per_process", "pool_process", "read_pid", "ready", "reexec_argv",
           "request_restart", "restarts_here", "serve", "serving", "spiderflow_process"]
