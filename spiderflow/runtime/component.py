"""Run one component in this process, with warm/cold signal handling and a node heartbeat."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

from ..control import start_agent
from ..exceptions import ConfigError
from ..queues import BaseQueue
from ..settings import Settings
from ..storage import open_databases
from .compose import (
    COMPONENTS,
    build_component,
    node_lister,
    scheduler_lock,
    start_node,
)
from .signals import install_stop_signals, starting, stop_grace

logger = logging.getLogger(__name__)

#: Objects allocated (net) between young-generation collections in a running component;
#: Python's default is 700, which at several hundred pages a second means a collection
#: every few pages.
GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """Before a component's loop: move everything built so far (modules, the project's
    script, caches) out of the collector's way, and collect young objects less often.

    The objects of one page (a parsed tree, a few dozen messages) are freed by reference
    counting; the cyclic collector only finds work in rare cycles, so running it every 700
    allocations was pure cost, and each full collection walked every long-lived object.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_component(kind: str, settings: Settings, queues: dict[str, BaseQueue], *, burst: bool = False,
                  control: bool = True, sigint: bool = True,
                  observe: Callable[[str, Any], None] | None = None) -> None:
    """Run one component until a signal (or, with *burst*, until its input is drained).

    A stop signal before the component can stop warmly ends the start-up cleanly (see
    :func:`~.signals.starting`). *observe*, if given, is called with ``(kind, component)``
    once the component is built and before it runs (the bench watches the component's
    counters this way).
    """
    with starting(kind, sigint):
        if kind not in COMPONENTS:
            raise ConfigError(f"unknown component {kind!r}; known: {', '.join(COMPONENTS)}")
        dbs = node = lock = agent = None
        try:
            if kind == "scheduler":     # one per cluster: a second one is refused with a ConfigError
                lock = scheduler_lock(settings, queues)
            dbs = None if kind == "fetcher" else open_databases(settings)
            component = build_component(kind, settings, queues, dbs)
            if lock is not None:
                lock.when_lost(component.stop)
            if observe is not None:
                observe(kind, component)
            _settle_heap()
            install_stop_signals(component.stop, kind, sigint, stop_grace(settings))
            # the scheduler's stats are read on its own loop, in _run_scheduler
            node = start_node(kind, settings, None if kind == "scheduler" else component)
            if kind != "scheduler":     # remote control (spiderflow.control); the scheduler's starts on its loop
                agent = start_agent(kind, component, settings, node)
            if kind == "scheduler":
                asyncio.run(_run_scheduler(component, control, node))
                if lock.lost:
                    raise ConfigError(f"this scheduler stopped: another one took its lock on {lock.where}")
            elif kind == "fetcher":
                asyncio.run(component.run(burst=burst))
            else:
                component.run(burst=burst)
        finally:
            if agent is not None:
                agent.stop()
            if node is not None:
                node.stop()
            if dbs is not None:
                dbs.close()
            if lock is not None:
                lock.release()


async def _run_scheduler(scheduler: Any, control: bool, node: Any = None) -> None:
    from ..nodes import on_loop, scheduler_stats
    if node is not None:
        node.stats = on_loop(lambda: scheduler_stats(scheduler), asyncio.get_running_loop())
    server = None
    if control:
        from ..scheduler import serve_control
        try:
            server, _port = serve_control(scheduler, nodes=node_lister(scheduler.settings))
        except OSError as exc:
            logger.error("scheduler control interface could not bind %s:%s (%s); running without it "
                         "(choose another port with --scheduler-port)",
                         scheduler.settings.scheduler_host, scheduler.settings.scheduler_port, exc.strerror or exc)
    agent = None
    try:
        agent = start_agent("scheduler", scheduler, scheduler.settings, node, loop=asyncio.get_running_loop())
        await scheduler.run()
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()


def run_webui(settings: Settings, queues: dict[str, BaseQueue]) -> None:
    from ..webui import build_webui
    server = build_webui(settings, queues=queues)
    install_stop_signals(server.stop, "webui", sigint=False)
    logger.info("web UI on %s", server.url)
    node = start_node("webui", settings, port=server.port)
    agent = None
    try:
        agent = start_agent("webui", server, settings, node)     # remote control (spiderflow.control)
        server.run()
    finally:
        if agent is not None:
            agent.stop()
        if node is not None:
            node.stop()
