"""The bench's site server: the link farm and the growth tree over plain HTTP/1.1, at little CPU.

The bench runs on the same cores as the server it crawls, so every millisecond the server
spends on a page is taken from the crawler being measured. The test app
(:mod:`spiderflow.testing`) is a tornado application with dozens of routes; per page it
costs about as much CPU as the fetcher. This server answers only what the bench asks for —
``GET`` (or ``HEAD``) of ``/links?...`` and ``/follow?...`` — with the very bytes the test app
sends for them (:func:`~.workloads.render_page`), on an :mod:`asyncio` protocol with
keep-alive and pipelining, and nothing else:

* ``200`` with ``Content-Type``, ``Content-Length`` and ``Date``; ``404`` for any other path or
  a page outside the farm; ``405`` for other methods; ``400`` (and the connection closed) for
  a request line or header block it cannot read, or one larger than :data:`MAX_HEAD`.
* A request body (``Content-Length``) is read and ignored; ``Transfer-Encoding`` is refused.
* ``Connection: close`` and HTTP/1.0 without ``keep-alive`` close after the response.

:func:`serve` has the signature :func:`spiderflow.testing.serve_in_process` takes, so the
bench starts it in a process of its own exactly as it would the test app.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from email.utils import formatdate

from .workloads import render_page

logger = logging.getLogger(__name__)

#: The largest request line plus headers accepted.
MAX_HEAD = 16 * 1024
CONTENT_TYPE = b"text/html; charset=utf-8"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class _Date:
    """The ``Date`` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self, loop: asyncio.AbstractEventLoop) -> bytes:
        second = int(loop.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(usegmt=True).encode()
        return self._value


class _Connection(asyncio.Protocol):
    """One client connection: parses requests from its buffer and answers them in order."""

    def __init__(self, date: _Date, connections: set) -> None:
        self._date = date
        self._connections = connections
        self._buffer = bytearray()
        self._skip = 0          # request body bytes still to discard
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self._transport is not None:
            if self._skip:
                taken = min(self._skip, len(buffer))
                del buffer[:taken]
                self._skip -= taken
                if self._skip:
                    return
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._respond(400, b"request head too large\n", keep_alive=False)
                return
            head = bytes(buffer[:end])
            del buffer[:end + 4]
            self._handle(head)

    def _handle(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._respond(400, b"malformed request line\n", keep_alive=False)
            return
        method, target, version = parts
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._respond(400, b"malformed header line\n", keep_alive=False)
                return
            name = name.strip().lower()
            if name == b"connection":
                token = value.strip().lower()
                keep_alive = token == b"keep-alive" or (keep_alive and token != b"close")
            elif name == b"content-length":
                try:
                    self._skip = int(value)
                except ValueError:
                    self._skip = -1
                if self._skip < 0:
                    self._respond(400, b"bad Content-Length\n", keep_alive=False)
                    return
            elif name == b"transfer-encoding":
                self._respond(400, b"Transfer-Encoding is not supported here\n", keep_alive=False)
                return
        if method not in (b"GET", b"HEAD"):
            self._respond(405, b"only GET and HEAD\n", keep_alive)
            return
        try:
            body = render_page("http://bench" + target.decode("ascii"))
        except UnicodeDecodeError:
            body = None
        if body is None:
            self._respond(404, b"404 not found\n", keep_alive, head_only=method == b"HEAD")
        else:
            self._respond(200, body, keep_alive, CONTENT_TYPE, head_only=method == b"HEAD")

    def _respond(self, status: int, body: bytes, keep_alive: bool, content_type: bytes = b"text/plain",
                 head_only: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        transport.write(b"".join((
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (
                status, _REASONS[status], content_type, len(body), self._date.get(loop)),
            b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
            b"" if head_only else body,
        )))
        if not keep_alive:
            transport.close()
            self._transport = None


async def serve(sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve the bench's pages on the listening *sock* until *stop* is set, then close every connection."""
    loop = asyncio.get_running_loop()
    date = _Date()
    connections: set = set()
    server = await loop.create_server(lambda: _Connection(date, connections), sock=sock)
    try:
        await stop.wait()
    finally:
        server.close()
        for transport in list(connections):
            transport.close()
        await server.wait_closed()
