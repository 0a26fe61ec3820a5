"""The scheduler in a thread of its own, for tests that call it from other threads.

The loop runs in a daemon thread; every public operation (newtask, counters, ...) takes
the same lock as ``run_once``, so other threads (an event loop serving the control
interface, a test) may call them at any time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .scheduler import Scheduler

logger = logging.getLogger(__name__)


class ThreadedScheduler(Scheduler):
    """A :class:`Scheduler` whose loop runs in a thread: ``start()``, ``stop()``, ``join()``."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def start(self, burst: bool = False) -> threading.Thread:
        """Start the loop thread (``burst``: exit once idle)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the scheduler thread is already running")
        self._thread = threading.Thread(target=self.run_forever, kwargs={"burst": burst},
                                        name="spiderflow-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def run_forever(self, burst: bool = False) -> None:
        """The blocking loop: repeat run_once until stop() (or, with *burst*, until idle)."""
        logger.info("scheduler thread started")
        reason = "stopped"
        try:
            while not self._stopping.is_set():
                self._loop_step()
                if burst and self.idle():
                    reason = "burst: nothing left to do"
                    break
                if not self._work:
                    self._stopping.wait(self.settings.loop_interval)
        finally:
            self.shutdown()
            logger.info("scheduler thread exiting: %s", reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop thread; True if it has ended."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stop_and_join(self, timeout: float | None = 10.0) -> bool:
        self.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = self.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._stopping.clear()
        return ok
