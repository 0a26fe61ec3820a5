"""Local servers for the fetcher's tests: a proxy (HTTP forwarding, CONNECT, SOCKS5) and a TLS origin.

One listening socket speaks both protocols (a first byte of 0x05 means SOCKS5), over TLS
when given an ``ssl_context`` (an ``https://`` proxy). With a
username and password it requires them: HTTP ``Proxy-Authorization: Basic`` (else 407) or
SOCKS5 username/password auth (RFC 1929). Every request it accepts or refuses is recorded
in :attr:`ProxyServer.records`; forwarded plain-HTTP requests also get an
``X-Via-Test-Proxy`` header so the origin server's echo shows the hop. It runs its own
asyncio loop in a thread, so it works with ``asyncio.run`` and ``fetch_sync`` alike::

    with ProxyServer(username="u", password="p") as proxy:
        proxy.url  # "http://127.0.0.1:PORT"

:class:`TLSServer` answers ``GET /<anything>`` over HTTPS with a self-signed certificate made
at start by the ``openssl`` command (:func:`make_self_signed`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

VIA_HEADER = "X-Via-Test-Proxy"


@dataclass
class ProxyRecord:
    kind: str          # "http", "connect" or "socks5"
    target: str        # the absolute URL, or host:port
    authorized: bool


class ServerThread:
    """Run a server on its own asyncio loop in a daemon thread.

    *start* is a coroutine function returning ``(port, close)``; ``close()`` runs on that
    loop at stop().
    """

    def __init__(self, start):
        self._start = start
        self._close = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def start(self) -> int:
        self._thread.start()
        port, self._close = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return port

    def stop(self) -> None:
        async def shutdown():
            self._close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _relay(client_r, client_w, upstream_r, upstream_w) -> None:
    await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))


class ProxyServer:
    """See the module docstring."""

    def __init__(self, username: str | None = None, password: str | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.records: list[ProxyRecord] = []
        self._thread = ServerThread(self._listen)
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ProxyServer:
        self.port = self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _listen(self):
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        return server.sockets[0].getsockname()[1], server.close

    # -- protocol --------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(1)
            if first == b"\x05":
                await self._socks5(reader, writer)
            else:
                head = first + await reader.readuntil(b"\r\n\r\n")
                await self._http(head.decode("latin1"), reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _check_basic(self, header: str | None) -> bool:
        if self.username is None:
            return True
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header is not None and header.strip() == f"Basic {expected}"

    async def _http(self, head: str, reader, writer) -> None:
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [line.split(":", 1) for line in lines if ":" in line]
        auth = next((v for k, v in headers if k.strip().lower() == "proxy-authorization"), None)
        ok = self._check_basic(auth)
        self.records.append(ProxyRecord("connect" if method == "CONNECT" else "http", target, ok))
        if not ok:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b'Proxy-Authenticate: Basic realm="fetcher_proxy"\r\nContent-Length: 0\r\n'
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_r, up_w = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay(reader, writer, up_r, up_w)
            return
        parts = urlsplit(target)
        up_r, up_w = await asyncio.open_connection(parts.hostname, parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = [f"{k}:{v}" for k, v in headers
                if k.strip().lower() not in ("proxy-authorization", "proxy-connection", "connection")]
        out = f"{method} {path} {version}\r\n" + "".join(f"{h}\r\n" for h in kept)
        out += f"{VIA_HEADER}: fetcher_proxy\r\nConnection: close\r\n\r\n"
        up_w.write(out.encode("latin1"))
        await up_w.drain()
        # the body (if any) and the response stream through; the origin closes after answering
        await _relay(reader, writer, up_r, up_w)

    async def _socks5(self, reader, writer) -> None:
        (nmethods,) = await reader.readexactly(1)
        methods = await reader.readexactly(nmethods)
        want = 0x02 if self.username is not None else 0x00
        if want not in methods:
            writer.write(b"\x05\xff")
            self.records.append(ProxyRecord("socks5", "", False))
            return
        writer.write(bytes([5, want]))
        ok = True
        if want == 0x02:
            _ver, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            ok = (user, password) == (self.username, self.password)
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                self.records.append(ProxyRecord("socks5", "", False))
                return
        _ver, cmd, _rsv, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif atyp == 3:
            (n,) = await reader.readexactly(1)
            host = (await reader.readexactly(n)).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        self.records.append(ProxyRecord("socks5", f"{host}:{port}", ok))
        if cmd != 1:
            writer.write(b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00")
            return
        try:
            up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            return
        writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        await writer.drain()
        await _relay(reader, writer, up_r, up_w)


# -- a TLS origin --------------------------------------------------------------------------

def make_self_signed(directory: str) -> tuple[str, str]:
    """Write a self-signed certificate for 127.0.0.1/localhost; return (certfile, keyfile)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


class TLSServer:
    """HTTPS on 127.0.0.1 with a self-signed certificate; every path answers ``secure <path>``."""

    def __init__(self, certfile: str, keyfile: str):
        self.certfile, self.keyfile = certfile, keyfile
        self._thread = ServerThread(self._listen)
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _listen(self):
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets
        from tornado.web import Application, RequestHandler

        class Hello(RequestHandler):
            def get(self) -> None:
                self.write(f"secure {self.request.path}")

        server = HTTPServer(Application([(r"/.*", Hello)]), ssl_options=server_context(self.certfile, self.keyfile))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        return sockets[0].getsockname()[1], server.stop

    def start(self) -> TLSServer:
        self.port = self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> TLSServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
