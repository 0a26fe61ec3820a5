"""No value logged can end a log line and forge the next one; task ids cannot hold line breaks."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from spiderflow.exceptions import CrawlError, SerializationError
from spiderflow.logs import EscapeControls, escape_controls
from spiderflow.message import Task
from spiderflow.processor.crawl import build_task
from spiderflow.scheduler.checks import coerce_task

FORGED = "abc\n[E 261207 01:00:00 1 spiderflow.scheduler] admin password reset\r\x1b[2J"


def test_escape_controls_keeps_one_line():
    text = escape_controls(FORGED)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text == "abc\\n[E 261207 01:00:00 1 spiderflow.scheduler] admin password reset\\r\\x1b[2J"
    assert escape_controls("plain\ttab") == "plain\ttab"


def test_a_logged_value_cannot_forge_a_line(tmp_path):
    """Through the CLI's own logging set-up, in a real process: one record, one line."""
    code = ("import logging; from spiderflow.cli import setup_logging; setup_logging('INFO'); "
            f"logging.getLogger('spiderflow.scheduler').error('task %s failed: %s', {FORGED!r}, ValueError({FORGED!r}))")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr
    assert len(err.strip().splitlines()) == 1, err
    assert "admin password reset" in err and [line[:3] for line in err.splitlines()] == ["[E "]


def test_the_filter_leaves_numbers_and_tracebacks_alone():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%d tasks, %s", (3, "a\nb"), None)
    EscapeControls().filter(record)
    assert record.getMessage() == "3 tasks, a\\nb"


@pytest.mark.parametrize("taskid", ["a\nb", "x\r", "nul\x00", "\x7f", "t" * 256])
def test_a_crawl_cannot_give_a_taskid_with_control_characters(taskid):
    with pytest.raises(CrawlError, match="taskid must be at most 255 characters without line breaks"):
        build_task("p", "http://example.com/", {"taskid": taskid}, "page", None, 0.0)
    with pytest.raises(SerializationError, match="bad task .*taskid must"):
        coerce_task(Task.create("p", "http://example.com/", taskid=taskid))


@pytest.mark.parametrize("field", ["exetime", "age"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_the_scheduler_refuses_non_finite_times(field, value):
    task = Task.create("p", "http://example.com/")
    setattr(task.schedule, field, value)
    with pytest.raises(SerializationError, match="exetime/age must be finite numbers"):
        coerce_task(task)
