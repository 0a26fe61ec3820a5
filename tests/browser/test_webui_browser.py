"""The web UI in a real browser: create, edit, debug, run and download a project that really crawls.

Screenshots of every step are saved in ``test-output/`` (see conftest.py).
"""

from __future__ import annotations

import io
import json
import re

import pytest

from spiderflow.message import ResultPack, Task
from spiderflow.result.export import export_results
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.testing import link_farm_links, link_farm_reachable, link_farm_url
from spiderflow.webui import WebUIServer, make_app

TOTAL, SHOW = 12, 4
SCRIPT = '''"""The link farm, crawled page by page; each page is a result."""

from spiderflow import *


class Handler(BaseHandler):
    crawl_config = {"headers": {"User-Agent": "spiderflow-browser-test"}}

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl(START_URL, callback=self.index_page)

    def index_page(self, response):
        for each in response.doc('a[href^="http"]').items():
            self.crawl(each.attr.href, callback=self.index_page)
        return {"url": response.url, "title": response.doc("title").text()}
'''


def progress_total(page, name: str, window: str = "all") -> dict[str, int]:
    title = page.get_attribute(f'tr[data-name="{name}"] .progress[data-window="{window}"]', "title")
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", title)}


def test_create_edit_debug_run_and_download(page, pipeline, httpbin):
    p = page.page
    start_url = httpbin.url + link_farm_url(TOTAL, SHOW, 0)
    expected = len(link_farm_reachable(TOTAL, SHOW, 0))

    # -- create a project from the dialog --------------------------------------------------------
    p.goto(pipeline.url + "/")
    p.wait_for_selector("body[data-refreshed]")
    assert p.is_visible("#no-projects")
    p.click("#new-project")
    p.fill("#create-name", "linkfarm")
    p.fill("#create-url", start_url)
    page.shot("01-create-dialog")
    p.click("#create-submit")
    p.wait_for_url(pipeline.url + "/debug/linkfarm")
    sample = p.input_value("#script")
    assert repr(start_url) in sample and "def detail_page" in sample
    assert pipeline.projectdb.get("linkfarm")["status"] == "TODO"

    # -- edit the script: replace it, type a line (auto-indent), save with Ctrl-S -------------------
    # the editor is CodeMirror (tests/browser/test_editor.py); its textarea follows every change
    assert p.get_attribute("#debugger", "data-editor") == "codemirror"
    p.eval_on_selector("#script", "(t, text) => t.sfEditor.setValue(text)",
                       SCRIPT.replace("START_URL", repr(start_url)).rstrip())
    p.click(".editor .CodeMirror-code")
    p.keyboard.press("Control+End")
    p.keyboard.press("Enter")
    p.keyboard.type("# edited in the browser")
    text = p.input_value("#script")
    assert text.endswith("\n    # edited in the browser")           # Enter after a return dedents a level
    lines = text.count("\n") + 1
    assert p.locator(".CodeMirror-code .CodeMirror-linenumber").last.text_content() == str(lines)
    p.keyboard.press("Control+S")
    p.wait_for_selector("#save-status:has-text('saved')")
    assert pipeline.projectdb.get("linkfarm")["script"] == text
    compile(text, "edited", "exec")

    # -- debug: on_start, then run its follow, then a failing callback ----------------------------------
    root = "#debugger"
    p.click("#run")
    p.wait_for_selector(f"{root}[data-runs='1']")
    assert p.text_content("#follows-count") == "1"
    assert start_url in p.text_content("#follows")
    page.shot("02-debug-on-start-follows")
    p.click("#follows .run-follow")
    p.wait_for_selector(f"{root}[data-runs='2']")
    follows = int(p.text_content("#follows-count"))
    assert follows == len(set(link_farm_links(TOTAL, SHOW, 0)))      # duplicates are crawled once
    assert p.text_content("#results-count") == "1"
    assert '"title": "link farm page 0 of 12"' in p.text_content("#results")
    assert p.is_hidden("#exception")
    p.click(".tabs [data-tab=page]")
    frame = p.frame_locator("#page-frame")
    assert frame.locator("h1").text_content() == f"link farm page 0 of {TOTAL}"
    page.shot("03-debug-rendered-page")
    p.click(".tabs [data-tab=html]")
    assert "<h1>link farm page 0" in p.text_content("#html-source")
    p.click(".tabs [data-tab=follows]")
    page.shot("04-debug-follows")
    p.fill("#task-box", json.dumps({"url": start_url, "process": {"callback": "no_such_callback"}}, indent=2))
    p.click("#run")
    p.wait_for_selector(f"{root}[data-runs='3']")
    assert p.is_visible("#exception")
    assert "no_such_callback" in p.text_content("#exception-text")
    page.shot("05-debug-exception")
    # a page's own scripts never run in the rendered view
    hostile = "data:text/html,<h1>hostile</h1><script>document.body.dataset.ran='yes'</script>"
    p.fill("#task-box", json.dumps({"url": hostile, "process": {"callback": "index_page"}}))
    p.click("#run")
    p.wait_for_selector(f"{root}[data-runs='4']")
    p.click(".tabs [data-tab=page]")
    assert frame.locator("h1").text_content() == "hostile"
    assert frame.locator("body").get_attribute("data-ran") is None
    page.errors[:] = [e for e in page.errors if "Blocked script execution" not in e]
    assert pipeline.taskdb.count("linkfarm") == 0 and pipeline.resultdb.count("linkfarm") == 0

    # -- the dashboard: rate/burst, RUNNING, Run; the counters move ---------------------------------------
    p.goto(pipeline.url + "/")
    row = 'tr[data-name="linkfarm"]'
    p.wait_for_selector(f"{row} .rate-edit")
    assert progress_total(p, "linkfarm")["success"] == 0
    p.click(f"{row} .rate-edit")
    p.fill(f"{row} .inline-input", "100/100")
    p.keyboard.press("Enter")
    p.wait_for_selector(f"{row} .rate-edit:has-text('100/100')")
    p.click(f"{row} .group-edit")
    p.fill(f"{row} .inline-input", "demo")
    p.keyboard.press("Enter")
    p.wait_for_selector(f"{row} .group-edit:has-text('demo')")
    p.select_option(f"{row} .status-select", "RUNNING")
    p.wait_for_selector("#toast:has-text('linkfarm is now RUNNING')")
    row_db = pipeline.projectdb.get("linkfarm")
    assert (row_db["rate"], row_db["burst"], row_db["group"], str(row_db["status"])) == (100, 100, "demo", "RUNNING")
    p.click(f"{row} .run")
    p.wait_for_function(
        """([name, want]) => {
            const bar = document.querySelector(`tr[data-name="${name}"] .progress[data-window="all"]`);
            const m = bar && /success (\\d+)/.exec(bar.title);
            return m && Number(m[1]) >= want;
        }""", arg=["linkfarm", expected + 1], timeout=30_000)   # every page, and on_start
    assert progress_total(p, "linkfarm", "5m")["success"] >= expected
    assert p.text_content(f"{row} td.time") != "-"
    assert p.text_content("#counter-source") == "counters from scheduler"
    assert p.is_hidden(f"{row} .badge.paused")
    p.wait_for_timeout(500)                          # let the bars finish their transition
    page.shot("06-dashboard-running")
    assert pipeline.resultdb.count("linkfarm") == expected

    # -- tasks --------------------------------------------------------------------------------------------
    p.click(f"{row} a:has-text('Active tasks')")
    p.wait_for_selector("#active-tasks")
    page.shot("07-tasks")
    p.locator("#db-tasks tbody tr", has_text=f"show={SHOW}&n=0").locator("td:nth-child(3) a").click()
    p.wait_for_selector("#task-fields")
    assert "link farm page 0 of 12" in p.text_content("#task-result")
    page.shot("08-task")

    # -- results and downloads ---------------------------------------------------------------------------
    p.goto(pipeline.url + "/results/linkfarm")
    assert p.locator("#results-table tbody tr").count() == min(expected, 20)
    headers = p.locator("#results-table thead th").all_text_contents()
    assert headers == ["taskid", "url", "result.url", "title"]
    page.shot("09-results")
    for fmt in ("json", "csv"):
        with p.expect_download() as info:
            p.click(f"#download-{fmt}")
        download = info.value
        assert download.suggested_filename == f"linkfarm.{fmt}"
        with open(download.path(), "rb") as fh:
            body = fh.read()
        want = io.StringIO(newline="")
        export_results(pipeline.resultdb, "linkfarm", fmt, want)
        assert body == want.getvalue().encode("utf-8")
    assert len(json.loads(body if fmt == "json" else b"[]") or []) in (0, expected)


@pytest.fixture
def plain_ui(tmp_path):
    """A web UI on sqlite files without a scheduler; ``serve(**settings)``."""
    dbs = [connect_projectdb(f"sqlite:///{tmp_path}/p.db"), connect_taskdb(f"sqlite:///{tmp_path}/t.db"),
           connect_resultdb(f"sqlite:///{tmp_path}/r.db")]
    servers = []

    def serve(**settings):
        app = make_app(Settings(data_dir=str(tmp_path), **settings), projectdb=dbs[0], taskdb=dbs[1], resultdb=dbs[2])
        server = WebUIServer(app).start()
        servers.append(server)
        return server.url.rstrip("/"), dbs

    yield serve
    for server in servers:
        server.close()
    for db in dbs:
        db.close()


XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def test_hostile_results_and_urls_render_as_text(page, plain_ui):
    url, (projectdb, taskdb, resultdb) = plain_ui()
    projectdb.insert("xss", group=XSS, script="# " + XSS)
    task = Task.create("xss", "javascript:alert(3)")
    taskdb.insert(task)
    resultdb.upsert(ResultPack("xss", task.taskid, task.url, {"title": XSS, XSS: XSS}))
    p = page.page
    p.goto(url + "/")
    p.wait_for_selector("body[data-refreshed]")
    assert p.text_content('tr[data-name="xss"] .group-edit') == XSS
    assert p.is_visible("#scheduler-banner")          # no scheduler: the databases still show everything
    page.shot("10-dashboard-without-scheduler")
    p.goto(url + "/results/xss")
    assert p.locator("#results-table td", has_text="<script>alert(2)</script>").count() == 2
    assert p.locator("#results-table thead th").all_text_contents()[-1] == XSS
    assert p.locator("#results-table a[href^='javascript']").count() == 0
    page.shot("11-escaped-results")
    p.goto(url + f"/task/xss/{task.taskid}")
    assert p.locator("#task-fields a[href^='javascript']").count() == 0
    p.goto(url + "/debug/xss")
    assert p.input_value("#script") == "# " + XSS
    assert "# " + XSS in p.text_content(".CodeMirror-code")
    assert p.locator("img").count() == 0


def test_login_when_credentials_are_configured(page, plain_ui):
    url, _dbs = plain_ui(username="admin", password="pw")
    p = page.page
    p.goto(url + "/nodes")
    assert p.url.startswith(url + "/login?next=")
    p.fill("input[name=username]", "admin")
    p.fill("input[name=password]", "wrong")
    p.click("button[type=submit]")
    assert p.is_visible("text=Wrong user name or password")
    page.errors[:] = [e for e in page.errors if "403" not in e]     # the failed login's status
    p.fill("input[name=username]", "admin")
    p.fill("input[name=password]", "pw")
    p.click("button[type=submit]")
    p.wait_for_url(url + "/nodes")
    assert p.is_visible("text=Components")
    page.shot("12-logged-in")
