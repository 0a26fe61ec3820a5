"""Process logs: one line per record, whatever the values logged hold.

Task ids, URLs, project names and error texts reach log lines as arguments, and some come
from crawled pages or from callers of the APIs. :class:`EscapeControls` escapes the control
characters of those arguments (``\\n`` becomes ``\\\\n``), so no value can end a log line and
forge the next one; the message templates, which are ours, and tracebacks keep their lines.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0085\u2028\u2029]")


def _escape(match: re.Match) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """*text* with line breaks and other control characters (not tab) written as escapes."""
    return _CONTROLS.sub(_escape, text) if _CONTROLS.search(text) else text


def _safe(value: Any) -> Any:
    """Strings, and exceptions (whose text may quote a server), escaped; other values as they are."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, BaseException):
        text = str(value)
        return escape_controls(text) if _CONTROLS.search(text) else value
    return value


class EscapeControls(logging.Filter):
    """A handler filter: the record's arguments are escaped before the message is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_safe(a) for a in args)
        elif isinstance(args, dict) and args:
            record.args = {k: _safe(v) for k, v in args.items()}
        return True


__all__ = ["EscapeControls", "escape_controls"]
