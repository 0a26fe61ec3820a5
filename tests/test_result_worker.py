"""ResultWorker: batched upserts into a real sqlite resultdb, bad packs isolated, custom sinks."""

from __future__ import annotations

import io
import json
import threading

import pytest

from spiderflow.exceptions import ConfigError
from spiderflow.message import ResultPack
from spiderflow.queues import connect_queue
from spiderflow.result import JsonLinesResultWorker, ResultWorker, load_result_worker_class
from spiderflow.settings import Settings
from spiderflow.storage import connect_resultdb


@pytest.fixture
def resultdb(tmp_path):
    db = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
    yield db
    db.close()


def packs(n: int, project: str = "p", start: int = 0) -> list[ResultPack]:
    return [ResultPack(project, f"t{i}", f"http://example.com/{i}", {"i": i}, updatetime=1.0 + i)
            for i in range(start, start + n)]


def filled_queue(items) -> object:
    queue = connect_queue("memory://", "processor2result", 0)
    queue.put_many(items)
    return queue


class CountingDB:
    """Wraps a resultdb to count upsert_many calls and their sizes."""

    def __init__(self, db):
        self.db = db
        self.batches: list[int] = []

    def upsert(self, pack):
        self.upsert_many([pack])

    def upsert_many(self, packs):
        self.batches.append(len(packs))
        self.db.upsert_many(packs)


def test_batches_upserts_and_is_idempotent(resultdb):
    counting = CountingDB(resultdb)
    worker = ResultWorker(filled_queue(packs(25) + packs(5)), counting, Settings(result_batch=10))
    worker.run(burst=True)
    assert counting.batches == [10, 10, 10]
    assert resultdb.count("p") == 25  # the re-sent five overwrote their results
    assert resultdb.get("p", "t3")["result"] == {"i": 3}
    assert (worker.stored, worker.failed) == (30, 0)


def test_a_bad_pack_does_not_sink_its_batch(resultdb, caplog):
    bad = ResultPack("p", "bad", "http://example.com/bad", {"x": float("nan")})
    worker = ResultWorker(filled_queue([*packs(3), bad, *packs(3, start=3), "not a pack"]), resultdb,
                          Settings(result_batch=100))
    worker.run(burst=True)
    assert resultdb.count("p") == 6 and resultdb.get("p", "bad") is None
    assert (worker.stored, worker.failed) == (6, 1)
    assert "dropping the result of p:bad" in caplog.text
    assert "not a ResultPack" in caplog.text


def test_custom_sink_by_subclass():
    seen = []

    class Sink(ResultWorker):
        def on_result(self, pack):
            seen.append((pack.project, pack.taskid, pack.result))

    Sink(filled_queue(packs(3)), None, Settings(result_batch=2)).run(burst=True)
    assert seen == [("p", "t0", {"i": 0}), ("p", "t1", {"i": 1}), ("p", "t2", {"i": 2})]

    batches = []

    class BatchSink(ResultWorker):
        def on_results(self, packs):
            batches.append([p.taskid for p in packs])

    BatchSink(filled_queue(packs(3)), None, Settings(result_batch=2)).run(burst=True)
    assert batches == [["t0", "t1"], ["t2"]]


def test_a_sink_subclass_can_still_store(resultdb):
    class Both(ResultWorker):
        seen = 0

        def on_result(self, pack):
            super().on_result(pack)
            Both.seen += 1

    Both(filled_queue(packs(4)), resultdb).run(burst=True)
    assert resultdb.count("p") == 4 and Both.seen == 4


def test_json_lines_sink():
    stream = io.StringIO()
    JsonLinesResultWorker(filled_queue(packs(2)), stream=stream).run(burst=True)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [{"project": "p", "taskid": "t0", "url": "http://example.com/0", "result": {"i": 0}, "updatetime": 1.0},
                     {"project": "p", "taskid": "t1", "url": "http://example.com/1", "result": {"i": 1}, "updatetime": 2.0}]


def test_load_result_worker_class():
    assert load_result_worker_class(None) is ResultWorker
    assert load_result_worker_class("resultdb") is ResultWorker
    assert load_result_worker_class("jsonl") is JsonLinesResultWorker
    assert load_result_worker_class("spiderflow.result.worker:JsonLinesResultWorker") is JsonLinesResultWorker
    with pytest.raises(ConfigError, match="unknown result sink 'nope'.*jsonl, resultdb"):
        load_result_worker_class("nope")
    with pytest.raises(ConfigError, match="not a subclass of ResultWorker"):
        load_result_worker_class("spiderflow.message:ResultPack")
    with pytest.raises(ConfigError, match="cannot load"):
        load_result_worker_class("no.such.module:Thing")


def test_entry_point_sinks_are_found(monkeypatch):
    from importlib.metadata import EntryPoint

    from spiderflow.result import worker

    ep = EntryPoint("mysink", "spiderflow.result.worker:JsonLinesResultWorker", worker.ENTRY_POINT_GROUP)
    monkeypatch.setattr(worker, "entry_points", lambda group: [ep] if group == worker.ENTRY_POINT_GROUP else [])
    assert load_result_worker_class("mysink") is JsonLinesResultWorker


def test_run_stops_warm(resultdb):
    queue = connect_queue("memory://", "processor2result", 0)
    worker = ResultWorker(queue, resultdb, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    queue.put_many(packs(3))
    for _ in range(100):
        if resultdb.count("p") == 3:
            break
        threading.Event().wait(0.02)
    worker.stop()
    thread.join(5)
    assert not thread.is_alive() and resultdb.count("p") == 3


# -- a page's results with its status: stored, then the status passed on ----------------------------

def _page_message(i: int, follows: int = 2):
    from spiderflow.message import StatusPack, Task, Track
    status = StatusPack(taskid=f"t{i}", project="p", url=f"http://example.com/{i}",
                        track=Track(process={"ok": True}))
    links = [Task.create("p", f"http://example.com/{i}/{j}") for j in range(follows)]
    return (status, *packs(1, start=i), *links)


def test_results_are_stored_before_their_status_is_passed_on(resultdb):
    status_queue = connect_queue("memory://", "status_queue", 0)
    seen_at_forward: list[int] = []

    class Watch:
        def put_many(self, msgs, timeout=None):
            seen_at_forward.append(resultdb.count("p"))
            status_queue.put_many(msgs, timeout)

    worker = ResultWorker(filled_queue([_page_message(i) for i in range(4)]), resultdb,
                          Settings(result_batch=10), status_queue=Watch())
    worker.run(burst=True)
    assert seen_at_forward == [4]                      # every result was in resultdb before any status left
    forwarded = status_queue.get_many(100)
    assert [m[0].taskid for m in forwarded] == ["t0", "t1", "t2", "t3"]
    assert all(len(m) == 3 and not any(isinstance(x, ResultPack) for x in m) for m in forwarded)


def test_a_resultdb_outage_is_waited_out_without_dropping(resultdb, caplog):
    from spiderflow.exceptions import StorageUnavailable
    status_queue = connect_queue("memory://", "status_queue", 0)
    failures = {"left": 3}

    class Flaky:
        def upsert_many(self, batch):
            if failures["left"]:
                failures["left"] -= 1
                raise StorageUnavailable("resultdb upsert_many failed: OperationalError: server closed (test)")
            resultdb.upsert_many(batch)

    worker = ResultWorker(filled_queue([_page_message(i) for i in range(3)]), Flaky(), Settings(result_batch=10),
                          status_queue=status_queue)
    worker._outage.first = 0.01
    worker.run(burst=True)
    assert failures["left"] == 0 and "database is unavailable" in caplog.text and "database is back" in caplog.text
    assert resultdb.count("p") == 3 and (worker.stored, worker.failed) == (3, 0)
    assert len(status_queue.get_many(100)) == 3


def test_a_closed_output_stops_the_jsonl_worker_without_losing_statuses():
    """`result-worker --sink jsonl | head`: once the pipe closes nothing is acknowledged or passed on."""
    status_queue = connect_queue("memory://", "status_queue", 0)

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    worker = JsonLinesResultWorker(filled_queue([_page_message(i) for i in range(3)]), stream=Closed())
    worker.status_queue = status_queue
    worker.run(burst=True)
    assert status_queue.qsize() == 0          # no task reported done without its result written
    assert worker.stored == 0 and worker.failed == 0
