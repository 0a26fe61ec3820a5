"""Processor: pyspider scripts through process(), failures as data, the worker loop.

Scripts are real project scripts loaded from a real sqlite projectdb; pages are fetched
from the local test server with the real Fetcher or built by hand.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from spiderflow.fetcher import Fetcher
from spiderflow.message import FetchResult, Process, ResultPack, Task, pack, special_task, unpack
from spiderflow.processor import Processor, ProjectManager
from spiderflow.queues import connect_queue
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb
from spiderflow.testing import link_farm_url

SAMPLE = '''
from spiderflow import *


class Handler(BaseHandler):
    crawl_config = {"headers": {"X-Crawler": "sample"}}

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl(START_URL, callback=self.index_page)

    @config(age=10 * 24 * 60 * 60)
    def index_page(self, response):
        for each in response.doc('a[href^="http"]').items():
            self.crawl(each.attr.href, callback=self.detail_page)

    @config(priority=2)
    def detail_page(self, response):
        return {
            "url": response.url,
            "title": response.doc('title').text(),
        }
'''

FAILING = '''
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        logger.info("starting")
        print("printed line")
        self.crawl("http://example.com/next", callback=self.page)
        raise ValueError("boom in on_start")

    def page(self, response):
        return {"ok": True}

    def loop(self, response):
        while True:
            try:
                pass
            except Exception:  # must not swallow the time limit
                pass

    def swallow(self, response):
        import time
        self.crawl("http://example.com/before", callback=self.page)
        yield {"before": True}
        try:
            while True:
                time.sleep(0.01)
        except BaseException:
            pass
        self.crawl("http://example.com/after", callback=self.page)
        self.send_message("receiver", "after")
        yield {"swallowed": True}

    def swallow_then_raise(self, response):
        import time
        try:
            while True:
                time.sleep(0.01)
        except BaseException:
            raise ValueError("cleaning up after the time limit went wrong")

    def swallow_quietly(self, response):
        import time
        try:
            while True:
                time.sleep(0.01)
        except BaseException:
            pass

    def bad_crawl(self, response):
        self.crawl("ftp://example.com/file", callback=self.page)

    def chatty(self, response):
        for i in range(50):
            logger.debug("line %d", i)

    def several(self, response):
        yield {"n": 1}
        yield {"n": 2, "nested": {"a": [1, 2]}}
        yield {"n": 3}

    def not_json(self, response):
        yield {"fine": 1}
        yield {"when": object()}

    def summarised(self, response):
        yield {"when": object()}
        yield "\u00e9" * 150
        yield {"n": "\u00e9"}

    def exits(self, response):
        import sys
        sys.exit(3)

    def messenger(self, response):
        self.send_message("receiver", {"from": response.url})

    @catch_status_code_error
    def lenient(self, response):
        return {"status": response.status_code}

    def text_of(self, response):
        return {"text": response.text, "encoding": response.encoding}
'''

RECEIVER = '''
from spiderflow import *


class Handler(BaseHandler):
    retry_delay = {0: 5, "": 50}

    @every(seconds=30)
    def half_minute(self):
        self.crawl("http://example.com/half", callback=self.on_message)

    @every(minutes=2)
    def two_minutes(self, response):
        self.crawl("http://example.com/two", callback=self.on_message)

    def on_message(self, project, msg):
        return {"sender": project, "msg": msg}
'''

BROKEN = '''
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self)
        pass
'''


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def projectdb(tmp_path, httpbin):
    db = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    db.insert("sample", script=SAMPLE.replace("START_URL", repr(httpbin.url + link_farm_url(20, 3))),
              status="RUNNING")
    db.insert("failing", script=FAILING, status="RUNNING")
    db.insert("receiver", script=RECEIVER, status="RUNNING")
    db.insert("broken", script=BROKEN, status="RUNNING")
    yield db
    db.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def processor(projectdb, clock):
    return Processor(projectdb=projectdb, settings=Settings(log_tail=10, process_time_limit=5), clock=clock)


@pytest.fixture(scope="module")
def fetcher():
    return Fetcher(None, None, Settings())


def task_for(project: str, url: str, callback: str, **process: object) -> Task:
    return Task.create(project, url, process=Process(callback=callback, **process))


def page(url: str, status: int = 200, content: bytes = b"<html></html>", **kw: object) -> FetchResult:
    return FetchResult(status, url, content=content, headers=kw.pop("headers", {"Content-Type": "text/html"}), **kw)


# -- a pyspider script end to end ------------------------------------------------------------------

def test_pyspider_sample_runs_through_process(processor, fetcher, httpbin):
    start = special_task("sample", "on_start")
    outcome = processor.process(start, page(start.url, content=b"on_start"))
    assert outcome.ok, outcome.exception
    [index] = outcome.new_tasks
    assert index.url == httpbin.url + link_farm_url(20, 3)
    assert (index.process.callback, index.schedule.age) == ("index_page", 10 * 24 * 60 * 60)
    assert index.fetch.headers == {"X-Crawler": "sample"}

    outcome = processor.process(index, fetcher.fetch_sync(index))
    assert outcome.ok, outcome.exception
    assert len(outcome.new_tasks) == 3
    assert [unpack(pack(t)) for t in outcome.new_tasks] == outcome.new_tasks
    assert all(t.url.startswith(httpbin.url + "/links?") for t in outcome.new_tasks)
    assert {(t.process.callback, t.schedule.priority, t.schedule.age) for t in outcome.new_tasks} == {("detail_page", 2, -1)}
    assert outcome.status_pack.track.process["follows"] == 3

    detail = outcome.new_tasks[0]
    outcome = processor.process(detail, fetcher.fetch_sync(detail))
    assert outcome.ok, outcome.exception
    [result] = outcome.results
    assert result == ResultPack("sample", detail.taskid, detail.url,
                                {"url": detail.url, "title": result.result["title"]}, updatetime=processor.clock())
    assert result.result["title"].startswith("link farm page")
    track = outcome.status_pack.track
    assert track.fetch["ok"] and track.fetch["status_code"] == 200 and track.fetch["url"] == detail.url
    assert track.fetch["content_length"] > 0 and track.fetch["encoding"] == "utf-8"
    assert track.process["ok"] and track.process["exception"] is None
    assert json.loads(track.process["result"]) == result.result
    assert unpack(pack(outcome.status_pack)) == outcome.status_pack  # survives a process boundary
    assert unpack(pack(result)) == result


# -- failures become data --------------------------------------------------------------------------

def test_callback_exception_is_captured_with_traceback_and_logs(processor):
    outcome = processor.process(special_task("failing", "on_start"), page("data:,on_start"))
    process = outcome.status_pack.track.process
    assert not outcome.ok and process["ok"] is False
    assert process["exception"].startswith("Traceback (most recent call last):")
    assert 'File "<project failing>", line 10, in on_start' in process["exception"]
    assert 'raise ValueError("boom in on_start")' in process["exception"]
    assert process["exception"].endswith("ValueError: boom in on_start")
    assert "spiderflow/processor" not in process["exception"]  # our frames are cut
    assert "starting" in process["logs"] and "printed line" in process["logs"]
    assert "ValueError: boom in on_start" in process["logs"]
    assert [t.url for t in outcome.new_tasks] == ["http://example.com/next"]  # follows before the error are kept
    # the processor goes on
    ok = processor.process(task_for("failing", "http://example.com/next", "page"), page("http://example.com/next"))
    assert ok.ok and ok.results[0].result == {"ok": True}


def test_bad_crawl_arguments_fail_the_task_with_a_clear_error(processor):
    outcome = processor.process(task_for("failing", "http://example.com/", "bad_crawl"), page("http://example.com/"))
    assert 'self.crawl("ftp://example.com/file", callback=self.page)' in outcome.exception
    assert outcome.exception.endswith("CrawlError: self.crawl(): unsupported URL scheme 'ftp' in "
                                      "'ftp://example.com/file'; use http, https or data")


def test_sys_exit_in_a_callback_only_fails_the_task(processor):
    outcome = processor.process(task_for("failing", "http://example.com/", "exits"), page("http://example.com/"))
    assert "SystemExit: 3" in outcome.exception


def test_log_tail_is_bounded(processor):
    outcome = processor.process(task_for("failing", "http://example.com/", "chatty"), page("http://example.com/"))
    assert outcome.ok
    assert len(outcome.logs) == 50
    tail = outcome.status_pack.track.process["logs"].splitlines()
    assert len(tail) == 10 and tail[-1].endswith("line 49")


def test_missing_callback_and_unknown_project(processor):
    outcome = processor.process(task_for("failing", "http://example.com/", "nope"), page("http://example.com/"))
    assert outcome.exception == "NotImplementedError: self.nope() is not defined in Handler"
    outcome = processor.process(task_for("ghost", "http://example.com/", "x"), page("http://example.com/"))
    assert outcome.exception == "ScriptError: no project named 'ghost'"
    assert outcome.status_pack.track.process["ok"] is False


def test_broken_script_fails_its_tasks_and_not_others(processor, projectdb, clock):
    outcome = processor.process(special_task("broken", "on_start"), page("data:,on_start"))
    assert not outcome.ok
    assert outcome.exception.startswith("ScriptError: project broken: the script does not compile")
    assert "SyntaxError" in outcome.exception and "line 5" in outcome.exception
    errors = processor.project_errors()
    assert list(errors) == ["broken"] and "SyntaxError" in errors["broken"]
    # another project is unaffected
    assert processor.process(task_for("failing", "http://example.com/next", "page"), page("http://example.com/next")).ok

    # fixing the script is picked up at the next check (by md5), and the error clears
    projectdb.update("broken", script=BROKEN.replace("on_start(self)", "on_start(self):"))
    assert not processor.process(special_task("broken", "on_start"), page("data:,on_start")).ok  # not checked yet
    clock.now += 10
    assert processor.process(special_task("broken", "on_start"), page("data:,on_start")).ok
    assert processor.project_errors() == {}


def test_script_change_reloads_only_on_new_md5(processor, projectdb, clock):
    processor.process(task_for("failing", "http://example.com/next", "page"), page("http://example.com/next"))
    first = processor.projects.get("failing")
    projectdb.update("failing", status="STOP")  # updatetime moves, script does not
    clock.now += 10
    assert processor.projects.get("failing") is first
    projectdb.update("failing", script=FAILING.replace('{"ok": True}', '{"ok": "v2"}'))
    clock.now += 10
    outcome = processor.process(task_for("failing", "http://example.com/next", "page"), page("http://example.com/next"))
    assert outcome.results[0].result == {"ok": "v2"}
    assert processor.projects.get("failing") is not first


def test_a_script_that_fails_at_import_or_has_no_handler():
    manager = ProjectManager()
    assert "ZeroDivisionError" in manager.add("imp", "x = 1 / 0\n").error
    assert "no class Handler(BaseHandler)" in manager.add("empty", "x = 1\n").error
    assert set(manager.errors()) == {"imp", "empty"}


# -- the time limit ----------------------------------------------------------------------------------

def test_endless_callback_is_stopped_at_the_time_limit(processor):
    started = time.monotonic()
    outcome = processor.process(task_for("failing", "http://example.com/", "loop", time_limit=0.3),
                                page("http://example.com/"))
    assert 0.25 < time.monotonic() - started < 3
    assert "TimeLimitExceeded" in outcome.exception and "time limit of 0.3 s" in outcome.exception
    assert 'File "<project failing>"' in outcome.exception  # where it was stopped
    assert processor.process(task_for("failing", "http://example.com/next", "page"), page("http://example.com/next")).ok


def test_a_swallowed_time_limit_fails_the_task_and_keeps_nothing(processor, caplog):
    with caplog.at_level(logging.ERROR, logger="spiderflow.processor"):
        outcome = processor.process(task_for("failing", "http://example.com/", "swallow", time_limit=0.2),
                                    page("http://example.com/"))
    assert outcome.exception == "TimeLimitExceeded: the callback ran past the process time limit of 0.2 s"
    assert not outcome.ok and outcome.status_pack.track.process["ok"] is False
    assert outcome.results == [] and outcome.new_tasks == []     # neither before nor after the limit fired
    assert outcome.status_pack.track.process["results"] == 0 and outcome.status_pack.track.process["follows"] == 0
    assert any("dropped the callback's 2 results, 2 follow-up requests, 1 message" in line for line in outcome.logs)
    assert "time limit of 0.2 s" in caplog.text


@pytest.mark.parametrize("callback", ["swallow_then_raise", "swallow_quietly"])
def test_a_caught_time_limit_is_reported_whatever_the_callback_does_next(processor, callback):
    outcome = processor.process(task_for("failing", "http://example.com/", callback, time_limit=0.2),
                                page("http://example.com/"))
    assert outcome.exception.rstrip().rsplit("\n", 1)[-1] == \
        "TimeLimitExceeded: the callback ran past the process time limit of 0.2 s"
    assert outcome.results == [] and outcome.new_tasks == []
    if callback == "swallow_then_raise":
        assert "ValueError: cleaning up after the time limit went wrong" in outcome.exception


def test_time_limit_off_the_main_thread(processor):
    box = {}

    def work():
        for callback in ("loop", "swallow"):
            box[callback] = processor.process(task_for("failing", "http://example.com/", callback, time_limit=0.3),
                                              page("http://example.com/"))
        box["after"] = processor.process(task_for("failing", "http://example.com/n", "page"), page("http://example.com/n"))
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert "TimeLimitExceeded" in box["loop"].exception
    assert "TimeLimitExceeded" in box["swallow"].exception
    assert box["swallow"].results == [] and box["swallow"].new_tasks == []
    assert box["after"].ok


def test_time_limit_leaves_foreign_alarms_alone():
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        manager = ProjectManager()
        manager.add("failing", FAILING)
        outcome = Processor(projects=manager).process(task_for("failing", "http://example.com/", "loop", time_limit=0.5),
                                                      page("http://example.com/"))
        assert "TimeLimitExceeded" in outcome.exception
        assert fired == [1]  # the outer timer fired once, inside the window, and was forwarded
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _foreign_alarm(signum, frame):
    pass


@pytest.mark.parametrize("previous", ["SIG_DFL", "SIG_IGN", _foreign_alarm])
def test_time_limit_restores_the_previous_alarm_handler(previous):
    import signal

    from spiderflow.processor.timelimit import TimeLimit, TimeLimitExceeded

    previous = getattr(signal, previous) if isinstance(previous, str) else previous
    saved = signal.signal(signal.SIGALRM, previous)
    timer = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's, if it runs
    try:
        with TimeLimit(5.0):
            assert signal.getsignal(signal.SIGALRM) != previous
        assert signal.getsignal(signal.SIGALRM) == previous
        with pytest.raises(TimeLimitExceeded):
            with TimeLimit(0.05):
                time.sleep(2)
        assert signal.getsignal(signal.SIGALRM) == previous
        assert (signal.getitimer(signal.ITIMER_REAL)[0] > 0) is (timer[0] > 0)
    finally:
        signal.signal(signal.SIGALRM, saved)


# -- status codes -----------------------------------------------------------------------------------------

def test_non_2xx_fails_unless_caught(processor, fetcher, httpbin):
    task = task_for("failing", httpbin.url + "/status/404", "page")
    outcome = processor.process(task, fetcher.fetch_sync(task))
    assert outcome.exception.startswith("HTTPError: HTTP 404")
    assert outcome.status_pack.track.fetch["status_code"] == 404 and not outcome.status_pack.track.fetch["ok"]

    task = task_for("failing", httpbin.url + "/status/404", "lenient")
    outcome = processor.process(task, fetcher.fetch_sync(task))
    assert outcome.ok and outcome.results[0].result == {"status": 404}

    failed = FetchResult(599, "http://127.0.0.1:9/", error="Connection refused")
    outcome = processor.process(task_for("failing", "http://127.0.0.1:9/", "page"), failed)
    assert outcome.exception == "HTTPError: HTTP 599: Connection refused"
    assert outcome.status_pack.track.fetch["error"] == "Connection refused"


def test_304_is_a_success_without_running_the_callback(processor):
    task = task_for("failing", "http://example.com/", "page")
    task.track.fetch.update(etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    outcome = processor.process(task, page("http://example.com/", 304, b""))
    assert outcome.ok and outcome.results == []
    fetch = outcome.status_pack.track.fetch
    assert (fetch["etag"], fetch["last_modified"]) == ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")


def test_fetch_track_carries_validators(processor, fetcher, httpbin):
    task = task_for("failing", httpbin.url + "/etag/abc", "page")
    outcome = processor.process(task, fetcher.fetch_sync(task))
    assert outcome.ok, outcome.exception
    assert "abc" in outcome.status_pack.track.fetch["etag"]
    assert set(outcome.status_pack.track.fetch) >= {"ok", "status_code", "time", "error", "url", "content_length",
                                                    "etag", "last_modified"}


def test_broken_encoding_page_is_processed(processor, fetcher, httpbin):
    task = task_for("failing", httpbin.url + "/encoding/broken", "text_of")
    outcome = processor.process(task, fetcher.fetch_sync(task))
    assert outcome.ok, outcome.exception
    assert "\ufffd" in outcome.results[0].result["text"] and outcome.results[0].result["encoding"] == "utf-8"


# -- results ------------------------------------------------------------------------------------------------

def test_several_results_get_stable_task_ids_and_upsert_idempotently(processor, tmp_path):
    task = task_for("failing", "http://example.com/list", "several")
    first = processor.process(task, page(task.url))
    assert [p.taskid for p in first.results] == [task.taskid, task.taskid + "#1", task.taskid + "#2"]
    assert first.status_pack.track.process["results"] == 3
    resultdb = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
    resultdb.upsert_many(first.results)
    resultdb.upsert_many(processor.process(task, page(task.url)).results)  # the task is re-sent
    assert resultdb.count("failing") == 3
    assert resultdb.get("failing", task.taskid + "#1")["result"] == {"n": 2, "nested": {"a": [1, 2]}}
    resultdb.close()


def test_non_json_result_is_a_clear_error(processor):
    task = task_for("failing", "http://example.com/", "not_json")
    outcome = processor.process(task, page(task.url))
    assert [p.result for p in outcome.results] == [{"fine": 1}]
    assert outcome.exception.startswith("ResultError: result 1 of the callback is not JSON data")
    assert "object is not JSON serializable" in outcome.exception
    assert outcome.status_pack.track.process["ok"] is False


def test_track_summarises_the_first_stored_result(processor):
    outcome = processor.process(task_for("failing", "http://example.com/", "summarised"), page("http://example.com/"))
    assert [p.result for p in outcome.results] == ["\u00e9" * 150, {"n": "\u00e9"}]
    assert outcome.status_pack.track.process["result"] == "\u00e9" * 97 + "..."
    assert outcome.status_pack.track.process["results"] == 2
    several = processor.process(task_for("failing", "http://example.com/", "several"), page("http://example.com/"))
    assert several.status_pack.track.process["result"] == '{"n":1}'
    assert processor.process(task_for("failing", "http://example.com/", "chatty"),
                             page("http://example.com/")).status_pack.track.process["result"] is None


# -- special tasks --------------------------------------------------------------------------------------------

def test_send_message_and_on_message(processor):
    outcome = processor.process(task_for("failing", "http://example.com/m", "messenger"), page("http://example.com/m"))
    assert outcome.ok
    [message] = outcome.new_tasks
    assert (message.project, message.process.callback) == ("receiver", "_on_message")
    # the fetcher passes fetch.save through as the response's save
    received = processor.process(message, page(message.url, save=message.fetch.save))
    assert received.ok, received.exception
    assert received.results[0].result == {"sender": "failing", "msg": {"from": "http://example.com/m"}}
    # a message from the command line: save is the bare message
    command = special_task("receiver", "_on_message", save="hello")
    outcome = processor.process(command, page(command.url, save="hello"))
    assert outcome.results[0].result == {"sender": None, "msg": "hello"}
    command = special_task("receiver", "_on_message", save=["a", "b"])
    outcome = processor.process(command, page(command.url, save=["a", "b"]))
    assert outcome.results[0].result == {"sender": None, "msg": ["a", "b"]}


def test_on_get_info(processor):
    task = special_task("receiver", "_on_get_info")
    outcome = processor.process(task, page(task.url))
    assert outcome.ok
    assert outcome.status_pack.track.process["save"] == {
        "min_tick": 30, "retry_delay": {0: 5.0, -1: 50.0}, "crawl_config": {}}
    assert unpack(pack(outcome.status_pack)) == outcome.status_pack
    assert outcome.results == [] and outcome.new_tasks == []


def test_on_cronjob_runs_the_due_every_methods(processor):
    def cron(tick, **extra):
        task = special_task("receiver", "_on_cronjob", save={"tick": tick, **extra})
        outcome = processor.process(task, page(task.url, save=task.fetch.save))
        assert outcome.ok, outcome.exception
        return sorted(t.url.rsplit("/", 1)[1] for t in outcome.new_tasks)

    assert cron(1_000_020) == ["half"]                 # 1_000_020 % 30 == 0, % 120 != 0
    assert cron(1_000_080) == ["half", "two"]          # divisible by both
    assert cron(1_000_081) == []                       # between ticks
    assert cron(1_000_200, last_tick=1_000_080) == ["half", "two"]  # missed ticks caught up, once each
    assert cron(1_000_200, last_tick=1_000_199) == ["half", "two"]
    task = special_task("receiver", "_on_cronjob")
    assert processor.process(task, page(task.url)).ok  # no tick: nothing to do


def test_on_finished_default_is_a_no_op(processor):
    task = special_task("sample", "on_finished")
    outcome = processor.process(task, page(task.url))
    assert outcome.ok and outcome.results == [] and outcome.new_tasks == []


# -- the worker loop ------------------------------------------------------------------------------------------

class Recorder:
    """A memory queue that also records the size of every put_many call."""

    def __init__(self, name: str):
        self.queue = connect_queue("memory://", name, 1000)
        self.batches: list[int] = []

    def put(self, msg, timeout=None):
        self.queue.put(msg, timeout)

    def put_many(self, msgs, timeout=None):
        msgs = list(msgs)
        self.batches.append(len(msgs))
        self.queue.put_many(msgs, timeout)

    def drain(self):
        return self.queue.get_many(10_000)


def test_run_burst_puts_one_message_per_page(projectdb, clock, httpbin):
    """A page's status travels with its follows; with results, through processor2result."""
    inqueue = connect_queue("memory://", "fetcher2processor", 100)
    status, newtask, result = Recorder("status_queue"), Recorder("newtask_queue"), Recorder("processor2result")
    processor = Processor(inqueue, status, newtask, result, projectdb, Settings(), clock)

    index = task_for("sample", "http://example.com/", "index_page")
    links = "".join(f'<a href="/p{i}">p{i}</a>' for i in range(5)).encode()
    inqueue.put((index, page(index.url, content=links)))
    inqueue.put("not a task pair")
    bad = task_for("failing", "http://example.com/", "nope")
    inqueue.put((bad, page(bad.url)))
    detail = task_for("sample", "http://example.com/p1", "detail_page")
    inqueue.put((detail, page(detail.url, content=b"<title>P1</title>")))
    processor.run(burst=True)

    assert newtask.drain() == []      # follows never travel apart from their page's status
    index_msg, failed_pack = status.drain()
    assert isinstance(index_msg, tuple) and index_msg[0].taskid == index.taskid
    assert index_msg[0].track.process["ok"] is True
    assert [t.url for t in index_msg[1:]] == [f"http://example.com/p{i}" for i in range(5)]
    assert failed_pack.project == "failing" and failed_pack.track.process["ok"] is False
    (detail_msg,) = result.drain()    # a page with results: status, results and follows in one message
    assert detail_msg[0].taskid == detail.taskid and detail_msg[0].track.process["ok"] is True
    assert [r.result for r in detail_msg[1:]] == [{"url": "http://example.com/p1", "title": "P1"}]
    assert processor.processed == 3 and processor.failed == 1


def test_run_stops_warm(projectdb, clock):
    inqueue = connect_queue("memory://", "fetcher2processor", 10)
    status = connect_queue("memory://", "status_queue", 10)
    processor = Processor(inqueue, status, None, None, projectdb, Settings(), clock, poll_interval=0.05)
    thread = threading.Thread(target=processor.run)
    thread.start()
    task = task_for("failing", "http://example.com/next", "page")
    inqueue.put((task, page(task.url)))
    assert status.get(timeout=5).taskid == task.taskid
    processor.stop()
    thread.join(5)
    assert not thread.is_alive()



POISON = '''
from spiderflow import *


class Handler(BaseHandler):
    def page(self, response):
        print("value", response.json["v"])
        self.crawl("http://example.com/after", callback=self.page)
        return response.json
'''


@pytest.fixture
def pipeline(projectdb, clock):
    """A processor between real multiprocessing queues (they pack every message, as all backends but memory://)."""
    projectdb.insert("poison", script=POISON, status="RUNNING")
    queues = [connect_queue("multiprocessing://", name, 10)
              for name in ("fetcher2processor", "status_queue", "processor2result")]
    yield Processor(queues[0], queues[1], None, queues[2], projectdb, Settings(), clock), *queues
    for q in queues:
        q.close()


def test_a_lone_surrogate_fails_the_result_not_the_page(pipeline):
    """``"\\ud800"`` from response.json: that result is dropped with a clear error (the task fails,
    so it is retried and then FAILED), the printed line is kept, the follow-up request goes on."""
    processor, inqueue, status, results = pipeline
    task = task_for("poison", "http://example.com/", "page")
    inqueue.put((task, page(task.url, content=b'{"v": "\\ud800"}')))
    processor.run(burst=True)
    failed, follow = status.get(timeout=5)
    assert failed.taskid == task.taskid and failed.track.process["ok"] is False
    assert "ResultError: result 0 of the callback holds text that is not valid Unicode" in failed.track.process["exception"]
    assert "value ?" in failed.track.process["logs"]
    assert follow.url == "http://example.com/after" and results.qsize() == 0


def test_an_unsendable_output_fails_its_task_instead_of_stalling_it(pipeline):
    """An int beyond 64 bits is JSON but cannot be packed: the status goes on alone with the
    reason, rather than nothing at all (the task would stay ACTIVE, re-sent every lease)."""
    processor, inqueue, status, results = pipeline
    task = task_for("poison", "http://example.com/", "page")
    inqueue.put((task, page(task.url, content=b'{"v": 18446744073709551616}')))
    fine = task_for("sample", "http://example.com/p1", "detail_page")
    inqueue.put((fine, page(fine.url, content=b"<title>P1</title>")))
    processor.run(burst=True)

    failed = status.get(timeout=5)   # the status alone: no results, no follows
    assert failed.taskid == task.taskid and failed.track.process["ok"] is False
    assert failed.track.process["exception"].startswith("SerializationError: the callback's output cannot be sent")
    assert "1 result(s) and 1 follow-up request(s) were dropped" in failed.track.process["exception"]
    assert failed.track.process["follows"] == 0 and failed.track.process["results"] == 0
    assert "value 18446744073709551616" in failed.track.process["logs"]
    assert status.qsize() == 0 and processor.failed == 1 and processor.processed == 2
    good = results.get(timeout=5)    # the next page goes through as usual
    assert good[0].taskid == fine.taskid and good[1].result == {"url": fine.url, "title": "P1"}

    in_process = processor.process_checked(task, page(task.url, content=b'{"v": 18446744073709551616}'))
    assert in_process.results == [] and in_process.new_tasks == []
    assert in_process.exception.startswith("SerializationError")
