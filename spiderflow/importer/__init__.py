"""Importing another crawler's deployment into spiderflow's databases.

* :mod:`.pyspider_db` reads a pyspider deployment's projectdb, taskdb and resultdb (SQLite,
  MySQL or PostgreSQL, in pyspider's table layout and URL forms);
* :mod:`.migrate` stores its projects, results and (optionally) tasks in spiderflow's
  databases, idempotently, or reports what it would store (``spiderflow import-pyspider``).
"""

from __future__ import annotations

from .migrate import Report, Target, import_pyspider
from .pyspider_db import Source, open_source

__all__ = ["Report", "Source", "Target", "import_pyspider", "open_source"]
