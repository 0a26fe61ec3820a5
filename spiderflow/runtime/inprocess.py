"""Crawls in this process: ``spiderflow one`` (:func:`run_one`) and ``crawl()`` from Python.

Both use the OneScheduler: fetch → process → result inline, on one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from ..exceptions import QueueClosed
from ..message import ProjectStatus, ResultPack, Task, validate_project_name
from ..settings import Settings
from ..storage import Databases, connect_projectdb, connect_resultdb, connect_taskdb
from .compose import start_node
from .scripts import check_script, read_script, start_task, store_project
from .signals import install_stop_signals

logger = logging.getLogger(__name__)

# -- spiderflow one ----------------------------------------------------------------------------------

def run_one(settings: Settings, script_path: str, *, name: str | None = None, urls: Iterable[str] = (),
            callback: str = "index_page", out: TextIO | None = None, interactive: bool = False,
            resultdb_given: bool = False, rate: float | None = None, burst: float | None = None) -> int:
    """``spiderflow one``: run one project in this process until its crawl is done.

    When the results' stream closes (``spiderflow one SCRIPT | head``), it stops at once and
    returns 0, as the reader has what it wanted; the tasks whose results were not written
    stay ACTIVE.
    """
    name, script = read_script(script_path, name)
    check_script(name, script)
    dbs = Databases(
        projectdb=connect_projectdb(settings.projectdb or "sqlite://"),
        taskdb=connect_taskdb(settings.taskdb or "sqlite://"),
        resultdb=connect_resultdb(settings.resultdb) if resultdb_given else None,
    )
    node = None
    try:
        store_project(dbs.projectdb, name, script, ProjectStatus.DEBUG, settings, rate, burst)
        one, results = _one_scheduler(settings, dbs, name, out)
        urls = list(urls)
        if urls:
            for url in urls:
                one.newtask(start_task(name, url, callback))
        else:
            one.run_project(name)
        # a node only when its registry is shared (a projectdb URL): never a ./data for in-memory runs
        node = start_node("one", settings, one) if settings.projectdb else None
        install_stop_signals(one.stop, "one")
        asyncio.run(_run_one(one, interactive, name, callback))
    finally:
        if node is not None:
            node.stop()
        dbs.close()
    if one.sink_closed:
        logger.info("one: the output was closed after %d results; stopped", results())
    else:
        logger.info("one: done, %d results", results())
    return 0


def _one_scheduler(settings: Settings, dbs: Databases, name: str, out: TextIO | None):
    from ..fetcher import Fetcher
    from ..processor import Processor
    from ..result import JsonLinesResultWorker
    from ..scheduler import OneScheduler

    fetcher = Fetcher(None, None, settings)
    processor = Processor(projectdb=dbs.projectdb, settings=settings)

    def process(task: Task, result: Any):
        outcome = processor.process_checked(task, result)
        return outcome.status_pack, outcome.new_tasks, outcome.results

    stored = {"n": 0}
    if dbs.resultdb is not None:
        def sink(pack: ResultPack) -> None:
            dbs.resultdb.upsert(pack)
            stored["n"] += 1
    else:
        stream = out or sys.stdout
        writer = JsonLinesResultWorker(stream=stream)

        def sink(pack: ResultPack) -> None:
            try:
                writer.on_results([pack])
            except (BrokenPipeError, QueueClosed) as exc:   # the reader is gone (| head): the crawl ends here
                _discard_output(stream)
                raise QueueClosed("the output was closed") from exc
            stored["n"] += 1

    # counters are kept only where task state is kept
    counter_file = None if settings.taskdb is None else os.path.join(settings.data_dir, f"one.{name}.counters.json")
    one = OneScheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb, fetcher=fetcher,
                       process=process, result_sink=sink, project=name, settings=settings,
                       counter_file=counter_file)
    one.fetcher_component = fetcher
    one.processor_component = processor  # for its node's stats
    return one, lambda: stored["n"]


def _discard_output(stream: TextIO) -> None:
    """Point *stream*'s file descriptor at /dev/null: what its buffer still holds, and any
    later write, then goes nowhere instead of failing again (at exit, as a traceback)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):   # not a file (a StringIO): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


async def _run_one(one: Any, interactive: bool, name: str, callback: str) -> None:
    try:
        await one.run(burst=True)
        if interactive and not one.sink_closed:
            await _interactive(one, name, callback)
    finally:
        one.fetcher_component.close()


async def _interactive(one: Any, name: str, callback: str) -> None:
    """A Python prompt with ``crawl(url, callback=...)`` that runs each crawl to completion."""
    import code

    loop = asyncio.get_running_loop()

    def crawl(url: str, callback: str = callback) -> None:
        one.newtask(start_task(name, url, callback))
        asyncio.run_coroutine_threadsafe(one.run(burst=True), loop).result()

    banner = (f"spiderflow one: project {name!r} is done. crawl(url, callback={callback!r}) runs another "
              "crawl to completion; Ctrl-D quits.")
    console = code.InteractiveConsole({"crawl": crawl, "scheduler": one})
    await loop.run_in_executor(None, lambda: console.interact(banner=banner, exitmsg=""))


# -- crawl() from Python ---------------------------------------------------------------------------------

def crawl(handler: Any, *, name: str | None = None, urls: Iterable[str] = (), callback: str = "index_page",
          settings: Settings | None = None, rate: float | None = None,
          burst: float | None = None) -> list[dict[str, Any]]:
    """Run a crawl in this process and return its results as dicts (taskid, url, result).

    *handler* is a BaseHandler subclass, a script's text, or the path of a script file.
    Without *urls* the project's ``on_start`` runs. Task state lives in memory unless
    *settings* name a taskdb.
    """
    settings = settings or Settings()
    if isinstance(handler, str) and handler.endswith(".py") and "\n" not in handler:
        name, handler = read_script(handler, name)
    name = validate_project_name(name or getattr(handler, "__name__", "project"))
    dbs = Databases(projectdb=connect_projectdb("sqlite://"), taskdb=connect_taskdb(settings.taskdb or "sqlite://"),
                    resultdb=None)
    results: list[dict[str, Any]] = []
    from ..fetcher import Fetcher
    from ..processor import Processor, ProjectManager
    from ..scheduler import OneScheduler

    projects = ProjectManager(time_limit=settings.process_time_limit)
    projects.add(name, handler)
    store_project(dbs.projectdb, name, handler if isinstance(handler, str) else f"# {handler!r}",
                  ProjectStatus.DEBUG, settings, rate, burst)
    processor = Processor(settings=settings, projects=projects)
    fetcher = Fetcher(None, None, settings)

    def process(task: Task, result: Any):
        outcome = processor.process_checked(task, result)
        return outcome.status_pack, outcome.new_tasks, outcome.results

    def sink(pack: ResultPack) -> None:
        results.append({"taskid": pack.taskid, "url": pack.url, "result": pack.result})

    one = OneScheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=None, fetcher=fetcher,
                       process=process, result_sink=sink, project=name, settings=settings, counter_file=None)
    for url in urls:
        one.newtask(start_task(name, url, callback))
    if not urls:
        one.run_project(name)

    async def go() -> None:
        try:
            await one.run(burst=True)
        finally:
            fetcher.close()

    try:
        asyncio.run(go())
    finally:
        dbs.close()
    return results
