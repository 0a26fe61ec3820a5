"""Distributed-mode fixtures: component processes, shared queues and databases, cleanup.

* :class:`ProcessGroup` starts commands with :class:`subprocess.Popen`, each in a session of
  its own with its output in a log file; it stops them with SIGTERM, then SIGKILL after a
  bounded wait. The ``procs`` fixture stops every process it started, also when the test
  fails, and a failed test's report gets the tail of every process's log.
* :class:`Backend` is a queue URL plus a database URL on the local services: redis gets a
  key prefix of its own in DB 15 (deleted afterwards). An amqp backend gets a vhost of its
  own from ``rabbitmqctl`` (deleted afterwards) where that works; elsewhere it uses the URL's
  vhost with the default queue prefix and deletes the five ``spiderflow.<queue>`` queues
  before and after, and must not run while another crawl uses that vhost and prefix.
* :class:`Cluster` runs ``spiderflow scheduler|fetcher|processor|result-worker`` as separate
  processes on one Backend, stores a project with ``spiderflow project add`` and starts it
  with ``spiderflow project run``; it reads resultdb and taskdb to see how far the crawl got.
  The PostgreSQL or MySQL database is this test run's own (see ``tests/conftest.py``) but
  shared by every test of the run, so a cluster uses a project of its own and deletes that
  project's rows (and its processes' node rows) afterwards.

``tests/integration/distributed_rate.py`` uses the same classes outside pytest.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
from conftest import require_service

REPO = Path(__file__).resolve().parents[2]
SPIDERFLOW = [sys.executable, "-m", "spiderflow.cli"]
QUEUE_NAMES = ("newtask_queue", "status_queue", "scheduler2fetcher", "fetcher2processor", "processor2result")
#: backend id -> (queue service, database service); the tests use the first two
BACKENDS = {"redis-postgresql": ("redis", "postgresql"), "amqp-mysql": ("amqp", "mysql"),
            "redis-mysql": ("redis", "mysql"), "amqp-postgresql": ("amqp", "postgresql")}


# -- processes -------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    started: float
    how: str = ""           # how it ended: "exited", "SIGTERM", "SIGKILL after SIGTERM", "killed (SIGKILL)"


class ProcessGroup:
    """Commands run as separate processes (each the leader of its own session), logs in *log_dir*."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.history: list[Proc] = []          # every process ever started, in order
        self.current: dict[str, Proc] = {}     # the latest process of each name

    def start(self, name: str, args: list[str]) -> Proc:
        """Start *args* as process *name* (a name may be reused once its process has ended)."""
        old = self.current.get(name)
        if old is not None and old.popen.poll() is None:
            raise RuntimeError(f"process {name} (pid {old.popen.pid}) is still running")
        runs = sum(1 for p in self.history if p.name == name)
        log = self.log_dir / (f"{name}.log" if not runs else f"{name}.{runs + 1}.log")
        with open(log, "wb") as fh:
            popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=str(self.log_dir), env=self.env, start_new_session=True)
        proc = Proc(name, popen, log, time.monotonic())
        self.history.append(proc)
        self.current[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.current[name].popen.pid

    def pids(self) -> set[int]:
        return {p.popen.pid for p in self.history}

    def alive(self, name: str) -> bool:
        proc = self.current.get(name)
        return proc is not None and proc.popen.poll() is None

    def running(self) -> list[str]:
        return [name for name in self.current if self.alive(name)]

    @staticmethod
    def _signal(proc: Proc, sig: int) -> None:
        if proc.popen.poll() is None:   # never signal a reaped pid: it may belong to someone else now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 10.0) -> int | None:
        """Send *sig* to process *name*'s group and wait up to *wait* s; its return code (None: alive)."""
        proc = self.current[name]
        self._signal(proc, sig)
        try:
            rc = proc.popen.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        proc.how = f"killed ({signal.Signals(sig).name})"
        return rc

    def stop(self, names: list[str] | None = None, timeout: float = 20.0) -> dict[str, int]:
        """Warm stop: SIGTERM, wait up to *timeout* s, then SIGKILL. Returns {name: return code}.

        A process that needed the SIGKILL reports the return code -9.
        """
        procs = [self.current[n] for n in names] if names is not None else list(self.current.values())
        for proc in procs:
            if proc.popen.poll() is None:
                proc.how = "SIGTERM"
                self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.how = f"SIGKILL after {timeout:g} s of SIGTERM"
                self._signal(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(10)
            if not proc.how:
                proc.how = "exited"
        return {p.name: p.popen.returncode for p in procs}

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every process ever started (restarted ones included); never raises."""
        alive = [p for p in self.history if p.popen.poll() is None]
        for proc in alive:
            proc.how = proc.how or "SIGTERM"
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in alive:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.how = f"SIGKILL after {timeout:g} s of SIGTERM"
                self._signal(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(10)

    def tail(self, proc: Proc, lines: int = 30) -> str:
        try:
            with open(proc.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 200 * lines))
                text = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def report(self, lines: int = 30) -> str:
        """The tail of every process's log, with how it ended."""
        parts = []
        for proc in self.history:
            rc = proc.popen.poll()
            state = "running" if rc is None else f"exit code {rc}"
            parts.append(f"===== {proc.name} (pid {proc.popen.pid}, {state}, {proc.how or 'not stopped'}) "
                         f"{proc.log} =====\n{self.tail(proc, lines)}")
        return "\n".join(parts)

    def grep(self, text: str) -> dict[str, int]:
        """How many log lines of each process contain *text*."""
        out: dict[str, int] = collections.Counter()
        for proc in self.history:
            with contextlib.suppress(OSError), open(proc.log, encoding="utf-8", errors="replace") as fh:
                out[proc.name] += sum(1 for line in fh if text in line)
        return dict(out)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A ProcessGroup logging to *tmp_path*/logs; every process is stopped afterwards."""
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report gets the tail of the logs of every process it started."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        group = getattr(item, "funcargs", {}).get("procs")
        if isinstance(group, ProcessGroup) and group.history:
            report.sections.append(("spiderflow process logs (tails)", group.report()))


# -- services ------------------------------------------------------------------------------

@dataclass
class Backend:
    """A queue URL and a database URL on the local services, isolated as the module docstring says."""

    name: str
    queue_base: str
    db: str
    tag: str = field(default_factory=lambda: f"sftest-{uuid.uuid4().hex[:10]}")
    vhost: str | None = None     # amqp: the vhost of our own, when rabbitmqctl could make one

    @property
    def scheme(self) -> str:
        return self.queue_base.split("://", 1)[0]

    def queue_url(self, **options: Any) -> str:
        """The queue URL for the components (redis: with this backend's prefix and *options*)."""
        if self.scheme != "redis":
            return self.queue_base
        query = "&".join(f"{k}={v}" for k, v in {"prefix": self.tag, **options}.items())
        return f"{self.queue_base}{'&' if '?' in self.queue_base else '?'}{query}"

    def clean_queues(self) -> None:
        """Delete what the components left in the queue service: redis keys under the prefix;
        the amqp vhost of our own, or else the five pipeline queues of the shared vhost."""
        if self.scheme == "redis":
            import redis
            client = redis.Redis.from_url(self.queue_base.split("?", 1)[0])
            try:
                keys = list(client.scan_iter(match=f"{self.tag}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
        elif self.vhost is not None:
            _rabbitmqctl("delete_vhost", self.vhost)
        else:
            import pika
            conn = pika.BlockingConnection(pika.URLParameters(self.queue_base))
            try:
                ch = conn.channel()
                for name in QUEUE_NAMES:
                    ch.queue_delete(f"spiderflow.{name}")   # the default queue_prefix
            finally:
                conn.close()


def _rabbitmqctl(*args: str) -> bool:
    """Run ``rabbitmqctl ARGS`` (bounded); False if it is missing or fails (e.g. not allowed)."""
    try:
        proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _own_vhost(url: str, vhost: str) -> str | None:
    """*url* on a new vhost *vhost* that the URL's user may use, if rabbitmqctl can make one here."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not shutil.which("rabbitmqctl"):
        return None
    if not _rabbitmqctl("add_vhost", vhost):
        return None
    if not _rabbitmqctl("set_permissions", "-p", vhost, unquote(parts.username or "guest"), ".*", ".*", ".*"):
        _rabbitmqctl("delete_vhost", vhost)
        return None
    return urlunsplit(parts._replace(path="/" + vhost))


def open_backend(name: str) -> Backend:
    """The Backend *name* (see BACKENDS); skips when a service is down.

    amqp:// queue names carry no prefix, so an amqp backend gets a vhost of its own when
    ``rabbitmqctl`` works on this machine (local broker, enough rights); otherwise it uses
    the URL's vhost and deletes the five pipeline queues there before and after, and must
    not share that vhost with another crawl meanwhile.
    """
    queue_kind, db_kind = BACKENDS[name]
    backend = Backend(name, require_service(queue_kind), require_service(db_kind))
    if backend.scheme == "amqp":
        own = _own_vhost(backend.queue_base, backend.tag)
        if own is not None:
            backend.queue_base, backend.vhost = own, backend.tag
        else:
            backend.clean_queues()   # leftovers of an interrupted run would mix with this crawl
    return backend


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """``@pytest.mark.parametrize("backend", [...], indirect=True)`` with ids from BACKENDS."""
    b = open_backend(request.param)
    try:
        yield b
    finally:
        b.clean_queues()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2,
             alive: Callable[[], None] | None = None) -> Any:
    """Poll *check* until it returns something true or *timeout* s pass (AssertionError naming *what*)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


# -- the cluster -----------------------------------------------------------------------------

CRAWL_SCRIPT = '''\
"""Distributed-mode test crawl: every link of every link-farm page, one result per page."""
# rate: {rate}
# burst: {burst}
import time

from spiderflow import BaseHandler

DELAY = {delay!r}   # seconds each page's callback takes (backpressure up the pipeline)


class Handler(BaseHandler):
    def on_start(self):
        self.crawl({start!r}, callback=self.index_page)

    def index_page(self, response):
        if DELAY:
            time.sleep(DELAY)
        links = response.etree.xpath("//a/@href")
        for href in links:
            self.crawl(href, callback=self.index_page)
        return {{"url": response.url, "links": len(links)}}
'''

COMPONENTS = ("scheduler", "fetcher", "processor", "result-worker")
#: a crawl with no ACTIVE task and no new result for this long is over, complete or not
STUCK_AFTER = 10.0


class Cluster:
    """Spiderflow components as separate processes on one Backend, and the crawl's state in the databases."""

    def __init__(self, procs: ProcessGroup, backend: Backend, data_dir: Path, *,
                 settings: dict[str, Any] | None = None, queue_options: dict[str, Any] | None = None):
        self.procs = procs
        self.backend = backend
        self.queue = backend.queue_url(**(queue_options or {}))
        self.db = backend.db
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.data_dir / "spiderflow.json"
        self.config.write_text(json.dumps({"heartbeat_interval": 2, "log_level": "INFO", **(settings or {})}))
        self.projects: list[str] = []
        self._dbs: dict[str, Any] = {}

    # -- commands ---------------------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        return [*SPIDERFLOW, "--data-dir", str(self.data_dir), "-c", str(self.config), *args]

    def cli(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a short ``spiderflow`` command to its end (bounded by *timeout*)."""
        proc = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.data_dir), env=self.procs.env, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"spiderflow {' '.join(args[:2])} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def component_args(self, kind: str) -> list[str]:
        args = [kind, "--queue", self.queue]
        if kind == "fetcher":
            args += ["--projectdb", self.db]
        else:
            args += ["--taskdb", self.db, "--projectdb", self.db, "--resultdb", self.db]
        if kind == "scheduler":
            args += ["--scheduler-port", str(self.port)]
        return self.command(*args)

    def start(self, kind: str, index: int = 1) -> str:
        """Start one component process; its name in the group is ``kind-index``."""
        name = f"{kind}-{index}"
        self.procs.start(name, self.component_args(kind))
        return name

    def start_all(self, fetchers: int = 2, processors: int = 2, result_workers: int = 1) -> list[str]:
        names = [self.start("scheduler")]
        for kind, count in (("fetcher", fetchers), ("processor", processors), ("result-worker", result_workers)):
            names += [self.start(kind, i) for i in range(1, count + 1)]
        return names

    def check_alive(self) -> None:
        """Fail at once (with the logs in the report) if a component process has died."""
        dead = [n for n in self.procs.current if not self.procs.alive(n) and not self.procs.current[n].how]
        if dead:
            raise AssertionError(f"component process(es) died: {', '.join(dead)}")

    # -- projects ----------------------------------------------------------------------------------
    def add_project(self, name: str, start_url: str, rate: float = 1000, burst: float = 1000,
                    delay: float = 0.0) -> None:
        """Store the link-farm crawl from *start_url* as RUNNING project *name* (``project add``);
        each page's callback takes *delay* seconds more."""
        script = self.data_dir / f"{name}.py"
        script.write_text(CRAWL_SCRIPT.format(start=start_url, rate=rate, burst=burst, delay=delay))
        self.projects.append(name)
        self.cli("project", "add", str(script), "--name", name, "--status", "RUNNING", "--projectdb", self.db)

    def run_project(self, name: str, timeout: float = 30.0) -> None:
        """``project run NAME`` through the scheduler's control interface, once it answers."""
        last: list[subprocess.CompletedProcess] = []

        def attempt() -> bool:
            self.check_alive()
            proc = self.cli("project", "run", name, "--scheduler-port", str(self.port), timeout=20, check=False)
            last[:] = [proc]
            return proc.returncode == 0

        try:
            wait_for(attempt, timeout, f"`spiderflow project run {name}` to succeed", interval=0.3)
        except AssertionError as exc:
            out = last[0] if last else None
            raise AssertionError(f"{exc}: {out.stdout if out else ''}{out.stderr if out else ''}") from None

    def nodes(self, include_offline: bool = True) -> list[dict[str, Any]]:
        """``spiderflow nodes --json`` on this cluster's projectdb, only this group's processes."""
        args = ["nodes", "--projectdb", self.db, "--json"] + (["--all"] if include_offline else [])
        rows = json.loads(self.cli(*args, timeout=30).stdout)
        host, pids = socket.gethostname(), self.procs.pids()
        return [r for r in rows if r["host"] == host and r["pid"] in pids]

    # -- the crawl's state ---------------------------------------------------------------------------
    def db_of(self, role: str) -> Any:
        if role not in self._dbs:
            from spiderflow import storage
            self._dbs[role] = getattr(storage, f"connect_{role}")(self.db)
        return self._dbs[role]

    def result_count(self, project: str) -> int:
        return self.db_of("resultdb").count(project)

    def active_count(self, project: str) -> int:
        from spiderflow.message import TaskStatus
        return self.db_of("taskdb").status_count(project)[TaskStatus.ACTIVE]

    def status_count(self, project: str) -> dict[str, int]:
        return {str(k.value if hasattr(k, "value") else k): v
                for k, v in self.db_of("taskdb").status_count(project).items()}

    def results(self, project: str) -> list[dict[str, Any]]:
        return list(self.db_of("resultdb").select(project))

    def wait_results(self, project: str, at_least: int, timeout: float) -> int:
        return wait_for(lambda: (n := self.result_count(project)) >= at_least and n, timeout,
                        f"{at_least} results of {project}", interval=0.05, alive=self.check_alive)

    def wait_done(self, project: str, expected: int, timeout: float = 90.0) -> None:
        """Until resultdb holds *expected* results of *project* and taskdb no ACTIVE task of it."""
        stuck = {"results": -1, "since": time.monotonic()}

        def done() -> bool:
            results, active = self.result_count(project), self.active_count(project)
            if results >= expected and active == 0:
                return True
            if active or results != stuck["results"]:
                stuck.update(results=results, since=time.monotonic())
            elif time.monotonic() - stuck["since"] > STUCK_AFTER:
                raise AssertionError(f"the crawl of {project} ended incomplete: no ACTIVE task left and "
                                     f"{results} of {expected} results for {STUCK_AFTER:g} s")
            return False

        try:
            wait_for(done, timeout, f"{expected} results and no ACTIVE task in project {project}",
                     interval=0.2, alive=self.check_alive)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; results {self.result_count(project)}, tasks "
                                 f"{self.status_count(project)}") from None

    # -- cleanup ------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop every process, then delete this cluster's projects' rows and its processes' node rows."""
        self.procs.stop_all()
        try:
            for name in self.projects:
                for role, call in (("taskdb", "drop"), ("resultdb", "drop"), ("projectdb", "drop")):
                    with contextlib.suppress(Exception):
                        getattr(self.db_of(role), call)(name)
            with contextlib.suppress(Exception):
                self._drop_node_rows()
        finally:
            for db in self._dbs.values():
                with contextlib.suppress(Exception):
                    db.close()
            self._dbs.clear()

    def _drop_node_rows(self) -> None:
        import sqlalchemy as sa

        from spiderflow.storage import connect_nodedb
        from spiderflow.storage.nodedb import NODES
        pids = sorted(self.procs.pids())
        if not pids:
            return
        db = connect_nodedb(self.db)
        try:
            with db._write("cleanup") as conn:
                conn.execute(sa.delete(NODES).where(NODES.c.host == socket.gethostname(), NODES.c.pid.in_(pids)))
        finally:
            db.close()


@pytest.fixture
def make_cluster(procs: ProcessGroup, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(backend, settings={...}, queue_options={...})``; cleaned up afterwards."""
    made: list[Cluster] = []

    def make(backend: Backend, **kwargs: Any) -> Cluster:
        cluster = Cluster(procs, backend, tmp_path / f"data{len(made)}", **kwargs)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.cleanup()


def project_name(prefix: str = "itest") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
