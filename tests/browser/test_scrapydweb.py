"""ScrapydWeb (the scrapyd dashboard) on spiderflow's scrapyd-compatible API, in Chromium.

ScrapydWeb 1.6 pins old Flask (2.0.0), Werkzeug, SQLAlchemy 1.3 and more, so it gets a
virtual environment of its own, made once with pip (``SPIDERFLOW_TEST_SCRAPYDWEB_VENV``,
default ``/tmp/spiderflow-test-scrapydweb``); it installs and runs on Python 3.11. A module
fixture starts ``spiderflow all`` with web UI credentials, deploys two projects over
``addversion.json``, runs one job to its end and keeps one running, then starts ScrapydWeb on
127.0.0.1 with ``SCRAPYD_SERVERS`` naming spiderflow's web UI with the credentials.

ScrapydWeb's Jobs page does not read ``listjobs.json``: it fetches scrapyd's HTML ``/jobs``
page and parses its table rows (``<td>`` Project, Spider, Job, PID, Start, Runtime, Finish,
Log, Items; see ``scrapydweb/views/dashboard/jobs.py``), so the jobs only appear when
spiderflow serves that page as scrapyd does. The test opens the Jobs page in both of its
styles and asserts both spiderflow jobs are listed, the finished one as finished; the
screenshots go to the test's tmp dir.

Skipped (failed under ``SPIDERFLOW_REQUIRE_SERVICES=1``) when Playwright/Chromium or the
ScrapydWeb install is missing; ``SPIDERFLOW_SKIP_SCRAPYDWEB=1`` skips it on purpose.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.conftest import SPIDERFLOW, ProcessGroup, free_port, wait_for
from tool_venv import tool_venv

from spiderflow.testing import serve_in_thread
from spiderflow.testing.pages import link_farm_url

requests = pytest.importorskip("requests")

pytestmark = [pytest.mark.timeout(600)]

SCRAPYDWEB_REQUIREMENT = "scrapydweb>=1.6,<2"
SCRAPYDWEB_VENV = Path(os.environ.get("SPIDERFLOW_TEST_SCRAPYDWEB_VENV", "/tmp/spiderflow-test-scrapydweb"))
USER, PASSWORD = "scrapydweb-user", "scrapydweb-pass-1234"

FARM_SCRIPT = '''\
"""A small link farm, crawled to its end."""
# rate: 50
# burst: 10
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}{start}", callback=self.page)

    def page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.page)
        return {{"url": response.url}}
'''

SLOW_SCRIPT = '''\
"""An endless crawl at 1 page/s: a job that keeps running."""
# rate: 1
# burst: 1
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}/follow?show=3&n=0", callback=self.page)

    def page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.page)
        return {{"url": response.url}}
'''


@pytest.fixture(scope="session")
def scrapydweb_bin() -> Path:
    """The ``bin`` directory of ScrapydWeb's own virtual environment (made once with pip)."""
    if os.environ.get("SPIDERFLOW_SKIP_SCRAPYDWEB") == "1":
        pytest.skip("SPIDERFLOW_SKIP_SCRAPYDWEB=1")
    return tool_venv(SCRAPYDWEB_VENV, SCRAPYDWEB_REQUIREMENT, "scrapydweb")


class Setup:
    """spiderflow all with two jobs (one finished, one running) and ScrapydWeb in front of it."""

    def __init__(self, procs: ProcessGroup, tmp: Path, scrapydweb_bin: Path):
        self.procs = procs
        self.site = serve_in_thread()
        data = tmp / "data"
        data.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = data / "spiderflow.json"
        config.write_text(json.dumps({"project_check_interval": 1, "log_level": "INFO"}))
        (data / "password").write_text(PASSWORD + "\n")
        procs.start("all", [*SPIDERFLOW, "--data-dir", str(data), "-c", str(config), "all",
                            "--scheduler-port", str(free_port()), "--webui-port", str(self.port),
                            "--username", USER, "--password-file", str(data / "password")])
        wait_for(lambda: self._status() == 200, 60, "spiderflow's daemonstatus.json", alive=self.alive)

        self.farm, self.slow = f"sw_farm_{os.getpid()}", f"sw_slow_{os.getpid()}"
        self.add(self.farm, FARM_SCRIPT.format(base=self.site.url, start=link_farm_url(30, 3, 0)))
        self.add(self.slow, SLOW_SCRIPT.format(base=self.site.url))
        self.farm_job = self.schedule(self.farm, "swfarm1")
        self.wait_job(self.farm, self.farm_job, "finished", 90)
        self.slow_job = self.schedule(self.slow, "swslow1")
        self.wait_job(self.slow, self.slow_job, "running", 30)

        web_dir = tmp / "scrapydweb"
        web_dir.mkdir()
        self.web_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        # ScrapydWeb reads scrapydweb_settings_v11.py from its working directory, over its defaults
        (web_dir / "scrapydweb_settings_v11.py").write_text(
            f"SCRAPYDWEB_BIND = '127.0.0.1'\nSCRAPYDWEB_PORT = {self.web_port}\nENABLE_AUTH = False\n"
            f"SCRAPYD_SERVERS = [({USER!r}, {PASSWORD!r}, '127.0.0.1', '{self.port}', 'spiderflow')]\n"
            "CHECK_SCRAPYD_SERVERS = True\nLOCAL_SCRAPYD_SERVER = ''\nLOCAL_SCRAPYD_LOGS_DIR = ''\n"
            "ENABLE_LOGPARSER = False\nENABLE_MONITOR = False\nENABLE_HTTPS = False\n"
            f"DATA_PATH = {str(web_dir / 'data')!r}\nDATABASE_URL = ''\n")
        procs.log_dir = web_dir     # ScrapydWeb runs in the directory of its settings file
        procs.start("scrapydweb", [str(scrapydweb_bin / "scrapydweb")])
        wait_for(self._web_up, 60, "ScrapydWeb to listen", alive=self.alive)

    def _status(self) -> int:
        try:
            return requests.get(self.url + "/daemonstatus.json", auth=(USER, PASSWORD), timeout=5).status_code
        except requests.ConnectionError:
            return 0

    def _web_up(self) -> bool:
        assert self.procs.alive("scrapydweb"), "ScrapydWeb exited (see its log)"
        try:
            socket.create_connection(("127.0.0.1", self.web_port), 1).close()
            return True
        except OSError:
            return False

    def alive(self) -> None:
        assert self.procs.alive("all"), "spiderflow all exited"

    def api(self, path: str, **data: str) -> dict:
        answer = requests.post(self.url + path, data=data, auth=(USER, PASSWORD), timeout=30)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "ok", (path, answer.status_code, body)
        return body

    def add(self, project: str, script: str) -> None:
        answer = requests.post(self.url + "/addversion.json", data={"project": project, "version": "1"},
                               files={"egg": ("project.egg", script.encode())}, auth=(USER, PASSWORD), timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text[:500]

    def schedule(self, project: str, jobid: str) -> str:
        spider = requests.get(self.url + "/listspiders.json", params={"project": project},
                              auth=(USER, PASSWORD), timeout=30).json()["spiders"][0]
        return self.api("/schedule.json", project=project, spider=spider, jobid=jobid)["jobid"]

    def wait_job(self, project: str, job: str, state: str, timeout: float) -> None:
        def check() -> bool:
            jobs = requests.get(self.url + "/listjobs.json", params={"project": project},
                                auth=(USER, PASSWORD), timeout=30).json()
            return any(e["id"] == job for e in jobs[state])
        wait_for(check, timeout, f"job {job} to be {state}", interval=0.3, alive=self.alive)

    def close(self) -> None:
        self.procs.stop_all()
        self.site.stop()


@pytest.fixture(scope="module")
def procs(tmp_path_factory) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path_factory.mktemp("scrapydweb") / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def scrapydweb_run(browser, procs, scrapydweb_bin, tmp_path_factory) -> Iterator[Setup]:
    made = Setup(procs, tmp_path_factory.mktemp("scrapydweb-run"), scrapydweb_bin)
    try:
        yield made
    finally:
        made.close()


def test_scrapydweb_jobs_page_lists_spiderflow_jobs(browser, scrapydweb_run, procs, tmp_path):
    setup = scrapydweb_run
    # spiderflow's HTML jobs page, as ScrapydWeb fetches it (with the credentials)
    jobs_html = requests.get(setup.url + "/jobs", auth=(USER, PASSWORD), timeout=30)
    assert jobs_html.status_code == 200, jobs_html.text[:500]
    assert "<h1>Jobs</h1>" in jobs_html.text, "ScrapydWeb needs scrapyd's HTML /jobs page (<h1>Jobs</h1>)"

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(30_000)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        for style in ("classic", "database"):
            # the first visit of a style switches ScrapydWeb to it; the page then lists the jobs
            # in table cells (its error page would show /jobs' text, job ids and all, in a <pre>)
            page.goto(f"{setup.web_url}/1/jobs/?style={style}")
            deadline = time.monotonic() + 30
            while True:
                text = page.inner_text("body")
                cells = {job: page.locator("td").filter(has_text=re.compile(rf"^\s*{re.escape(job)}\s*$")).count()
                         for job in (setup.farm_job, setup.slow_job)}
                if "Something went wrong" not in text and all(cells.values()):
                    break
                if time.monotonic() > deadline:
                    page.screenshot(path=str(tmp_path / f"scrapydweb-jobs-{style}-failed.png"), full_page=True)
                    raise AssertionError(f"ScrapydWeb's {style} jobs page does not list the spiderflow jobs "
                                         f"(cells found: {cells}):\n{text[:3000]}")
                time.sleep(1)
                page.reload()
            page.screenshot(path=str(tmp_path / f"scrapydweb-jobs-{style}.png"), full_page=True)
            assert setup.farm in text and setup.slow in text
            assert "Unauthorized" not in text and "Fail to" not in text, text[:2000]

        # classic style: a table per state; the finished job has a Finish time and a Start
        # (run again) button, the running one a PID and a Stop button
        page.goto(f"{setup.web_url}/1/jobs/?style=classic")
        text = page.inner_text("body")
        assert "Pending (0)" in text and "Running (1)" in text and "Finished (1)" in text, text[:3000]
        farm_row = page.locator("tr", has_text=setup.farm_job).first
        slow_row = page.locator("tr", has_text=setup.slow_job).first
        assert farm_row.count() == 1 and slow_row.count() == 1
        farm_cells = [c.strip() for c in farm_row.locator("td").all_inner_texts()]
        slow_cells = [c.strip() for c in slow_row.locator("td").all_inner_texts()]
        assert farm_cells[:3] == [setup.farm, "Handler", setup.farm_job] or farm_cells[:3] == [
            setup.farm, setup.farm, setup.farm_job], farm_cells
        assert farm_cells[-1] == "Start" and "Stop" not in farm_cells, farm_cells
        assert farm_cells[3] and farm_cells[5], f"the finished job lacks a Start or Finish time: {farm_cells}"
        assert slow_cells[2] == setup.slow_job and "Stop" in slow_cells, slow_cells
        # ScrapydWeb's Servers page reads daemonstatus.json: spiderflow is reachable and counted
        page.goto(f"{setup.web_url}/1/servers/")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(tmp_path / "scrapydweb-servers.png"), full_page=True)
        assert f"127.0.0.1:{setup.port}" in page.inner_text("body")
    finally:
        context.close()
    assert not errors, errors
    print(f"screenshots in {tmp_path}")
