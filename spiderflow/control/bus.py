"""The control bus: one broadcast of a command to every node, and the replies back, per queue backend.

No new port or service: commands travel on the backend the cluster already shares.

=========================  ===========================================================================
``redis://``               commands are published on the channel ``{prefix}:control`` (every node
                           subscribes); a node pushes its reply on the list
                           ``{prefix}:control:reply:<command id>``, which expires a little after the
                           command's timeout. Redis says how many nodes received a command, so the
                           client stops waiting once that many answered.
``amqp://``                commands go to the fanout exchange ``{prefix}.control``; each node consumes
                           from an exclusive, auto-delete queue of its own bound to it; replies go to
                           the client's exclusive, auto-delete queue ``{prefix}.control.reply.<id>``.
                           Commands expire (per-message TTL) after their timeout.
``multiprocessing://``     (``spiderflow all``; such queues cannot be opened by another process) the
                           supervisor serves the unix-domain socket ``<data_dir>/control.sock``,
                           owner-only (0600; a file, not a port), and relays each command to its
                           children over a pipe per child (:mod:`.relay`); it first tells the client
                           how many children it asked.
=========================  ===========================================================================

A dead node simply does not answer: the client waits at most its timeout. A node's side is
a :class:`NodeBus` (``receive(timeout)`` one raw command or None, ``reply(command, data)``);
the client's a :class:`ClientBus` (``reply_address(id)``, ``call(command, timeout, enough)``
yielding the replies as they come). A node only ever writes its reply where the command's
id says (``reply_to`` is checked against it), so a command cannot make a node write
anywhere else. A broken connection is logged once and tried again; it never reaches the
component.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..exceptions import ConfigError, redact_url
from .commands import MAX_COMMAND, MAX_REPLY, BadMessage, decode_reply, encode

logger = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
REPLY_GRACE = 10.0          # seconds a redis reply list outlives the command's timeout
_RETRY_MIN, _RETRY_MAX = 0.5, 10.0
_FRAME = struct.Struct(">I")

Enough = Callable[[int | None], bool]


class BusUnavailable(ConfigError):
    """The cluster's control bus cannot be reached (no ``spiderflow all`` on the data
    directory, the broker is down). A ConfigError, so the CLI shows it as one line; it would
    belong in :mod:`spiderflow.exceptions` with the others."""


def socket_path(data_dir: str) -> str:
    """Where ``spiderflow all`` with data directory *data_dir* serves its control socket."""
    return os.path.join(os.path.abspath(data_dir), SOCKET_NAME)


def bus_scheme(settings: Any) -> str:
    """``redis``, ``amqp`` or ``multiprocessing`` (also for no queue URL: ``all``'s default), or ``memory``."""
    url = settings.queue or "multiprocessing://"
    scheme = url.split("://", 1)[0].lower()
    return "redis" if scheme == "rediss" else scheme


# -- framing for the unix socket ------------------------------------------------------------------------

def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def recv_frame(sock: socket.socket, limit: int) -> bytes | None:
    """One frame, or None at the end of the stream; ValueError for one over *limit* bytes."""
    head = _recv_exact(sock, _FRAME.size)
    if head is None:
        return None
    (size,) = _FRAME.unpack(head)
    if size > limit:
        raise ValueError(f"a frame of {size} bytes (at most {limit})")
    body = _recv_exact(sock, size)
    if body is None:
        raise ValueError("the stream ended inside a frame")
    return body


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            if left == size:
                return None
            raise ValueError("the stream ended inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """*path*, or for one too long for a unix socket (108 bytes) ``/proc/self/fd/N/name`` (Linux)."""
    if len(path.encode()) < 100 or not os.path.isdir("/proc/self/fd"):
        yield path
        return
    fd = os.open(os.path.dirname(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


# -- the side of a node --------------------------------------------------------------------------------

class NodeBus:
    """Where a node hears commands and answers them (see the module docstring)."""

    def receive(self, timeout: float) -> bytes | None:
        raise NotImplementedError

    def reply_address(self, command_id: str) -> str:
        """Where the reply to the command *command_id* goes ("" where the transport knows)."""
        return ""

    def check(self, command: dict[str, Any]) -> None:
        """BadMessage unless the command's ``reply_to`` is the address its id gives."""
        if command.get("reply_to") != self.reply_address(command["id"]):
            raise BadMessage("a command whose reply_to is not its own reply address")

    def reply(self, command: dict[str, Any], data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Retry:
    """A failing connection: one log line per outage, growing waits."""

    def __init__(self, what: str):
        self.what = what
        self.delay = 0.0
        self.failing = False

    def failed(self, exc: BaseException) -> float:
        if not self.failing:
            logger.warning("control: %s failed (%s); the node goes on, retrying", self.what, exc)
            self.failing = True
            self.delay = _RETRY_MIN
        else:
            self.delay = min(_RETRY_MAX, self.delay * 2)
        return self.delay

    def recovered(self) -> None:
        if self.failing:
            logger.warning("control: %s works again", self.what)
            self.failing = False


class RedisNodeBus(NodeBus):
    def __init__(self, url: str, prefix: str | None):
        from ..queues.redis import _client, _parse_url, _prefix
        options = _parse_url(url)
        self.prefix = _prefix(options, prefix)
        self.channel = f"{self.prefix}:control"
        self.where = f"{redact_url(url).split('?', 1)[0]} channel {self.channel}"
        self.client = _client(options, socket_timeout=10)
        self._pubsub: Any = None
        self._retry = _Retry(f"the control channel on {self.where}")
        self._stopped = False
        try:
            self._subscribe()
        except Exception as exc:   # the broker may come later: receive() tries again
            self._retry.failed(exc)

    def _subscribe(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        pubsub.get_message(timeout=1.0)     # the confirmation: subscribed from here on
        self._pubsub = pubsub

    def receive(self, timeout: float) -> bytes | None:
        import redis
        try:
            if self._pubsub is None:
                self._subscribe()
            message = self._pubsub.get_message(timeout=timeout)
        except (redis.RedisError, OSError) as exc:
            self._drop()
            time.sleep(min(timeout, self._retry.failed(exc)))
            return None
        self._retry.recovered()
        if message and message.get("type") == "message":
            return message["data"]
        return None

    def reply_address(self, command_id: str) -> str:
        return f"{self.prefix}:control:reply:{command_id}"

    def reply(self, command: dict[str, Any], data: bytes) -> None:
        key = self.reply_address(command["id"])
        ttl_ms = int((min(float(command["ttl"]), 300.0) + REPLY_GRACE) * 1000)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, data).pexpire(key, ttl_ms).execute()

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def close(self) -> None:
        self._drop()
        with contextlib.suppress(Exception):
            self.client.close()


class AmqpNodeBus(NodeBus):
    def __init__(self, url: str, prefix: str | None):
        from ..queues.amqp import _parameters, _parse_url, _prefix
        options = _parse_url(url)
        self.prefix = _prefix(options, prefix)
        self.exchange = f"{self.prefix}.control"
        self.where = f"{redact_url(url).split('?', 1)[0]} exchange {self.exchange}"
        self._params = _parameters(options, "spiderflow control", heartbeat=30)
        self._inbox: collections.deque[bytes] = collections.deque()
        self._conn: Any = None
        self._channel: Any = None
        self._retry = _Retry(f"the control exchange on {self.where}")
        try:
            self._connect()
        except Exception as exc:
            self._retry.failed(exc)

    def _connect(self) -> None:
        import pika
        conn = pika.BlockingConnection(self._params)
        try:
            channel = conn.channel()
            declare_exchange(channel, self.exchange)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.exchange)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn, self._channel = conn, channel

    def _on_message(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        self._inbox.append(body)

    def receive(self, timeout: float) -> bytes | None:
        from ..queues.amqp import _ERRORS
        if not self._inbox:
            try:
                if self._conn is None:
                    self._connect()
                self._conn.process_data_events(time_limit=timeout)
            except _ERRORS as exc:
                self._drop()
                time.sleep(min(timeout, self._retry.failed(exc)))
                return None
            self._retry.recovered()
        return self._inbox.popleft() if self._inbox else None

    def reply_address(self, command_id: str) -> str:
        return f"{self.prefix}.control.reply.{command_id}"

    def reply(self, command: dict[str, Any], data: bytes) -> None:
        import pika
        queue = self.reply_address(command["id"])
        if self._channel is None:
            return
        ttl_ms = int((min(float(command["ttl"]), 300.0) + REPLY_GRACE) * 1000)
        self._channel.basic_publish("", queue, data, properties=pika.BasicProperties(expiration=str(ttl_ms)))

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._drop()


def declare_exchange(channel: Any, name: str) -> None:
    channel.exchange_declare(name, exchange_type="fanout", durable=False, auto_delete=False)


class PipeNodeBus(NodeBus):
    """A child of ``spiderflow all``: commands from the supervisor's relay on a pipe (:mod:`.relay`)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.closed = False

    def receive(self, timeout: float) -> bytes | None:
        if self.closed:
            time.sleep(timeout)
            return None
        try:
            if self.conn.poll(timeout):
                return self.conn.recv_bytes(MAX_COMMAND)
        except (EOFError, OSError):
            self.closed = True      # the supervisor is gone (and this process follows it)
        return None

    def reply(self, command: dict[str, Any], data: bytes) -> None:
        if not self.closed:
            self.conn.send_bytes(data)

    def leaving(self) -> None:
        """Tell the supervisor this process stops on a remote shutdown: it must not restart it."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self.conn.send_bytes(encode({"v": 1, "leaving": True}))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# -- the side of the client ------------------------------------------------------------------------------

class ClientBus:
    """Broadcasts one command and yields the replies (see the module docstring)."""

    def reply_address(self, command_id: str) -> str:
        return ""

    def call(self, command: dict[str, Any], timeout: float, enough: Enough) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RedisClientBus(ClientBus):
    def __init__(self, url: str, prefix: str | None):
        from ..queues.redis import _client, _parse_url, _prefix
        options = _parse_url(url)
        self.prefix = _prefix(options, prefix)
        self.channel = f"{self.prefix}:control"
        self.where = redact_url(url).split("?", 1)[0]
        self.client = _client(options, socket_timeout=5)

    def reply_address(self, command_id: str) -> str:
        return f"{self.prefix}:control:reply:{command_id}"

    def call(self, command: dict[str, Any], timeout: float, enough: Enough) -> Iterator[dict[str, Any]]:
        import redis
        deadline = time.monotonic() + timeout
        key = command["reply_to"]
        try:
            receivers = int(self.client.publish(self.channel, encode(command)))
            while not enough(receivers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                item = self.client.blpop([key], timeout=max(0.01, min(left, 1.0)))
                if item is None:
                    continue
                reply = decode_reply(item[1], command["id"])
                if reply is not None:
                    yield reply
        except redis.RedisError as exc:
            raise BusUnavailable(f"the control channel on {self.where} failed: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                self.client.delete(key)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class AmqpClientBus(ClientBus):
    def __init__(self, url: str, prefix: str | None):
        from ..queues.amqp import _parameters, _parse_url, _prefix
        options = _parse_url(url)
        self.prefix = _prefix(options, prefix)
        self.exchange = f"{self.prefix}.control"
        self.where = redact_url(url).split("?", 1)[0]
        self._params = _parameters(options, "spiderflow control client")

    def reply_address(self, command_id: str) -> str:
        return f"{self.prefix}.control.reply.{command_id}"

    def call(self, command: dict[str, Any], timeout: float, enough: Enough) -> Iterator[dict[str, Any]]:
        import pika

        from ..queues.amqp import _ERRORS
        deadline = time.monotonic() + timeout
        inbox: collections.deque[bytes] = collections.deque()
        try:
            conn = pika.BlockingConnection(self._params)
        except _ERRORS as exc:
            raise BusUnavailable(f"cannot reach RabbitMQ at {self.where} for the control exchange: {exc!r}") from exc
        try:
            channel = conn.channel()
            declare_exchange(channel, self.exchange)
            channel.queue_declare(command["reply_to"], exclusive=True, auto_delete=True)
            channel.basic_consume(command["reply_to"], lambda _c, _m, _p, body: inbox.append(body), auto_ack=True)
            channel.basic_publish(self.exchange, "", encode(command),
                                  properties=pika.BasicProperties(expiration=str(max(1, int(timeout * 1000)))))
            while not enough(None):
                while inbox:
                    reply = decode_reply(inbox.popleft(), command["id"])
                    if reply is not None:
                        yield reply
                if enough(None):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.process_data_events(time_limit=min(left, 0.05))
        except _ERRORS as exc:
            raise BusUnavailable(f"the control exchange on {self.where} failed: {exc!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()


class SocketClientBus(ClientBus):
    """The control socket of ``spiderflow all`` (:mod:`.relay`)."""

    def __init__(self, path: str):
        self.path = path

    def call(self, command: dict[str, Any], timeout: float, enough: Enough) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.1, min(timeout, 5.0)))
            try:
                with short_path(self.path) as path:
                    sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise BusUnavailable(f"no `spiderflow all` answers on {self.path} ({exc.strerror}); is it running "
                                  "with this data directory?") from None
            send_frame(sock, encode(command))
            receivers: int | None = None
            while not enough(receivers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    data = recv_frame(sock, MAX_REPLY + 1024)
                except TimeoutError:
                    break
                if data is None:
                    break
                if receivers is None:
                    receivers = _receivers(data)
                    if receivers is not None:
                        continue
                reply = decode_reply(data, command["id"])
                if reply is not None:
                    yield reply
        except (OSError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise BusUnavailable(f"the control socket {self.path} failed: {exc}") from exc
        finally:
            sock.close()


def _receivers(data: bytes) -> int | None:
    import json
    try:
        message = json.loads(data)
    except ValueError:
        return None
    value = message.get("receivers") if isinstance(message, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- from settings ------------------------------------------------------------------------------------

def connect_client(settings: Any) -> ClientBus:
    """The client side of the bus of the cluster *settings* name; ConfigError if there is none."""
    scheme = bus_scheme(settings)
    if scheme == "redis":
        return RedisClientBus(settings.queue, settings.queue_prefix)
    if scheme == "amqp":
        return AmqpClientBus(settings.queue, settings.queue_prefix)
    if scheme == "multiprocessing":
        return SocketClientBus(socket_path(settings.data_dir))
    raise BusUnavailable(f"the {scheme}:// queue backend is one process: there is no cluster to control "
                         "(use redis://, amqp://, or `spiderflow all`'s default)")


def connect_node(settings: Any, parent: Any = None) -> NodeBus | None:
    """The node side of the bus for a component of the cluster *settings* name (None: no bus);
    *parent* is the pipe from ``spiderflow all``'s supervisor, when this is one of its children."""
    scheme = bus_scheme(settings)
    if scheme == "redis":
        return RedisNodeBus(settings.queue, settings.queue_prefix)
    if scheme == "amqp":
        return AmqpNodeBus(settings.queue, settings.queue_prefix)
    if scheme == "multiprocessing" and parent is not None:
        return PipeNodeBus(parent)
    return None


__all__ = ["SOCKET_NAME", "AmqpClientBus", "BusUnavailable", "AmqpNodeBus", "ClientBus", "NodeBus", "PipeNodeBus", "RedisClientBus",
           "RedisNodeBus", "SocketClientBus", "bus_scheme", "connect_client", "connect_node", "recv_frame",
           "send_frame", "short_path", "socket_path"]
