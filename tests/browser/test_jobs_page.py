"""The Jobs page in a real browser: schedule a job with the form, see it pending, cancel it with
its button; a running job (started as the scheduler would, with JobDB.start) links its log,
which the browser opens. The page refreshes itself from the server."""

from __future__ import annotations

import time

from spiderflow.jobs import connect_jobdb
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.webui import WebUIServer, make_app

SCRIPT = '''from spiderflow import BaseHandler


class Handler(BaseHandler):
    def on_start(self):
        pass
'''


def test_jobs_page_schedules_cancels_and_links_logs(page, tmp_path):
    url = f"sqlite:///{tmp_path}/project.db"
    dbs = [connect_projectdb(url), connect_taskdb(f"sqlite:///{tmp_path}/task.db"),
           connect_resultdb(f"sqlite:///{tmp_path}/result.db")]
    dbs[0].insert("books", script=SCRIPT)
    dbs[0].insert("news", script=SCRIPT)
    jobdb = connect_jobdb(url)
    jobdb.schedule("news", "Handler", jobid="busy-1")
    jobdb.start("busy-1", now=time.time() - 3, pid=99, node="sched")         # the scheduler would start it
    jobdb.add_event("busy-1", "started; <script>alert(1)</script>")
    server = WebUIServer(make_app(Settings(data_dir=str(tmp_path)), projectdb=dbs[0], taskdb=dbs[1],
                                  resultdb=dbs[2])).start()
    try:
        p = page.page
        p.goto(server.url.rstrip("/") + "/jobs")
        p.wait_for_selector("body[data-refreshed]")                         # jobs.js ran (no CSP or script error)
        assert p.locator("header nav a[href='/jobs']").count() == 1
        assert p.locator("#jobs-running tr:has(td.job-meta)").count() == 1 and p.locator("#no-pending").count() == 1

        p.select_option("#schedule-project", "books")
        p.fill("#schedule-jobid", "from-the-form")
        p.fill("#schedule-args", "page=2\nq=<i>x</i>")
        p.click("#schedule-button")
        row = p.locator('#jobs-pending tr:has(td.job-meta[data-job="from-the-form"])')
        row.wait_for()
        assert "0; page=2, q=<i>x</i>" in row.inner_text()                      # shown as text
        job = jobdb.get("from-the-form")
        assert job["args"] == {"page": "2", "q": "<i>x</i>"} and job["spider"] == "books"

        p.evaluate("window.confirm = (text) => { window.confirmed = text; return true; }")
        row.locator("button.cancel-job").click()
        p.locator('#jobs-finished tr:has(td.job-meta[data-job="from-the-form"])').wait_for()
        assert p.evaluate("window.confirmed") == "Cancel job from-the-form?"
        assert jobdb.get("from-the-form")["outcome"] == "cancelled"

        log = p.locator('#jobs-running tr:has(td.job-meta[data-job="busy-1"]) a[href$=".log"]')
        assert log.get_attribute("href") == "/logs/news/Handler/busy-1.log"
        page.shot("jobs")
        p.goto(server.url.rstrip("/") + log.get_attribute("href"))
        text = p.locator("body").inner_text()
        assert "started; <script>alert(1)</script>" in text                  # plain text, never run
    finally:
        server.close()
        jobdb.close()
        for db in dbs:
            db.close()
