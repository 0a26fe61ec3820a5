"""Receiving one response: its status line and headers, and a streamed, decoded, capped body.

A :class:`ResponseSink` is handed to tornado's HTTP client for one request. It parses the
header lines itself (the status line resets it, so a proxy's CONNECT answer or a
``100 Continue`` is forgotten), decodes gzip/deflate/br as chunks arrive when the fetch
asked for compression, and keeps at most ``max_body_size`` decoded bytes: past that the
transfer is aborted and the body is marked truncated, so an oversized body or a
decompression bomb is never held whole. With the curl client it installs its own
``HEADERFUNCTION``/``WRITEFUNCTION`` (synchronous, so it can stop libcurl); with the simple
client it is the ``header_callback``/``streaming_callback``.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from .request import normalize_name

try:
    import pycurl
except ImportError:  # the simple-client fallback never calls prepare_curl
    pycurl = None

try:
    import brotli
except ImportError:
    try:
        import brotlicffi as brotli
    except ImportError:
        brotli = None

logger = logging.getLogger(__name__)

#: What the fetcher asks for when a task has ``use_gzip``: br only if we can decode it.
ACCEPT_ENCODING = "gzip, deflate, br" if brotli is not None else "gzip, deflate"

_DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error,) if brotli is None else (zlib.error, brotli.error)
_PENDING: Any = object()
_COOKIE_HEADERS = frozenset(("Set-Cookie", "Set-Cookie2"))


class BodyLimitReached(Exception):
    """Raised from the simple client's streaming callback to stop a transfer."""


class _Decoder:
    """Incremental gzip / deflate (zlib or raw) / br decoder with a bounded output per call."""

    __slots__ = ("coding", "_zlib", "_brotli", "_first")

    def __init__(self, coding: str):
        self.coding = coding
        self._first = True
        self._brotli = brotli.Decompressor() if coding == "br" else None
        self._zlib = None if coding == "br" else zlib.decompressobj(31 if coding in ("gzip", "x-gzip") else 15)

    def decode(self, data: bytes, max_length: int) -> bytes:
        if self._brotli is not None:
            return self._brotli.process(data)
        try:
            out = self._zlib.decompress(data, max_length)
        except zlib.error:
            if not (self._first and self.coding == "deflate"):
                raise
            # "deflate" is sometimes sent raw, without the zlib header (RFC 1950) it should have
            self._zlib = zlib.decompressobj(-15)
            out = self._zlib.decompress(data, max_length)
        self._first = False
        return out

    def flush(self) -> bytes:
        return b"" if self._zlib is None else self._zlib.flush()


class ResponseSink:
    """Collects one HTTP response; see the module docstring."""

    __slots__ = ("limit", "decode", "no_proxy", "proxy_insecure", "status", "headers", "set_cookies", "chunks", "size",
                 "truncated", "error", "_decoder")

    def __init__(self, max_body_size: int, decode: bool, no_proxy: bool = True, proxy_insecure: bool = False):
        self.limit = max_body_size
        self.decode = decode
        self.no_proxy = no_proxy
        self.proxy_insecure = proxy_insecure
        self.status = 0
        #: normalized name → value (repeated fields joined with ", ")
        self.headers: dict[str, str] = {}
        #: every Set-Cookie / Set-Cookie2 line as (name, value), for the cookie jar
        self.set_cookies: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.error: str | None = None
        self._decoder: _Decoder | None = _PENDING

    # -- headers ----------------------------------------------------------------
    def header_line(self, line: str) -> None:
        """One header line, status lines included (as both clients deliver them)."""
        line = line.rstrip()
        if line.startswith("HTTP/"):
            parts = line.split(None, 2)
            try:
                self.status = int(parts[1])
            except (IndexError, ValueError):
                return
            # a new response (after 100 Continue or a proxy's CONNECT): start over
            self.headers = {}
            self.set_cookies = []
            self.chunks = []
            self.size = 0
            self._decoder = _PENDING
        elif line and self.status:  # (a header line before any status line is ignored)
            name, colon, value = line.partition(":")
            if not colon or not name or line[0] in " \t":
                logger.debug("ignoring malformed header line %r", line)
                return
            name = normalize_name(name)
            value = value.strip(" \t")
            if name in _COOKIE_HEADERS:
                self.set_cookies.append((name, value))
            headers = self.headers
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"

    def curl_header(self, line: bytes) -> None:
        self.header_line(line.decode("latin1"))

    # -- body -----------------------------------------------------------------------
    def _pick_decoder(self) -> _Decoder | None:
        if not self.decode:
            return None
        coding = self.headers.get("Content-Encoding", "").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate") or (coding == "br" and brotli is not None):
            return _Decoder(coding)
        return None  # identity, or a coding we did not ask for: keep the bytes as sent

    def write(self, chunk: bytes) -> bool:
        """Take a chunk from the wire; False means "stop the transfer" (limit or decode error)."""
        if self.truncated or self.error:
            return False
        decoder = self._decoder
        if decoder is _PENDING:
            decoder = self._decoder = self._pick_decoder()
        room = self.limit - self.size
        if decoder is not None:
            try:
                chunk = decoder.decode(chunk, room + 1)
            except _DECODE_ERRORS as exc:
                self.error = f"cannot decode the {decoder.coding} response body: {exc}"
                return False
        if len(chunk) > room:
            self.chunks.append(chunk[:room])
            self.size = self.limit
            self.truncated = True
            return False
        self.chunks.append(chunk)
        self.size += len(chunk)
        return True

    def curl_write(self, chunk: bytes) -> int | None:
        # libcurl aborts the transfer (CURLE_WRITE_ERROR) when we take fewer bytes than given
        return None if self.write(chunk) else 0

    def simple_write(self, chunk: bytes) -> None:
        if not self.write(chunk):
            raise BodyLimitReached(self.error or "body larger than max_body_size")

    def prepare_curl(self, curl: Any) -> None:
        """tornado's ``prepare_curl_callback``: runs after its own setup, so these win."""
        curl.setopt(pycurl.HEADERFUNCTION, self.curl_header)
        curl.setopt(pycurl.WRITEFUNCTION, self.curl_write)
        if self.no_proxy:
            # "" disables proxies outright; unset, libcurl would read http_proxy & co.
            curl.setopt(pycurl.PROXY, "")
        elif self.proxy_insecure:  # validate_cert=False covers an https:// proxy's certificate too
            curl.setopt(pycurl.PROXY_SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.PROXY_SSL_VERIFYHOST, 0)

    def body(self) -> bytes:
        """The body received so far, with the decoder flushed when the transfer completed."""
        decoder = self._decoder
        if decoder is not None and decoder is not _PENDING and not self.truncated and not self.error:
            try:
                tail = decoder.flush()
            except _DECODE_ERRORS as exc:
                self.error = f"cannot decode the {decoder.coding} response body: {exc}"
                tail = b""
            if tail:
                room = self.limit - self.size
                if len(tail) > room:
                    tail, self.truncated = tail[:room], True
                self.chunks.append(tail)
                self.size += len(tail)
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


__all__ = ["ACCEPT_ENCODING", "BodyLimitReached", "ResponseSink"]
