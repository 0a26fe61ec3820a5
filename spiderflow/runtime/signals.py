"""Signals of a component process: a stop during start-up, warm stop, cold stop, a stack dump,
and dying with the parent.

A process is *starting* from the first line of its entry (:func:`starting`) until
:func:`install_stop_signals`: a SIGTERM or SIGINT then raises :class:`StartupInterrupted`
wherever start-up is (an import, a connect), the ``finally`` clauses on the way out close
what was opened, and the process logs ``<kind>: SIGTERM received during start-up; exiting``
and exits with status 0, as after a warm stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..nodes import dump_threads
from ..settings import Settings

logger = logging.getLogger(__name__)

#: a second stop signal within this many seconds of the first counts as the same one
SAME_SIGNAL_WINDOW = 1.0


class StartupInterrupted(BaseException):
    """A stop signal arrived during start-up (a BaseException: ``except Exception`` lets it through)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


#: the start-up guard: the process's name for the log, when the first signal came, the handlers it replaced
_startup: dict[str, Any] = {"name": "spiderflow", "at": None, "saved": None}


def _interrupt_startup(signum: int, _frame: Any) -> None:
    if _startup["at"] is not None:     # already on the way out
        if time.monotonic() - _startup["at"] < SAME_SIGNAL_WINDOW:
            return                     # the same event, delivered twice (process group, `all`)
        logger.warning("%s: %s received again during start-up; stopping at once",
                       _startup["name"], signal.Signals(signum).name)
        logging.shutdown()
        os._exit(1)
    _startup["at"] = time.monotonic()
    raise StartupInterrupted(signum)


def guard_startup(name: str, sigint: bool = True) -> None:
    """Until :func:`install_stop_signals`: SIGTERM (and SIGINT unless *sigint* is False, which
    then ignores it) raises :class:`StartupInterrupted`. Again later: only renames the process.
    Outside the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    _startup["name"] = name
    if signal.getsignal(signal.SIGTERM) is not _interrupt_startup:
        if _startup["saved"] is None:
            _startup["saved"] = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        _startup["at"] = None
        signal.signal(signal.SIGTERM, _interrupt_startup)
    signal.signal(signal.SIGINT, _interrupt_startup if sigint else signal.SIG_IGN)


def release_startup() -> None:
    """Put back the handlers :func:`guard_startup` replaced (a command that never stops warmly)."""
    saved, _startup["saved"] = _startup["saved"], None
    if saved is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


@contextlib.contextmanager
def starting(name: str, sigint: bool = True) -> Iterator[None]:
    """``with starting(kind):`` around a process's entry: a stop signal before
    :func:`install_stop_signals` ends it cleanly (see the module docstring)."""
    outermost = _startup["saved"] is None
    guard_startup(name, sigint)
    try:
        yield
    except StartupInterrupted as exc:
        logger.info("%s: %s received during start-up; %s", _startup["name"], exc.signal_name,
                    "restarting" if exc.signum == signal.SIGHUP else "exiting")
        raise SystemExit(0) from None
    finally:
        if outermost:
            release_startup()


def install_stop_signals(stop: Callable[[], None], name: str, sigint: bool = True,
                         grace: float | None = None) -> None:
    """First SIGTERM/SIGINT: warm stop (``stop()``); a second one or SIGQUIT: cold, exit now.

    In the main process of a serving command (:mod:`.worker`), SIGHUP is a warm stop followed
    by a restart in place, and the start of a ``--detach`` daemon is over.

    With ``sigint=False`` (the children of ``all``) Ctrl-C is left to the parent, which
    passes it on as one SIGTERM, so a single Ctrl-C stays a warm shutdown. With *grace*, a
    warm stop that has not ended the process after *grace* seconds turns cold. SIGUSR1 logs
    every thread's stack and changes nothing.
    """
    first: dict[str, float] = {}

    def warm(signum: int, _frame: Any) -> None:
        if "at" in first:
            # one event often arrives twice: Ctrl-C or `timeout` signal the whole process
            # group and `all` passes the signal on; only a later signal means "stop now"
            if time.monotonic() - first["at"] < SAME_SIGNAL_WINDOW:
                return
            cold(signum, _frame)
            return
        first["at"] = time.monotonic()
        logger.info("%s: %s received, finishing in-flight work (send again to stop at once)",
                    name, signal.Signals(signum).name)
        if grace is not None:
            _cold_after(grace, name)
        stop()

    def cold(signum: int, _frame: Any) -> None:
        logger.warning("%s: %s received, stopping at once", name, signal.Signals(signum).name)
        logging.shutdown()
        os._exit(1)

    def hup(signum: int, frame: Any) -> None:
        if "at" not in first:     # a SIGHUP while stopping already counts as a second stop signal
            worker.request_restart()
        warm(signum, frame)

    from . import worker    # here: it imports this module
    signal.signal(signal.SIGTERM, warm)
    signal.signal(signal.SIGINT, warm if sigint else signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, cold)
    signal.signal(signal.SIGUSR1, lambda _signum, frame: dump_threads(name, frame))
    if worker.restarts_here():      # the main process of a serving command: SIGHUP restarts it in place
        signal.signal(signal.SIGHUP, hup)
        worker.ready()


def _cold_after(grace: float, name: str) -> None:
    def expire() -> None:
        logger.warning("%s: warm shutdown did not end in %g s; stopping at once", name, grace)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def stop_grace(settings: Settings) -> float:
    """How long a warm shutdown may take: the longest fetch or callback in hand, plus a margin."""
    return max(settings.timeout, settings.process_time_limit) + 30.0


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
