"""Receiving one response: its status line and headers, and a streamed, decoded, capped body.

A :class:`ResponseSink` is handed to tornado's HTTP client for one request. It parses the
header lines itself (the status line resets it, so a proxy's CONNECT answer or a
``100 Continue`` is forgotten), decodes gzip/deflate/br as chunks arrive when the fetch
asked for compression (stacked codings such as ``gzip, br`` too, up to three), and keeps at
most ``max_body_size`` decoded bytes: past that the transfer is aborted and the body is
marked truncated. Decoders make their output in pieces of about 64 KiB whatever the input,
so an oversized body or a decompression bomb is never held whole, not even for one network
chunk (br needs brotli or brotlicffi >= 1.2 for that; with an older one br is not asked
for). With the curl client it installs its own ``HEADERFUNCTION``/``WRITEFUNCTION``
(synchronous, so it can stop libcurl); with the simple client it is the
``header_callback``/``streaming_callback``.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Iterator
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


def _brotli_bounded() -> bool:
    """Whether the brotli module can cap a call's output (brotli or brotlicffi >= 1.2); else br is not asked for."""
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except (TypeError, AttributeError):
        return False
    return True


if brotli is not None and not _brotli_bounded():
    brotli = None

logger = logging.getLogger(__name__)

#: What the fetcher asks for when a task has ``use_gzip``: br only if we can decode it with a bound.
ACCEPT_ENCODING = "gzip, deflate, br" if brotli is not None else "gzip, deflate"

#: Decoded output is made in pieces of about this size, whatever the input's compression ratio.
CHUNK = 64 * 1024
#: At most this many stacked codings (``Content-Encoding: gzip, br``) are decoded; more are refused.
MAX_CODINGS = 3

_DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error,) if brotli is None else (zlib.error, brotli.error)
_PENDING: Any = object()
_COOKIE_HEADERS = frozenset(("Set-Cookie", "Set-Cookie2"))
_CODINGS = frozenset(("gzip", "x-gzip", "deflate", "br") if brotli is not None else ("gzip", "x-gzip", "deflate"))


class BodyLimitReached(Exception):
    """Raised from the simple client's streaming callback to stop a transfer."""


class _TooLarge(Exception):
    """An inner coding of a stacked Content-Encoding decoded past max_body_size."""


class _Decoder:
    """Incremental gzip / deflate (zlib or raw) / br decoder whose output comes in pieces of at most ~CHUNK bytes.

    The output is bounded whatever the input: zlib keeps the input it has not used yet
    (``unconsumed_tail``), brotli the output it has not handed out yet (``output_buffer_limit``).
    """

    __slots__ = ("coding", "made", "_zlib", "_brotli", "_first")

    def __init__(self, coding: str):
        self.coding = coding
        self.made = 0       # output so far (counted by _decoded for an inner coding)
        self._first = True
        self._brotli = brotli.Decompressor() if coding == "br" else None
        self._zlib = None if coding == "br" else zlib.decompressobj(31 if coding in ("gzip", "x-gzip") else 15)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The decoded output of *data*; stop iterating to stop decoding."""
        if self._brotli is not None:
            decoder = self._brotli
            if not data and decoder.is_finished():
                return
            out = decoder.process(data, output_buffer_limit=CHUNK)
            yield out
            # more output may be held back, even when all the input was taken: ask until none comes
            while out and not decoder.is_finished():
                out = decoder.process(b"", output_buffer_limit=CHUNK)
                yield out
            return
        while True:
            out = self._inflate(data)
            yield out
            data = self._zlib.unconsumed_tail
            if not data and len(out) < CHUNK or self._zlib.eof:
                return

    def _inflate(self, data: bytes) -> bytes:
        try:
            out = self._zlib.decompress(data, CHUNK)
        except zlib.error:
            if not (self._first and self.coding == "deflate"):
                raise
            # "deflate" is sometimes sent raw, without the zlib header (RFC 1950) it should have
            self._zlib = zlib.decompressobj(-15)
            out = self._zlib.decompress(data, CHUNK)
        self._first = False
        return out

    def flush(self) -> bytes:
        # pieces() drained the output, so this is at most what the last input left pending
        return b"" if self._zlib is None else self._zlib.flush()


def _flushed(decoder: _Decoder) -> Iterator[bytes]:
    yield decoder.flush()


def _decoded(decoders: list[_Decoder], data: bytes, limit: int, final: bool = False) -> Iterator[bytes]:
    """*data* through every decoder in turn (the outermost coding first), in bounded pieces.

    An inner coding's output is compressed data: past *limit* bytes of it, :class:`_TooLarge`.
    With *final*, each decoder is flushed after its last input.
    """
    first, rest = decoders[0], decoders[1:]
    pieces = first.pieces(data)
    if final:
        pieces = itertools.chain(pieces, _flushed(first))
    if not rest:
        yield from pieces
        return
    for piece in pieces:
        first.made += len(piece)
        if first.made > limit:
            raise _TooLarge
        if piece:
            yield from _decoded(rest, piece, limit)
    if final:
        yield from _decoded(rest, b"", limit, final=True)


class ResponseSink:
    """Collects one HTTP response; see the module docstring."""

    __slots__ = ("limit", "decode", "no_proxy", "proxy_insecure", "status", "headers", "set_cookies", "chunks", "size",
                 "truncated", "error", "_decoders")

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
        self._decoders: list[_Decoder] | None = _PENDING

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
            self._decoders = _PENDING
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
    def _pick_decoders(self) -> list[_Decoder] | None:
        """The decoders for Content-Encoding, the last coding applied first; None keeps the bytes as sent."""
        if not self.decode:
            return None
        header = self.headers.get("Content-Encoding", "").lower()
        codings = [c.strip() for c in header.split(",") if c.strip() and c.strip() != "identity"]
        if not codings or not all(c in _CODINGS for c in codings):
            return None  # identity, or a coding we did not ask for: keep the bytes as sent
        if len(codings) > MAX_CODINGS:
            self.error = (f"refused: {len(codings)} stacked content codings ({header.strip()}); "
                          f"at most {MAX_CODINGS} are decoded")
            return None
        return [_Decoder(c) for c in reversed(codings)]

    def _keep(self, piece: bytes) -> bool:
        room = self.limit - self.size
        if len(piece) > room:
            self.chunks.append(piece[:room])
            self.size = self.limit
            self.truncated = True
            return False
        if piece:
            self.chunks.append(piece)
            self.size += len(piece)
        return True

    def _decode(self, data: bytes, final: bool = False) -> bool:
        """Decode *data* into the body, piece by piece, up to the limit; False when the transfer must stop."""
        decoders = self._decoders
        try:
            for piece in _decoded(decoders, data, self.limit, final):
                if not self._keep(piece):
                    return False
        except _TooLarge:
            self.truncated = True
            return False
        except _DECODE_ERRORS as exc:
            self.error = f"cannot decode the {', '.join(d.coding for d in reversed(decoders))} response body: {exc}"
            return False
        return True

    def write(self, chunk: bytes) -> bool:
        """Take a chunk from the wire; False means "stop the transfer" (limit or decode error)."""
        if self.truncated or self.error:
            return False
        decoders = self._decoders
        if decoders is _PENDING:
            decoders = self._decoders = self._pick_decoders()
            if self.error:
                return False
        if decoders is None:
            return self._keep(chunk)
        return self._decode(chunk)

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
        """The body received so far, with the decoders flushed when the transfer completed."""
        decoders = self._decoders
        if decoders is not None and decoders is not _PENDING and not self.truncated and not self.error:
            self._decode(b"", final=True)
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)


__all__ = ["ACCEPT_ENCODING", "BodyLimitReached", "ResponseSink"]
