"""Queue operations: what ``spiderflow queue`` does to a cluster, from any machine that can
reach its projectdb (and, for the live state, its scheduler and queues).

* :mod:`.push` — a directory of project scripts against the shared projectdb: push it
  (``queue update``), or compare it with what is stored (``queue status``);
* :mod:`.status` — the cluster's state in one report (``queue status --remote``);
* :mod:`.check` — the health check before a deploy (``queue check``);
* :mod:`.capacity` — the cluster-wide cap on tasks in flight (``queue cap``), kept in the
  projectdb database that every scheduler reads.

Everything here is built from settings through :mod:`spiderflow.runtime.compose` and the
storage and queue connectors; the command line (:mod:`spiderflow.cli.queue`) only prints.
"""

from __future__ import annotations

__all__ = ["capacity", "check", "push", "status"]
