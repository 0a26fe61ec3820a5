"""Remote control of a running cluster, after Celery's: ``spiderflow control`` and ``spiderflow inspect``.

Every component process (scheduler, fetchers, processors, result workers, web UI) runs an
agent (:mod:`.agent`) that answers commands broadcast over the queue backend the cluster
already shares (:mod:`.bus`: a redis channel, a RabbitMQ fanout exchange, or for
``spiderflow all`` a unix socket its supervisor relays, :mod:`.relay`). The commands and the
client are in :mod:`.commands`, what each kind of node answers in :mod:`.panels` (the
scheduler's in :mod:`.scheduler_panel`), the revokes and runtime time limits the cluster
keeps in its shared database in :mod:`.state`::

    from spiderflow.control import ControlClient
    with ControlClient(settings) as control:
        control.call("ping")                       # {"fetcher@host:123": {"ok": "pong", ...}, ...}
        control.call("stats", destination=["fetcher@host:123"], timeout=2)
        control.rate_limit("books", 5, 10)
        control.revoke(["4d1f..."], project="books")
"""

from __future__ import annotations

from .agent import Agent, start_agent
from .commands import COMMANDS, ControlClient, parse_rate
from .state import ANY, ControlDB, ControlWatch, Revoke, connect_controldb, revokes_for

__all__ = ["ANY", "COMMANDS", "Agent", "ControlClient", "ControlDB", "ControlWatch", "Revoke", "connect_controldb",
           "parse_rate", "revokes_for", "start_agent"]
