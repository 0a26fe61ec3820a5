"""The Response a callback receives: a lazy view over one FetchResult.

Cheap attributes (status_code, url, headers, content, save, ...) are plain values. ``text``
decodes once, with the charset of the Content-Type header, else a byte-order mark, else a
``<meta>``/XML declaration in the first bytes, else strict UTF-8, and only then detection
with charset-normalizer. ``json``, ``etree`` (lxml) and ``doc`` (pyquery, links made
absolute) are parsed on first use and cached; lxml and pyquery are imported only then.
"""

from __future__ import annotations

import codecs
import json as _json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..exceptions import HTTPError
from ..message import FetchResult, Task
from .urls import link_base, url_joiner

#: Labels replaced by the superset browsers decode them with (WHATWG encoding standard).
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
    "iso-8859-1": "windows-1252", "iso8859-1": "windows-1252", "latin-1": "windows-1252",
    "latin1": "windows-1252", "us-ascii": "windows-1252", "ascii": "windows-1252",
}
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']\s*([\w.:-]+)""", re.I)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_SNIFF_BYTES = 4096
_DETECT_BYTES = 64 * 1024
_CHAOS_MARGIN = 0.05
#: Python codec names by how common they are on the web, most common first.
_WEB_RANK = {name: rank for rank, name in enumerate((
    "utf_8", "cp1252", "gb18030", "cp932", "shift_jis", "cp1251", "cp949", "euc_kr", "big5", "euc_jp",
    "cp1250", "iso8859_2", "cp1256", "cp1254", "cp874", "koi8_r", "cp1255", "cp1253", "iso8859_15",
    "koi8_u", "cp1257", "big5hkscs", "iso2022_jp", "gb2312", "hz",
))}
_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def normalize_encoding(label: str | None) -> str | None:
    """The codec to decode *label* with (a known superset for some labels); None if unknown."""
    if not label:
        return None
    label = label.strip().strip("'\"").lower()
    label = _SUPERSETS.get(label, label)
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    return label


def sniff_encoding(content_type: str | None, content: bytes) -> str | None:
    """The declared encoding: Content-Type charset, then BOM, then meta/XML declaration."""
    if content_type and "charset" in content_type.lower():
        match = _HEADER_CHARSET.search(content_type)
        found = normalize_encoding(match.group(1)) if match else None
        if found:
            return found
    for bom, name in _BOMS:
        if content.startswith(bom):
            return name
    head = content[:_SNIFF_BYTES]
    match = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    if match:
        return normalize_encoding(match.group(1).decode("ascii", "replace"))
    return None


def detect_encoding(content: bytes) -> str:
    """Guess the encoding of undeclared *content*: ASCII/UTF-8 first, charset-normalizer last."""
    if content.isascii():
        return "utf-8"
    try:
        content.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(content[:_DETECT_BYTES]))
    if not matches:
        return "utf-8"
    # charset-normalizer ranks by "chaos" alone, and on short pages a rare code page
    # (cp1257 for French) can beat the right one by a hair: among the near-best, take the
    # most coherent language, then the encoding most used on the web.
    least = min(m.chaos for m in matches)
    near = [m for m in matches if m.chaos <= least + _CHAOS_MARGIN]
    best = max(near, key=lambda m: (round(m.coherence, 2), -_WEB_RANK.get(m.encoding, len(_WEB_RANK))))
    return normalize_encoding(best.encoding) or "utf-8"


class Headers(Mapping):
    """A read-only, case-insensitive view of response headers."""

    __slots__ = ("_items",)

    def __init__(self, headers: Mapping[str, str] | None = None):
        self._items = {k.lower(): (k, v) for k, v in (headers or {}).items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def get(self, name: str, default: Any = None) -> Any:
        item = self._items.get(name.lower())
        return default if item is None else item[1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


class Response:
    """What a callback gets for a fetched page (pyspider's ``response``)."""

    __slots__ = ("status_code", "url", "orig_url", "content", "cookies", "time", "error", "save",
                 "truncated", "js_script_result", "_raw_headers", "_headers", "_encoding", "_text", "_json",
                 "_etree", "_doc", "_links")

    def __init__(self, status_code: int = 200, url: str = "", orig_url: str = "",
                 headers: Mapping[str, str] | None = None, content: bytes = b"",
                 cookies: dict[str, str] | None = None, time: float = 0.0, error: str | None = None,
                 save: Any = None, truncated: bool = False, js_script_result: Any = None):
        self.status_code = status_code
        self.url = url
        self.orig_url = orig_url or url
        self.content = content
        self.cookies = cookies if cookies is not None else {}
        self.time = time
        self.error = error
        self.save = save
        self.truncated = truncated
        self.js_script_result = js_script_result   # a js fetch's js_script value (pyspider's)
        self._raw_headers = headers or {}
        self._headers: Headers | None = None
        self._encoding: str | None = None
        self._text: str | None = None
        self._json: Any = _UNSET
        self._etree: Any = None
        self._doc: Any = None
        self._links: list[Any] = []

    @classmethod
    def from_fetch_result(cls, result: FetchResult, task: Task | None = None) -> Response:
        """Wrap what the fetcher returned for *task*."""
        return cls(result.status_code, result.url, result.orig_url or (task.url if task else ""),
                   result.headers, result.content, result.cookies, result.time, result.error,
                   result.save, result.truncated, result.js_script_result)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}] {self.url}>"

    def __bool__(self) -> bool:
        return self.isok()

    # -- headers and decoding -----------------------------------------------------------
    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self._raw_headers)
        return self._headers

    @property
    def encoding(self) -> str:
        """The encoding ``text`` is decoded with; assign to override it."""
        if self._encoding is None:
            self._encoding = (sniff_encoding(self.headers.get("content-type"), self.content)
                              or detect_encoding(self.content))
        return self._encoding

    @encoding.setter
    def encoding(self, value: str) -> None:
        found = normalize_encoding(value)
        if found is None:
            raise LookupError(f"unknown encoding: {value!r}")
        self._encoding = found
        self._text = None
        self._json = _UNSET
        self._etree = self._doc = None
        self._links = []

    @property
    def known_encoding(self) -> str | None:
        """The encoding if ``text`` (or ``encoding``) was already used or set, else None; never detects."""
        return self._encoding

    @property
    def text(self) -> str:
        """The content decoded with :attr:`encoding`; undecodable bytes become U+FFFD."""
        if self._text is None:
            self._text = self.content.decode(self.encoding, "replace")
        return self._text

    @property
    def json(self) -> Any:
        """The content parsed as JSON (ValueError if it is not JSON)."""
        if self._json is _UNSET:
            self._json = _json.loads(self.text)
        return self._json

    @property
    def etree(self) -> Any:
        """The page parsed by lxml.html (an ``<html>`` element)."""
        if self._etree is None:
            import lxml.html
            from lxml.etree import ParserError

            text = _XML_DECLARATION.sub("", self.text, count=1)
            try:
                self._etree = lxml.html.document_fromstring(text) if text.strip() else _empty_document()
            except (ParserError, ValueError):
                self._etree = _empty_document()
        return self._etree

    @property
    def doc(self) -> Any:
        """A PyQuery of the page, with links made absolute against the response URL."""
        if self._doc is None:
            untouched = self._etree is None  # parsed just now: no callback has changed the tree
            root = self.etree
            if self.url.startswith(("http://", "https://")):
                # keep the link elements' proxies alive: doc("a") then finds them made already
                self._links = make_links_absolute(root, self.url, self.text if untouched else None)
            self._doc = _pyquery_class()(root)
        return self._doc

    # -- status --------------------------------------------------------------------------
    def raise_for_status(self, allow_redirects: bool = True) -> None:
        """Raise HTTPError for a failed fetch or a 4xx/5xx answer (a 3xx too if not *allow_redirects*)."""
        code = self.status_code
        if code == 304:
            return
        if self.error:
            raise HTTPError(f"HTTP {code}: {self.error}", self)
        if 200 <= code < 300 or (300 <= code < 400 and allow_redirects):
            return
        reason = _REASONS.get(code) or ("Redirection" if 300 <= code < 400 else
                                        "Client Error" if 400 <= code < 500 else
                                        "Server Error" if 500 <= code < 600 else "Unexpected Status")
        raise HTTPError(f"HTTP {code}: {reason} for url {self.url}", self)

    def isok(self) -> bool:
        """True unless :meth:`raise_for_status` would raise."""
        try:
            self.raise_for_status()
        except HTTPError:
            return False
        return True

    @property
    def ok(self) -> bool:
        return self.isok()


class _Unset:
    __slots__ = ()


_UNSET: Any = _Unset()


_PYQUERY: Any = None
_XPATHS: dict[tuple, str] = {}      # (translator class, xhtml, selector, prefix) -> XPath
_XPATHS_MAX = 1024


def _pyquery_class() -> Any:
    """PyQuery, translating each CSS selector to XPath once instead of on every call.

    A callback selects with the same few selectors page after page; cssselect's parser is
    a good part of the cost of ``response.doc("a[href]")``. Only pyquery's own translators
    (which hold nothing but their ``xhtml`` flag) are cached.
    """
    global _PYQUERY
    if _PYQUERY is None:
        from pyquery import PyQuery as Base
        from pyquery.cssselectpatch import JQueryTranslator

        class PyQuery(Base):
            __slots__ = ()

            def _css_to_xpath(self, selector, prefix="descendant-or-self::"):
                translator = self._translator
                if type(translator) is not JQueryTranslator or not isinstance(selector, str):
                    return super()._css_to_xpath(selector, prefix)
                key = (translator.xhtml, selector, prefix)
                xpath = _XPATHS.get(key)
                if xpath is None:
                    xpath = super()._css_to_xpath(selector, prefix)
                    if len(_XPATHS) >= _XPATHS_MAX:
                        _XPATHS.clear()
                    _XPATHS[key] = xpath
                return xpath

        PyQuery.__module__ = Base.__module__
        PyQuery.__qualname__ = Base.__qualname__
        _PYQUERY = PyQuery
    return _PYQUERY


#: Attributes that hold a URL; the ones lxml's make_links_absolute rewrites, minus rare ones.
LINK_ATTRIBUTES = ("href", "src", "action", "formaction", "poster", "background", "cite", "longdesc", "usemap")
_LINK_XPATHS: dict[str, Any] | None = None  # attribute name -> XPath of every such attribute
_SET_ATTRIBUTE: Any = None                  # lxml's C Element.set, without lxml.html's Python wrapper


def make_links_absolute(root: Any, base_url: str, source: str | None = None) -> list[Any]:
    """Rewrite every link attribute of the lxml tree *root* against *base_url* (and ``<base href>``).

    Each attribute name costs a walk over the whole tree, and most pages use two or three
    of :data:`LINK_ATTRIBUTES`. *source*, the text *root* was parsed from (only if the tree
    has not been changed since), lets it skip every name that does not occur in that text:
    the parser takes attribute names from the text, only lower-casing them.

    Returns the elements that hold a link attribute: the caller may keep them so that lxml
    reuses their Python proxies instead of building new ones (a Python class lookup each
    for lxml.html) when the callback selects them.
    """
    xpaths = _LINK_XPATHS or _compile_link_xpaths()
    base = root.find(".//base[@href]")
    if base is not None:
        base_url = link_base(base_url, base.get("href"))
    try:
        join = url_joiner(base_url)
    except ValueError:  # the page URL itself is malformed: leave every link as it is
        return []
    names = LINK_ATTRIBUTES
    if source is not None:
        lowered = source.lower()
        names = [name for name in LINK_ATTRIBUTES if name in lowered]
    holders = []
    for name in names:
        for value in xpaths[name](root):
            element = value.getparent()
            holders.append(element)
            fixed = _join_or_keep(join, value)
            if fixed != value:
                _SET_ATTRIBUTE(element, value.attrname, fixed)
    return holders


def _compile_link_xpaths() -> dict[str, Any]:
    global _LINK_XPATHS, _SET_ATTRIBUTE
    from lxml.etree import XPath, _Element

    _SET_ATTRIBUTE = _Element.set
    _LINK_XPATHS = {name: XPath(f"//@{name}") for name in LINK_ATTRIBUTES}
    return _LINK_XPATHS


def _join_or_keep(join: Any, href: str) -> str:
    try:
        return join(href.strip())
    except ValueError:  # e.g. a malformed IPv6 host: leave the link as it is
        return href


def _empty_document() -> Any:
    import lxml.html

    return lxml.html.document_fromstring("<html><head></head><body></body></html>")


__all__ = ["HTTPError", "Headers", "Response", "detect_encoding", "normalize_encoding", "sniff_encoding"]
