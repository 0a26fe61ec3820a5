"""Stop signals during start-up (spiderflow.runtime.signals.starting), in this process.

The command-line behaviour (a real ``spiderflow scheduler`` stopped while it connects) is in
test_commands.py.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from spiderflow.runtime import signals


def _sigterm_self() -> None:
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)   # never kill pytest
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)               # the handler raises long before this ends
    raise AssertionError("SIGTERM did not interrupt the start-up")


def test_a_sigterm_during_start_up_unwinds_logs_and_exits_0(caplog):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    closed = []
    with caplog.at_level(logging.INFO, logger="spiderflow.runtime.signals"):
        with pytest.raises(SystemExit) as info:
            with signals.starting("outer"):
                with signals.starting("fetcher"):
                    try:
                        _sigterm_self()
                    finally:
                        closed.append("queue")         # what start-up opened is closed on the way out
    assert info.value.code == 0
    assert closed == ["queue"]
    assert "fetcher: SIGTERM received during start-up; exiting" in caplog.text
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before     # put back


def test_once_stop_signals_are_installed_a_sigterm_is_a_warm_stop():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stops = []
    try:
        with signals.starting("processor"):
            signals.install_stop_signals(lambda: stops.append(1), "processor")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert stops == [1]
    finally:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_starting_without_sigint_ignores_it_during_start_up():
    before = signal.getsignal(signal.SIGINT)
    with signals.starting("scheduler", sigint=False):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == before
