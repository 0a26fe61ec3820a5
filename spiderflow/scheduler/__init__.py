"""The scheduler stage: the run_once loop, its task queue, token buckets and counters.

:class:`Scheduler` is the pipeline's single source of truth for task state;
:class:`ThreadedScheduler` runs it in a thread of its own, for tests that call it from other
threads (the control interface's, the browser tests' pipeline); :class:`OneScheduler` runs
fetch → process → result inline (``spiderflow one``, :func:`spiderflow.crawl` and the
bench's ``--in-process`` mode). :func:`make_control_app` is its HTTP + JSON control
interface and :class:`ControlClient` the client the CLI and web UI use.
"""

from __future__ import annotations

from .control import ControlClient, ControlError, make_control_app, serve_control
from .counter import Counters
from .one import OneScheduler
from .scheduler import EPHEMERAL, Scheduler
from .task_queue import TaskQueue
from .threaded import ThreadedScheduler
from .token_bucket import TokenBucket

__all__ = [
    "ControlClient", "ControlError", "Counters", "EPHEMERAL", "OneScheduler", "Scheduler", "TaskQueue",
    "ThreadedScheduler", "TokenBucket", "make_control_app", "serve_control",
]
