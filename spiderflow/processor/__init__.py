"""The processor stage: project scripts, BaseHandler, Response, and the worker that runs callbacks.

``handler`` is the script API (BaseHandler and its decorators), ``crawl`` the self.crawl
options, ``response`` the Response, ``project`` loading and caching scripts,
``timelimit`` and ``capture`` the per-task guards, ``processor`` the worker loop, ``pool``
the prefork pool of child processes that runs the callbacks with ``--pool prefork``.
"""

from __future__ import annotations

from .crawl import CRAWL_OPTIONS, CrawlError
from .handler import (
    BaseHandler,
    catch_status_code_error,
    config,
    every,
    not_send_status,
)
from .processor import Processor, ProcessOutcome
from .project import Project, ProjectManager, TaskRun, load_project
from .response import Headers, HTTPError, Response
from .timelimit import SoftTimeLimitExceeded, TimeLimit, TimeLimitExceeded

__all__ = [
    "BaseHandler",
    "CRAWL_OPTIONS",
    "CrawlError",
    "HTTPError",
    "Headers",
    "ProcessOutcome",
    "Processor",
    "Project",
    "ProjectManager",
    "Response",
    "SoftTimeLimitExceeded",
    "TaskRun",
    "TimeLimit",
    "TimeLimitExceeded",
    "catch_status_code_error",
    "config",
    "every",
    "load_project",
    "not_send_status",
]
