"""Running the test app: in a daemon thread, in its own process, or from the command line.

Each way binds its socket first (so the port is known and errors raise at once), then serves
:func:`~spiderflow.testing.app.make_app` on an asyncio loop of its own until told to stop,
and closes every open connection on the way out. Loopback only unless asked otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import multiprocessing
import signal
import socket
import threading
from typing import Any

from tornado.httpserver import HTTPServer

from spiderflow.settings import is_loopback
from spiderflow.testing.app import make_app

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0


def _bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket (tornado's bind_sockets leaks one when bind fails)."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                backlog=1024)
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(sock: socket.socket, stop: asyncio.Event, hits: collections.Counter | None = None) -> None:
    """Serve the app on *sock* until *stop* is set, then close every connection."""
    server = HTTPServer(make_app(hits))
    server.add_sockets([sock])
    try:
        await stop.wait()
    finally:
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("test server: connections still open after %.0f s", STOP_TIMEOUT)


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class TestServer:
    """The app served on its own event loop in a daemon thread; see :func:`serve_in_thread`."""

    __test__ = False  # not a pytest test class

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        #: requests to the link farm and /follow by URI
        self.hits: collections.Counter = collections.Counter()
        sock = _bind(host, port)
        self.port: int = sock.getsockname()[1]
        self.url = _url(host, self.port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, started),
                                        name=f"spiderflow-test-server-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT):
            raise RuntimeError(f"the test server thread did not start in {START_TIMEOUT:.0f} s")

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            started.set()
            await _serve(sock, self._stop, self.hits)
        asyncio.run(main())

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._loop is None or self._stop is None or not self._thread.is_alive():
            return
        try:
            self._loop.call_soon_threadsafe(self._stop.set)
        except RuntimeError:  # the loop closed meanwhile
            return
        self._thread.join(2 * STOP_TIMEOUT)

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TestServer {self.url}>"


def serve_in_thread(host: str = "127.0.0.1", port: int = 0) -> TestServer:
    """Start the test server in a daemon thread; it accepts connections when this returns."""
    return TestServer(host, port)


def _process_main(conn: Any, parent_end: Any, host: str, port: int, serve: Any) -> None:
    """The server process: report ``("ok", port)`` or ``("error", text)``, then serve."""
    parent_end.close()  # a forked child holds a copy, which would hide the parent's exit
    try:
        sock = _bind(host, port)
    except OSError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ok", sock.getsockname()[1]))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        _stop_on_signals(loop, stop)
        loop.add_reader(conn.fileno(), stop.set)  # readable: the parent closed the pipe or died
        await serve(sock, stop)
    asyncio.run(main())


class ServerProcess:
    """The app served in its own OS process; see :func:`serve_in_process`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_method: str = "spawn",
                 serve: Any = None) -> None:
        ctx = multiprocessing.get_context(start_method)
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_process_main, args=(child, self._conn, host, port, serve or _serve),
                                    name="spiderflow-test-server", daemon=True)
        self._process.start()
        child.close()
        try:
            if not self._conn.poll(START_TIMEOUT):
                raise RuntimeError(f"the test server process did not start in {START_TIMEOUT:.0f} s")
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(1)
            status, value = "error", f"it exited with code {self._process.exitcode}"
        except BaseException:
            self.stop()
            raise
        if status != "ok":
            self.stop()
            raise OSError(f"the test server process cannot serve {host}:{port}: {value}")
        self.port: int = value
        self.url = _url(host, value)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def stop(self) -> None:
        """Close the pipe (the process sees it, closes its connections and exits); SIGTERM it if
        it has not exited within a second, SIGKILL it if it still lingers."""
        self._conn.close()
        self._process.join(1.0)
        if self._process.exitcode is None:
            self._process.terminate()
            self._process.join(2 * STOP_TIMEOUT)
        if self._process.exitcode is None:
            logger.warning("test server process %s ignored SIGTERM; killing it", self.pid)
            self._process.kill()
            self._process.join(STOP_TIMEOUT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {getattr(self, 'url', '-')} pid={self.pid}>"


def serve_in_process(host: str = "127.0.0.1", port: int = 0, start_method: str = "spawn",
                     serve: Any = None) -> ServerProcess:
    """Start the test server in its own process; it accepts connections when this returns.

    *serve* replaces the test app: a module-level coroutine function ``serve(sock, stop)``
    that serves the listening socket until the :class:`asyncio.Event` *stop* is set (the
    bench passes :func:`spiderflow.bench.server.serve`). With the default ``spawn`` start
    method a calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    return ServerProcess(host, port, start_method, serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m spiderflow.testing``: print the URL, serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m spiderflow.testing",
                                     description="Serve the spiderflow test HTTP server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a --host that is not loopback")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not (is_loopback(args.host) or args.allow_remote):
        parser.error(f"--host {args.host} is not a loopback address; add --allow-remote to serve it anyway")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _bind(args.host, args.port)

    async def serve() -> None:
        stop = asyncio.Event()
        _stop_on_signals(asyncio.get_running_loop(), stop)
        print(f"spiderflow test server listening on {_url(args.host, sock.getsockname()[1])}", flush=True)
        await _serve(sock, stop)
    asyncio.run(serve())
    return 0
