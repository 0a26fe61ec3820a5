"""The agent: a daemon thread in every component process that answers remote-control commands.

:func:`start_agent` (called by :mod:`spiderflow.runtime.component` for each component and
the web UI) connects the node side of the bus (:mod:`.bus`) and starts an :class:`Agent`
with the component's *panel* (:mod:`.panels`): the object that knows how to answer each
command from what the component keeps anyway. The agent checks every message (size, the
envelope, the signature when ``scheduler_token`` is set, then the command's arguments),
answers ``{"skip": true}`` when the command does not concern this node, an error for an
unknown command or a bad argument, and otherwise the panel's answer; an exception in a
panel becomes an error reply, never reaches the component. The agent never blocks the
component: commands that must run on the component's loop wait for it at most about a
second (then answer that it is busy).

A node's name is its name in the node registry (``kind@host:pid``, or its ``--node-id`` /
``--node-name``), so ``-d`` takes what ``spiderflow nodes`` shows; ``-d`` also matches the id.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from .commands import (
    COMMANDS,
    BadMessage,
    check_arguments,
    decode_command,
    error,
    make_reply,
)
from .state import Revoke

logger = logging.getLogger(__name__)

#: seconds between checks of the stop flag (and the panel's periodic work)
TICK = 0.5


class Agent:
    """Answers commands from *bus* with *panel* until :meth:`stop` (see the module docstring)."""

    def __init__(self, panel: Any, bus: Any, token: str | None = None):
        self.panel = panel
        self.bus = bus
        self.token = token
        self.identity = {"name": panel.name, "id": panel.node_id, "kind": panel.kind}
        self.answered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bad_logged = 0.0

    def start(self) -> Agent:
        self._thread = threading.Thread(target=self._run, name=f"spiderflow-control-{self.panel.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)
        try:
            self.panel.close()
        finally:
            self.bus.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.bus.receive(TICK)
                if data is not None:
                    self.handle(data)
                self.panel.tick()
            except Exception:   # the thread must live on: one bad command must not end remote control
                logger.exception("control: answering a command failed")
                self._stop.wait(TICK)

    def handle(self, data: bytes) -> dict[str, Any] | None:
        """Answer one raw command; returns the command (None if it was refused unread)."""
        try:
            command = decode_command(data, self.token)
            self.bus.check(command)         # replies go where the command's id says, or nowhere
        except BadMessage as exc:
            now = time.monotonic()
            if now - self._bad_logged > 60:     # at most one line a minute: a flood is not a log flood
                logger.warning("control: %s ignored a message: %s", self.panel.name, exc)
                self._bad_logged = now
            return None
        skip, reply = self.answer(command)
        if skip and command.get("destination") is not None:
            return command      # the client waits for the nodes it named, not for a count of receivers
        if not skip:
            self.answered += 1
        self.bus.reply(command, make_reply(command, self.identity, reply, skip=skip))
        if not skip:
            self.panel.after_reply(command["command"], reply)
        return command

    def answer(self, command: dict[str, Any]) -> tuple[bool, Any]:
        """``(skip, reply)`` for *command*."""
        name = command["command"]
        destination = command.get("destination")
        named = destination is not None and (self.panel.name in destination or self.panel.node_id in destination)
        if destination is not None and not named:
            return True, None
        spec = COMMANDS.get(name)
        if spec is None:
            return False, error(f"unknown command {name!r}")
        if self.panel.kind not in spec.kinds:
            if not named:
                return True, None
            return False, error(f"a {self.panel.kind} does not act on {name}; it is for "
                                f"{', '.join(sorted(spec.kinds))} nodes")
        try:
            arguments = check_arguments(spec, command.get("arguments"))
        except ValueError as exc:
            return False, error(str(exc))
        handler = getattr(self.panel, f"do_{name}", None)
        if handler is None:
            return False, error(f"a {self.panel.kind} does not act on {name}")
        if spec.mutating:
            logger.info("control: %s %s from a remote client", name, _describe(arguments))
        try:
            return False, handler(ttl=float(command["ttl"]), **arguments)
        except Exception as exc:
            logger.exception("control: %s failed", name)
            return False, error(f"{type(exc).__name__}: {exc}")


def _describe(arguments: dict[str, Any]) -> str:
    if "revokes" in arguments:
        revokes = arguments["revokes"]
        shown = ", ".join(Revoke.from_dict(r).describe() for r in revokes[:10])
        more = f" and {len(revokes) - 10} more" if len(revokes) > 10 else ""
        terminate = " (terminate)" if any(r.get("terminate") for r in revokes) else ""
        return f"of {shown}{more}{terminate}"
    return " ".join(f"{k}={v!r}" for k, v in arguments.items()) or "(no arguments)"


def node_identity(kind: str, settings: Any, node: Any = None) -> tuple[str, str]:
    """``(name, id)`` of this process as the node registry has it (or would, without heartbeats)."""
    if node is not None:
        return node.name, node.id
    default = settings.node_id or f"{kind}@{socket.gethostname()}:{os.getpid()}"
    return settings.node_name or default, settings.node_id or default


def start_agent(kind: str, component: Any, settings: Any, node: Any = None, *, loop: Any = None) -> Agent | None:
    """The agent of this process's component of *kind* (None when the queue backend has no bus,
    or it cannot be reached: then the component runs without remote control, which is logged)."""
    from . import relay
    from .bus import connect_node
    from .panels import make_panel
    try:
        bus = connect_node(settings, relay.parent_pipe)
    except Exception as exc:
        logger.warning("control: %s runs without remote control: %s", kind, exc)
        return None
    if bus is None:
        return None
    name, node_id = node_identity(kind, settings, node)
    try:
        panel = make_panel(kind, component, settings, name=name, node_id=node_id, loop=loop)
    except Exception:
        bus.close()
        raise
    return Agent(panel, bus, settings.scheduler_token).start()


__all__ = ["Agent", "node_identity", "start_agent"]
