"""The processor's prefork pool: real forked children between real queues, exact counts.

Each test runs a :class:`Processor` whose settings ask for the prefork pool on memory://
queues (its children are real processes forked from this one) and counts what comes out:
one message per task given, whatever happens to the children. The cluster test on redis
(separate ``spiderflow`` processes, the CLI flags, ``control``/``inspect``) is
tests/integration/test_processor_pool_cluster.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from spiderflow.control.panels import make_panel
from spiderflow.control.state import ControlWatch, connect_controldb, revokes_for
from spiderflow.exceptions import ConfigError
from spiderflow.jobs import connect_jobdb
from spiderflow.jobs.watch import JobWatch
from spiderflow.message import FetchResult, Process, StatusPack, Task
from spiderflow.processor import Processor, ProjectManager, SoftTimeLimitExceeded
from spiderflow.queues import connect_queue
from spiderflow.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(60)

SCRIPT = '''
import ctypes, os, re, time

from spiderflow import BaseHandler
from spiderflow.processor import SoftTimeLimitExceeded

LEAK = []


class Handler(BaseHandler):
    def page(self, response):
        time.sleep(float(response.save or 0))
        return {"url": response.url, "pid": os.getpid()}

    def rss(self, response):
        with open("/proc/self/statm") as fh:
            return {"url": response.url, "kib": int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024}

    def leak(self, response):
        LEAK.append(b"x" * (8 << 20))        # 8 MiB, resident: user scripts leak
        return {"url": response.url, "pid": os.getpid(), "held": len(LEAK)}

    def careful(self, response):
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return {"url": response.url, "caught": True}

    def careless(self, response):
        while True:
            time.sleep(0.01)

    def regex(self, response):
        re.match(r"(a+)+$", "a" * 40 + "b")  # catastrophic: never returns to the interpreter
        return {"url": response.url}

    def cloop(self, response):
        sum(range(10 ** 12))                 # a loop in C that checks no signal: hours
        return {"url": response.url}

    def csleep(self, response):
        ctypes.CDLL(None).sleep(30)          # libc's sleep ends early when the alarm signal comes
        return {"url": response.url}

    def huge(self, response):
        self.crawl("http://example.com/after", callback=self.page)
        return {"url": response.url, "v": 2 ** 70}    # JSON, but no queue can carry it

    def follows(self, response):
        for i in range(3):
            self.crawl(f"http://example.com/follow/{i}", callback=self.page)

    def job_args(self, response):
        return {"url": response.url, "args": self.job.args if self.job else None, "pid": os.getpid()}
'''


class Pool:
    """A prefork Processor on memory queues, run in a thread, and what it put out."""

    def __init__(self, tmp_path, control: bool = False, jobs: bool = False, **settings):
        self.inqueue = connect_queue("memory://", "fetcher2processor", 1000)
        self.status = connect_queue("memory://", "status_queue", 1000)
        self.results = connect_queue("memory://", "processor2result", 1000)
        projects = ProjectManager()
        projects.add("p", SCRIPT)
        self.settings = Settings(**{"processor_pool": "prefork", **settings})
        self.proc = Processor(self.inqueue, self.status, None, self.results, projects=projects,
                              settings=self.settings, poll_interval=0.05)
        self.pool = self.proc.pool
        self.panel = self.db = self.jobdb = None
        if control:
            self.db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
            self.panel = make_panel("processor", self.proc, self.settings, name="p1", node_id="p1",
                                    watch=ControlWatch(self.db))
        if jobs:
            self.jobdb = connect_jobdb(f"sqlite:///{tmp_path}/project.db")
            self.proc.jobs = JobWatch(self.jobdb, refresh=0.05).start()
        self.out: list[tuple[StatusPack, list]] = []    # (status, results) of every message out
        self.thread: threading.Thread | None = None

    def put(self, n: int, callback: str = "page", save=None, start: int = 0, job: str | None = None) -> list[str]:
        ids = []
        for i in range(start, start + n):
            url = f"http://example.com/{callback}/{i}"
            task = Task.create("p", url, process=Process(callback=callback))
            task.fetch.save = save
            task.schedule.job = job
            self.inqueue.put((task, FetchResult(200, url, content=b"<html></html>", save=save)))
            ids.append(task.taskid)
        return ids

    def start(self, burst: bool = False) -> Pool:
        self.thread = threading.Thread(target=self.proc.run, kwargs={"burst": burst}, daemon=True)
        self.thread.start()
        return self

    def collect(self, n: int, timeout: float = 20) -> list[tuple[StatusPack, list]]:
        """Wait until *n* messages came out in all."""
        deadline = time.monotonic() + timeout
        while len(self.out) < n:
            assert time.monotonic() < deadline, f"{len(self.out)} of {n} messages after {timeout} s"
            for message in self.status.get_many(100):
                self.out.append((message if isinstance(message, StatusPack) else message[0], []))
            for message in self.results.get_many(100):
                self.out.append((message[0], [r.result for r in message[1:] if not isinstance(r, Task)]))
            time.sleep(0.01)
        return self.out

    def quiet(self, seconds: float = 0.3) -> None:
        """Nothing more comes out."""
        time.sleep(seconds)
        assert self.status.qsize() == 0 and self.results.qsize() == 0

    def wait(self, check, timeout: float = 15, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.pool.stats()}"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.stop()
        if self.thread is not None:
            self.thread.join(20)
            assert not self.thread.is_alive(), "the pool did not stop"
        if self.panel is not None:
            self.panel.close()
        if self.proc.jobs is not None:
            self.proc.jobs.stop()
        for db in (self.db, self.jobdb):
            if db is not None:
                db.close()


@pytest.fixture
def pools(tmp_path):
    made: list[Pool] = []

    def make(**kwargs) -> Pool:
        pool = Pool(tmp_path, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.stop()
        assert pool.pool.children == {}, "children left behind"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- recycling --------------------------------------------------------------------------------------

def test_max_tasks_per_child_replaces_children_between_tasks_and_loses_nothing(pools):
    pool = pools(processor_concurrency=2, max_tasks_per_child=3)
    ids = pool.put(20, save=0.02)
    pool.start(burst=True)
    out = pool.collect(20)
    pool.thread.join(20)
    pool.quiet(0.1)
    assert sorted(s.taskid for s, _ in out) == sorted(ids)         # each exactly once
    assert all(s.track.process["ok"] for s, _ in out)
    pids = [r[0]["pid"] for _, r in out]
    assert len(set(pids)) >= 7 and max(pids.count(p) for p in set(pids)) <= 3   # 20 tasks, 3 per child
    assert pool.pool.replaced["max-tasks-per-child"] >= 6
    assert pool.proc.processed == 20 and pool.proc.failed == 0
    assert not any(alive(p) for p in set(pids))


def test_max_memory_per_child_replaces_a_leaking_child(pools):
    pool = pools(processor_concurrency=1, max_memory_per_child=10 ** 9)
    pool.put(1, callback="rss")
    pool.start()
    [(_status, [probe])] = pool.collect(1)
    pool.out.clear()
    pool.pool.max_memory = probe["kib"] + 20 * 1024   # the child's size + 20 MiB: 3 leaks of 8 MiB pass it
    ids = pool.put(12, callback="leak")
    out = pool.collect(12)
    pool.quiet(0.1)
    assert sorted(s.taskid for s, _ in out) == sorted(ids) and all(s.track.process["ok"] for s, _ in out)
    held = [r[0]["held"] for _, r in out]
    children = held.count(1)          # each new child starts with an empty LEAK
    assert children >= 3 and max(held) <= 3, held     # the first child leaked after its probe
    assert all(b == a + 1 for a, b in zip(held, held[1:]) if b != 1), held
    assert len({r[0]["pid"] for _, r in out}) == children
    assert pool.pool.replaced["max-memory-per-child"] in (children - 1, children)


def test_outcomes_travel_packed_on_queues_that_serialize(tmp_path):
    """multiprocessing:// queues (as redis and amqp) carry bytes: the child's packed message goes
    on them as it is; an outcome no queue can carry fails its task, as in the solo pool."""
    queues = [connect_queue("multiprocessing://", name, 100)
              for name in ("fetcher2processor", "status_queue", "processor2result")]
    projects = ProjectManager()
    projects.add("p", SCRIPT)
    proc = Processor(*queues[:2], None, queues[2], projects=projects,
                     settings=Settings(processor_concurrency=2), poll_interval=0.05)
    try:
        tasks = [Task.create("p", f"http://example.com/{cb}", process=Process(callback=cb))
                 for cb in ("page", "huge", "follows")]
        for task in tasks:
            queues[0].put((task, FetchResult(200, task.url, content=b"<html></html>")))
        proc.run(burst=True)
        statuses = {m[0].taskid if isinstance(m, tuple) else m.taskid: m for m in queues[1].get_many(10)}
        [result] = queues[2].get_many(10)
        assert result[0].taskid == tasks[0].taskid and result[1].result["url"] == tasks[0].url
        huge = statuses[tasks[1].taskid]           # alone: its result and follow dropped, with the reason
        assert not huge.track.process["ok"] and "SerializationError" in huge.track.process["exception"]
        follows = statuses[tasks[2].taskid]
        assert follows[0].track.process["ok"] and [t.url for t in follows[1:]] == [
            f"http://example.com/follow/{i}" for i in range(3)]
        assert len(statuses) == 2 and proc.processed == 3 and proc.failed == 1
    finally:
        for q in queues:
            q.close()


# -- time limits ---------------------------------------------------------------------------------------

def test_a_callback_catches_the_soft_time_limit_and_returns_its_result(pools):
    pool = pools(processor_concurrency=2, process_soft_time_limit=0.3, process_time_limit=5)
    [careful] = pool.put(1, callback="careful")
    [careless] = pool.put(1, callback="careless")
    started = time.monotonic()
    pool.start()
    out = {s.taskid: (s, r) for s, r in pool.collect(2)}
    assert time.monotonic() - started < 3
    status, results = out[careful]
    assert status.track.process["ok"] and results == [{"url": status.url, "caught": True}]
    status, results = out[careless]
    assert not status.track.process["ok"] and results == []
    assert "SoftTimeLimitExceeded: the callback ran past its soft time limit of 0.3 s" in \
        status.track.process["exception"]
    assert issubclass(SoftTimeLimitExceeded, Exception)
    assert pool.pool.replaced == {}                      # nothing was killed


def test_the_soft_time_limit_in_the_solo_pool_too():
    projects = ProjectManager()
    projects.add("p", SCRIPT)
    processor = Processor(projects=projects, settings=Settings(process_soft_time_limit=0.2, process_time_limit=5))
    task = Task.create("p", "http://example.com/", process=Process(callback="careful"))
    outcome = processor.process(task, FetchResult(200, task.url, content=b""))
    assert outcome.ok and outcome.results[0].result == {"url": task.url, "caught": True}


def test_the_hard_limit_kills_a_callback_stuck_in_c_and_the_pool_goes_on(pools):
    pool = pools(processor_concurrency=2, process_time_limit=1)
    stuck = pool.put(1, callback="regex") + pool.put(1, callback="cloop")
    started = time.monotonic()
    pool.start()
    pool.wait(lambda: len(pool.pool.active()) == 2, what="both stuck callbacks running")
    stuck += pool.put(1, callback="csleep", start=5)
    pids = [pid for _task, _start, _limit, pid in pool.pool.active()]
    after = pool.put(4, start=10)
    out = {s.taskid: s for s, _ in pool.collect(7)}
    regex, cloop, csleep = (out[t].track.process for t in stuck)
    assert time.monotonic() - started < 1 + 1.5             # the first two within the limit + about a second
    assert not regex["ok"] and not cloop["ok"] and not csleep["ok"]
    # Python 3.11's regular expression engine checks for signals, libc's sleep ends on one:
    # the child's own alarm stops them, with the callback's traceback
    for track in (regex, csleep):
        assert "TimeLimitExceeded: the callback ran past the process time limit of 1 s" in track["exception"]
    # a loop in C never returns to the interpreter: the parent kills the child
    assert cloop["exception"].startswith("TimeLimitExceeded: the callback ran past the process time limit "
                                         "of 1 s and did not return to the interpreter"), cloop["exception"]
    assert any(f"child process (pid {pid}) was killed and replaced" in cloop["exception"] for pid in pids)
    assert all(out[t].track.process["ok"] for t in after)  # the next tasks run on
    assert pool.pool.replaced["time-limit"] == 1 and pool.proc.failed == 3
    pool.wait(lambda: sum(alive(p) for p in pids) == 1, what="the killed child to be gone")
    pool.wait(lambda: len(pool.pool.stats()["processes"]) == 2, what="a new child")


# -- children that die, revokes, warm stop --------------------------------------------------------------------

def test_a_child_killed_mid_task_loses_no_task(pools):
    pool = pools(processor_concurrency=2)
    ids = pool.put(6, save=0.4)
    pool.start()
    pool.wait(lambda: pool.pool.active(), what="a task in a child")
    task, _start, _limit, victim = pool.pool.active()[0]
    os.kill(victim, signal.SIGKILL)
    out = pool.collect(6)
    pool.quiet()
    assert sorted(s.taskid for s, _ in out) == sorted(ids)        # every task exactly once
    failed = [s for s, _ in out if not s.track.process["ok"]]
    assert [s.taskid for s in failed] == [task.taskid]           # it fails (retried per its retries)
    assert failed[0].track.process["exception"].startswith(
        f"WorkerLostError: the child process (pid {victim}) running the callback died (signal SIGKILL)")
    assert pool.pool.replaced["died"] == 1 and pool.proc.processed == 6 and pool.proc.failed == 1
    assert len(pool.pool.stats()["processes"]) == 2 and victim not in pool.pool.stats()["processes"]


def test_revoke_terminate_kills_the_child_and_drops_the_outcome(pools):
    pool = pools(processor_concurrency=1, control=True)
    [long] = pool.put(1, save=30)
    pool.start()
    pool.wait(lambda: pool.panel.do_active(ttl=1), what="the long task in a child")
    [active] = pool.panel.do_active(ttl=1)
    assert active["id"] == long and active["worker_pid"] in pool.pool.children
    reply = pool.panel.do_revoke(ttl=1, revokes=[e.to_dict() for e in revokes_for([long], "p", terminate=True)])
    assert reply["ok"] == f"terminate: p:{long}" and str(active["worker_pid"]) in reply["note"]
    after = pool.put(2, start=5)
    out = pool.collect(2)
    pool.quiet()
    assert sorted(s.taskid for s, _ in out) == sorted(after)      # the revoked task has no outcome at all
    assert pool.pool.replaced["terminated"] == 1 and not alive(active["worker_pid"])
    [again] = pool.put(1, save=0, start=0)                        # revoked: dropped before any child runs it
    assert again == long
    pool.quiet(0.5)
    assert pool.panel.watch.dropped == 1 and pool.proc.processed == 2


def test_warm_stop_finishes_the_tasks_in_hand(pools):
    pool = pools(processor_concurrency=2)
    ids = pool.put(4, save=0.5)          # two in the children, two reserved (memory://: processed too)
    pool.start()
    pool.wait(lambda: len(pool.pool.active()) == 2 and pool.pool.stats()["reserved"] == 2, what="4 in hand")
    pids = pool.pool.stats()["processes"]
    pool.proc.stop()
    pool.thread.join(10)
    assert not pool.thread.is_alive()
    out = pool.collect(4, timeout=1)
    assert sorted(s.taskid for s, _ in out) == sorted(ids) and all(s.track.process["ok"] for s, _ in out)
    assert not any(alive(p) for p in pids) and pool.pool.children == {}


def test_the_child_gets_the_job_of_its_task(pools):
    pool = pools(processor_concurrency=2, jobs=True)
    job = pool.jobdb.schedule("p", "Handler", args={"q": "books"})
    pool.put(2, callback="job_args", job=job["id"])
    pool.put(1, callback="job_args", start=9)
    pool.start()
    out = pool.collect(3)
    args = sorted(str(r[0]["args"]) for _, r in out)
    assert args == ["None", "{'q': 'books'}", "{'q': 'books'}"]
    assert all(r[0]["pid"] != os.getpid() for _, r in out)


# -- the pool's size ---------------------------------------------------------------------------------------

def test_control_grows_shrinks_and_autoscales_the_pool(pools):
    pool = pools(processor_concurrency=2, control=True)
    pool.start()
    panel = pool.panel

    def processes() -> list[int]:
        return panel.do_stats(ttl=1)["pool"]["processes"]

    pool.wait(lambda: len(processes()) == 2, what="2 children")
    first = processes()
    assert panel.do_pool_grow(ttl=1, n=2) == {"ok": "pool will grow", "max-concurrency": 4}
    pool.wait(lambda: len(processes()) == 4, what="4 children")
    assert set(first) <= set(processes())
    assert panel.do_pool_shrink(ttl=1, n=3) == {"ok": "pool will shrink", "max-concurrency": 1}
    pool.wait(lambda: len(processes()) == 1, what="1 child")
    assert panel.do_autoscale(ttl=1, max=3, min=2) == {"ok": "autoscale now max=3 min=2", "max-concurrency": 2}
    pool.wait(lambda: len(processes()) == 2, what="2 children (autoscale min)")
    stats = panel.do_stats(ttl=1)["pool"]
    assert stats["autoscaler"] == {"max": 3, "min": 2, "current": 2} and stats["implementation"] == "prefork"
    assert stats["max-tasks-per-child"] is None and stats["timeouts"] == [None, 30.0]
    assert panel.do_pool_grow(ttl=1, n=1)["error"].startswith("pool_grow is not supported with autoscale")
    ids = pool.put(3)
    assert sorted(s.taskid for s, _ in pool.collect(3)) == sorted(ids)
    assert stats["writes"]["total"] == 0 and panel.do_stats(ttl=1)["pool"]["writes"]["total"] == 3


def test_autoscale_grows_under_a_backlog_and_shrinks_when_idle(pools):
    pool = pools(processor_autoscale="4,1", processor_autoscale_keepalive=1.0)
    pool.start()
    pool.wait(lambda: len(pool.pool.stats()["processes"]) == 1, what="the min of 1 child")
    ids = pool.put(16, save=0.3)
    pool.wait(lambda: len(pool.pool.stats()["processes"]) == 4, timeout=5, what="growth to 4 children")
    out = pool.collect(16)
    assert sorted(s.taskid for s, _ in out) == sorted(ids)
    assert len({r[0]["pid"] for _, r in out}) >= 4
    idle = time.monotonic()
    pool.wait(lambda: len(pool.pool.stats()["processes"]) == 1, timeout=5, what="the shrink to 1 child")
    assert time.monotonic() - idle >= 0.9


# -- settings and the solo pool --------------------------------------------------------------------------------

def test_the_solo_pool_is_the_default_and_answers_how_to_get_a_pool(tmp_path):
    processor = Processor(settings=Settings())
    assert processor.pool is None and Settings().processor_pool_kind() == "solo"
    db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
    panel = make_panel("processor", processor, Settings(), name="p1", node_id="p1", watch=ControlWatch(db))
    try:
        reply = panel.do_pool_grow(ttl=1, n=2)["error"]
        assert reply.startswith("processor pool is fixed at 1 worker") and "--pool prefork" in reply
        assert "--concurrency" in panel.do_autoscale(ttl=1, max=2, min=1)["error"]
        assert panel.pool() == {"implementation": "solo", "max-concurrency": 1, "processes": [os.getpid()]}
    finally:
        panel.close()
        db.close()


@pytest.mark.parametrize("env, kind", [
    ({"SPIDERFLOW_PROCESSOR_CONCURRENCY": "2"}, "prefork"),
    ({"SPIDERFLOW_MAX_TASKS_PER_CHILD": "10"}, "prefork"),
    ({"SPIDERFLOW_PROCESSOR_AUTOSCALE": "8,2"}, "prefork"),
    ({"SPIDERFLOW_PROCESSOR_POOL": "prefork"}, "prefork"),
    ({"SPIDERFLOW_PROCESS_SOFT_TIME_LIMIT": "5"}, "solo"),
])
def test_prefork_is_chosen_when_an_option_needs_it(env, kind):
    assert load_settings(env=env).processor_pool_kind() == kind


@pytest.mark.parametrize("env, message", [
    ({"SPIDERFLOW_PROCESSOR_CONCURRENCY": "0"}, "'processor_concurrency' must be a whole number >= 1"),
    ({"SPIDERFLOW_MAX_TASKS_PER_CHILD": "-1"}, "'max_tasks_per_child' must be a whole number >= 1"),
    ({"SPIDERFLOW_MAX_MEMORY_PER_CHILD": "1.5"}, "'max_memory_per_child' must be an integer"),
    ({"SPIDERFLOW_PROCESSOR_AUTOSCALE": "2,8"}, "MAX >= MIN (2 < 8)"),
    ({"SPIDERFLOW_PROCESSOR_AUTOSCALE": "8"}, "must be MAX,MIN"),
    ({"SPIDERFLOW_PROCESS_SOFT_TIME_LIMIT": "inf"}, "a finite number"),
    ({"SPIDERFLOW_PROCESS_SOFT_TIME_LIMIT": "30"}, "must be below the hard one (30 s"),
    ({"SPIDERFLOW_PROCESSOR_POOL": "threads"}, "must be one of solo, prefork"),
    ({"SPIDERFLOW_PROCESSOR_POOL": "solo", "SPIDERFLOW_PROCESSOR_CONCURRENCY": "4"}, "--concurrency 4 need(s) the prefork"),
])
def test_pool_settings_are_checked(env, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)


def test_pool_settings_from_a_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"processor_concurrency": 3, "max_tasks_per_child": 100, "max_memory_per_child": 200000,'
                    ' "process_soft_time_limit": 20, "processor_autoscale": "6,3"}')
    settings = load_settings(str(path))
    assert settings.processor_autoscale_range() == (6, 3) and settings.processor_pool_kind() == "prefork"
    assert (settings.max_tasks_per_child, settings.max_memory_per_child) == (100, 200000)


def test_a_bad_pool_flag_is_named_as_typed():
    from click.testing import CliRunner

    from spiderflow.cli import main
    out = CliRunner().invoke(main, ["processor", "--queue", "redis://127.0.0.1:6379/0", "--autoscale", "2,5"])
    assert out.exit_code == 2 and "option --autoscale:" in out.output and "MAX >= MIN (2 < 5)" in out.output, out.output
