"""Signals of a component process: warm stop, cold stop, a stack dump, and dying with the parent."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..nodes import dump_threads
from ..settings import Settings

logger = logging.getLogger(__name__)

#: a second stop signal within this many seconds of the first counts as the same one
SAME_SIGNAL_WINDOW = 1.0


def install_stop_signals(stop: Callable[[], None], name: str, sigint: bool = True,
                         grace: float | None = None) -> None:
    """First SIGTERM/SIGINT: warm stop (``stop()``); a second one or SIGQUIT: cold, exit now.

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

    signal.signal(signal.SIGTERM, warm)
    signal.signal(signal.SIGINT, warm if sigint else signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, cold)
    signal.signal(signal.SIGUSR1, lambda _signum, frame: dump_threads(name, frame))


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
