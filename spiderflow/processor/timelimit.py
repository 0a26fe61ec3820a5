"""Stop a callback that runs past its process time limit, and keep the processor alive.

Callbacks run in the processor's own thread; there is no subprocess per task (too slow on
the hot path) and no thread per task. Two mechanisms, chosen per call:

* **Main thread on POSIX** (``spiderflow processor``, ``all``, ``one``): ``signal.setitimer``
  arms ``ITIMER_REAL``; the SIGALRM handler raises :class:`TimeLimitExceeded` in the
  callback. It interrupts pure-Python loops and blocking sleeps/socket waits. The previous
  SIGALRM handler and any pending timer (e.g. pytest-timeout's) are restored afterwards, and
  a foreign timer that fires inside the window is forwarded to its handler.
* **Any other thread, or no setitimer (Windows)**: one watchdog thread per process injects
  :class:`TimeLimitExceeded` into the late thread with ``PyThreadState_SetAsyncExc``. It
  is delivered at the next bytecode boundary, so a call blocked in C (``time.sleep``, a
  socket read) is stopped only when it returns.

With the signal, once the limit has passed the exception is raised again every
:data:`REFIRE` seconds, so a script that swallows it (a bare ``except:``) is still stopped;
it is never raised inside the files in :data:`PROTECTED_FILES` (this module and the code
that runs the callback), so the clean-up cannot be interrupted. The watchdog injects it
once. Either way, leaving the window after the limit raises it, even if the callback
swallowed it and returned.
:class:`TimeLimitExceeded` derives from BaseException so that ``except Exception`` in a
script cannot catch it. Neither mechanism stops code that never returns to the interpreter
(a loop inside a C extension that never checks for signals, e.g. ``sum(range(10**12))``;
the ``re`` module does check, so a catastrophic regular expression is stopped): such a callback holds its
processor until it returns, and is then reported as over the limit; the prefork pool
(:mod:`.pool`) stops such a callback by killing its child process.

A *soft* limit (``TimeLimit(hard, soft=seconds)``, ``--soft-time-limit``) raises
:class:`SoftTimeLimitExceeded` once, at the soft deadline, by the same mechanism. Unlike
TimeLimitExceeded it derives from Exception (Celery's SoftTimeLimitExceeded): the callback
may catch it, clean up and return its results before the hard limit.
"""

from __future__ import annotations

import _signal
import ctypes
import signal
import threading
import time
from typing import Any

_HAS_ITIMER = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")
#: ``signal.signal`` without its enum conversion of the handlers, which costs ~5 µs a call
#: (a ValueError raised and caught for every handler that is a function): two calls per
#: task. The previous handler comes back as the raw value (0 for SIG_DFL, 1 for SIG_IGN,
#: or the function), which is all that is needed to restore it.
_set_handler = _signal.signal

#: Seconds between repeated TimeLimitExceeded once the limit has passed (signal mode).
REFIRE = 1.0
#: Source files whose frames the signal never interrupts (our own set-up and clean-up code).
PROTECTED_FILES: set[str] = {__file__}


class TimeLimitExceeded(BaseException):
    """A callback ran past its process time limit (raised inside the callback)."""


class SoftTimeLimitExceeded(Exception):
    """A callback ran past its soft time limit (raised once inside it, which may catch it and return)."""


def _message(seconds: float | None) -> str:
    return f"the callback ran past the process time limit of {seconds or 0:g} s"


def _soft_message(seconds: float | None) -> str:
    return f"the callback ran past its soft time limit of {seconds or 0:g} s"


class TimeLimit:
    """``with TimeLimit(seconds): run_callback()`` raises TimeLimitExceeded when time is up.

    ``seconds`` of None or <= 0 means no limit; so does a *soft* limit of None, <= 0, or not
    below *seconds*. Not reentrant: one window per thread at a time.
    """

    __slots__ = ("seconds", "soft", "expired", "soft_expired", "_use_signal", "_deadline", "_soft_due", "_armed",
                 "_prev_handler", "_prev_timer", "_started", "_token", "_soft_token", "_forwarded")

    def __init__(self, seconds: float | None, soft: float | None = None):
        self.seconds = seconds if seconds and seconds > 0 else None
        self.soft = soft if soft and soft > 0 and (self.seconds is None or soft < self.seconds) else None
        self.expired = False
        self.soft_expired = False
        self._armed = False
        self._token: Any = None
        self._soft_token: Any = None

    def __enter__(self) -> TimeLimit:
        if self.seconds is None and self.soft is None:
            return self
        self._use_signal = _HAS_ITIMER and threading.current_thread() is threading.main_thread()
        if self._use_signal:
            self._enter_signal()
        else:
            now = time.monotonic()
            self._deadline = None if self.seconds is None else now + self.seconds
            if self.soft is not None:
                self._soft_token = _watchdog().arm(self.soft, SoftTimeLimitExceeded)
            if self.seconds is not None:
                self._token = _watchdog().arm(self.seconds)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.seconds is None and self.soft is None:
            return
        if self._use_signal:
            self._exit_signal()
        else:
            if self._soft_token is not None and _watchdog().disarm(self._soft_token):
                self.soft_expired = True
            if self._token is not None and _watchdog().disarm(self._token):
                self.expired = True
        if self._deadline is None:
            return
        if not self.expired and time.monotonic() >= self._deadline:
            self.expired = True  # late, though no alarm landed (blocked in C, or the GIL was busy)
        if self.expired and exc_type is None:  # returned late, or swallowed the exception: still late
            raise TimeLimitExceeded(_message(self.seconds))

    # -- SIGALRM -------------------------------------------------------------------------------
    def _enter_signal(self) -> None:
        self._prev_timer = (0.0, 0.0)
        self._forwarded = False
        self._started = time.monotonic()
        self._deadline = None if self.seconds is None else self._started + self.seconds
        self._soft_due = None if self.soft is None else self._started + self.soft
        first = self.seconds if self.soft is None else self.soft
        self._prev_handler = _set_handler(signal.SIGALRM, self._on_alarm)
        self._armed = True
        try:
            self._prev_timer = signal.setitimer(signal.ITIMER_REAL, first)
            prev_delay = self._prev_timer[0]
            if 0 < prev_delay < first:  # a foreign timer is due first: let it fire, then re-arm
                signal.setitimer(signal.ITIMER_REAL, prev_delay)
        except (TimeLimitExceeded, SoftTimeLimitExceeded):  # a limit so short it fired before the body started
            self._exit_signal()
            raise

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if not self._armed:
            return
        now = time.monotonic()
        due = self._deadline if self._soft_due is None else self._soft_due
        prev_delay = self._prev_timer[0]
        if prev_delay and not self._forwarded and now - self._started >= prev_delay - 0.001:
            self._forwarded = True  # the foreign timer's moment: forward it, then wait for ours
            if now < due:
                signal.setitimer(signal.ITIMER_REAL, due - now)
            if callable(self._prev_handler):
                self._prev_handler(signum, frame)
            if now < due:
                return
        if now < due:  # early wake-up: sleep on
            signal.setitimer(signal.ITIMER_REAL, due - now)
            return
        if self._soft_due is not None:   # the soft limit: raised once, then the hard one is armed
            if frame is not None and frame.f_code.co_filename in PROTECTED_FILES:
                signal.setitimer(signal.ITIMER_REAL, 0.01)  # in our clean-up: try again in a moment
                return
            self._soft_due = None
            self.soft_expired = True
            if self._deadline is not None:
                signal.setitimer(signal.ITIMER_REAL, max(self._deadline - now, 0.001))
            raise SoftTimeLimitExceeded(_soft_message(self.soft))
        self.expired = True
        if frame is not None and frame.f_code.co_filename in PROTECTED_FILES:
            signal.setitimer(signal.ITIMER_REAL, 0.01)  # in our clean-up: try again in a moment
            return
        signal.setitimer(signal.ITIMER_REAL, REFIRE)
        raise TimeLimitExceeded(_message(self.seconds))

    def _exit_signal(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        _set_handler(signal.SIGALRM, self._prev_handler)
        prev_delay, prev_interval = self._prev_timer
        if prev_delay and not self._forwarded:
            remaining = prev_delay - (time.monotonic() - self._started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001), prev_interval)
        elif prev_interval:
            signal.setitimer(signal.ITIMER_REAL, prev_interval, prev_interval)


class _Watchdog:
    """One daemon thread that raises TimeLimitExceeded in threads whose deadline passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: dict[int, list] = {}  # token -> [deadline, thread id, fired]
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, exc: type[BaseException] = TimeLimitExceeded) -> int:
        with self._cond:
            self._next += 1
            self._jobs[self._next] = [time.monotonic() + seconds, threading.get_ident(), False, exc]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="spiderflow-time-limit", daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._next

    def disarm(self, token: int) -> bool:
        """Forget *token*; True if its limit passed (a pending injected exception is cancelled)."""
        with self._cond:
            job = self._jobs.pop(token, None)
            if job and job[2]:
                _set_async_exc(job[1], None)
        return bool(job and job[2])

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for job in self._jobs.values():
                    if not job[2] and job[0] <= now:
                        job[2] = True  # once: an injected exception cannot be kept out of clean-up code
                        _set_async_exc(job[1], job[3])
                waits = [job[0] - now for job in self._jobs.values() if not job[2]]
                self._cond.wait(max(min(waits), 0.001) if waits else None)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


_WATCHDOG: _Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None:
        with _WATCHDOG_LOCK:
            if _WATCHDOG is None:
                _WATCHDOG = _Watchdog()
    return _WATCHDOG


__all__ = ["PROTECTED_FILES", "REFIRE", "SoftTimeLimitExceeded", "TimeLimit", "TimeLimitExceeded"]
