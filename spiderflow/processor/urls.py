"""Resolving links against a page URL fast: the processor joins ~20 links per page.

``urllib.parse.urljoin`` costs several microseconds; most links are already absolute or
are clean absolute paths (``/a/b?c``), which need only the page's origin. Everything else
still goes through urljoin.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import urljoin, urlsplit

_HTTP = ("http://", "https://")
_NETLOC_END = re.compile(r"[/?#]")
_NO_BASE_SCHEMES = ("data", "javascript")


def origin(base: str) -> str:
    """``scheme://netloc`` of *base*, as urlsplit gives them; ValueError for a malformed IPv6 host.

    A new page URL comes with every page, so urlsplit's cache rarely helps: a plain
    ASCII http(s) URL, with no bracket in its host and none of the characters urlsplit
    removes, is cut at the end of its host instead.
    """
    if (base.startswith(_HTTP) and base.isascii()
            and "\t" not in base and "\r" not in base and "\n" not in base):  # urlsplit deletes these
        start = base.index("//") + 2
        end = _NETLOC_END.search(base, start)
        netloc = base[start:end.start()] if end else base[start:]
        if "[" not in netloc and "]" not in netloc:
            return base[:start] + netloc
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


def link_base(page_url: str, href: str | None) -> str:
    """The URL a page's links resolve against: its ``<base href>`` joined with *page_url*.

    A missing href, one that is not a URL (``http://[bad``), or a ``data:`` or
    ``javascript:`` one is ignored, as browsers ignore it: the page URL is the base then.
    """
    if href is None:
        return page_url
    try:
        base = url_joiner(page_url)(href.strip())
        origin(base)                        # ValueError for a malformed host
    except ValueError:
        return page_url
    if base.split(":", 1)[0].lower() in _NO_BASE_SCHEMES:
        return page_url
    return base


@lru_cache(maxsize=256)
def url_joiner(base: str) -> Callable[[str], str]:
    """A function that resolves a link against *base* (an absolute http(s) URL)."""
    page_origin = origin(base)

    def join(href: str) -> str:
        if href.startswith(_HTTP):
            return href
        if href.startswith("/") and not href.startswith("//") and "/." not in href and "\\" not in href:
            return page_origin + href
        return urljoin(base, href)
    return join


__all__ = ["link_base", "origin", "url_joiner"]
