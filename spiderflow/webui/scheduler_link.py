"""The web UI's view of the scheduler: ControlClient calls off the event loop, failures as data.

The scheduler may run in another process or not at all. Every call goes through
:meth:`SchedulerLink.call` in a worker thread (the client is synchronous urllib, and the
scheduler might even be served from this process), and a scheduler that cannot be reached
is reported, never raised, so that pages still render from the databases. So is one that
refuses the web UI: a wrong or missing token (401: the client names the token file it read,
``<data_dir>/scheduler.token`` unless ``scheduler_token`` is set) or a refused request (403).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ..scheduler.control import ControlClient, ControlError

logger = logging.getLogger(__name__)

#: answers that mean the web UI cannot use the scheduler at all: its token, or its requests, are refused
REFUSED = frozenset((401, 403))


@dataclass
class LinkStatus:
    """Whether the last call reached the scheduler, and why not."""

    url: str | None
    reachable: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "reachable": self.reachable, "error": self.error}


class SchedulerUnavailable(Exception):
    """The scheduler's control interface is not configured or did not answer."""


class SchedulerLink:
    """Calls the scheduler's control interface (or knows there is none)."""

    def __init__(self, client: ControlClient | None, executor: Executor):
        self.client = client
        self.executor = executor
        self.status = LinkStatus(client.url if client else None, False,
                                 None if client else "no scheduler control interface configured")

    async def call(self, method: str, *args: Any) -> Any:
        """``client.<method>(*args)``; SchedulerUnavailable if unreachable or refused (401, 403),
        ControlError for its other 4xx answers."""
        if self.client is None:
            raise SchedulerUnavailable(self.status.error)
        fn = functools.partial(getattr(self.client, method), *args)
        try:
            value = await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        except ControlError as exc:
            if exc.status == 0 or exc.status >= 500 or exc.status in REFUSED:
                self._down(exc.message if exc.status == 0 else f"{exc.status} {exc.message}")
                raise SchedulerUnavailable(self.status.error) from None
            self.status = LinkStatus(self.client.url, True)
            raise
        self.status = LinkStatus(self.client.url, True)
        return value

    async def get(self, method: str, *args: Any, default: Any = None) -> Any:
        """Like :meth:`call`, but *default* when the scheduler is unavailable or refuses."""
        try:
            return await self.call(method, *args)
        except SchedulerUnavailable:
            return default
        except ControlError as exc:
            logger.debug("scheduler %s%r: %s", method, args, exc)
            return default

    def _down(self, why: str) -> None:
        if self.status.reachable or self.status.error != why:
            logger.warning("web UI: the scheduler at %s is not reachable: %s", self.status.url, why)
        self.status = LinkStatus(self.status.url, False, why)
