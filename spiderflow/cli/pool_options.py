"""The processor's pool options (``spiderflow processor``).

Each option's name is a Settings field, so :func:`~spiderflow.cli.get_settings` takes it as
an override of ``SPIDERFLOW_<FIELD>`` and the ``-c`` config file (where ``spiderflow all``
finds them); the values are checked there (:mod:`spiderflow.settings`).
"""

from __future__ import annotations

from collections.abc import Callable

import click

from ..settings import POOLS
from .options import SECONDS


def pool_options(func: Callable) -> Callable:
    """--pool, --concurrency, --autoscale, --max-tasks-per-child, --max-memory-per-child, --soft-time-limit."""
    options = [
        click.option("--pool", "processor_pool", type=click.Choice(POOLS), default=None,
                     help="solo: callbacks in this process, one at a time (the fastest); prefork: in child "
                          "processes [solo; prefork when an option below needs it]."),
        click.option("--concurrency", "processor_concurrency", type=click.IntRange(1), default=None, metavar="N",
                     help="prefork: callback child processes [1]."),
        click.option("--autoscale", "processor_autoscale", default=None, metavar="MAX,MIN",
                     help="prefork: grow up to MAX children while tasks wait, shrink to MIN when idle."),
        click.option("--max-tasks-per-child", "max_tasks_per_child", type=click.IntRange(1), default=None,
                     metavar="N", help="prefork: replace a child after N tasks [no limit]."),
        click.option("--max-memory-per-child", "max_memory_per_child", type=click.IntRange(1), default=None,
                     metavar="KIB", help="prefork: replace a child, after its task, once its resident memory "
                                         "passes KIB kibibytes [no limit]."),
        click.option("--soft-time-limit", "process_soft_time_limit", type=SECONDS, default=None, metavar="SECONDS",
                     help="Raise SoftTimeLimitExceeded (an Exception the callback may catch) after SECONDS; "
                          "below --process-time-limit [none]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
