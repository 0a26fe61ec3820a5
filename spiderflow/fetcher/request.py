"""Turn a task's fetch options into what is sent: URL, method, headers, body, proxy, limits.

:func:`build_spec` resolves every ``Fetch`` option against the fetcher's settings once per
task (params merged into the query, form or multipart or raw body, user agent, conditional
headers from the previous fetch's track, proxy choice). :func:`redirect_target` applies the
method rules of 301/302/303/307/308 to a spec for the next hop and keeps the task's headers
on their origin. Methods and header fields are checked here, so nothing malformed is sent.
``data:`` URLs (RFC 2397) are decoded by :func:`decode_data_url` without any network.
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import (
    quote,
    unquote,
    unquote_to_bytes,
    urlencode,
    urljoin,
    urlsplit,
    urlunsplit,
)

from ..exceptions import FetchOptionError, redact_url
from ..message import Task
from ..settings import Settings

#: Redirect statuses the fetcher follows itself.
REDIRECT_CODES = frozenset((301, 302, 303, 307, 308))

_PROXY_SCHEMES = {"http": 1080, "https": 443, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}
_BODY_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding")
#: The only headers that go on to another origin (scheme, host, port) when a redirect leads there:
#: the task's others (Authorization, Proxy-Authorization, API keys, conditional headers) stay behind.
CROSS_ORIGIN_HEADERS = frozenset(("User-Agent", "Accept", "Accept-Language", "Accept-Encoding", *_BODY_HEADERS))
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: RFC 9110 token: a method or a header name
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: control characters a field value must not hold (RFC 9110 allows HTAB only)
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Proxy:
    """A parsed proxy URL; ``host`` keeps the scheme prefix because libcurl reads the type from it."""

    scheme: str
    hostname: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return f"{self.scheme}://{self.hostname}"


@dataclass(slots=True)
class RequestSpec:
    """One request as the fetcher sends it; :func:`redirect_target` derives the next hop's."""

    url: str
    method: str
    headers: dict[str, str]       # names normalized by normalize_name()
    body: bytes | None
    cookie_header: str | None     # a Cookie header given in the task's headers (seeds the jar)
    proxy: Proxy | None
    timeout: float
    connect_timeout: float
    validate_cert: bool
    use_gzip: bool
    allow_redirects: bool
    max_redirects: int
    max_body_size: int
    robots_txt: bool
    user_agent: str


@functools.lru_cache(maxsize=1024)
def normalize_name(name: str) -> str:
    """``content-type`` → ``Content-Type`` (tornado's HTTPHeaders spelling, so dicts stay comparable)."""
    return "-".join(part.capitalize() for part in name.strip().split("-"))


def parse_proxy(url: str) -> Proxy:
    """Parse ``[scheme://][user:pass@]host[:port]``; the scheme defaults to http."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PROXY_SCHEMES:
        raise FetchOptionError(f"unsupported proxy scheme {scheme!r}; use one of {', '.join(_PROXY_SCHEMES)}")
    if not parts.hostname:
        raise FetchOptionError(f"proxy URL {redact_url(url)!r} has no host")
    try:
        port = parts.port or _PROXY_SCHEMES[scheme]
    except ValueError as exc:
        raise FetchOptionError(f"bad proxy port in {redact_url(url)!r}") from exc
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else ("" if user is not None else None)
    return Proxy(scheme, parts.hostname, port, user, password)


def iri_to_uri(url: str) -> str:
    """Percent-encode a URL with non-ASCII or space characters (IDNA host, UTF-8 path and query).

    Anything else passes as is (existing %-escapes are kept).
    """
    if url.isascii() and " " not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise FetchOptionError(f"cannot encode host {host!r}: {exc}") from exc
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        auth = quote(parts.username, safe="%")
        if parts.password is not None:
            auth += ":" + quote(parts.password, safe="%")
        netloc = f"{auth}@{netloc}"
    safe = "/%:@!$&'()*+,;=-._~"
    return urlunsplit((parts.scheme, netloc, quote(parts.path, safe=safe),
                       quote(parts.query, safe=safe + "?"), quote(parts.fragment, safe=safe + "?")))


def merge_params(url: str, params: dict[str, Any] | None) -> str:
    """Append *params* to the URL's query (lists give repeated keys); drop any fragment."""
    base, _, _fragment = url.partition("#")
    if not params:
        return base
    query = urlencode(params, doseq=True)
    return f"{base}{'&' if '?' in base else '?'}{query}"


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


def _quote_param(value: str) -> str:
    # the WHATWG multipart/form-data encoding of names and filenames
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def encode_multipart(data: dict[str, Any] | None, files: dict[str, Any]) -> tuple[str, bytes]:
    """Encode form fields and files as multipart/form-data; return (content type, body).

    A file is ``bytes`` (the field name is the filename), ``(filename, content)`` or
    ``(filename, content, content_type)``; lists work too, as msgpack turns tuples into lists.
    """
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in (data or {}).items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote_param(str(name))}"'
                         f"\r\n\r\n".encode() + _to_bytes(item) + b"\r\n")
    for name, spec in files.items():
        if isinstance(spec, (list, tuple)):
            if len(spec) not in (2, 3):
                raise FetchOptionError(f"file {name!r} must be bytes, (filename, content) or (filename, content, type)")
            filename, content = str(spec[0]), spec[1]
            ctype = spec[2] if len(spec) == 3 else None
        else:
            filename, content, ctype = str(name), spec, None
        ctype = ctype or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote_param(str(name))}"; '
                f'filename="{_quote_param(filename)}"\r\nContent-Type: {ctype}\r\n\r\n')
        parts.append(head.encode("utf-8") + _to_bytes(content) + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def check_method(method: str) -> str:
    """*method* if it is an RFC 9110 token (so no space, CR or LF can reach the request line)."""
    if not _TOKEN.fullmatch(method):
        raise FetchOptionError(f"invalid HTTP method {method!r}: a method is a token of letters, digits "
                               "and !#$%&'*+-.^_`|~")
    return method


def check_header(name: str, value: str) -> None:
    """Raise FetchOptionError for a header name that is not a token or a value with CR, LF, NUL or another control."""
    if not _TOKEN.fullmatch(name):
        raise FetchOptionError(f"invalid header name {name!r}: a header name is a token (no space, colon, CR or LF)")
    if _CTL.search(value):
        raise FetchOptionError(f"invalid value for header {name}: {value!r} holds a control character "
                               "(CR, LF, NUL, ...)")


def url_origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of *url*, the port filled in for http and https."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _conditional(option: str | bool, track_fetch: dict[str, Any], key: str) -> str | None:
    if option is True:
        value = track_fetch.get(key)
        return str(value) if value else None
    return option or None


def build_spec(task: Task, settings: Settings, accept_encoding: str) -> RequestSpec:
    """Resolve *task*'s fetch options against *settings*; raise FetchOptionError if they are unusable."""
    fetch = task.fetch
    method = check_method((fetch.method or "GET").upper())
    headers: dict[str, str] = {}
    if fetch.headers:
        for name, value in fetch.headers.items():
            if value is not None:
                headers[normalize_name(name)] = str(value)
    url = iri_to_uri(merge_params(task.url, fetch.params))
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise FetchOptionError(f"unsupported URL scheme {scheme!r} in {task.url!r}")

    body: bytes | None = None
    if fetch.files:
        if fetch.data is not None and not isinstance(fetch.data, dict):
            raise FetchOptionError("with files, data must be a dict of form fields (or None)")
        ctype, body = encode_multipart(fetch.data, fetch.files)
        headers["Content-Type"] = ctype
    elif isinstance(fetch.data, dict):
        body = urlencode(fetch.data, doseq=True).encode("ascii")
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif fetch.data is not None:
        body = _to_bytes(fetch.data)
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = b""

    cookie_header = headers.pop("Cookie", None)
    user_agent = fetch.user_agent or headers.pop("User-Agent", None) or settings.user_agent
    headers["User-Agent"] = user_agent
    if fetch.use_gzip and "Accept-Encoding" not in headers:
        headers["Accept-Encoding"] = accept_encoding
    etag = _conditional(fetch.etag, task.track.fetch, "etag")
    if etag and "If-None-Match" not in headers:
        headers["If-None-Match"] = etag
    last_modified = _conditional(fetch.last_modified, task.track.fetch, "last_modified")
    if last_modified and "If-Modified-Since" not in headers:
        headers["If-Modified-Since"] = last_modified
    for name, value in headers.items():
        check_header(name, value)
    if cookie_header is not None:
        check_header("Cookie", cookie_header)
    for name, value in (fetch.cookies or {}).items():
        check_header("Cookie", f"{name}={value}")

    proxy_url = settings.proxy if fetch.proxy is None or fetch.proxy is True else fetch.proxy
    proxy = parse_proxy(proxy_url) if proxy_url else None
    max_redirects = settings.max_redirects if fetch.max_redirects is None else fetch.max_redirects
    return RequestSpec(
        url=url, method=method, headers=headers, body=body, cookie_header=cookie_header, proxy=proxy,
        timeout=float(settings.timeout if fetch.timeout is None else fetch.timeout),
        connect_timeout=float(settings.connect_timeout if fetch.connect_timeout is None else fetch.connect_timeout),
        validate_cert=fetch.validate_cert, use_gzip=fetch.use_gzip,
        allow_redirects=fetch.allow_redirects, max_redirects=max_redirects,
        max_body_size=settings.max_body_size, robots_txt=fetch.robots_txt, user_agent=user_agent,
    )


def redirect_target(spec: RequestSpec, status: int, location: str) -> RequestSpec:
    """The spec of the hop after a *status* redirect to *location* (resolved against spec.url).

    301/302 turn POST into GET, 303 turns anything but HEAD into GET (the body is dropped
    with its headers); 307/308 keep method and body. When the origin (scheme, host, port)
    changes, only :data:`CROSS_ORIGIN_HEADERS` go on: Authorization, Proxy-Authorization and
    every other header the task gave stay behind (the task's cookies, in the jar, are bound
    to its first URL's origin). Raises FetchOptionError for a target that is not http(s).
    """
    url = iri_to_uri(urljoin(spec.url, location.strip())).partition("#")[0]
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchOptionError(f"redirect to unsupported URL {url!r}")
    method, body, headers = spec.method, spec.body, dict(spec.headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        for name in _BODY_HEADERS:
            headers.pop(name, None)
    if url_origin(url) != url_origin(spec.url):
        headers = {name: value for name, value in headers.items() if name in CROSS_ORIGIN_HEADERS}
    return replace(spec, url=url, method=method, body=body, headers=headers)


def decode_data_url(url: str) -> tuple[str, bytes]:
    """Decode an RFC 2397 ``data:[<mediatype>][;base64],<data>`` URL into (content type, bytes)."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise FetchOptionError("malformed data: URL (no comma)")
    params = header.split(";")
    is_base64 = params[-1].strip().lower() == "base64"
    if is_base64:
        params.pop()
    mediatype = params[0].strip() or "text/plain"
    extra = [p.strip() for p in params[1:] if p.strip()]
    if not params[0].strip() and not any(p.lower().startswith("charset=") for p in extra):
        extra.insert(0, "charset=US-ASCII")
    content_type = ";".join([mediatype, *extra])
    raw = unquote_to_bytes(payload)
    if is_base64:
        compact = b"".join(raw.split())
        try:
            raw = base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FetchOptionError(f"malformed base64 in data: URL: {exc}") from exc
    return content_type, raw


__all__ = ["CROSS_ORIGIN_HEADERS", "FetchOptionError", "Proxy", "REDIRECT_CODES", "RequestSpec", "build_spec",
           "check_header", "check_method", "decode_data_url", "encode_multipart", "iri_to_uri", "merge_params",
           "normalize_name", "parse_proxy", "redirect_target", "url_origin"]
