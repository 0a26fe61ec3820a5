"""``spiderflow one SCRIPT.py``: run one project in one process, for writing and debugging it."""

from __future__ import annotations

import click

from ..runtime.inprocess import run_one
from . import get_settings
from .options import RATE, handles_errors


@click.command("one")
@click.argument("script", type=click.Path(dir_okay=False))
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="Start from this URL (repeatable) instead of on_start.")
@click.option("--callback", default="index_page", show_default=True, help="Callback for the --url tasks.")
@click.option("--name", default=None, help="Project name [the script's file name].")
@click.option("-i", "--interactive", is_flag=True, help="When the crawl is done, open a prompt with crawl(url).")
@click.option("--taskdb", default=None, metavar="URL", help="Keep task state here [in memory].")
@click.option("--resultdb", default=None, metavar="URL", help="Store results here instead of printing them.")
@click.option("--rate", type=RATE, default=None, help="Tasks per second [the script's '# rate: N' comment, else 1].")
@click.option("--burst", type=RATE, default=None, help="Burst [the script's '# burst: N' comment, else 3].")
@click.option("--poolsize", type=int, default=None, help="Concurrent fetches [100].")
@click.option("--block-private-addresses", is_flag=True, default=None,
              help="Refuse fetches to loopback, private, link-local and other non-public addresses "
                   "(checked after DNS, on every redirect).")
@click.option("--proxy", default=None, help="Default proxy.")
@click.pass_context
@handles_errors
def one(ctx: click.Context, script: str, urls: tuple[str, ...], callback: str, name: str | None,
        interactive: bool, taskdb: str | None, resultdb: str | None, rate: float | None, burst: float | None,
        poolsize: int | None, proxy: str | None, block_private_addresses: bool | None) -> None:
    """Run SCRIPT in this process until its crawl is done.

    Results are written to stdout as JSON lines unless --resultdb is given; logs go to
    stderr. Ctrl-C stops cleanly.
    """
    settings = get_settings(ctx, taskdb=taskdb, resultdb=resultdb, poolsize=poolsize, proxy=proxy,
                            block_private_addresses=block_private_addresses)
    code = run_one(settings, script, name=name, urls=urls, callback=callback, interactive=interactive,
                   resultdb_given=resultdb is not None, rate=rate, burst=burst)
    ctx.exit(code)


COMMANDS = [one]
