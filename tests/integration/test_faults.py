"""Fault injection: every reachable page has exactly one result after faults that used to lose pages.

* ``spiderflow all`` on sqlite, its whole process group killed with SIGKILL mid-crawl (three
  times), then started again in the same data directory;
* PostgreSQL unreachable mid-crawl (redis queues): every connection through a TCP proxy in
  front of the server is cut and new ones are refused for a while, as when the server stops;
* the Redis broker killed with SIGKILL mid-crawl and started again empty (no persistence).

"Exactly" as in test_distributed: resultdb holds one result per reachable page and no other,
taskdb has no ACTIVE, FAILED or BAD task left, and every reachable page was fetched.

These are the short versions (a few thousand pages, outages of seconds) that CI runs. The
long ones (the figures of the hardening issue: 20,000 pages, a 20 s outage) are the same
tests with ``SPIDERFLOW_FAULT_PAGES=20000 SPIDERFLOW_FAULT_OUTAGE=20`` (see the README).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import require_service
from unavailable import unavailable

from .conftest import CRAWL_SCRIPT, SPIDERFLOW, Backend, free_port, wait_for
from .test_distributed import Crawl, check_complete, start_crawl

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

PAGES = int(os.environ.get("SPIDERFLOW_FAULT_PAGES", "1500"))
OUTAGE = float(os.environ.get("SPIDERFLOW_FAULT_OUTAGE", "6"))
DEADLINE = 60.0 + PAGES / 20
SLOW_CALLBACK = 0.005          # keeps the queues full, so a fault always finds work in flight


# -- 1. `spiderflow all` killed with SIGKILL, three times ------------------------------------------------

def test_all_killed_with_sigkill_and_restarted_loses_nothing(procs, httpbin, tmp_path):
    from spiderflow.message import TaskStatus
    from spiderflow.storage import connect_resultdb, connect_taskdb

    crawl = Crawl(httpbin, total=PAGES)
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "farm.py"
    script.write_text(CRAWL_SCRIPT.format(start=crawl.start_url, rate=100000, burst=100000, delay=SLOW_CALLBACK))
    config = tmp_path / "spiderflow.json"
    config.write_text('{"log_level": "INFO", "heartbeat_interval": 0}')
    args = [*SPIDERFLOW, "--data-dir", str(data), "-c", str(config), "all", "--project", str(script),
            "--no-webui", "--scheduler-port", str(free_port()), "--exit-when-done"]
    resultdb = connect_resultdb(f"sqlite:///{data}/result.db")
    taskdb = connect_taskdb(f"sqlite:///{data}/task.db")
    try:
        killed_at = []
        for k in (1, 2, 3):
            procs.start("all", args)
            n = wait_for(lambda: (c := resultdb.count("farm")) >= crawl.expected * k // 5 and c, DEADLINE,
                         f"{crawl.expected * k // 5} results", interval=0.05)
            assert n < crawl.expected, f"the crawl finished ({n} results) before kill {k}: slow it down"
            assert procs.kill("all", signal.SIGKILL) == -signal.SIGKILL   # the whole process group
            killed_at.append(n)
        procs.start("all", args)
        procs.current["all"].popen.wait(DEADLINE)
        assert procs.current["all"].popen.returncode == 0
        results = list(resultdb.select("farm"))
        urls = [r["url"] for r in results]
        assert len(urls) == len(set(urls)), "a page has two results"
        missing = crawl.urls - set(urls)
        assert not missing, f"{len(missing)} of {crawl.expected} reachable pages have no result, e.g. {sorted(missing)[:3]}"
        assert set(urls) == crawl.urls
        counts = taskdb.status_count("farm")
        assert counts[TaskStatus.ACTIVE] == 0 and counts[TaskStatus.FAILED] == 0 and counts[TaskStatus.BAD] == 0
        print(f"all: killed at {killed_at}/{crawl.expected} results; {len(urls)} results, none lost")
    finally:
        resultdb.close()
        taskdb.close()


# -- 2. PostgreSQL unreachable mid-crawl ---------------------------------------------------------------

class Blackout:
    """A TCP proxy on 127.0.0.1 in front of *upstream*; ``cut()`` drops every connection and
    refuses new ones (accepted and closed at once) until ``restore()``."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.peers: dict[socket.socket, socket.socket] = {}
        self.down = False
        self.stopping = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="blackout-proxy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(0.1):
                with self.lock:
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        self._pump(key.fileobj)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if self.down:
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for a, b in ((client, server), (server, client)):
            a.setblocking(False)
            self.peers[a] = b
            self.sel.register(a, selectors.EVENT_READ, None)

    def _pump(self, sock: socket.socket) -> None:
        other = self.peers.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
        except OSError:
            pass
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        other = self.peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self.peers.pop(s, None)
            with contextlib.suppress(Exception):
                self.sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        with self.lock:
            self.down = True
            for sock in list(self.peers):
                self._close(sock)

    def restore(self) -> None:
        with self.lock:
            self.down = False

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        with self.lock:
            for sock in list(self.peers):
                self._close(sock)
        self.listener.close()


def _through(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def test_postgresql_outage_mid_crawl_loses_nothing(make_cluster, httpbin):
    from urllib.parse import urlsplit
    pg = require_service("postgresql")
    redis_url = require_service("redis")
    parts = urlsplit(pg)
    proxy = Blackout((parts.hostname or "127.0.0.1", parts.port or 5432))
    try:
        backend = Backend("redis-postgresql-proxied", redis_url, _through(pg, proxy.port))
        try:
            cluster = make_cluster(backend, settings={"lease_time": 60})
            crawl = Crawl(httpbin, total=PAGES)
            start_crawl(cluster, crawl, delay=SLOW_CALLBACK)
            n = cluster.wait_results(crawl.name, crawl.expected // 4, timeout=DEADLINE)
            assert n < crawl.expected, f"the crawl finished ({n} results) before the outage"
            proxy.cut()
            time.sleep(OUTAGE)
            for name in cluster.procs.current:
                assert cluster.procs.alive(name), f"{name} died during the database outage"
            proxy.restore()
            cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
            time.sleep(0.5)
            check_complete(cluster, crawl, exactly_once=False)
            waited = sum(cluster.procs.grep("the database is unavailable").values())
            assert waited >= 1, "no component noticed the outage: the proxy did not cut anything"
            print(f"postgresql outage of {OUTAGE:g} s at {n}/{crawl.expected} results: none lost; "
                  f"{waited} components waited it out")
        finally:
            cluster.cleanup()       # while the proxy still leads to the database
            backend.clean_queues()
    finally:
        proxy.close()


# -- 3. the Redis broker killed and restarted empty ---------------------------------------------------------

class RedisServer:
    """A redis-server of our own on a free port, without persistence (a restart comes back empty)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            return False

        wait_for(answers, 10, f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_redis_restarted_empty_mid_crawl_loses_nothing(make_cluster, httpbin, tmp_path):
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed: this test runs a broker of its own")
    pg = require_service("postgresql")
    broker = RedisServer(tmp_path)
    broker.start()
    try:
        backend = Backend("own-redis-postgresql", f"redis://127.0.0.1:{broker.port}/0", pg)
        cluster = make_cluster(backend)     # the default lease: in-flight tasks come back without waiting for it
        crawl = Crawl(httpbin, total=PAGES)
        start_crawl(cluster, crawl, delay=SLOW_CALLBACK)
        n = cluster.wait_results(crawl.name, crawl.expected // 3, timeout=DEADLINE)
        assert n < crawl.expected, f"the crawl finished ({n} results) before the broker was killed"
        broker.kill()
        time.sleep(1.0)
        broker.start()          # empty: every queued and in-flight message is gone
        cluster.wait_done(crawl.name, crawl.expected, DEADLINE)
        time.sleep(0.5)
        check_complete(cluster, crawl, exactly_once=False)
        print(f"redis restarted empty at {n}/{crawl.expected} results: none lost")
    finally:
        broker.kill()
