"""Files spiderflow writes for itself are its user's alone.

Databases, counters, locks and the scheduler's token live in the data directory and can
hold crawled content or a secret, so the directories spiderflow creates are ``0700`` and
the files ``0600`` whatever the umask; existing ones are left as their owner set them.
Exports and other files a user names are created as usual.
"""

from __future__ import annotations

import os

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: str) -> None:
    """Create directory *path* and any missing parents, owner-only (an existing one is left alone)."""
    path = os.path.abspath(path)
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)   # mkdir's mode is masked by the umask; this one is not


def create_private_file(path: str) -> None:
    """Create *path* empty and owner-only unless it exists (then it is left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def open_private(path: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` creating *path* owner-only; returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    return fd


__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "make_private_dirs", "open_private"]
