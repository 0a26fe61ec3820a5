"""Celery-style worker options of the serving commands (spiderflow.runtime.worker): -n/--hostname,
--logfile, --pidfile, --detach and SIGHUP's restart in place.

The expansion, the pid file and the re-executed command line are checked in this process; the
rest with real ``spiderflow`` processes: a fetcher on a redis queue (a prefix of its own) named
with ``-n`` answers ``control ping`` and ``inspect`` under that name, and after a SIGHUP it is the
same pid, started a second time, and answers again; ``--detach`` makes a daemon that says its
pid, writes its pid file and log file, refuses a second start on the same pid file, replaces a
stale one, restarts in place without --detach on SIGHUP and removes its pid file on SIGTERM; ``all --logfile X%I.log`` writes a file per process and
names its components NAME/kind#N. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_service
from integration.conftest import SPIDERFLOW, Backend, ProcessGroup, free_port, wait_for

from spiderflow.exceptions import ConfigError
from spiderflow.nodes import process_alive
from spiderflow.runtime import worker
from spiderflow.runtime.compose import component_settings
from spiderflow.settings import Settings

pytestmark = pytest.mark.timeout(120)

HOST = socket.gethostname()


# -- in this process ---------------------------------------------------------------------------

def test_hostname_codes():
    host = "box.example.org"
    assert worker.expand_hostname("f1@%h", host) == "f1@box.example.org"
    assert worker.expand_hostname("%n-worker", host) == "box-worker"
    assert worker.expand_hostname("w@%d", host) == "w@example.org"
    assert worker.expand_hostname("100%%@%n", host) == "100%@box"
    assert worker.expand_hostname("%%h", host) == "%h"
    assert worker.expand_hostname("f@%h") == f"f@{HOST}"
    assert worker.expand_hostname("w%d", "plain") == "w"            # no domain: %d is empty
    with pytest.raises(ConfigError, match="empty node name"):
        worker.expand_hostname("%d", "plain")
    for bad, why in (("f@%x", "unknown %x"), ("f@%i", "unknown %i"), ("f@%", "lone %")):
        with pytest.raises(ConfigError, match=why):
            worker.expand_hostname(bad, host)


def test_file_codes():
    name = "f1@box.example.org"
    assert worker.expand_path("%p|%n|%h|%d|%i|%I|%%", name, 0) == "f1@box.example.org|f1|box.example.org|example.org|0||%"
    assert worker.expand_path("/var/log/%n%I.log", name, 2) == "/var/log/f1-2.log"
    assert worker.expand_path("%n-%i.pid", name, 3) == "f1-3.pid"
    # a name without '@': all of it is %n, the host is this machine's
    assert worker.expand_path("%n@%h", "edge one", 0, host="h.lan") == "edge one@h.lan"
    assert worker.expand_path("%d", "edge", 0, host="h.lan") == "lan"
    assert worker.per_process("x%I.log") and worker.per_process("x-%i.log")
    assert not worker.per_process("x.log") and not worker.per_process("x%%i.log") and not worker.per_process(None)
    assert worker.expand_path(worker.escape("/tmp/100%/a.log"), name) == "/tmp/100%/a.log"
    assert worker.default_paths("fetcher", "/srv/data") == ("/srv/data/logs/fetcher.log", "/srv/data/fetcher.pid")
    with pytest.raises(ConfigError, match="unknown %q"):
        worker.expand_path("%q.log", name)


def test_reexec_drops_detach_and_keeps_the_files_it_chose(monkeypatch):
    args = ["--data-dir", "d", "fetcher", "--queue", "redis://x", "--detach", "-n", "f@%h"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/spiderflow", *args])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "/venv/bin/spiderflow", *args])
    monkeypatch.setitem(worker._state, "reexec_args", ["--logfile", "/d/logs/fetcher.log"])
    assert worker.reexec_argv() == [sys.executable, "-X", "dev", "/venv/bin/spiderflow", "--data-dir", "d",
                                    "fetcher", "--queue", "redis://x", "--logfile", "/d/logs/fetcher.log",
                                    "-n", "f@%h"]


def test_pidfile_in_this_process(tmp_path):
    path = tmp_path / "run" / "x.pid"
    pid = worker.Pidfile(str(path)).acquire()
    assert path.read_text() == f"{os.getpid()}\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = worker.Pidfile(str(path)).acquire()           # this very process (a restart in place): kept
    assert worker.read_pid(str(path)) == os.getpid()
    # a live process that is not spiderflow's (a reused pid): stale
    other = subprocess.Popen(["sleep", "30"])
    try:
        path.write_text(f"{other.pid}\n")
        worker.Pidfile(str(path)).acquire()
        assert worker.read_pid(str(path)) == os.getpid()
        # a live spiderflow process: refused, naming it
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "spiderflow"])
        try:
            path.write_text(f"{live.pid}\n")
            with pytest.raises(ConfigError, match=f"names pid {live.pid}, a running spiderflow process"):
                worker.Pidfile(str(path)).acquire()
            assert worker.read_pid(str(path)) == live.pid and not list(path.parent.glob("*.tmp"))
        finally:
            live.kill()
            live.wait()
    finally:
        other.kill()
        other.wait()
    path.write_text(f"{os.getpid()}\n")
    pid.release()
    assert not path.exists()
    again.release()                                         # already gone: nothing to do


def test_components_of_all_named_after_a_node_name_are_distinct():
    base = Settings(node_name="box@h")
    names = {component_settings(base, kind, i).node_name for kind, i in
             (("scheduler", 0), ("fetcher", 0), ("fetcher", 1), ("processor", 0))}
    assert names == {"box@h/scheduler#0", "box@h/fetcher#0", "box@h/fetcher#1", "box@h/processor#0"}
    assert component_settings(base, "fetcher", 1).node_id is None      # each its own random id


# -- real processes ----------------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"     # a zombie nobody reaped yet
    except FileNotFoundError:
        return True
    except OSError:
        return not process_alive(pid)


@pytest.fixture
def procs(tmp_path: Path):
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def daemons():
    """Pids of daemons a test started (not our children): stopped afterwards whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if worker.spiderflow_process(pid) and not _gone(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in pids:
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _gone(pid) and worker.spiderflow_process(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def redis_queue():
    """A redis queue URL and a queue prefix of this test's own (its keys deleted afterwards)."""
    backend = Backend("redis", require_service("redis"), "")
    yield backend.queue_base, backend.tag
    backend.clean_queues()


def _cli(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SPIDERFLOW, "--data-dir", str(data), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(data.parent), check=False)


def _ping(data: Path, name: str, queue: tuple[str, str] | None = None, what: str = "ping") -> dict:
    where = ["--queue", queue[0], "--queue-prefix", queue[1]] if queue else []
    group = ["control", "ping"] if what == "ping" else ["inspect", what]
    out = _cli(data, *group, *where, "-d", name, "--json", "--timeout", "2")
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _lines(path: Path, text: str) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)
    except FileNotFoundError:
        return 0


def test_fetcher_named_with_hostname_answers_control_and_restarts_on_sighup(procs, redis_queue, tmp_path):
    data = tmp_path / "data"
    queue, prefix = redis_queue
    log, pidfile = tmp_path / "log" / "%n%I.log", tmp_path / "%n.pid"
    procs.start("fetcher", [*SPIDERFLOW, "--data-dir", str(data), "fetcher", "--queue", queue, "--queue-prefix",
                            prefix, "-n", "f1@%h", "--logfile", str(log), "--pidfile", str(pidfile)])
    name, pid = f"f1@{HOST}", procs.pid("fetcher")
    logfile, pidpath = tmp_path / "log" / "f1.log", tmp_path / "f1.pid"

    def alive() -> None:
        assert procs.alive("fetcher"), procs.report()

    reply = wait_for(lambda: _ping(data, name, redis_queue).get(name), 30, f"{name} to answer ping", alive=alive)
    assert reply["kind"] == "fetcher" and reply["pid"] == pid
    stats = _ping(data, name, redis_queue, "stats")
    assert list(stats) == [name] and stats[name]["pid"] == pid
    assert worker.read_pid(str(pidpath)) == pid
    assert _lines(logfile, "fetcher started") == 1 and stat.S_IMODE(logfile.stat().st_mode) == 0o600

    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: _lines(logfile, "fetcher started") == 2, 30, "a second start-up in the log", alive=alive)
    assert _lines(logfile, "SIGHUP received, restarting in place") == 1
    assert _lines(logfile, "spiderflow fetcher: starting (pid") == 2
    again = wait_for(lambda: _ping(data, name, redis_queue).get(name), 30, "an answer after the restart", alive=alive)
    assert again["pid"] == pid and procs.pid("fetcher") == pid and worker.read_pid(str(pidpath)) == pid
    assert procs.stop(["fetcher"]) == {"fetcher": 0}
    assert not pidpath.exists()


def test_detach_pidfile_logfile_refusal_stale_sighup_and_sigterm(daemons, redis_queue, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    queue, prefix = redis_queue
    pidfile, logfile = tmp_path / "run" / "f.pid", tmp_path / "logs" / "f.log"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.parent.mkdir()
    pidfile.write_text(f"{dead.pid}\n")            # stale: its process has ended
    args = ["fetcher", "--queue", queue, "--queue-prefix", prefix, "-n", "f2@%h", "--detach",
            "--pidfile", str(pidfile), "--logfile", str(logfile)]
    started = time.monotonic()
    out = _cli(data, *args, timeout=90)
    assert out.returncode == 0, out.stderr
    pid = worker.read_pid(str(pidfile))
    assert pid is not None and pid != dead.pid
    daemons.append(pid)
    assert out.stdout.strip().splitlines() == [f"spiderflow fetcher: running in the background as pid {pid}; "
                                               f"logging to {logfile}, pid file {pidfile}"]
    assert time.monotonic() - started < 30
    assert not _gone(pid) and os.getsid(pid) != os.getsid(0)      # a session of its own
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600 and stat.S_IMODE(logfile.stat().st_mode) == 0o600
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull and os.readlink(f"/proc/{pid}/fd/2") == os.devnull
    wait_for(lambda: _lines(logfile, "fetcher started"), 30, "the daemon's start-up in its log")
    assert _lines(logfile, f"named pid {dead.pid}, which is not a running spiderflow process; replacing it") == 1
    assert _ping(data, f"f2@{HOST}", redis_queue)[f"f2@{HOST}"]["pid"] == pid

    second = _cli(data, *args)
    assert second.returncode == 1 and second.stdout == ""
    assert f"pid file {pidfile} names pid {pid}, a running spiderflow process" in second.stderr
    assert worker.read_pid(str(pidfile)) == pid

    # SIGHUP: the same pid runs the same command again, without --detach (it is a daemon already)
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: _lines(logfile, "fetcher started") == 2, 30, "the daemon's second start-up")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--detach" not in cmdline and b"--pidfile" in cmdline and worker.read_pid(str(pidfile)) == pid

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 30, "the pid file to be removed")
    wait_for(lambda: _gone(pid), 15, "the daemon to end")
    assert _lines(logfile, "SIGTERM received, finishing in-flight work") == 1


def test_detach_failing_early_says_why_and_defaults_its_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = _cli(data, "fetcher", "--detach")      # no queue: refused after detaching
    assert out.returncode == 1 and out.stdout == ""
    assert "spiderflow fetcher needs a shared queue" in out.stderr and str(data / "logs" / "fetcher.log") in out.stderr
    assert _lines(data / "logs" / "fetcher.log", "spiderflow fetcher needs a shared queue") == 1
    assert not (data / "fetcher.pid").exists()


def test_hostname_and_node_name_together_are_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out = _cli(data, "fetcher", "-n", "a@%h", "--node-name", "b", "--queue", "redis://127.0.0.1:6379/15")
    assert out.returncode == 2 and "give -n/--hostname or --node-name, not both" in out.stderr
    out = _cli(data, "standalone", "--device-id", "d1", "--hostname", "a", "--device-name", "b")
    assert out.returncode == 2 and "give -n/--hostname or --device-name, not both" in out.stderr


def test_all_logfile_per_process_and_distinct_names(procs, tmp_path):
    data = tmp_path / "data"
    pattern = tmp_path / "X%I.log"
    procs.start("all", [*SPIDERFLOW, "--data-dir", str(data), "all", "--no-webui", "--scheduler-port",
                        str(free_port()), "--logfile", str(pattern), "-n", "box@%h",
                        "--pidfile", str(tmp_path / "all.pid")])
    files = {i: tmp_path / f"X{'-%d' % i if i else ''}.log" for i in range(5)}

    def alive() -> None:
        assert procs.alive("all"), procs.report()

    wait_for(lambda: all(_lines(files[i], "]") for i in files), 30, "a log file per process", alive=alive)
    kinds = {0: "all: started result-worker #0", 1: "spiderflow.scheduler", 2: "fetcher started",
             3: "spiderflow.processor", 4: "spiderflow.result"}
    for index, text in kinds.items():
        wait_for(lambda: _lines(files[index], text), 20, f"{text!r} in {files[index].name}", alive=alive)
    assert not (tmp_path / "X-5.log").exists()
    pids = {i: {line.split()[3] for line in files[i].read_text().splitlines() if line.startswith("[")}
            for i in files}
    assert all(len(p) == 1 for p in pids.values()) and len(set.union(*pids.values())) == 5, pids
    names = {f"box@{HOST}/{kind}#0" for kind in ("scheduler", "fetcher", "processor", "result-worker")}
    wait_for(lambda: set(_all_names(data)) == names, 30,
             "the components of `all` to answer ping under their names", alive=alive)
    assert procs.stop(["all"]) == {"all": 0}
    assert not (tmp_path / "all.pid").exists()


def _all_names(data: Path) -> list[str]:
    out = _cli(data, "control", "ping", "--json", "--timeout", "2")
    return list(json.loads(out.stdout)) if out.returncode == 0 else []
