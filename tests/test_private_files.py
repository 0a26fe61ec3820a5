"""The data directory and what spiderflow writes there are owner-only, whatever the umask."""

from __future__ import annotations

import os
import stat

import pytest

from spiderflow.message import Task
from spiderflow.queues import acquire_scheduler_lock
from spiderflow.scheduler.counter import Counters
from spiderflow.storage import connect_taskdb


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)   # the usual umask: files 0644, directories 0755
    yield
    os.umask(old)


def test_sqlite_databases_and_their_directory_are_owner_only(tmp_path, open_umask):
    data = tmp_path / "new" / "data"
    db = connect_taskdb(f"sqlite:///{data}/task.db")
    try:
        db.insert_many([Task.create("p", f"http://example.com/{i}") for i in range(3)])
    finally:
        db.close()
    assert mode(tmp_path / "new") == 0o700 and mode(data) == 0o700
    files = sorted(p.name for p in data.iterdir())
    assert "task.db" in files
    for name in files:                               # the database and its -wal / -shm files
        assert mode(data / name) == 0o600, name


def test_counters_and_the_scheduler_lock_are_owner_only(tmp_path, open_umask):
    data = tmp_path / "data"
    Counters().dump(str(data / "scheduler.counters.json"))
    lock = acquire_scheduler_lock("multiprocessing://", data_dir=str(data))
    try:
        for path in data.iterdir():
            assert mode(path) == 0o600, path.name
        assert mode(data) == 0o700
    finally:
        lock.release()


def test_an_existing_directory_keeps_its_mode(tmp_path, open_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    db = connect_taskdb(f"sqlite:///{shared}/task.db")
    db.close()
    assert mode(shared) == 0o755 and mode(shared / "task.db") == 0o600
