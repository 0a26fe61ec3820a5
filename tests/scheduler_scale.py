"""Measure the scheduler at scale (not collected by pytest).

    python tests/scheduler_scale.py [--tasks 1000000] [--new 20000] [--dir DIR]

1. Fills a sqlite taskdb with ``--tasks`` ACTIVE tasks of one project (insert_many, batches).
2. In a fresh subprocess: the time from Scheduler construction to the first task put on
   scheduler2fetcher (the processor's ``_on_get_info`` answer is given at once), and the
   peak RSS of that process (``ru_maxrss``).
3. In another fresh subprocess: check-requests throughput, ``--new`` new tasks through
   newtask_queue → dedupe → taskdb, then the same tasks again (all duplicates).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PROJECT = "big"


def fill(directory: str, n: int) -> None:
    from spiderflow.message import Process, Schedule, Task
    from spiderflow.storage import connect_projectdb, connect_taskdb

    taskdb = connect_taskdb(f"sqlite:///{directory}/task.db")
    projectdb = connect_projectdb(f"sqlite:///{directory}/project.db")
    if projectdb.get(PROJECT) is None:
        projectdb.insert(PROJECT, status="RUNNING", script="class Handler: pass", rate=1e6, burst=1e6)
    have = taskdb.count(PROJECT)
    if have >= n:
        print(f"taskdb already holds {have} tasks")
        return
    start = time.perf_counter()
    base = time.time() - n
    batch = 10_000
    for first in range(have, n, batch):
        tasks = [Task(taskid=f"{i:032x}", project=PROJECT, url=f"http://bench.test/page/{i}",
                      schedule=Schedule(exetime=base + i), process=Process(callback="index_page"),
                      updatetime=base)
                 for i in range(first, min(n, first + batch))]
        taskdb.insert_many(tasks)
    elapsed = time.perf_counter() - start
    print(f"filled {n - have} ACTIVE tasks in {elapsed:.1f}s ({(n - have) / elapsed:,.0f}/s)")
    taskdb.close()
    projectdb.close()


def _scheduler(directory: str, **settings):
    from spiderflow.queues import connect_queue
    from spiderflow.scheduler import Scheduler
    from spiderflow.settings import Settings
    from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb

    queues = {name: connect_queue("memory://", name) for name in ("newtask", "status", "out")}
    scheduler = Scheduler(
        projectdb=connect_projectdb(f"sqlite:///{directory}/project.db"),
        taskdb=connect_taskdb(f"sqlite:///{directory}/task.db"),
        resultdb=connect_resultdb(f"sqlite:///{directory}/result.db"),
        newtask_queue=queues["newtask"], status_queue=queues["status"], out_queue=queues["out"],
        settings=Settings(data_dir=os.path.join(directory, "data"), **settings))
    return scheduler, queues


def measure_start(directory: str) -> dict:
    """Run in a fresh process: construction → first dispatched task; peak RSS."""
    t_import = time.perf_counter()
    for module in ("spiderflow.queues.memory", "spiderflow.scheduler", "spiderflow.storage"):
        importlib.import_module(module)     # imports are process start-up, not scheduler start-up
    from spiderflow.message import StatusPack, Track
    import_s = time.perf_counter() - t_import

    t0 = time.perf_counter()
    scheduler, queues = _scheduler(directory)
    first_any = first_task = None
    loops = 0
    while first_task is None and loops < 1000:
        scheduler.run_once()
        loops += 1
        for task in queues["out"].get_many(10 ** 6):
            now = time.perf_counter() - t0
            if first_any is None:
                first_any = now
            if task.taskid == "_on_get_info":
                queues["status"].put(StatusPack(taskid=task.taskid, project=task.project, url=task.url,
                                                track=Track(process={"ok": True, "save": {}})))
            elif first_task is None:
                first_task = now
    # keep dispatching for a while: the window refills from taskdb as it drains
    t1 = time.perf_counter()
    dispatched = 0
    while time.perf_counter() - t1 < 3.0:
        scheduler.run_once()
        dispatched += len(queues["out"].get_many(10 ** 6))
    rate = dispatched / (time.perf_counter() - t1)
    project = scheduler.projects[PROJECT]
    return {
        "import_s": round(import_s, 3),
        "first_message_s": round(first_any, 3),
        "first_task_s": round(first_task, 3),
        "dispatch_per_s": round(rate),
        "window_now": len(project.queue),
        "in_flight": project.queue.processing_count,
        "active_count": project.active_count,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure_requests(directory: str, n: int) -> dict:
    """Run in a fresh process: n new tasks (then the same n again) through check-requests."""
    from spiderflow.message import Process, StatusPack, Task, Track, md5_taskid

    scheduler, queues = _scheduler(directory, loop_limit=0)
    scheduler.run_once()
    for task in queues["out"].get_many(10 ** 6):
        queues["status"].put(StatusPack(taskid=task.taskid, project=task.project, url=task.url,
                                        track=Track(process={"ok": True, "save": {}})))
    scheduler.run_once()
    out = {}
    stamp = int(time.time())
    for label in ("new", "duplicates"):
        tasks = []
        for i in range(n):
            url = f"http://bench.test/new/{stamp}/{i}"
            tasks.append(Task(taskid=md5_taskid(url), project=PROJECT, url=url, process=Process(callback="index_page")))
        for i in range(0, n, 20):                  # one message per processed page, 20 links each
            queues["newtask"].put(tasks[i:i + 20])
        before = scheduler.taskdb.count(PROJECT)
        start = time.perf_counter()
        while queues["newtask"].qsize():
            scheduler.run_once()
        elapsed = time.perf_counter() - start
        added = scheduler.taskdb.count(PROJECT) - before
        out[label] = {"tasks": n, "seconds": round(elapsed, 3), "per_s": round(n / elapsed), "stored": added}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=20_000)
    parser.add_argument("--dir", default=None, help="keep the databases here (reused when present)")
    parser.add_argument("--measure", choices=["start", "requests"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "start":
        print(json.dumps(measure_start(args.dir)))
        return
    if args.measure == "requests":
        print(json.dumps(measure_requests(args.dir, args.new)))
        return
    directory = args.dir or tempfile.mkdtemp(prefix="spiderflow-scale-")
    os.makedirs(directory, exist_ok=True)
    fill(directory, args.tasks)
    results = {}
    for what in ("start", "requests"):
        proc = subprocess.run([sys.executable, __file__, "--measure", what, "--dir", directory,
                               "--new", str(args.new)], capture_output=True, text=True, check=False)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"the {what} measurement failed")
        results[what] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(what, json.dumps(results[what], indent=2))
    s, r = results["start"], results["requests"]
    print(f"scheduler scale: {args.tasks:,} ACTIVE tasks: first task {s['first_task_s']}s after construction, "
          f"peak RSS {s['peak_rss_mb']} MB, dispatch {s['dispatch_per_s']:,}/s; check-requests "
          f"{r['new']['per_s']:,} new tasks/s, {r['duplicates']['per_s']:,} duplicates/s")


if __name__ == "__main__":
    main()
