"""The control relay of ``spiderflow all``: its socket, and a pipe to each child.

The queues of ``all`` are multiprocessing queues that no other process can open, so the
supervisor carries the control bus itself: it serves the unix-domain socket
``<data_dir>/control.sock`` (owner-only, 0600: created under a temporary name, chmod-ed,
then renamed into place), reads one command per connection, writes ``{"receivers": N}`` (the
children it asks), passes the command to each child over the child's end of a pipe made
before its fork, and streams back each reply as it comes, until every child answered or the
command's timeout. A child that died is not asked (or its pipe ends: it is skipped).

With any queue backend, a child that stops on a remote ``shutdown`` says so on its pipe
(``{"leaving": true}``), so the supervisor does not start it again (:meth:`Relay.left`), and
``all`` ends once every child left that way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from ..files import make_private_dirs
from .bus import recv_frame, send_frame, short_path, socket_path
from .commands import MAX_COMMAND, MAX_REPLY, MAX_TIMEOUT, encode

logger = logging.getLogger(__name__)

Key = tuple[str, int]
#: seconds a client has to send its command once connected
READ_TIMEOUT = 5.0

#: the pipe to the supervisor, in a child of ``all`` (set by the relay's entry before the component starts)
parent_pipe: Any = None


class _Child:
    __slots__ = ("child_end", "closed", "conn", "lock")

    def __init__(self, conn: Any, child_end: Any):
        self.conn = conn
        self.child_end = child_end
        self.lock = threading.Lock()
        self.closed = False


class Relay:
    """The supervisor's side (see the module docstring); *serve*: also serve the control socket
    (for ``multiprocessing://``)."""

    def __init__(self, ctx: Any, data_dir: str, serve: bool = True):
        self.ctx = ctx
        self.path = socket_path(data_dir) if serve else None
        self._children: dict[Key, _Child] = {}
        self._pending: dict[str, queue.Queue] = {}
        self._left: set[Key] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        if self.path is not None:
            self._server = _listen(self.path)
        self._start(self._read, "spiderflow-control-relay")
        if self._server is not None:
            self._start(self._accept, "spiderflow-control-socket")
            logger.info("all: remote control on %s", self.path)

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- children ------------------------------------------------------------------------------------
    def wrap(self, key: Key, target: Callable[..., None]) -> Callable[..., None]:
        """The target of child *key*'s process: *target*, with this child's end of a new pipe."""
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        with self._lock:
            old = self._children.pop(key, None)
            self._children[key] = _Child(parent_end, child_end)
            self._left.discard(key)
        if old is not None:
            _close(old.conn)
            _close(old.child_end)
        return functools.partial(_child_entry, self, key, target)

    def started(self, key: Key) -> None:
        """After the fork of child *key*: the parent closes the child's end."""
        with self._lock:
            child = self._children.get(key)
        if child is not None and child.child_end is not None:
            _close(child.child_end)
            child.child_end = None

    def left(self, key: Key) -> bool:
        """Whether child *key* stopped on a remote shutdown."""
        with self._lock:
            return key in self._left

    @property
    def shut_down(self) -> bool:
        """Whether some child stopped on a remote shutdown."""
        with self._lock:
            return bool(self._left)

    def _in_child(self, key: Key) -> Any:
        """In the forked child *key*: close what belongs to the parent; return this child's end."""
        mine = None
        for k, child in list(self._children.items()):
            _close(child.conn)
            if k == key:
                mine = child.child_end
            elif child.child_end is not None:
                _close(child.child_end)
        if self._server is not None:
            _close(self._server)
        return mine

    def _read(self) -> None:
        """Route the children's replies to the command they answer; note the children that leave."""
        while not self._stop.is_set():
            with self._lock:
                live = {child.conn: (key, child) for key, child in self._children.items() if not child.closed}
            if not live:
                self._stop.wait(0.2)
                continue
            try:
                ready = wait(list(live), timeout=0.2)
            except OSError:
                ready = []
                self._stop.wait(0.05)
            for conn in ready:
                key, child = live[conn]
                try:
                    data = conn.recv_bytes(MAX_REPLY + 1024)
                except (EOFError, OSError):
                    child.closed = True     # the child is gone; a restart makes a new pipe
                    continue
                self._route(key, data)

    def _route(self, key: Key, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("leaving") is True:
            with self._lock:
                self._left.add(key)
            return
        inbox = self._pending.get(message.get("id"))
        if inbox is not None:
            inbox.put((key, data))

    # -- the socket ------------------------------------------------------------------------------------
    def _accept(self) -> None:
        server = self._server
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                self._stop.wait(0.1)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="spiderflow-control-call", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        command_id = None
        try:
            conn.settimeout(READ_TIMEOUT)
            data = recv_frame(conn, MAX_COMMAND)
            if data is None:
                return
            try:
                message = json.loads(data)
                command_id = message["id"]
                ttl = min(float(message["ttl"]), MAX_TIMEOUT)
                if not isinstance(command_id, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return      # not a command: the children would refuse it too
            deadline = time.monotonic() + ttl
            inbox: queue.Queue = queue.Queue()
            self._pending[command_id] = inbox
            with self._lock:
                children = [(key, child) for key, child in self._children.items() if not child.closed]
            asked = set()
            for key, child in children:
                try:
                    with child.lock:
                        child.conn.send_bytes(data)
                    asked.add(key)
                except (OSError, ValueError):
                    child.closed = True
            send_frame(conn, encode({"receivers": len(asked)}))
            while asked:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    key, reply = inbox.get(timeout=left)
                except queue.Empty:
                    break
                asked.discard(key)
                conn.settimeout(max(0.1, left))
                send_frame(conn, reply)
        except (OSError, ValueError) as exc:
            logger.debug("control relay: a client connection failed: %s", exc)
        finally:
            if command_id is not None:
                self._pending.pop(command_id, None)
            _close(conn)

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            _close(self._server)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for thread in self._threads:
            thread.join(2)
        with self._lock:
            children, self._children = list(self._children.values()), {}
        for child in children:
            _close(child.conn)
            _close(child.child_end)


def _child_entry(relay: Relay, key: Key, target: Callable[..., None], *args: Any) -> None:
    global parent_pipe
    parent_pipe = relay._in_child(key)
    target(*args)


def _listen(path: str) -> socket.socket:
    """A listening unix socket at *path*, owner-only from the start (a stale file is replaced)."""
    directory = os.path.dirname(path)
    make_private_dirs(directory)
    temp = os.path.join(directory, f".control.{secrets.token_hex(6)}.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_path(temp) as short:
            server.bind(short)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
        server.listen(64)
        server.settimeout(0.5)
    except BaseException:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return server


def _close(thing: Any) -> None:
    if thing is not None:
        with contextlib.suppress(Exception):
            thing.close()


__all__ = ["Relay", "parent_pipe"]
