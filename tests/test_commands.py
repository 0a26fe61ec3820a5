"""`spiderflow one`, `spiderflow all`, `spiderflow export` and `spiderflow project` as real subprocesses,
crawling the local link farm to completion with exact counts; `one | head` and stop signals during start-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import require_service

from spiderflow.message import ProjectStatus, TaskStatus, md5_taskid
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.testing import link_farm_reachable, link_farm_url

FARM_SCRIPT = '''
# rate: 500
# burst: 500
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{start}", callback=self.index_page)

    @config(age=24 * 3600)
    def index_page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.index_page)
        return {{"n": int(response.url.rsplit("=", 1)[1]), "title": response.etree.findtext(".//title")}}
'''

TROUBLE_SCRIPT = '''
# rate: 500
# burst: 500
from spiderflow import *

class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}/encoding/broken", callback=self.broken_encoding)
        self.crawl("{base}/get?raise=1", callback=self.raises, retries=0)
        self.crawl("{base}/get?loop=1", callback=self.loops, retries=0)
        self.crawl("{start}", callback=self.index_page)

    def broken_encoding(self, response):
        return {{"text_length": len(response.text)}}

    def raises(self, response):
        raise ValueError("this callback always fails")

    def loops(self, response):
        while True:
            pass

    def index_page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.index_page)
        return {{"n": int(response.url.rsplit("=", 1)[1])}}
'''


def spiderflow(*args, cwd, env=None, timeout=120, **kwargs):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SPIDERFLOW_REQUIRE_SERVICES", None)
    return subprocess.run([sys.executable, "-m", "spiderflow.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def farm_hits(httpbin, total, show):
    return {uri: count for uri, count in httpbin.hits.items()
            if parse_qs(urlsplit(uri).query).get("total") == [str(total)]
            and parse_qs(urlsplit(uri).query).get("show") == [str(show)]}


def write_script(tmp_path, name, template, httpbin, total, show):
    path = tmp_path / f"{name}.py"
    path.write_text(template.format(start=httpbin.url + link_farm_url(total, show, 0), base=httpbin.url))
    return str(path)


def test_one_crawls_the_link_farm_exactly_once(tmp_path, httpbin):
    total, show = 173, 4
    expected = link_farm_reachable(total, show)
    script = write_script(tmp_path, "farm_one", FARM_SCRIPT, httpbin, total, show)
    out = spiderflow("one", script, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["result"]["n"] for r in rows) == sorted(expected)   # one result per page
    assert all(r["project"] == "farm_one" for r in rows)
    hits = farm_hits(httpbin, total, show)
    assert len(hits) == len(expected) and set(hits.values()) == {1}     # every page fetched once


def test_one_with_resultdb_and_url(tmp_path, httpbin):
    total, show = 31, 3
    script = write_script(tmp_path, "farm_url", FARM_SCRIPT, httpbin, total, show)
    resultdb = f"sqlite:///{tmp_path}/result.db"
    out = spiderflow("one", script, "--url", httpbin.url + link_farm_url(total, show, 0),
                     "--resultdb", resultdb, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == ""
    db = connect_resultdb(resultdb)
    assert db.count("farm_url") == len(link_farm_reachable(total, show))
    db.close()


def test_one_reports_a_broken_script_clearly(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("from spiderflow import *\nclass Handler(BaseHandler):\n    def on_start(self)\n        pass\n")
    out = spiderflow("one", str(script), cwd=tmp_path)
    assert out.returncode != 0
    assert "does not compile" in out.stderr and "line 3" in out.stderr and "Traceback" not in out.stderr
    missing = spiderflow("one", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert missing.returncode != 0 and "cannot read project script" in missing.stderr


def test_one_keeps_crawling_past_failing_callbacks(tmp_path, httpbin):
    total, show = 23, 3
    script = write_script(tmp_path, "trouble", TROUBLE_SCRIPT, httpbin, total, show)
    out = spiderflow("one", script, cwd=tmp_path, env={"SPIDERFLOW_PROCESS_TIME_LIMIT": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    pages = sorted(r["result"]["n"] for r in rows if "n" in r["result"])
    assert pages == sorted(link_farm_reachable(total, show))
    assert any("text_length" in r["result"] for r in rows)              # the broken encoding page decoded
    assert "this callback always fails" in out.stderr                   # the exception is reported
    assert "time limit" in out.stderr.lower()                           # the endless loop was stopped


def test_all_crawls_to_completion_and_export(tmp_path, httpbin):
    total, show = 211, 5
    expected = link_farm_reachable(total, show)
    script = write_script(tmp_path, "farm_all", FARM_SCRIPT, httpbin, total, show)
    data = tmp_path / "data"
    out = spiderflow("--data-dir", str(data), "all", "--project", script, "--exit-when-done",
                     "--scheduler-port", "0", "--no-webui", "--processor-num", "2", cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    resultdb = connect_resultdb(f"sqlite:///{data}/result.db")
    taskdb = connect_taskdb(f"sqlite:///{data}/task.db")
    try:
        assert resultdb.count("farm_all") == len(expected)
        assert sorted(r["result"]["n"] for r in resultdb.select("farm_all")) == sorted(expected)
        counts = taskdb.status_count("farm_all")
        assert counts[TaskStatus.ACTIVE] == 0 and counts[TaskStatus.FAILED] == 0
    finally:
        resultdb.close()
        taskdb.close()
    hits = farm_hits(httpbin, total, show)
    assert len(hits) == len(expected) and set(hits.values()) == {1}
    assert "every component stopped" in out.stderr

    csv_path = tmp_path / "out.csv"
    exported = spiderflow("--data-dir", str(data), "export", "farm_all", "-f", "csv", "-o", str(csv_path), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["taskid", "url"] and len(lines) == len(expected) + 1
    jsonl = spiderflow("--data-dir", str(data), "export", "farm_all", "-f", "jsonl", cwd=tmp_path)
    assert len(jsonl.stdout.splitlines()) == len(expected)


def test_all_goes_on_when_another_project_is_broken(tmp_path, httpbin):
    total, show = 37, 3
    data = tmp_path / "data"
    projectdb = connect_projectdb(f"sqlite:///{data}/project.db")
    projectdb.insert("broken", script="class Handler(:\n", status=ProjectStatus.RUNNING)
    projectdb.close()
    script = write_script(tmp_path, "trouble_all", TROUBLE_SCRIPT, httpbin, total, show)
    out = spiderflow("--data-dir", str(data), "all", "--project", script, "--exit-when-done",
                     "--scheduler-port", "0", "--no-webui", cwd=tmp_path, timeout=180,
                     env={"SPIDERFLOW_PROCESS_TIME_LIMIT": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    resultdb = connect_resultdb(f"sqlite:///{data}/result.db")
    pages = [r["result"]["n"] for r in resultdb.select("trouble_all") if "n" in r["result"]]
    resultdb.close()
    assert sorted(pages) == sorted(link_farm_reachable(total, show))
    assert "this callback always fails" in out.stderr and "time limit" in out.stderr.lower()
    assert "broken" in out.stderr and "does not compile" in out.stderr


def test_all_stops_on_sigterm_without_orphans(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(data), "all",
                             "--scheduler-port", "0", "--fetcher-num", "2", "--webui-port", str(free_port())],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(children) < 6:
            time.sleep(0.2)
            children = _children(proc.pid)
        assert len(children) == 6, f"expected 5 component processes and the web UI, saw {children}"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:    # a failed check must not leave the crawl running
            proc.kill()
            proc.communicate(timeout=30)
            for pid in children:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert "every component stopped" in err
    alive = [pid for pid in children if _alive(pid)]
    assert not alive, f"orphans left: {alive}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_all_serves_the_web_ui(tmp_path, httpbin):
    port = free_port()
    script = write_script(tmp_path, "ui_farm", FARM_SCRIPT, httpbin, 13, 2)
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "data"), "all",
                             "--project", script, "--webui-port", str(port), "--scheduler-port", str(free_port())],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/projects", timeout=2) as response:
                    body = json.loads(response.read())["projects"]
                if body and body[0].get("name") == "ui_farm":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        assert body and [p["name"] for p in body] == ["ui_farm"], body
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert f"web UI on http://127.0.0.1:{port}/" in err


def test_all_refuses_a_taken_web_ui_port(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = spiderflow("--data-dir", str(tmp_path / "data"), "all", "--webui-port", str(port), cwd=tmp_path)
    assert out.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--webui-port" in out.stderr
    remote = spiderflow("--data-dir", str(tmp_path / "data"), "all", "--webui-host", "0.0.0.0", cwd=tmp_path)
    assert remote.returncode != 0 and "Traceback" not in remote.stderr


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(x) for x in out.stdout.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_project_commands(tmp_path, httpbin):
    script = write_script(tmp_path, "stored", FARM_SCRIPT, httpbin, 10, 2)
    data = ["--data-dir", str(tmp_path / "data")]
    added = spiderflow(*data, "project", "add", script, "--status", "RUNNING", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = spiderflow(*data, "project", "list", "--json", cwd=tmp_path)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["status"], r["rate"]) for r in rows] == [("stored", "RUNNING", 500.0)]
    changed = spiderflow(*data, "project", "set-status", "stored", "stop", cwd=tmp_path)
    assert changed.returncode == 0 and "STOP" in changed.stdout
    unknown = spiderflow(*data, "project", "set-status", "nope", "STOP", cwd=tmp_path)
    assert unknown.returncode != 0 and "no project named 'nope'" in unknown.stderr
    bad = spiderflow(*data, "project", "set-status", "a'b", "STOP", cwd=tmp_path)
    assert bad.returncode != 0 and "invalid project name" in bad.stderr
    no_scheduler = spiderflow(*data, "project", "run", "stored", "--scheduler-port", "1", cwd=tmp_path)
    assert no_scheduler.returncode != 0 and "cannot reach" in no_scheduler.stderr


def test_standalone_component_needs_a_shared_queue(tmp_path):
    out = spiderflow("fetcher", cwd=tmp_path)
    assert out.returncode != 0 and "needs a shared queue" in out.stderr
    out = spiderflow("processor", "--queue", "multiprocessing://", cwd=tmp_path)
    assert out.returncode != 0 and "cannot be shared" in out.stderr
    out = spiderflow("scheduler", "--queue", "kafka://127.0.0.1", cwd=tmp_path)
    assert out.returncode != 0 and "known schemes" in out.stderr


def test_crawl_from_python_returns_results(httpbin):
    import spiderflow

    start = httpbin.url + link_farm_url(19, 3, 0)

    class Handler(spiderflow.BaseHandler):
        def on_start(self):
            self.crawl(start, callback=self.index_page)

        def index_page(self, response):
            for href in response.etree.xpath("//a/@href"):
                self.crawl(href, callback=self.index_page)
            return {"n": int(response.url.rsplit("=", 1)[1])}

    results = spiderflow.crawl(Handler, rate=1000, burst=1000)
    assert sorted(r["result"]["n"] for r in results) == sorted(link_farm_reachable(19, 3))
    assert {r["url"] for r in results} == {httpbin.url + link_farm_url(19, 3, n) for n in link_farm_reachable(19, 3)}


def test_all_refuses_an_unknown_result_sink(tmp_path):
    out = spiderflow("--data-dir", str(tmp_path / "data"), "all", "--result-sink", "nowhere", "--exit-when-done",
                     "--no-webui", cwd=tmp_path)
    assert out.returncode != 0 and "unknown result sink 'nowhere'" in out.stderr and "Traceback" not in out.stderr


def test_crawl_keeps_nothing_of_a_callback_that_swallowed_its_time_limit(tmp_path, httpbin):
    import spiderflow
    from spiderflow.settings import Settings

    start = httpbin.url + link_farm_url(7, 2, 0)

    class Handler(spiderflow.BaseHandler):
        def on_start(self):
            self.crawl(start, callback=self.stubborn, retries=0)

        def stubborn(self, response):
            self.crawl(start + "&next=1", callback=self.stubborn, retries=0)
            try:
                while True:
                    time.sleep(0.01)
            except BaseException:      # swallows TimeLimitExceeded too
                pass
            return {"late": True}

    taskdb_url = f"sqlite:///{tmp_path}/task.db"
    settings = Settings(process_time_limit=0.3, taskdb=taskdb_url, data_dir=str(tmp_path / "data"))
    assert spiderflow.crawl(Handler, settings=settings, rate=1000, burst=1000) == []
    taskdb = connect_taskdb(taskdb_url)
    try:
        counts = taskdb.status_count("Handler")
        assert counts[TaskStatus.FAILED] == 1 and counts[TaskStatus.ACTIVE] == 0
        assert taskdb.get("Handler", md5_taskid(start + "&next=1")) is None        # its follow-up was not kept
    finally:
        taskdb.close()


def test_one_piped_into_head_stops_at_once_and_quietly(tmp_path, httpbin):
    total, show = 400, 5
    script = write_script(tmp_path, "farm_head", FARM_SCRIPT, httpbin, total, show)
    taskdb = f"sqlite:///{tmp_path}/task.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPIDERFLOW_REQUIRE_SERVICES", None)
    started = time.monotonic()
    one = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "one", script, "--taskdb", taskdb],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-n", "1"], stdin=one.stdout, stdout=subprocess.PIPE)
    one.stdout.close()                        # head holds the only reading end: `one | head -1`
    try:
        first, _ = head.communicate(timeout=60)
        _out, err = one.communicate(timeout=30)   # before the fix: the pass's tasks waited out their lease
    finally:
        for proc in (one, head):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    err = err.decode(errors="replace")
    assert json.loads(first)["project"] == "farm_head"
    assert one.returncode == 0, err[-3000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err[-3000:]
    assert "the output was closed" in err
    db = connect_taskdb(taskdb)
    try:
        counts = db.status_count("farm_head")
        assert counts[TaskStatus.FAILED] == 0 and counts[TaskStatus.ACTIVE] > 0    # stopped early, nothing failed
    finally:
        db.close()
    again = spiderflow("one", script, "--taskdb", taskdb, cwd=tmp_path)       # the crawl goes on from there
    assert again.returncode == 0, again.stderr[-3000:]
    db = connect_taskdb(taskdb)
    try:
        counts = db.status_count("farm_head")
        assert counts[TaskStatus.ACTIVE] == 0 and counts[TaskStatus.FAILED] == 0
        assert counts[TaskStatus.SUCCESS] >= len(link_farm_reachable(total, show))
    finally:
        db.close()


class SilentServer:
    """A TCP server that accepts connections and never answers: a start-up connecting to it hangs."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connected = threading.Event()
        self.peers: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:
                return
            self.peers.append(peer)
            self.connected.set()

    def close(self):
        self.listener.close()
        for peer in self.peers:
            peer.close()


@pytest.mark.parametrize("kind", ["scheduler", "fetcher"])
def test_sigterm_during_start_up_is_logged_and_exits_cleanly(tmp_path, kind):
    silent = SilentServer()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPIDERFLOW_REQUIRE_SERVICES", None)
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "data"), kind,
                             "--queue", f"redis://127.0.0.1:{silent.port}/0"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert silent.connected.wait(30), "the component never connected to its queue"
        proc.send_signal(signal.SIGTERM)      # it waits for the queue's answer: still starting
        _out, err = proc.communicate(timeout=30)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"{kind}: SIGTERM received during start-up; exiting" in err, err[-3000:]
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_sigterm_while_a_component_opens_its_databases(tmp_path):
    redis_url = require_service("redis")
    silent = SilentServer()
    prefix = f"sftest-startup-{os.getpid()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPIDERFLOW_REQUIRE_SERVICES", None)
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "data"), "processor",
                             "--queue", f"{redis_url}?prefix={prefix}",
                             "--projectdb", f"postgresql://postgres@127.0.0.1:{silent.port}/test"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert silent.connected.wait(30), "the processor never connected to its projectdb"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "processor: SIGTERM received during start-up; exiting" in err, err[-3000:]
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
