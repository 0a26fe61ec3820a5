"""OneScheduler: fetch → process → result inline for one project, with a real lxml processing step."""

from __future__ import annotations

import asyncio

import lxml.html

from spiderflow.message import FetchResult, Process, ResultPack, Schedule, StatusPack, Task, TaskStatus, Track, md5_taskid
from spiderflow.scheduler import OneScheduler
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb

SITE = "http://farm.test"
PAGES = 40
BROKEN = 17          # this page answers 404


class LinkFarm:
    """An async fetcher for a small link farm: page N links to 3N+1..3N+3, N+1 and back to 0."""

    def __init__(self):
        self.fetched: list[str] = []

    async def fetch(self, task: Task) -> FetchResult:
        await asyncio.sleep(0)
        self.fetched.append(task.url)
        if task.url.startswith("data:,"):
            return FetchResult(status_code=200, url=task.url, content=task.url[6:].encode(), save=task.fetch.save)
        n = int(task.url.rsplit("/", 1)[1])
        if n == BROKEN:
            return FetchResult(status_code=404, url=task.url, content=b"not found")
        links = "".join(f'<li><a href="/page/{k}">page {k}</a></li>'
                        for k in (3 * n + 1, 3 * n + 2, 3 * n + 3, 0, n + 1) if k < PAGES)
        html = f"<html><head><title>Page {n}</title></head><body><ul>{links}</ul></body></html>"
        return FetchResult(status_code=200, url=task.url, content=html.encode(), headers={"Content-Type": "text/html"},
                           time=0.01)


class Script:
    """A small project script: on_start, index_page (lxml), on_finished and _on_get_info."""

    def __init__(self):
        self.finished = 0

    def __call__(self, task: Task, response: FetchResult):
        callback = task.process.callback
        new: list[Task] = []
        results: list[ResultPack] = []
        process: dict = {"ok": True, "time": 0.001}
        if callback == "_on_get_info":
            process["save"] = {"min_tick": 0, "retry_delay": {"": 0}, "crawl_config": {"headers": {"X-Farm": "1"}}}
        elif callback == "on_start":
            new.append(self.crawl(task.project, f"{SITE}/page/0"))
        elif callback == "on_finished":
            self.finished += 1
        elif callback == "index_page":
            if not response.ok:
                process.update(ok=False, exception=f"HTTP {response.status_code}")
            else:
                doc = lxml.html.fromstring(response.content, base_url=response.url)
                doc.make_links_absolute(response.url)
                for href in doc.xpath("//a/@href"):
                    new.append(self.crawl(task.project, href))
                title = doc.findtext(".//title")
                results.append(ResultPack(project=task.project, taskid=task.taskid, url=task.url,
                                          result={"title": title, "links": len(new),
                                                  "header": task.fetch.headers.get("X-Farm")}))
        track = Track(fetch={"ok": response.ok, "status_code": response.status_code, "time": response.time},
                      process=process)
        return StatusPack(taskid=task.taskid, project=task.project, url=task.url, track=track), new, results

    @staticmethod
    def crawl(project: str, url: str) -> Task:
        return Task.create(project, url, schedule=Schedule(retries=1, age=86400),   # like @config(age=...)
                           process=Process(callback="index_page"))


def test_one_scheduler_crawls_a_link_farm(tmp_path):
    projectdb = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    taskdb = connect_taskdb(f"sqlite:///{tmp_path}/task.db")
    resultdb = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
    projectdb.insert("farm", status="DEBUG", script="class Handler: ...", rate=1000, burst=1000)
    projectdb.insert("other", status="RUNNING", script="x", rate=1000, burst=1000)
    fetcher, script = LinkFarm(), Script()
    one = OneScheduler(projectdb=projectdb, taskdb=taskdb, resultdb=resultdb, fetcher=fetcher, process=script,
                       project="farm", settings=Settings(data_dir=str(tmp_path / "data"), loop_interval=0.01),
                       finished_delay=0.05)
    one.run_project("farm")
    asyncio.run(asyncio.wait_for(one.run(burst=True), 20))

    assert set(one.projects) == {"farm"}
    pages = [u for u in fetcher.fetched if u.startswith(SITE)]
    broken = f"{SITE}/page/{BROKEN}"
    assert pages.count(broken) == 2                     # tried, retried once (retry_delay "" = 0), failed
    assert sorted(set(pages)) == sorted(f"{SITE}/page/{n}" for n in range(PAGES))
    assert len(pages) == PAGES + 1                      # every other page exactly once
    assert script.finished == 1
    counts = taskdb.status_count("farm")
    assert counts[TaskStatus.SUCCESS] == PAGES - 1 + 2  # + on_start, on_finished
    assert counts[TaskStatus.FAILED] == 1 and counts[TaskStatus.ACTIVE] == 0
    assert taskdb.get("farm", md5_taskid(broken))["status"] == "FAILED"
    assert resultdb.count("farm") == PAGES - 1
    row = resultdb.get("farm", md5_taskid(f"{SITE}/page/1"))
    assert row["result"] == {"title": "Page 1", "links": 5, "header": "1"}   # crawl_config joined
    assert one.counters("farm")["farm"]["all"]["failed"] == 1
    for db in (projectdb, taskdb, resultdb):
        db.close()


def test_errors_in_fetch_and_process_become_status(tmp_path):
    projectdb = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    taskdb = connect_taskdb(f"sqlite:///{tmp_path}/task.db")
    projectdb.insert("p", status="RUNNING", script="x", rate=1000, burst=1000)
    results = []

    class Broken:
        def fetch(self, task):
            if "boom" in task.url:
                raise ConnectionError("refused")
            return FetchResult(status_code=200, url=task.url)

    def process(task, response):
        if task.process.callback == "_on_get_info":
            return StatusPack(taskid=task.taskid, project="p", url=task.url,
                              track=Track(process={"ok": True, "save": {}})), [], []
        if "crash" in task.url:
            raise RuntimeError("callback crashed")
        ok = response.ok
        return (StatusPack(taskid=task.taskid, project="p", url=task.url, track=Track(process={"ok": ok})), [],
                [ResultPack(project="p", taskid=task.taskid, url=task.url, result=ok)])

    one = OneScheduler(projectdb=projectdb, taskdb=taskdb, resultdb=None, fetcher=Broken(), process=process,
                       result_sink=results.append, settings=Settings(data_dir=str(tmp_path / "data"), loop_interval=0.01),
                       finished_delay=0.05)
    one.newtask([Task.create("p", u, schedule=Schedule(retries=0))
                 for u in ("http://x/boom", "http://x/crash", "http://x/fine")])
    asyncio.run(asyncio.wait_for(one.run(burst=True), 10))
    statuses = {row["url"]: row["status"] for row in taskdb.select("p")}
    assert statuses == {"http://x/boom": "FAILED", "http://x/crash": "FAILED", "http://x/fine": "SUCCESS",
                        "data:,on_finished": "SUCCESS"}
    crash = taskdb.get("p", md5_taskid("http://x/crash"))
    assert "callback crashed" in crash["track"]["process"]["exception"]
    assert sorted(r.result for r in results) == [False, True, True]     # boom, fine, on_finished
    projectdb.close()
    taskdb.close()


def test_a_closed_result_sink_stops_the_run_and_hands_the_rest_back(tmp_path):
    from spiderflow.exceptions import QueueClosed

    projectdb = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    taskdb = connect_taskdb(f"sqlite:///{tmp_path}/task.db")
    projectdb.insert("farm", status="DEBUG", script="class Handler: ...", rate=1000, burst=1000)
    delivered: list[str] = []
    closed = {"after": 5}

    def sink(pack: ResultPack) -> None:
        if closed["after"] is not None and len(delivered) >= closed["after"]:
            raise QueueClosed("the reader is gone")
        delivered.append(pack.taskid)

    def make():
        return OneScheduler(projectdb=projectdb, taskdb=taskdb, resultdb=None, fetcher=LinkFarm(), process=Script(),
                            result_sink=sink, project="farm", counter_file=None, finished_delay=0.05,
                            settings=Settings(data_dir=str(tmp_path / "data"), loop_interval=0.01))
    one = make()
    one.run_project("farm")
    asyncio.run(asyncio.wait_for(one.run(burst=True), 20))     # before the fix: the pass's leases held it
    assert one.sink_closed and len(delivered) == 5
    done = {t for t, row in taskdb.get_many("farm", delivered, fields=["taskid", "status"]).items()
            if row["status"] == "SUCCESS"}
    assert done == set(delivered)                               # what was delivered is done
    assert all(not p.queue.processing_count for p in one.projects.values())   # nothing left in flight

    closed["after"] = None
    again = make()
    asyncio.run(asyncio.wait_for(again.run(burst=True), 20))    # the rest is still ACTIVE: it runs now
    assert not again.sink_closed
    counts = taskdb.status_count("farm")
    assert counts[TaskStatus.ACTIVE] == 0
    assert len(set(delivered)) == PAGES - 1                     # every page but the broken one, in the end
    projectdb.close()
    taskdb.close()
