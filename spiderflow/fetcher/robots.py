"""robots.txt: fetched once per site, cached for a while, parsed and matched by Protego.

:class:`RobotsCache` answers "may this user agent fetch this URL?" for tasks with
``robots_txt=True``. Rules are cached per origin (scheme, host and port) for the fetcher's
``robots_txt_ttl``; concurrent tasks for one origin wait on a single robots.txt fetch. The
fetch itself is a callable supplied by the fetcher (so it goes through the same HTTP client,
proxy and certificate settings as the task). At most ``max_origins`` sites are remembered:
expired entries go first, then the oldest.

How a robots.txt answer is read (after redirects, which the fetch follows):

* 2xx: the rules in the body apply (Protego is lenient with malformed files).
* 4xx (404, 410, 401, 403...): there are no rules; everything is allowed (RFC 9309 2.3.1.3).
* 5xx, or unreachable (DNS, refused, timeout): everything is allowed, cached only for
  ``error_ttl``. RFC 9309 suggests assuming a full disallow here, but for a crawler that
  retries failed tasks that is the worse choice: one flaky robots.txt would fail every task
  of a site for the whole TTL, while the tasks themselves fail (and are retried) anyway if
  the site is really down. A short error TTL lets the real rules apply soon after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from protego import Protego

from ..message import FetchResult

logger = logging.getLogger(__name__)

#: fetch(robots_url) -> its FetchResult (never raises)
RobotsFetch = Callable[[str], Awaitable[FetchResult]]


_RETRY: Any = object()


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of *url*, lowercased (the robots.txt cache key)."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower().rpartition('@')[2]}"


class RobotsCache:
    """Per-origin robots.txt rules with a TTL; see the module docstring."""

    def __init__(self, ttl: float = 3600.0, *, error_ttl: float | None = None, max_origins: int = 10_000,
                 clock: Callable[[], float] = time.time):
        self.ttl = ttl
        self.max_origins = max_origins
        self.error_ttl = min(ttl, 300.0) if error_ttl is None else error_ttl
        self._clock = clock
        self._rules: dict[str, tuple[float, Protego | None]] = {}
        self._pending: dict[str, asyncio.Future] = {}

    async def allowed(self, url: str, user_agent: str, fetch: RobotsFetch) -> bool:
        """Whether *user_agent* may fetch *url*; loads the origin's robots.txt when needed."""
        rules = await self.rules_for(origin_of(url), fetch)
        return rules is None or rules.can_fetch(url, user_agent)

    async def rules_for(self, origin: str, fetch: RobotsFetch) -> Protego | None:
        """The parsed rules of *origin* (None: no rules, everything allowed)."""
        loop = asyncio.get_running_loop()
        while True:
            entry = self._rules.get(origin)
            if entry is not None and entry[0] > self._clock():
                return entry[1]
            pending = self._pending.get(origin)
            if pending is None or pending.get_loop() is not loop:
                break
            rules = await asyncio.shield(pending)
            if rules is not _RETRY:
                return rules
            # the task loading it was cancelled: look again, maybe load it ourselves
        future = loop.create_future()
        self._pending[origin] = future
        rules = _RETRY
        try:
            rules, ttl = await self._load(origin, fetch)
            self._store(origin, rules, ttl)
        finally:
            if self._pending.get(origin) is future:
                del self._pending[origin]
            future.set_result(rules)
        return rules

    async def _load(self, origin: str, fetch: RobotsFetch) -> tuple[Protego | None, float]:
        robots_url = origin + "/robots.txt"
        try:
            result = await fetch(robots_url)
        except Exception as exc:  # the fetcher's fetch never raises; be safe anyway
            logger.warning("robots.txt %s: %s; allowing all", robots_url, exc)
            return None, self.error_ttl
        status = result.status_code
        if 200 <= status < 300:
            try:
                return Protego.parse(result.content.decode("utf-8", "replace")), self.ttl
            except Exception as exc:  # a third-party parser on untrusted input
                logger.warning("robots.txt %s cannot be parsed (%s); allowing all", robots_url, exc)
                return None, self.ttl
        if 400 <= status < 500:
            return None, self.ttl
        logger.info("robots.txt %s: %s; allowing all for %.0fs", robots_url,
                    result.error or f"status {status}", self.error_ttl)
        return None, self.error_ttl

    def _store(self, origin: str, rules: Protego | None, ttl: float) -> None:
        now = self._clock()
        entries = self._rules
        entries.pop(origin, None)  # re-inserted last: the dict stays in storage order
        if len(entries) >= self.max_origins:
            for key in [k for k, (expires, _) in entries.items() if expires <= now]:
                del entries[key]
            while len(entries) >= self.max_origins:  # still full: forget the oldest
                del entries[next(iter(entries))]
        entries[origin] = (now + ttl, rules)

    def clear(self) -> None:
        self._rules.clear()

    def __len__(self) -> int:
        return len(self._rules)


__all__ = ["RobotsCache", "RobotsFetch", "origin_of"]
