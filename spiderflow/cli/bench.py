"""``spiderflow bench``: the stress test (``python bench.py`` runs the same command)."""

from __future__ import annotations

import json
import sys

import click

from ..bench.workloads import WORKLOADS
from . import get_settings, setup_logging
from .options import handles_errors


@click.command("bench")
@click.option("--workload", type=click.Choice(WORKLOADS), default="pyspider", show_default=True,
              help="pyspider: a link farm crawled until every reachable page is done; "
                   "scrapy: a growing tree crawled for --seconds.")
@click.option("--total", type=click.IntRange(1), default=10_000, show_default=True,
              help="pyspider: distinct pages in the link farm.")
@click.option("--show", type=click.IntRange(1, 1000), default=20, show_default=True, help="Links per page.")
@click.option("--seconds", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="scrapy: how long to crawl.")
@click.option("--in-process", is_flag=True, help="Everything on one event loop (OneScheduler) instead of processes.")
@click.option("--null-fetcher", is_flag=True,
              help="No HTTP: the fetcher makes each page in memory (measures scheduler and processor).")
@click.option("--fetcher-num", type=click.IntRange(1), default=None, help="Fetcher processes [1].")
@click.option("--processor-num", type=click.IntRange(1), default=None, help="Processor processes [1].")
@click.option("--result-worker-num", type=click.IntRange(1), default=None, help="Result worker processes [1].")
@click.option("--poolsize", type=click.IntRange(1), default=None, help="Concurrent fetches per fetcher [100].")
@click.option("--queue-maxsize", type=click.IntRange(1), default=None,
              help="Bound of every queue [100]; newtask_queue holds 20 times as many.")
@click.option("--max-seconds", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Give up a run after this long.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the summary as JSON ('-': stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("-v", "--verbose", is_flag=True, help="Let the components log at the configured level [WARNING only].")
@click.option("--micro", is_flag=True, help="Run the micro benches (taskdb, queues, messages) instead of a crawl.")
@click.option("--queue", "queues", multiple=True, metavar="URL",
              help="Run the components as a cluster on this broker (redis://... or amqp://...), each process "
                   "with its own connections, instead of `all`'s multiprocessing queues. --micro: a queue "
                   "backend to time, repeatable [memory:// and multiprocessing://].")
@click.option("--taskdb", default=None, metavar="URL",
              help="With --queue: the databases of the run (projectdb and resultdb too, unless given) [sqlite in a "
                   "temporary directory]; its project bench_<hex> is dropped at the end. --micro: the taskdb to time.")
@click.option("--projectdb", default=None, metavar="URL", help="With --queue: the projectdb [the --taskdb URL].")
@click.option("--resultdb", default=None, metavar="URL", help="With --queue: the resultdb [the --taskdb URL].")
@click.option("--count", type=click.IntRange(100), default=10_000, show_default=True,
              help="--micro: operations per figure.")
@click.pass_context
@handles_errors
def bench(ctx: click.Context, workload: str, total: int, show: int, seconds: float, in_process: bool,
          null_fetcher: bool, max_seconds: float, json_path: str | None, quiet: bool, verbose: bool, micro: bool,
          taskdb: str | None, queues: tuple[str, ...], count: int, projectdb: str | None, resultdb: str | None,
          **options) -> None:
    """Crawl the local test server as fast as possible and print one summary line.

    Live progress goes to stderr once a second; the summary line goes to stdout (to stderr
    when --json - takes stdout). The exit status is 1 when a pyspider run did not store
    every reachable page. See docs/benchmarks.md.
    """
    from ..bench import BenchConfig, run_bench, run_micro
    from ..bench.micro import DEFAULT_QUEUES, micro_line

    if not micro:
        if len(queues) > 1:
            raise click.UsageError("bench: give --queue once for a crawl run (several only with --micro)")
        if (taskdb or projectdb or resultdb) and not queues:
            raise click.UsageError("bench: --taskdb/--projectdb/--resultdb need --queue (a run on real backends); "
                                   "without it the run uses sqlite in a temporary directory")
        if queues:
            options.update(queue=queues[0], taskdb=taskdb, projectdb=projectdb or taskdb,
                           resultdb=resultdb or taskdb)
    elif projectdb or resultdb:
        raise click.UsageError("bench --micro times --taskdb only")
    settings = get_settings(ctx, **options)
    root = ctx.find_root().obj or {}
    if not verbose and not (root.get("overrides") or {}).get("log_level"):
        setup_logging("WARNING")     # the components log every task at INFO
    if micro:
        result = run_micro(taskdb, queues or DEFAULT_QUEUES, count, out=None if quiet else sys.stderr)
        _emit(micro_line(result), json.dumps(result, indent=2, sort_keys=True), json_path)
        return
    config = BenchConfig(workload=workload, total=total, show=show, seconds=seconds, in_process=in_process,
                         null_fetcher=null_fetcher, max_seconds=max_seconds, progress=not quiet)
    summary = run_bench(config, settings, out=sys.stderr)
    _emit(summary.line(), summary.dumps(), json_path)
    ctx.exit(0 if summary.ok else 1)


def _emit(line: str, data: str, json_path: str | None) -> None:
    click.echo(line, err=json_path == "-")
    if json_path == "-":
        click.echo(data)
    elif json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            fh.write(data + "\n")


COMMANDS = [bench]
