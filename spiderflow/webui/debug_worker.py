"""Debug runs in a separate, killable process with a time and a memory limit.

The web UI never runs a user's script itself: it holds the database credentials. Each Run
goes to a worker process of its own (this module, started with ``sys.executable``) that
gets only what the run needs on stdin — the script, the task and the fetch and process
settings named in :data:`~.debug.WORKER_SETTINGS` — in an environment stripped to a few
variables (no ``SPIDERFLOW_*``), and no open file but its pipes. It caps its address space
(``RLIMIT_AS``: ``debug_memory_limit`` bytes) before it reads the script, calls
:func:`~.debug.run_debug`, and writes the report as JSON on its stdout (what the script
prints goes to stderr). The web UI waits for it without blocking its event loop and kills
its process group (SIGKILL) once ``debug_time_limit`` seconds have passed; the report then
says which limit was hit. One worker is started ahead, so a Run does not wait for Python
to import spiderflow; at most :data:`MAX_RUNS` runs go at a time, the others wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import threading
from typing import Any

from ..message import Task, pack, packb_value, unpack, unpackb_value
from ..settings import Settings
from .debug import WORKER_SETTINGS, new_report, run_debug

logger = logging.getLogger(__name__)

MAX_RUNS = 2
#: Bytes of report a worker may send (a page is cut to 2 MB; this leaves room for its links).
REPORT_LIMIT = 64 * 1024 * 1024
#: Bytes of a worker's stderr kept for the report of a run that failed.
STDERR_TAIL = 8 * 1024
#: A worker's own exit statuses: out of memory outside the callback, past its time limit.
EXIT_MEMORY, EXIT_TIME = 3, 4
#: Seconds to read what is left in the pipes once a worker has exited.
DRAIN = 1.0
#: Seconds past the time limit after which a worker ends itself (if the web UI is gone).
GRACE = 5.0
#: The environment variables a worker keeps (and ``LC_*``).
ENV_KEEP = frozenset((
    "PATH", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
))
#: The worker's command line: ``-c`` without the current directory on sys.path, plus the
#: directory this spiderflow was imported from, so the worker runs the same code.
_BOOT = ("import sys\nif sys.path[:1] == ['']: del sys.path[0]\nroot = sys.argv[1]\n"
         "if root not in sys.path: sys.path.insert(0, root)\n"
         "from spiderflow.webui.debug_worker import main; sys.exit(main(sys.argv[2:]))")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
    env["MALLOC_ARENA_MAX"] = "2"     # threads' malloc arenas would eat the address space
    return env


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker's process group: the worker and anything its script started."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.returncode is None:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed worker (and its pipes) to be done with, for a little while."""
    try:
        await asyncio.wait_for(proc.wait(), DRAIN)
    except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
        logger.warning("web UI: a process started by debug worker %d still holds its pipes", proc.pid)


class _Output:
    def __init__(self) -> None:
        self.report = bytearray()
        self.stderr = bytearray()
        self.too_large = False


async def _read_report(stream: asyncio.StreamReader, out: _Output, proc: asyncio.subprocess.Process) -> None:
    while chunk := await stream.read(65536):
        if not out.too_large:
            out.report += chunk
            if len(out.report) > REPORT_LIMIT:
                out.too_large = True
                out.report.clear()
                _kill(proc)


async def _read_tail(stream: asyncio.StreamReader, out: _Output) -> None:
    while chunk := await stream.read(65536):
        out.stderr += chunk
        del out.stderr[:-STDERR_TAIL]


async def _talk(proc: asyncio.subprocess.Process, request: bytes, out: _Output) -> None:
    """Send the request; read the report to its end (the worker has exited then) and stderr.

    ``proc.wait()`` would also wait for every copy of the pipes, which a process that the
    script started may hold: the exit status is awaited alone, then the group is killed.
    """
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(_read_tail(proc.stderr, out))
    try:
        try:
            proc.stdin.write(request)
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):   # it died; its exit status says why
            pass
        await _read_report(proc.stdout, out, proc)
        for _ in range(int(DRAIN / 0.01)):
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        _kill(proc)
        await asyncio.wait([stderr], timeout=DRAIN)
    finally:
        stderr.cancel()


class Debugger:
    """Runs debug tasks in worker processes; one per web UI. ``close()`` kills its workers."""

    def __init__(self, settings: Settings, *, time_limit: float | None = None, memory_limit: int | None = None,
                 max_runs: int = MAX_RUNS):
        if time_limit is None:
            time_limit = settings.debug_time_limit
        if memory_limit is None:
            memory_limit = settings.debug_memory_limit
        self.time_limit = float(time_limit)
        self.memory_limit = int(memory_limit)      # 0: none
        self.max_runs = max_runs
        self.settings = {name: getattr(settings, name) for name in WORKER_SETTINGS}
        self._slots: asyncio.Semaphore | None = None
        self._spare: tuple[asyncio.subprocess.Process, int] | None = None
        self._workers: set[asyncio.subprocess.Process] = set()
        self._closed = False

    def close(self) -> None:
        """Kill the workers (from any thread; :meth:`aclose` on the loop also waits for them)."""
        self._closed = True
        self._spare = None
        for proc in list(self._workers):
            _kill(proc)

    async def aclose(self) -> None:
        self.close()
        for proc in list(self._workers):
            await _reap(proc)
            self._workers.discard(proc)

    async def run(self, name: str, script: str, task: Task) -> dict[str, Any]:
        """Fetch and process *task* with *script* in a worker; a report for the debugger's tabs."""
        request = packb_value({"project": name, "script": script, "task": pack(task), "settings": self.settings,
                               "time_limit": self.time_limit})
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_runs)
        async with self._slots:
            proc = await self._worker()
            try:
                return await self._exchange(proc, request, task)
            finally:
                _kill(proc)          # its script's children too
                await _reap(proc)
                self._workers.discard(proc)

    async def _worker(self) -> asyncio.subprocess.Process:
        """The spare worker, or a new one; and a new spare for the next run."""
        spare, self._spare = self._spare, None
        if spare is not None and (spare[0].returncode is not None or spare[1] != self.memory_limit):
            _kill(spare[0])          # it died, or the limit changed since it started
            await _reap(spare[0])
            self._workers.discard(spare[0])
            spare = None
        proc = spare[0] if spare else await self._spawn()
        if not self._closed:
            self._spare = (await self._spawn(), self.memory_limit)
        return proc

    async def _spawn(self) -> asyncio.subprocess.Process:
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BOOT, _ROOT, str(self.memory_limit), stdin=pipe, stdout=pipe, stderr=pipe,
            env=worker_env(), start_new_session=True)
        self._workers.add(proc)
        return proc

    async def _exchange(self, proc: asyncio.subprocess.Process, request: bytes, task: Task) -> dict[str, Any]:
        out = _Output()
        try:
            await asyncio.wait_for(_talk(proc, request, out), self.time_limit)
        except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
            _kill(proc)
            logger.warning("web UI: debug run of %s killed after %g s", task.project, self.time_limit)
            return self._failed(task, self._time_message(), "time", out)
        code = proc.returncode
        if code is None:
            code = -getattr(signal, "SIGKILL", 9)     # it did not end once its report was closed: killed
        if out.too_large:
            return self._failed(task, f"the debug run's report exceeded {REPORT_LIMIT // 2**20} MiB and its "
                                      "process was killed", None, out)
        try:
            report = json.loads(out.report) if out.report else None
        except ValueError:
            report = None
        if isinstance(report, dict):
            return report
        if code == 0:
            return self._failed(task, "the debug worker ended without a report", None, out)
        if code == EXIT_MEMORY or (code > 0 and b"MemoryError" in out.stderr):
            return self._failed(task, self._memory_message(), "memory", out)
        if code == EXIT_TIME or code == -getattr(signal, "SIGXCPU", 0):
            return self._failed(task, self._time_message(), "time", out)
        if code < 0:
            try:
                how = signal.Signals(-code).name
            except ValueError:
                how = f"signal {-code}"
            return self._failed(task, f"the debug worker was killed by {how}; it may have run out of memory "
                                      f"({self._memory_message()}?)", "memory", out)
        return self._failed(task, f"the debug worker failed (exit status {code})", None, out)

    def _time_message(self) -> str:
        return (f"the debug run exceeded its time limit of {self.time_limit:g} s (debug_time_limit); "
                "its process was killed")

    def _memory_message(self) -> str:
        return memory_message(self.memory_limit)

    @staticmethod
    def _failed(task: Task, message: str, limit: str | None, out: _Output) -> dict[str, Any]:
        report = new_report(task)
        report["exception"] = message
        report["limit"] = limit
        tail = out.stderr.decode("utf-8", "replace").strip()
        if tail:
            report["logs"] = ["[the worker's stderr]", *tail.splitlines()]
            report["exception"] += "; its stderr is in the logs"
        return report


def memory_message(limit: int) -> str:
    return f"the debug run exceeded its memory limit of {limit / 2**20:g} MiB (debug_memory_limit)"


# -- the worker process ----------------------------------------------------------------------

def _limit_memory(limit: int) -> None:
    if limit <= 0:
        return
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as exc:   # not on this platform
        print(f"debug worker: no memory limit here: {exc}", file=sys.stderr)


def _limit_time(seconds: float) -> None:
    """Backstops for a web UI that is gone: a CPU-time limit and a wall-clock timer."""
    timer = threading.Timer(seconds + GRACE, os._exit, (EXIT_TIME,))
    timer.daemon = True
    timer.start()
    try:
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds + GRACE)
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        if hard == resource.RLIM_INFINITY:
            hard = soft + 1          # SIGXCPU at soft, SIGKILL at hard
        if hard > soft:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):
        pass


def _note_memory(report: dict[str, Any], limit: int) -> None:
    exception = report.get("exception") or ""
    if limit > 0 and exception.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError"):
        report["exception"] = f"{exception.rstrip()}\n\n{memory_message(limit)}"
        report["limit"] = "memory"


def main(argv: list[str]) -> int:
    """The worker: ``<memory limit>`` as argument, a request on stdin, the report on stdout."""
    memory_limit = int(argv[0]) if argv else 0
    _limit_memory(memory_limit)
    report_fd = os.dup(1)
    os.dup2(2, 1)                # print() and C code writing to fd 1 cannot corrupt the report
    sys.stdout.reconfigure(line_buffering=True)       # what it printed survives a crash
    data = sys.stdin.buffer.read()
    if not data:                 # the web UI went away before asking anything
        return 0
    try:
        request = unpackb_value(data)
        _limit_time(float(request["time_limit"]))
        report = run_debug(request["project"], request["script"], unpack(request["task"]),
                           Settings(**request["settings"]))
        _note_memory(report, memory_limit)
        body = json.dumps(report, ensure_ascii=False, default=str).encode("utf-8")
    except MemoryError:
        sys.stderr.write("MemoryError\n")
        sys.stderr.flush()
        os._exit(EXIT_MEMORY)
    with os.fdopen(report_fd, "wb") as out:
        out.write(body)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)              # no atexit handlers or finalizers of the script


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
