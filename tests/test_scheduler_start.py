"""The scheduler's start over a big taskdb: nothing before the first dispatch reads the
whole table (the full status count runs in a thread, from a snapshot, after it), and the
counts it applies later are exact whatever the loop did while they were read."""

from __future__ import annotations

import re
import threading
import time

import sqlalchemy as sa

from spiderflow.message import Schedule, Task

from test_scheduler import Harness


def fill(h: Harness, n: int, project: str = "p") -> list[Task]:
    tasks = [Task.create(project, f"http://a/{i}", schedule=Schedule(priority=i % 3))
             for i in range(n)]
    h.taskdb.insert_many(tasks)
    return tasks


def capture(engine):
    """(thread id, SQL) of every statement *engine* runs, from now on."""
    seen: list[tuple[int, str]] = []

    def before(conn, cursor, statement, params, context, executemany):
        seen.append((threading.get_ident(), " ".join(statement.split())))

    sa.event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", before)


def wait_counts(h: Harness, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not h.scheduler._counts_ready and time.monotonic() < deadline:
        time.sleep(0.01)
        h.run()
    assert h.scheduler._counts_ready


def test_start_reads_taskdb_only_with_bounded_queries(tmp_path):
    h = Harness(tmp_path, task_window=200, task_load_page=50)
    h.add_project()
    fill(h, 2000)
    seen, stop = capture(h.taskdb.engine)
    loop = threading.get_ident()
    try:
        h.start("p")                       # loads projects, sends _on_get_info, answers it
        first = [t for t in h.sent_normal()]
        assert first                       # the first normal dispatch
        before_first = [sql for tid, sql in seen if tid == loop]
        wait_counts(h)
    finally:
        stop()
    task_reads = [sql for sql in before_first if sql.startswith("SELECT") and "spiderflow_task" in sql]
    assert task_reads
    for sql in task_reads:
        assert re.search(r"\bLIMIT\b", sql) or " IN (" in sql, sql
        assert "count(" not in sql.lower() and "GROUP BY" not in sql, sql
    # the loop's thread never runs the full count; a thread of its own does, once
    loop_counts = [sql for tid, sql in seen if tid == loop and "GROUP BY" in sql]
    other_counts = [sql for tid, sql in seen if tid != loop and "GROUP BY" in sql]
    assert not loop_counts and len(other_counts) == 1
    assert h.scheduler.counters("p")["p"]["all"]["pending"] == 2000
    assert h.scheduler.projects["p"].active_count == 2000
    h.close()


def test_counts_read_in_the_background_add_what_changed_since_their_snapshot(tmp_path, monkeypatch):
    h = Harness(tmp_path, task_window=200, task_load_page=50)
    h.add_project()
    fill(h, 300)
    real = h.taskdb.status_counts
    release = threading.Event()

    def slow_counts(on_snapshot=None):
        def snapped():
            on_snapshot()
            assert release.wait(10)        # the loop works on while the count is read
        return real(on_snapshot=snapped)

    monkeypatch.setattr(h.taskdb, "status_counts", slow_counts)
    h.start("p")
    sent = h.sent_normal()
    assert h.scheduler._count_job is not None and not h.scheduler._counts_ready
    h.answer_all(sent[:40])
    h.answer_all(sent[40:50], ok=False)
    for i in range(7):
        h.new(f"http://b/{i}")
    h.run()
    h.run()
    assert not h.scheduler._counts_ready
    release.set()
    wait_counts(h)
    h.scheduler._flush()
    truth = real()["p"]
    counts = h.scheduler.counters("p")["p"]["all"]
    assert counts["pending"] == truth["ACTIVE"]
    assert counts["success"] == truth["SUCCESS"]
    assert counts["failed"] == truth["FAILED"]
    assert h.scheduler.projects["p"].active_count == truth["ACTIVE"]
    assert h.scheduler.stats()["tasks"] == sum(truth.values())
    h.close()


def test_a_caller_that_needs_the_counts_waits_for_the_running_count(tmp_path):
    h = Harness(tmp_path)
    h.add_project()
    fill(h, 50)
    h.start("p")
    assert h.scheduler.size() == 50
    assert h.scheduler._counts_ready and h.scheduler._count_job is None
    h.close()
