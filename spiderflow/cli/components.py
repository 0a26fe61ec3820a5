"""``spiderflow scheduler|fetcher|processor|result-worker``: one component per process.

Components started separately share work through a distributed queue (``--queue
redis://...`` or ``amqp://...``) and shared databases; ``memory://`` and
``multiprocessing://`` queues exist only inside one ``spiderflow one`` or ``all``.
"""

from __future__ import annotations

import contextlib

import click

from ..exceptions import ConfigError
from ..queues import connect_queues
from ..runtime.component import run_component
from ..runtime.compose import LOCAL_QUEUES
from . import get_settings
from .options import SECONDS, db_options, handles_errors, queue_options
from .pool_options import pool_options


def _run(ctx: click.Context, kind: str, burst: bool, **overrides) -> None:
    settings = get_settings(ctx, **overrides)
    if not settings.queue:
        raise ConfigError(f"spiderflow {kind} needs a shared queue: give --queue redis://HOST:6379/0 or "
                          "--queue amqp://USER:PASS@HOST:5672/VHOST (or SPIDERFLOW_QUEUE); "
                          "to run everything on one machine use `spiderflow all`")
    scheme = settings.queue.split("://", 1)[0].lower()
    if scheme in LOCAL_QUEUES:
        raise ConfigError(f"a {scheme}:// queue cannot be shared with other processes; use redis:// or amqp:// "
                          "for separately started components, or `spiderflow all`")
    queues = connect_queues(settings.queue, settings.queue_bounds(), prefix=settings.queue_prefix)
    try:
        run_component(kind, settings, queues, burst=burst)
    finally:
        for queue in queues.values():
            with contextlib.suppress(Exception):   # closing is best effort: the process is ending
                queue.close()


@click.command("scheduler")
@queue_options
@db_options
@click.option("--scheduler-host", default=None, help="Control interface address [127.0.0.1].")
@click.option("--scheduler-port", type=int, default=None, help="Control interface port [23333].")
@click.option("--scheduler-token", default=None, help="Token the control interface requires (needed off loopback).")
@click.pass_context
@handles_errors
def scheduler(ctx: click.Context, **options) -> None:
    """Run the scheduler (one per crawl cluster)."""
    _run(ctx, "scheduler", False, **options)


@click.command("fetcher")
@queue_options
@click.option("--poolsize", type=int, default=None, help="Concurrent fetches [100].")
@click.option("--proxy", default=None, help="Default proxy, e.g. http://user:pass@host:3128 or socks5://host:1080.")
@click.option("--block-private-addresses", is_flag=True, default=None,
              help="Refuse fetches to loopback, private, link-local and other non-public addresses "
                   "(checked after DNS, on every redirect).")
@click.option("--timeout", type=SECONDS, default=None, help="Default fetch timeout in seconds [120].")
@click.option("--projectdb", default=None, metavar="URL",
              help="projectdb URL: the fetcher registers there as a node [sqlite in the data directory].")
@click.option("--burst", is_flag=True, help="Exit once the input queue is drained.")
@click.pass_context
@handles_errors
def fetcher(ctx: click.Context, burst: bool, **options) -> None:
    """Run a fetcher."""
    _run(ctx, "fetcher", burst, **options)


@click.command("processor")
@queue_options
@db_options
@click.option("--process-time-limit", type=SECONDS, default=None, help="Seconds a callback may run [30].")
@pool_options
@click.option("--burst", is_flag=True, help="Exit once the input queue is drained.")
@click.pass_context
@handles_errors
def processor(ctx: click.Context, burst: bool, **options) -> None:
    """Run a processor (runs the project scripts' callbacks)."""
    _run(ctx, "processor", burst, **options)


@click.command("result-worker")
@queue_options
@db_options
@click.option("--sink", "result_sink", default=None, metavar="NAME",
              help="Result sink: resultdb (default), jsonl, an entry point of spiderflow.result_sinks, or module:Class.")
@click.option("--burst", is_flag=True, help="Exit once the input queue is drained.")
@click.pass_context
@handles_errors
def result_worker(ctx: click.Context, burst: bool, **options) -> None:
    """Run a result worker (stores results)."""
    _run(ctx, "result-worker", burst, **options)


COMMANDS = [scheduler, fetcher, processor, result_worker]
