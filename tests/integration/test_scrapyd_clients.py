"""The real scrapyd clients against spiderflow's scrapyd-compatible API (``spiderflow all``).

``spiderflow all`` runs on sqlite with web UI credentials; its web UI serves scrapyd's paths
(``daemonstatus.json`` ... ``delproject.json``, ``/logs/P/S/J.log``, ``/items/P/S/J.jl``).
A spiderflow "project" is a script: the ``egg`` of ``addversion.json`` is the script's bytes,
and the project's one "spider" is its Handler class name (or the project's name).

* ``python-scrapyd-api`` (``ScrapydAPI(url, auth=...)``, in the ``test`` extra) deploys two
  versions of a link-farm crawl, lists projects, versions and spiders, schedules a job with
  a job id and an argument, follows it pending/running -> finished, reads its items file
  (exactly one item per page of the farm) and its log, cancels a job of a slow site (it is
  finished afterwards, and the site sees no request of it a few seconds later), and deletes
  a version, then the project. scrapyd's listjobs has no outcome: spiderflow's own
  ``/api/jobs/<id>`` (same credentials) is read for ``finished``/``cancelled`` and the counts.
* ``scrapyd-client`` (its own virtual environment: it pulls in Scrapy; made once by a
  session fixture, see :func:`scrapyd_client`) deploys with ``scrapyd-deploy --egg``,
  lists projects and spiders and schedules a job, from a ``scrapy.cfg`` naming the target.
* Plain requests check what both clients rely on: JSON with ``status`` ``ok``/``error``,
  ``node_name``, HTTP 200 for an error answer, 401 without credentials.

The expected answers are those of scrapyd 1.6 (``scrapyd_reference.json``/``.md`` from the
brief: captured from a real scrapyd). Every wait is bounded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from spiderflow.testing import TestServer, serve_in_thread
from spiderflow.testing.pages import link_farm_reachable, link_farm_url
from tool_venv import tool_venv

from .conftest import SPIDERFLOW, ProcessGroup, free_port, project_name, wait_for

pytestmark = [pytest.mark.timeout(300)]

try:
    import requests
    from scrapyd_api import ScrapydAPI
    from scrapyd_api.exceptions import ScrapydResponseError
except ImportError as exc:       # the test extra has python-scrapyd-api (and so requests)
    if os.environ.get("SPIDERFLOW_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip(f"python-scrapyd-api is not installed (pip install -e '.[test]'): {exc}", allow_module_level=True)

USER, PASSWORD = "scrapyd-user", "scrapyd-pass-1234"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"     # scrapyd's: str(datetime), local time, no zone
FARM_TOTAL, FARM_SHOW = 60, 4
EXPECTED_PAGES = link_farm_reachable(FARM_TOTAL, FARM_SHOW, 0)

#: a crawl of the link farm: one result per page reached; ~3 s at 20 pages/s
FARM_SCRIPT = '''\
"""A link farm crawl for the scrapyd client tests (version {version})."""
# rate: 20
# burst: 5
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}{start}", callback=self.page)

    def page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.page)
        return {{"url": response.url, "version": {version}}}
'''

#: a site with no end (``/follow`` pages), fetched 2 pages a second: a job to cancel
SLOW_SCRIPT = '''\
"""An endless crawl at 2 pages/s for the scrapyd cancel test."""
# rate: 2
# burst: 1
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}/follow?show=5&n=0", callback=self.page)

    def page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.page)
        return {{"url": response.url}}
'''


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site() -> Iterator[TestServer]:
    """This module's own test server, so its ``hits`` count only this module's crawls."""
    server = serve_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def procs(tmp_path_factory) -> Iterator[ProcessGroup]:
    """Module-wide processes (named ``procs`` so a failed test's report gets their log tails)."""
    group = ProcessGroup(tmp_path_factory.mktemp("scrapyd-clients") / "logs")
    try:
        yield group
    finally:
        group.stop_all()


class Spiderflow:
    """``spiderflow all`` with web UI credentials; :attr:`url` is its web UI (the scrapyd API)."""

    def __init__(self, procs: ProcessGroup, data_dir: Path):
        self.procs = procs
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = data_dir / "spiderflow.json"
        config.write_text(json.dumps({"heartbeat_interval": 2, "project_check_interval": 1,
                                      "log_level": "INFO"}))
        password_file = data_dir / "webui-password"
        password_file.write_text(PASSWORD + "\n")
        procs.start("all", [*SPIDERFLOW, "--data-dir", str(data_dir), "-c", str(config), "all",
                            "--scheduler-port", str(free_port()), "--webui-port", str(self.port),
                            "--username", USER, "--password-file", str(password_file)])
        wait_for(self._answers, 60, "the web UI of spiderflow all to answer", alive=self.alive)

    def alive(self) -> None:
        assert self.procs.alive("all"), "spiderflow all exited"

    def _answers(self) -> bool:
        """The web UI answers (whatever it answers: the tests check that)."""
        try:
            requests.get(self.url + "/daemonstatus.json", auth=(USER, PASSWORD), timeout=5)
            return True
        except requests.ConnectionError:
            return False

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(urljoin(self.url + "/", path.lstrip("/")), auth=(USER, PASSWORD), timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(urljoin(self.url + "/", path.lstrip("/")), auth=(USER, PASSWORD), timeout=30, **kwargs)


@pytest.fixture(scope="module")
def spiderflow(procs, tmp_path_factory) -> Spiderflow:
    return Spiderflow(procs, tmp_path_factory.mktemp("scrapyd-clients-data"))


@pytest.fixture
def api(spiderflow) -> ScrapydAPI:
    return ScrapydAPI(spiderflow.url, auth=(USER, PASSWORD), timeout=30)


# -- helpers --------------------------------------------------------------------------------------

def farm_script(site: TestServer, version: int) -> bytes:
    return FARM_SCRIPT.format(base=site.url, start=link_farm_url(FARM_TOTAL, FARM_SHOW, 0), version=version).encode()


def find_job(jobs: dict[str, Any], job: str) -> tuple[str, dict[str, Any]] | None:
    """(state, entry) of *job* in a listjobs answer, or None."""
    found = [(state, entry) for state in ("pending", "running", "finished") for entry in jobs[state]
             if entry["id"] == job]
    assert len(found) <= 1, f"job {job} listed more than once: {found}"
    return found[0] if found else None


def wait_state(api: ScrapydAPI, project: str, job: str, state: str, timeout: float, alive) -> dict[str, Any]:
    """Poll listjobs until *job* is in *state*; its entry."""
    def check():
        hit = find_job(api.list_jobs(project), job)
        return hit[1] if hit and hit[0] == state else None
    return wait_for(check, timeout, f"job {job} of {project} to be {state}", interval=0.2, alive=alive)


def spiderflow_job(spiderflow: Spiderflow, job: str) -> dict[str, Any]:
    """The job as spiderflow's own API has it (``GET /api/jobs/<id>``: outcome, counts, events)."""
    answer = spiderflow.get(f"/api/jobs/{job}")
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    return answer.json()["job"]


def parse_time(value: Any) -> dt.datetime:
    assert isinstance(value, str), value
    return dt.datetime.strptime(value, TIME_FORMAT)


def follow_hits(site: TestServer) -> int:
    return sum(n for uri, n in list(site.hits.items()) if uri.startswith("/follow"))


def farm_hits(site: TestServer) -> int:
    return sum(n for uri, n in list(site.hits.items()) if uri.startswith("/links"))


# -- python-scrapyd-api ---------------------------------------------------------------------------

def test_python_scrapyd_api_deploy_schedule_finish_and_delete(spiderflow, api, site):
    project = project_name("scrapyd")
    status = spiderflow.get("/daemonstatus.json").json()
    assert status["status"] == "ok" and isinstance(status["node_name"], str) and status["node_name"]
    assert {k: type(status[k]) for k in ("pending", "running", "finished")} == dict.fromkeys(
        ("pending", "running", "finished"), int)

    assert project not in api.list_projects()
    assert api.add_version(project, "1.0", farm_script(site, 1)) == 1      # the number of spiders
    assert api.add_version(project, "2.0", farm_script(site, 2)) == 1
    assert project in api.list_projects()
    assert api.list_versions(project) == ["1.0", "2.0"]
    spiders = api.list_spiders(project)
    assert spiders in (["Handler"], [project]), spiders
    spider = spiders[0]

    job = "job-" + project
    farm_before = farm_hits(site)
    assert api.schedule(project, spider, jobid=job, note="from python-scrapyd-api") == job
    seen = []

    def running() -> bool:
        state = api.job_status(project, job)
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == "running"

    wait_for(running, 30, f"job {job} to run", interval=0.1, alive=spiderflow.alive)
    assert seen[0] in ("pending", "running"), seen
    entry = find_job(api.list_jobs(project), job)[1]
    assert entry["project"] == project and entry["spider"] == spider
    parse_time(entry["start_time"])
    assert isinstance(entry.get("pid", 0), (int, type(None)))
    assert entry["log_url"] == f"/logs/{project}/{spider}/{job}.log"
    assert entry["items_url"] == f"/items/{project}/{spider}/{job}.jl"

    finished = wait_state(api, project, job, "finished", 90, spiderflow.alive)
    assert api.job_status(project, job) == "finished"
    assert parse_time(finished["start_time"]) <= parse_time(finished["end_time"])
    assert finished["log_url"] == f"/logs/{project}/{spider}/{job}.log"
    assert finished["items_url"] == f"/items/{project}/{spider}/{job}.jl"
    own = spiderflow_job(spiderflow, job)     # listjobs has no outcome (nor has scrapyd's): the job API has
    assert (own["status"], own["outcome"]) == ("finished", "finished"), own
    assert own["results"] == len(EXPECTED_PAGES), own
    assert own["args"] == {"note": "from python-scrapyd-api"}, own
    # the crawl fetched each page of the farm once, and the items file has one line per page
    assert farm_hits(site) - farm_before == len(EXPECTED_PAGES)
    items = spiderflow.get(finished["items_url"])
    assert items.status_code == 200, items.text[:500]
    assert items.headers["Content-Type"].startswith("text/plain"), items.headers
    lines = items.text.splitlines()
    assert len(lines) == len(EXPECTED_PAGES), f"{len(lines)} items, expected {len(EXPECTED_PAGES)}"
    records = [json.loads(line) for line in lines]
    urls = {r["url"] for r in records}
    assert urls == {site.url + link_farm_url(FARM_TOTAL, FARM_SHOW, n) for n in EXPECTED_PAGES}
    assert {r.get("version", (r.get("result") or {}).get("version")) for r in records} == {2}   # the latest version
    log = spiderflow.get(finished["log_url"])
    assert log.status_code == 200 and log.headers["Content-Type"].startswith("text/plain"), log.headers
    assert log.text.strip(), "the job's log is empty"
    assert spiderflow.get(f"/items/{project}/{spider}/no-such-job.jl").status_code == 404
    assert spiderflow.get(f"/logs/{project}/{spider}/no-such-job.log").status_code == 404

    # cancelling a finished job: prevstate null, status ok
    assert api.cancel(project, job) is None
    # scrapyd's error answers, as the client raises them
    with pytest.raises(ScrapydResponseError, match="not found"):
        api.list_spiders(project_name("nope"))
    with pytest.raises(ScrapydResponseError, match="not found"):
        api.schedule(project, "NoSuchSpider")

    assert api.delete_version(project, "1.0") is True
    assert api.list_versions(project) == ["2.0"]
    assert api.delete_project(project) is True
    assert project not in api.list_projects()
    with pytest.raises(ScrapydResponseError, match="not found"):
        api.delete_project(project)


def test_python_scrapyd_api_cancel_stops_the_crawl(spiderflow, api, site):
    project = project_name("scrapyd_slow")
    assert api.add_version(project, "1", SLOW_SCRIPT.format(base=site.url).encode()) == 1
    spider = api.list_spiders(project)[0]
    before = follow_hits(site)
    job = api.schedule(project, spider)
    assert isinstance(job, str) and job
    wait_state(api, project, job, "running", 30, spiderflow.alive)
    wait_for(lambda: follow_hits(site) - before >= 3, 30, "the slow crawl to fetch 3 pages", alive=spiderflow.alive)

    # a second job of the same project, scheduled while the first runs: cancelled in whatever
    # state it is (scrapyd: pending behind a busy slot), and cancel answers that state
    second = api.schedule(project, spider)
    assert second != job
    state = api.job_status(project, second)
    assert state in ("pending", "running"), state
    assert api.cancel(project, second) == state

    assert api.cancel(project, job) == "running"
    entry = wait_state(api, project, job, "finished", 30, spiderflow.alive)
    assert parse_time(entry["start_time"]) <= parse_time(entry["end_time"])
    assert spiderflow_job(spiderflow, job)["outcome"] == "cancelled"
    assert spiderflow_job(spiderflow, second)["outcome"] == "cancelled"
    jobs = api.list_jobs(project)
    assert not any(e["id"] in (job, second) for e in jobs["pending"] + jobs["running"]), jobs
    if state == "pending":
        # scrapyd drops a cancelled pending job; spiderflow may list it finished, as cancelled
        hit = find_job(jobs, second)
        assert hit is None or hit[0] == "finished", hit
    assert api.cancel(project, job) is None            # finished: prevstate null

    time.sleep(1.0)                  # fetches already in flight when the job ended may land
    stopped_at = follow_hits(site)
    time.sleep(4.0)
    assert follow_hits(site) == stopped_at, "the cancelled job's crawl still fetches pages"
    status = spiderflow.get("/daemonstatus.json").json()
    assert status["status"] == "ok"
    assert api.delete_project(project) is True


# -- the wire format both clients rely on ------------------------------------------------------------

def test_scrapyd_wire_format(spiderflow):
    answer = spiderflow.get("/listprojects.json")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].split(";")[0] == "application/json"
    body = answer.json()
    assert body["status"] == "ok" and isinstance(body["projects"], list) and body["node_name"]

    # errors: HTTP 200, {"status": "error", "message": ..., "node_name": ...}
    for path, data, message in (
            ("/schedule.json", {"spider": "x"}, "'project' parameter is required"),
            ("/schedule.json", {"project": "no_such_project_x", "spider": "x"}, "project 'no_such_project_x' not found"),
            ("/cancel.json", {"project": "no_such_project_x", "job": "x"}, "project 'no_such_project_x' not found"),
            ("/delproject.json", {}, "'project' parameter is required")):
        answer = spiderflow.post(path, data=data)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        body = answer.json()
        assert body["status"] == "error" and body["node_name"], body
        assert body["message"] == message, body
    for path, params, message in (
            ("/listversions.json", {}, "'project' parameter is required"),
            ("/listspiders.json", {"project": "no_such_project_x"}, "project 'no_such_project_x' not found"),
            ("/listjobs.json", {"project": "no_such_project_x"}, "project 'no_such_project_x' not found"),
            ("/status.json", {}, "'job' parameter is required")):
        answer = spiderflow.get(path, params=params)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        assert answer.json()["status"] == "error" and answer.json()["message"] == message, answer.json()
    assert spiderflow.get("/status.json", params={"job": "no-such-job"}).json()["currstate"] is None
    assert spiderflow.get("/listversions.json", params={"project": "no_such_project_x"}).json()["versions"] == []

    # no credentials: 401 with a basic challenge, on the API and on the logs
    for path in ("/daemonstatus.json", "/listjobs.json", "/logs/p/s/j.log"):
        answer = requests.get(spiderflow.url + path, timeout=10)
        assert answer.status_code == 401, (path, answer.status_code)
        assert answer.headers.get("WWW-Authenticate", "").lower().startswith("basic"), answer.headers
    answer = requests.post(spiderflow.url + "/schedule.json", data={"project": "p", "spider": "s"}, timeout=10)
    assert answer.status_code == 401


# -- scrapyd-client (CLI) --------------------------------------------------------------------------

CLIENT_REQUIREMENT = "scrapyd-client>=2.0,<3"
CLIENT_VENV = Path(os.environ.get("SPIDERFLOW_TEST_SCRAPYD_CLIENT_VENV", "/tmp/spiderflow-test-scrapyd-client"))


@pytest.fixture(scope="session")
def scrapyd_client() -> Path:
    """The ``bin`` directory of a virtual environment with scrapyd-client (which needs Scrapy, so
    it stays out of the test environment), made once with pip at *CLIENT_VENV*."""
    return tool_venv(CLIENT_VENV, CLIENT_REQUIREMENT, "scrapyd-client", timeout=240)


def run_cli(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(bin_dir / args[0]), *args[1:]], check=False, cwd=str(cwd), capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"})
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.timeout(420)       # the first run installs scrapyd-client
def test_scrapyd_client_cli(scrapyd_client, spiderflow, api, site, tmp_path):
    project = project_name("scrapyd_cli")
    # scrapyd-client names its server by a target of the scrapy.cfg of the current directory;
    # no trailing slash: scrapyd-client 2.0 asks for URL + "/listprojects.json", and "//" is a
    # 404 on real scrapyd too
    (tmp_path / "scrapy.cfg").write_text(
        f"[deploy:spiderflow]\nurl = {spiderflow.url}\nusername = {USER}\npassword = {PASSWORD}\n"
        f"project = {project}\n")
    script = tmp_path / f"{project}.py"
    script.write_bytes(farm_script(site, 7))

    deploy = run_cli(scrapyd_client, tmp_path, "scrapyd-deploy", "spiderflow", "-p", project,
                     "--version", "7", "--egg", str(script))
    assert '"status": "ok"' in deploy.stdout.replace("'", '"') or '"ok"' in deploy.stdout, deploy.stdout + deploy.stderr
    assert api.list_versions(project) == ["7"]

    out = run_cli(scrapyd_client, tmp_path, "scrapyd-client", "projects", "-t", "spiderflow")
    assert project in out.stdout.split()
    out = run_cli(scrapyd_client, tmp_path, "scrapyd-client", "spiders", "-t", "spiderflow", "-p", project)
    spiders = api.list_spiders(project)
    assert out.stdout.splitlines() == [f"{project}:", *(f"  {s}" for s in spiders)], out.stdout
    out = run_cli(scrapyd_client, tmp_path, "scrapyd-client", "spiders", "-t", "spiderflow", "-p", project, "-v")
    assert out.stdout.splitlines() == [f"{project} {s}" for s in spiders], out.stdout

    out = run_cli(scrapyd_client, tmp_path, "scrapyd-client", "schedule", "-t", "spiderflow", "-p", project,
                  "*", "--arg", "note=from-scrapyd-client")
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{project} / {spiders[0]} => "), out.stdout
    job = lines[0].rsplit(" => ", 1)[1].strip()
    assert job
    finished = wait_state(api, project, job, "finished", 90, spiderflow.alive)
    items = spiderflow.get(finished["items_url"])
    assert items.status_code == 200 and len(items.text.splitlines()) == len(EXPECTED_PAGES)
    assert api.delete_project(project) is True
    out = run_cli(scrapyd_client, tmp_path, "scrapyd-client", "projects", "-t", "spiderflow")
    assert project not in out.stdout.split()
