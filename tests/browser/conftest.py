"""Browser tests of the web UI: Playwright (the Python package) driving Debian's chromium.

``.ci/install-browser`` installs chromium; ``pip install playwright`` the package (never
``playwright install``: the browser comes from Debian). Without either the tests are
skipped with the reason, or fail with ``SPIDERFLOW_REQUIRE_SERVICES=1``. Another
chromium binary can be named with ``SPIDERFLOW_TEST_CHROMIUM``. Screenshots go to
``test-output/`` at the repository root.

:class:`Pipeline` runs a real crawl in this process: a ThreadedScheduler with its control
interface, a fetcher, a processor and a result worker, each in a thread, linked by memory
queues, on sqlite files; plus the web UI, talking to the scheduler only over HTTP.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path

import pytest

from spiderflow.fetcher import Fetcher
from spiderflow.processor import Processor
from spiderflow.queues import connect_queues
from spiderflow.result import ResultWorker
from spiderflow.scheduler import ControlClient, ThreadedScheduler
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.webui import WebUIServer, make_app
from test_webui_scheduler import ControlServer
from unavailable import unavailable

CHROMIUM = os.environ.get("SPIDERFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright; never `playwright install`)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM}: run .ci/install-browser (or set SPIDERFLOW_TEST_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module: Playwright's sync API holds an event loop in this thread
    while it runs, so it must end before other modules call asyncio.run()."""
    reason = _browser_missing()
    if reason:
        unavailable(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageWatch:
    """A page that records console errors, uncaught exceptions and dialogs (none are expected)."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)

    def shot(self, name: str) -> Path:
        OUTPUT.mkdir(exist_ok=True)
        path = OUTPUT / f"webui-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    context.set_default_timeout(10_000)
    watch = PageWatch(context.new_page())
    yield watch
    context.close()
    assert not watch.dialogs, f"a page opened dialogs (a script ran?): {watch.dialogs}"
    assert not watch.errors, "\n".join(watch.errors)


class _LoopThread:
    """``coroutine_fn()`` on a new event loop in a daemon thread."""

    def __init__(self, name: str, coroutine_fn):
        self.thread = threading.Thread(target=lambda: asyncio.run(coroutine_fn()), name=name, daemon=True)
        self.thread.start()


class Pipeline:
    """Scheduler, fetcher, processor and result worker in threads, and the web UI; see the module docstring."""

    def __init__(self, tmp_path: Path):
        self.settings = Settings(data_dir=str(tmp_path), loop_interval=0.02, poolsize=20)
        self.projectdb = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
        self.taskdb = connect_taskdb(f"sqlite:///{tmp_path}/task.db")
        self.resultdb = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
        self.queues = connect_queues("memory://", 100)
        q = self.queues
        self.scheduler = ThreadedScheduler(
            projectdb=self.projectdb, taskdb=self.taskdb, resultdb=self.resultdb, newtask_queue=q["newtask_queue"],
            status_queue=q["status_queue"], out_queue=q["scheduler2fetcher"], settings=self.settings,
            counter_file=None, project_check_interval=1.0)
        self.scheduler.start()
        self.control = ControlServer(self.scheduler)
        self.fetcher = Fetcher(q["scheduler2fetcher"], q["fetcher2processor"], self.settings)
        self.fetcher_thread = _LoopThread("fetcher", self.fetcher.run)
        self.processor = Processor(inqueue=q["fetcher2processor"], status_queue=q["status_queue"],
                                   newtask_queue=q["newtask_queue"], result_queue=q["processor2result"],
                                   projectdb=self.projectdb, settings=self.settings, check_interval=0.2,
                                   poll_interval=0.05)
        self.processor_thread = threading.Thread(target=self.processor.run, name="processor", daemon=True)
        self.processor_thread.start()
        self.worker = ResultWorker(q["processor2result"], self.resultdb, self.settings, poll_interval=0.05,
                                   status_queue=q["status_queue"])
        self.worker_thread = threading.Thread(target=self.worker.run, name="result-worker", daemon=True)
        self.worker_thread.start()
        app = make_app(self.settings, projectdb=self.projectdb, taskdb=self.taskdb, resultdb=self.resultdb,
                       control=ControlClient(self.control.url, "ctl"), queues=self.queues)
        self.webui = WebUIServer(app, "127.0.0.1", 0).start()
        self.url = self.webui.url.rstrip("/")

    def close(self) -> None:
        self.webui.close()
        self.fetcher.stop()
        self.processor.stop()
        self.worker.stop()
        self.scheduler.stop_and_join(5)
        self.control.close()
        self.fetcher_thread.thread.join(5)
        self.processor_thread.join(5)
        self.worker_thread.join(5)
        for db in (self.projectdb, self.taskdb, self.resultdb):
            db.close()


@pytest.fixture
def pipeline(tmp_path):
    running = Pipeline(tmp_path)
    yield running
    running.close()
