"""Counters: sliding windows, totals, averages, and the counter file (corrupt files replaced)."""

from __future__ import annotations

import json
import logging

from spiderflow.scheduler.counter import Counters


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
    assert snap["all"]["pending"] == 2 and snap["5m"]["pending"] == 5
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
