"""Counters: sliding windows, totals, averages, and the counter file (corrupt files replaced)."""

from __future__ import annotations

import json
import logging
import random

import pytest

from spiderflow.scheduler.counter import EVENTS, Counters


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_windows_slide_and_totals_stay():
    clock = Clock()
    c = Counters(clock)
    c.event("p", "success", 3)
    c.event("p", "pending", 5)
    c.event("p", "pending", -3, windows=False)
    snap = c.snapshot("p")["p"]
    assert snap["5m"]["success"] == 3 and snap["1h"]["success"] == 3 and snap["1d"]["success"] == 3
    assert snap["all"]["pending"] == 2 and snap["5m"]["pending"] == 2   # 5 queued, 3 of them done
    clock.t += 301
    snap = c.snapshot("p")["p"]
    assert snap["5m"]["success"] == 0 and snap["1h"]["success"] == 3
    clock.t += 3600
    assert c.snapshot("p")["p"]["1h"]["success"] == 0
    clock.t += 86400
    snap = c.snapshot("p")["p"]
    assert snap["1d"]["success"] == 0 and snap["all"]["success"] == 3


def test_average_times():
    c = Counters(Clock())
    c.duration("p", "fetch_time", 1.0)
    c.duration("p", "fetch_time", 3.0)
    snap = c.snapshot("p")["p"]
    assert snap["5m"]["fetch_time"] == 2.0 and snap["all"]["fetch_time"] == 2.0
    assert snap["5m"]["process_time"] == 0.0


def test_snapshot_filters_and_unknown_window():
    c = Counters(Clock())
    c.event("a", "retry")
    c.event("b", "failed")
    assert set(c.snapshot()) == {"a", "b"}
    assert list(c.snapshot("a", "1h")["a"]) == ["1h"]
    try:
        c.snapshot(window="2h")
    except ValueError as exc:
        assert "2h" in str(exc)
    else:
        raise AssertionError("unknown window accepted")
    c.drop("a")
    assert set(c.snapshot()) == {"b"}


def test_dump_and_load(tmp_path):
    clock = Clock()
    path = str(tmp_path / "sub" / "counters.json")
    c = Counters(clock)
    c.event("p", "success", 2)
    c.duration("p", "process_time", 0.5)
    c.dump(path)
    d = Counters(clock)
    assert d.load(path) is True
    assert d.snapshot() == c.snapshot()
    assert Counters(clock).load(str(tmp_path / "missing.json")) is False


def test_corrupt_file_is_reported_and_replaced(tmp_path, caplog):
    path = tmp_path / "counters.json"
    for garbage in ["{not json", json.dumps({"version": 1, "windows": {"5m": {"p": {"x": {"1": "NaN?"}}}},
                                                "buckets": {"5m": 10}, "all": {}}), "[]"]:
        path.write_text(garbage)
        c = Counters(Clock())
        with caplog.at_level(logging.ERROR):
            assert c.load(str(path)) is False
        assert "corrupt" in caplog.text
        assert (tmp_path / "counters.json.corrupt").read_text() == garbage
        assert json.loads(path.read_text())["version"] == 1     # replaced by a fresh file
        assert Counters(Clock()).load(str(path)) is True
        caplog.clear()


def assert_nested(snap: dict) -> None:
    """all >= 1d >= 1h >= 5m for every count, and for the dashboard's bar totals."""
    for project, windows in snap.items():
        for event in EVENTS:
            values = [windows[w][event] for w in ("all", "1d", "1h", "5m")]
            assert values == sorted(values, reverse=True) and values[-1] >= 0, (project, event, values)
        totals = [sum(windows[w][e] for e in EVENTS) for w in ("all", "1d", "1h", "5m")]
        assert totals == sorted(totals, reverse=True), (project, totals)


def test_a_crawl_done_within_five_minutes_shows_as_many_tasks_in_all_as_in_5m():
    # the scheduler's events for 10 new tasks, 8 done, 1 retried then failed, 1 still pending
    c = Counters(Clock())
    c.event("p", "pending", 10)
    for _ in range(8):
        c.event("p", "success")
        c.event("p", "pending", -1, windows=False)
    c.event("p", "retry")
    c.event("p", "failed")
    c.event("p", "pending", -1, windows=False)
    snap = c.snapshot("p")["p"]
    assert_nested({"p": snap})
    for w in ("5m", "1h", "1d", "all"):
        assert (snap[w]["pending"], snap[w]["success"], snap[w]["retry"], snap[w]["failed"]) == (1, 8, 1, 1), w


def test_recrawls_and_restarts_never_show_more_in_a_window_than_in_all():
    c = Counters(Clock())
    c.set_total("p", "success", 2)                        # two SUCCESS tasks in taskdb at start
    for _ in range(5):
        c.event("p", "success", total=False)              # a recrawled task, done five times
    c.event("p", "pending")                               # a SUCCESS task restarted
    c.event("p", "success", -1, windows=False)
    snap = c.snapshot("p")["p"]
    assert_nested({"p": snap})
    assert snap["5m"]["success"] == snap["all"]["success"] == 1


def test_a_stale_negative_total_shows_as_zero():
    c = Counters(Clock())
    c.event("p", "success")
    c.event("p", "pending", -1, windows=False)            # a task the loaded counters never saw queued
    snap = c.snapshot("p")["p"]
    assert snap["all"]["pending"] == 0 and snap["5m"]["pending"] == 0
    assert_nested({"p": snap})


@pytest.mark.parametrize("seed", range(10))
def test_windows_always_nest_in_all(seed):
    """Random scheduler-like event streams over two days, checked after every step and window filter."""
    rng = random.Random(seed)
    clock = Clock()
    c = Counters(clock)
    for step in range(400):
        project = rng.choice("ab")
        action = rng.choice(["new", "done", "recrawl", "retry", "failed", "restart", "cancel", "init", "time"])
        if action == "new":
            c.event(project, "pending", rng.randint(1, 5))
        elif action == "done":
            c.event(project, "success")
            c.event(project, "pending", -1, windows=False)
        elif action == "recrawl":
            c.event(project, "success", total=False)
        elif action == "retry":
            c.event(project, "retry")
        elif action == "failed":
            c.event(project, "failed")
            c.event(project, "pending", -1, windows=False)
        elif action == "restart":
            c.event(project, "pending")
            c.event(project, rng.choice(["success", "failed"]), -1, windows=False)
        elif action == "cancel":
            c.event(project, "pending", -1, windows=False)
        elif action == "init":
            for event in ("pending", "success", "failed"):
                c.set_total(project, event, rng.randint(0, 20))
        else:
            clock.t += rng.choice([1, 9, 61, 299, 301, 3599, 3601, 86399])
        snap = c.snapshot()
        assert_nested(snap)
        for project_name, windows in snap.items():
            for w in ("5m", "1h", "1d", "all"):
                assert c.snapshot(project_name, w) == {project_name: {w: windows[w]}}
