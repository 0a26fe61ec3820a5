"""The test server's tornado application: httpbin-like routes plus the crawlable sites.

:func:`make_app` lists every route. Echo routes answer with the httpbin-style JSON of
:func:`echo`; handlers look up pre-rendered bytes from :mod:`.pages` or build a small body.
Two kinds of route are plain callables instead of RequestHandlers: the crawlable sites, which
answer straight on the connection at about twice a handler's speed, and the hostile routes
that take the connection over to misbehave on it. The pages under ``/js/`` are built (or
slowed down, or hung) by JavaScript, for the js fetcher's tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.utils
import functools
import gzip
import html
import json
import logging
import random
import zlib
from collections.abc import Callable
from http.client import responses
from typing import Any

from tornado.httputil import HTTPFile, HTTPHeaders, HTTPServerRequest, ResponseStartLine
from tornado.iostream import StreamClosedError
from tornado.web import Application, HTTPError, RequestHandler

from spiderflow.testing import pages

try:
    import brotli
except ImportError:  # optional: /brotli answers 501 without it
    brotli = None

logger = logging.getLogger(__name__)

MAX_DELAY = 30.0
MAX_LINKS = 1000
MAX_BYTES = 10 * 2**20
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
REDIRECT_CODES = (301, 302, 303, 307, 308)
HTML = "text/html; charset=utf-8"


def _texts(arguments: dict[str, list[bytes]]) -> dict[str, str | list[str]]:
    """Decoded arguments: a string per name, a list when the name repeats."""
    out: dict[str, str | list[str]] = {}
    for name, values in arguments.items():
        texts = [v.decode("utf-8", "replace") for v in values]
        out[name] = texts[0] if len(texts) == 1 else texts
    return out


def _file_info(f: HTTPFile) -> dict[str, Any]:
    try:
        content = f.body.decode("utf-8")
    except UnicodeDecodeError:
        content = None
    return {"filename": f.filename, "content_type": f.content_type, "size": len(f.body), "content": content}


def echo(request: HTTPServerRequest) -> dict[str, Any]:
    """The httpbin-style description of *request* that echo routes answer with."""
    files: dict[str, Any] = {}
    for name, items in request.files.items():
        infos = [_file_info(f) for f in items]
        files[name] = infos[0] if len(infos) == 1 else infos
    try:
        parsed = json.loads(request.body) if request.body else None
    except ValueError:
        parsed = None
    return {
        "method": request.method,
        "url": request.full_url(),
        "args": _texts(request.query_arguments),
        "headers": dict(request.headers),
        "form": _texts(request.body_arguments),
        "files": files,
        "data": request.body.decode("utf-8", "replace"),
        "json": parsed,
    }


def _query_int(request: HTTPServerRequest, name: str, default: int, low: int, high: int) -> int:
    values = request.query_arguments.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise ValueError(f"{name} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} is not in [{low}, {high}]")
    return value


class _Handler(RequestHandler):
    """Base: no automatic ETag (only ``/etag`` and ``/cache`` are conditional), small helpers."""

    def compute_etag(self) -> str | None:
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, HTTPError) and error.log_message:
            message = error.log_message % error.args if error.args else error.log_message
        else:
            message = responses.get(status_code, "Unknown")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {message}\n")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):  # a deliberate answer: not worth a warning
            logger.debug("%s %s: %s", self.request.method, self.request.uri, value)
        else:
            super().log_exception(typ, value, tb)

    def send(self, body: bytes, content_type: str = HTML, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send(json.dumps(obj).encode(), "application/json", status)

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        try:
            return _query_int(self.request, name, default, low, high)
        except ValueError as exc:
            raise HTTPError(400, "%s", exc) from None


class _Static(_Handler):
    def initialize(self, body: bytes, content_type: str = HTML) -> None:
        self.body, self.content_type = body, content_type

    def get(self, *_: str) -> None:
        self.send(self.body, self.content_type)


class _Echo(_Handler):
    """``/get``, ``/anything``: any standard method."""

    async def get(self) -> None:
        self.send_json(echo(self.request))

    head = post = put = patch = delete = options = get


class _Post(_Handler):
    async def post(self) -> None:
        self.send_json(echo(self.request))


class _Put(_Handler):
    async def put(self) -> None:
        self.send_json(echo(self.request))


class _Delay(_Handler):
    async def get(self, seconds: str) -> None:
        await asyncio.sleep(min(float(seconds), MAX_DELAY))
        self.send_json(echo(self.request))

    head = post = put = patch = delete = options = get


class _Headers(_Handler):
    def get(self) -> None:
        self.send_json({"headers": dict(self.request.headers)})


class _UserAgent(_Handler):
    def get(self) -> None:
        self.send_json({"user-agent": self.request.headers.get("User-Agent")})


class _ResponseHeaders(_Handler):
    def get(self) -> None:
        args = _texts(self.request.query_arguments)
        self.set_header("Content-Type", "application/json")
        try:
            for name, values in args.items():
                self.clear_header(name)
                for value in values if isinstance(values, list) else [values]:
                    self.add_header(name, value)
        except ValueError as exc:
            raise HTTPError(400, "bad header: %s", exc) from None
        self.finish(json.dumps(args).encode())


class _Status(_Handler):
    """Any code in [100, 599]; a 1xx is sent as tornado sends it, and clients wait for more."""

    async def get(self, code: str) -> None:
        status = int(code)
        if not 100 <= status <= 599:
            raise HTTPError(400, "status must be in [100, 599]")
        self.set_status(status)
        if status >= 200 and status not in (204, 304):  # tornado sends no body with the others
            self.set_header("Content-Type", "text/plain")
            self.write(f"status {status}")

    head = post = put = patch = delete = options = get


class _Redirect(_Handler):
    """``/redirect/<n>`` (absolute path), ``/relative-redirect/<n>``, ``/absolute-redirect/<n>``."""

    def initialize(self, kind: str) -> None:
        self.kind = kind

    def get(self, hops: str) -> None:
        n = int(hops)
        if n < 1:
            raise HTTPError(400, "n must be at least 1")
        if self.kind == "relative-redirect":  # resolved against /relative-redirect/<n>
            location = str(n - 1) if n > 1 else "../get"
        else:
            location = f"/{self.kind}/{n - 1}" if n > 1 else "/get"
            if self.kind == "absolute-redirect":
                location = f"{self.request.protocol}://{self.request.host}{location}"
        self.redirect(location)


class _RedirectTo(_Handler):
    """Any method; only sends the code, so the client decides what happens to method and body."""

    async def get(self) -> None:
        url = self.get_query_argument("url")
        status = self.int_arg("status_code", 302, 0, 999)
        if status not in REDIRECT_CODES:
            raise HTTPError(400, "status_code must be one of %s", REDIRECT_CODES)
        try:
            self.redirect(url, status=status)
        except ValueError as exc:
            raise HTTPError(400, "bad url: %s", exc) from None

    head = post = put = patch = delete = options = get


class _RedirectLoop(_Handler):
    def get(self) -> None:
        self.redirect("/redirect-loop")


class _Cookies(_Handler):
    """``/cookies`` echoes; ``/cookies/set?a=1`` and ``/cookies/delete?a`` redirect to it."""

    def get(self, action: str | None = None) -> None:
        if action is None:
            self.send_json({"cookies": {k: v.value for k, v in self.request.cookies.items()}})
            return
        try:
            for name, value in _texts(self.request.query_arguments).items():
                if action == "set":
                    self.set_cookie(name, value if isinstance(value, str) else value[-1], path="/")
                else:
                    self.clear_cookie(name, path="/")
        except ValueError as exc:
            raise HTTPError(400, "bad cookie: %s", exc) from None
        self.redirect("/cookies")


class _Compressed(_Handler):
    def initialize(self, encoding: str) -> None:
        self.encoding = encoding

    def get(self) -> None:
        flag = {"gzip": "gzipped", "deflate": "deflated", "br": "brotli"}[self.encoding]
        body = json.dumps({flag: True, **echo(self.request)}).encode()
        if self.encoding == "gzip":
            body = gzip.compress(body)
        elif self.encoding == "deflate":
            body = zlib.compress(body)  # zlib-wrapped, as RFC 9110 defines "deflate"
        elif brotli is None:
            raise HTTPError(501, "the brotli module is not installed")
        else:
            body = brotli.compress(body)
        self.set_header("Content-Encoding", self.encoding)
        self.send(body, "application/json")


class _BadGzip(_Handler):
    def get(self) -> None:
        self.set_header("Content-Encoding", "gzip")
        self.send(b"this is not gzip data, whatever the header says\n" * 8)


@functools.lru_cache(maxsize=8)
def _bomb(coding: str, mib: int) -> bytes:
    """*mib* MiB of zeros under the comma-separated *coding* (applied left to right), made in 1 MiB steps."""
    body = b"\0" * 2**20
    steps = mib
    for name in coding.split(","):
        if name == "br":
            packer = brotli.Compressor(quality=5)
            parts = [packer.process(body) for _ in range(steps)] + [packer.finish()]
        else:
            packer = zlib.compressobj(9, zlib.DEFLATED, 31 if name == "gzip" else 15)
            parts = [packer.compress(body) for _ in range(steps)] + [packer.flush()]
        body, steps = b"".join(parts), 1
    return body


class _Bomb(_Handler):
    """A decompression bomb: ``mib`` MiB of zeros [256] in a small body under ``coding`` (``br``, ``gzip,br``...)."""

    def get(self) -> None:
        coding = self.get_query_argument("coding", "gzip")
        names = coding.split(",")
        if not 1 <= len(names) <= 4 or not set(names) <= {"gzip", "deflate", "br"}:
            raise HTTPError(400, "coding is a comma-separated list of gzip, deflate and br")
        if "br" in names and brotli is None:
            raise HTTPError(501, "the brotli module is not installed")
        body = _bomb(coding, self.int_arg("mib", 256, 1, 4096))
        self.set_header("Content-Encoding", ", ".join(names))
        self.send(body, "application/octet-stream")


class _SlowBody(_Handler):
    """Headers (with the full Content-Length) at once, then 10 bytes every 0.1 s for ``seconds``."""

    async def get(self) -> None:
        try:
            seconds = min(float(self.get_query_argument("seconds", "1")), MAX_DELAY)
        except ValueError:
            raise HTTPError(400, "seconds is not a number") from None
        ticks = max(int(seconds * 10), 0)
        self.set_header("Content-Type", "text/plain")
        self.set_header("Content-Length", str(10 * (ticks + 1)))
        try:
            for _ in range(ticks):
                self.write(b"slow body\n")
                await self.flush()
                await asyncio.sleep(0.1)
            self.finish(b"slow body\n")
        except StreamClosedError:
            pass


def _hostile_close(request: HTTPServerRequest, **_: Any) -> None:
    """Drop the connection without any response."""
    request.connection.detach().close()


def _hostile_garbage(request: HTTPServerRequest, **_: Any) -> None:
    """Answer with bytes that are not HTTP, then close."""
    stream = request.connection.detach()
    written = stream.write(b"\x00\x01SPIDERFLOW GARBAGE \xff\xfe this is not HTTP at all\r\n\r\n")
    written.add_done_callback(lambda f: (f.exception(), stream.close()))


class _Encoding(_Handler):
    def get(self, charset: str) -> None:
        if charset == "broken":
            self.send(pages.BROKEN_UTF8)
            return
        charset = charset.lower()
        declare = self.get_query_argument("declare", "header")
        body = pages.ENCODING_PAGES.get((charset, declare))
        if body is None:
            raise HTTPError(404, "charset must be one of %s and declare one of %s",
                            list(pages.ENCODING_SAMPLES), pages.DECLARE)
        self.send(body, f"text/html; charset={charset}" if declare == "header" else "text/html")


class _Bytes(_Handler):
    def get(self, size: str) -> None:
        seed = self.int_arg("seed", 0, -(2**63), 2**63)
        self.send(random.Random(seed).randbytes(min(int(size), MAX_BYTES)), "application/octet-stream")


class _Large(_Handler):
    """``size`` bytes in flushed 64 KiB chunks; ``length=0`` leaves out Content-Length (chunked)."""

    async def get(self) -> None:
        size = self.int_arg("size", 2**20, 0, 2**40)
        self.set_header("Content-Type", "application/octet-stream")
        if self.get_query_argument("length", "1") != "0":
            self.set_header("Content-Length", str(size))
        try:
            while size > 0:
                chunk = pages.LARGE_CHUNK[:size]
                size -= len(chunk)
                self.write(chunk)
                await self.flush()  # waits for the socket: memory stays at one chunk
            self.finish()
        except StreamClosedError:
            pass


class _Etag(_Handler):
    def get(self, etag: str) -> None:
        self.set_header("ETag", f'"{etag}"')
        wanted = self.request.headers.get("If-None-Match", "")
        tags = [t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")]
        if "*" in tags or etag in tags:
            self.set_status(304)
            self.finish()
        else:
            self.send_json(echo(self.request))


class _Cache(_Handler):
    def get(self) -> None:
        self.set_header("Last-Modified", LAST_MODIFIED)
        since = self.request.headers.get("If-Modified-Since")
        try:
            fresh = since is not None and (email.utils.parsedate_to_datetime(since)
                                           >= email.utils.parsedate_to_datetime(LAST_MODIFIED))
        except (TypeError, ValueError):
            fresh = False
        if fresh:
            self.set_status(304)
            self.finish()
        else:
            self.send_json(echo(self.request))


class _BasicAuth(_Handler):
    def get(self, user: str, passwd: str) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        try:
            given = base64.b64decode(token, validate=True).decode() if scheme.lower() == "basic" else ""
        except (binascii.Error, UnicodeDecodeError):
            given = ""
        if given != f"{user}:{passwd}":
            self.set_header("WWW-Authenticate", 'Basic realm="spiderflow"')
            self.send_json({"authenticated": False}, status=401)
        else:
            self.send_json({"authenticated": True, "user": user})


def _respond(request: HTTPServerRequest, body: bytes, status: int = 200, content_type: str = HTML) -> None:
    """Answer *request* straight on its connection, without a RequestHandler (about twice as fast)."""
    headers = HTTPHeaders({"Content-Type": content_type, "Content-Length": str(len(body))})
    start_line = ResponseStartLine("", status, responses[status])
    request.connection.write_headers(start_line, headers, b"" if request.method == "HEAD" else body)
    request.connection.finish()


def _crawlable(render: Callable[[HTTPServerRequest], bytes]) -> Callable[..., None]:
    """A fast GET route: *render* returns the page or raises LookupError (404) or ValueError (400)."""
    def route(request: HTTPServerRequest, **_: Any) -> None:
        if request.method not in ("GET", "HEAD"):
            _respond(request, b"405 Method Not Allowed\n", 405, "text/plain")
            return
        try:
            _respond(request, render(request))
        except LookupError as exc:
            _respond(request, f"404 {exc}\n".encode(), 404, "text/plain")
        except ValueError as exc:
            _respond(request, f"400 {exc}\n".encode(), 400, "text/plain")
    return route


@_crawlable
def _link_farm(request: HTTPServerRequest) -> bytes:
    total = _query_int(request, "total", 100, 1, 10**9)
    show = _query_int(request, "show", 10, 0, MAX_LINKS)
    n = _query_int(request, "n", 0, 0, 10**9)
    if n >= total:
        raise LookupError(f"no page {n} in a farm of {total}")
    paths = [pages.link_farm_url(total, show, j) for j in pages.link_farm_links(total, show, n)]
    return pages.links_page(f"link farm page {n} of {total}", paths)


@_crawlable
def _follow(request: HTTPServerRequest) -> bytes:
    total = _query_int(request, "total", 0, 1, 10**18) or None
    show = _query_int(request, "show", 20, 0, MAX_LINKS)
    n = _query_int(request, "n", 0, 0, 10**18)
    if total is not None and n >= total:
        raise LookupError(f"no page {n} below {total}")
    paths = [pages.follow_url(show, j, total) for j in pages.follow_links(show, n, total)]
    return pages.links_page(f"follow page {n}", paths)


# -- JavaScript pages (fetch_type='js') ---------------------------------------------------

def _js_page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
            f"<body>{body}</body></html>").encode()


#: Content only JavaScript builds: a heading and a link as the page runs, a paragraph from a fetch after load.
JS_BUILT = _js_page("js built", """<div id="app">no JavaScript ran</div><script>
document.getElementById("app").innerHTML =
  '<h1 id="built">built by JavaScript \u00e9</h1><a href="/js/linked?from=js">a link made by JavaScript</a>';
fetch("/get?x=fetched").then(r => r.json()).then(d => setTimeout(() => {
  const p = document.createElement("p"); p.id = "fetched"; p.textContent = "after load: " + d.args.x;
  document.body.appendChild(p); }, 100));
</script>""")
JS_HANG = _js_page("hang", "<script>for (;;) {}</script>")
JS_VIEWPORT = _js_page("viewport", """<div id="size"></div>
<script>document.getElementById("size").textContent = innerWidth + "x" + innerHeight;</script>""")
JS_IMAGES = _js_page("images", """<div id="img">pending</div><img src="/image/png?from=js"
 onload="document.getElementById('img').textContent = 'loaded'"
 onerror="document.getElementById('img').textContent = 'blocked'">""")


class _JsSlow(_Handler):
    """``/js/slow?seconds=N``: the load event comes after a script that takes N seconds; it writes #out."""

    def get(self) -> None:
        seconds = self.int_arg("seconds", 1, 0, int(MAX_DELAY))
        self.send(_js_page("slow", f'<div id="out">waiting</div><script src="/js/slow.js?seconds={seconds}"></script>'))


class _JsSlowScript(_Handler):
    async def get(self) -> None:
        seconds = self.int_arg("seconds", 1, 0, int(MAX_DELAY))
        await asyncio.sleep(seconds)
        self.send(f'document.getElementById("out").textContent = "rendered after {seconds} s";'.encode(),
                  "application/javascript")


class _JsCookies(_Handler):
    """``/js/cookies``: the cookies the server got in #server; the page's script sets ``made_by_js``."""

    def get(self) -> None:
        got = json.dumps({k: v.value for k, v in self.request.cookies.items()}, sort_keys=True)
        self.send(_js_page("cookies", f'<pre id="server">{html.escape(got)}</pre>'
                                      '<script>document.cookie = "made_by_js=yes; path=/";</script>'))


class _JsHeaders(_Handler):
    """``/js/headers``, any method: the request as the server got it in #request, a same-origin fetch's in #xhr."""

    async def get(self) -> None:
        got = json.dumps({"method": self.request.method, "headers": dict(self.request.headers),
                          "body": self.request.body.decode("utf-8", "replace")}, sort_keys=True)
        self.send(_js_page("headers", f'<pre id="request">{html.escape(got)}</pre><pre id="xhr">pending</pre>'
                           '<script>fetch("/headers").then(r => r.json()).then(d => {'
                           'document.getElementById("xhr").textContent = JSON.stringify(d.headers); });</script>'))

    post = put = get


class _JsLatin1(_Handler):
    def get(self) -> None:
        self.send(b'<html><body><p id="word">caf\xe9</p></body></html>', "text/html; charset=iso-8859-1")


def _log_request(handler: RequestHandler) -> None:
    """Requests go to our logger at DEBUG (tornado's would print every 4xx/5xx as a warning)."""
    if logger.isEnabledFor(logging.DEBUG):
        request = handler.request
        logger.debug("%d %s %s %.1fms", handler.get_status(), request.method, request.uri,
                     1000 * request.request_time())


def _counting(route: Callable[..., None], hits: collections.Counter) -> Callable[..., None]:
    def counted(request: HTTPServerRequest, **kwargs: Any) -> None:
        hits[request.uri] += 1
        route(request, **kwargs)
    return counted


def make_app(hits: collections.Counter | None = None) -> Application:
    """The test server's tornado application.

    With *hits*, every request to the link farm and /follow is counted by URI (so tests
    can check that a crawl fetched each page exactly once).
    """
    links, follow = (_link_farm, _follow) if hits is None else (_counting(_link_farm, hits), _counting(_follow, hits))
    return Application([
        (r"/links", links),  # the hot routes first: rules are tried in order
        (r"/follow", follow),
        (r"/", _Static, {"body": pages.INDEX}),
        (r"/html", _Static, {"body": pages.HTML}),
        (r"/json", _Static, {"body": pages.JSON, "content_type": "application/json"}),
        (r"/image/png", _Static, {"body": pages.PNG, "content_type": "image/png"}),
        (r"/robots.txt", _Static, {"body": pages.ROBOTS_TXT, "content_type": "text/plain"}),
        (r"/private(?:/.*)?", _Static, {"body": pages.PRIVATE}),
        (r"/(?:get|anything(?:/.*)?)", _Echo),
        (r"/post", _Post),
        (r"/put", _Put),
        (r"/headers", _Headers),
        (r"/user-agent", _UserAgent),
        (r"/response-headers", _ResponseHeaders),
        (r"/status/(\d+)", _Status),
        (r"/delay/(\d+(?:\.\d+)?)", _Delay),
        (r"/redirect/(\d+)", _Redirect, {"kind": "redirect"}),
        (r"/relative-redirect/(\d+)", _Redirect, {"kind": "relative-redirect"}),
        (r"/absolute-redirect/(\d+)", _Redirect, {"kind": "absolute-redirect"}),
        (r"/redirect-to", _RedirectTo),
        (r"/redirect-loop", _RedirectLoop),
        (r"/cookies", _Cookies),
        (r"/cookies/(set|delete)", _Cookies),
        (r"/gzip", _Compressed, {"encoding": "gzip"}),
        (r"/deflate", _Compressed, {"encoding": "deflate"}),
        (r"/brotli", _Compressed, {"encoding": "br"}),
        (r"/hostile/bad-gzip", _BadGzip),
        (r"/hostile/bomb", _Bomb),
        (r"/hostile/close", _hostile_close),
        (r"/hostile/garbage", _hostile_garbage),
        (r"/hostile/slow-body", _SlowBody),
        (r"/encoding/([\w-]+)", _Encoding),
        (r"/bytes/(\d+)", _Bytes),
        (r"/large", _Large),
        (r"/etag/([^/]+)", _Etag),
        (r"/cache", _Cache),
        (r"/basic-auth/([^/]+)/([^/]+)", _BasicAuth),
        (r"/js/built", _Static, {"body": JS_BUILT}),
        (r"/js/hang", _Static, {"body": JS_HANG}),
        (r"/js/viewport", _Static, {"body": JS_VIEWPORT}),
        (r"/js/images", _Static, {"body": JS_IMAGES}),
        (r"/js/slow", _JsSlow),
        (r"/js/slow\.js", _JsSlowScript),
        (r"/js/cookies", _JsCookies),
        (r"/js/headers", _JsHeaders),
        (r"/js/latin1", _JsLatin1),
    ], log_function=_log_request)
