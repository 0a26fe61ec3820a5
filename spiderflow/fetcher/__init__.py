"""The fetcher stage: tornado + pycurl, every self.crawl fetch option, robots.txt, proxies.

:class:`Fetcher` is the component (see :mod:`.fetcher`); the other modules are its parts:
:mod:`.request` (task options → request), :mod:`.transport` (client, redirects, cookies,
robots checks), :mod:`.body` (streamed, decoded, capped body), :mod:`.addresses`
(``block_private_addresses``), :mod:`.cookies`, :mod:`.robots` and :mod:`.counters`.
"""

from __future__ import annotations

from .body import ACCEPT_ENCODING
from .counters import FetchCounters
from .fetcher import Fetcher
from .robots import RobotsCache

__all__ = ["ACCEPT_ENCODING", "FetchCounters", "Fetcher", "RobotsCache"]
