"""``spiderflow all``: every component as a process on this machine."""

from __future__ import annotations

import click

from ..runtime.scripts import read_script
from ..runtime.supervisor import run_all
from . import get_settings
from .options import RATE, db_options, handles_errors, queue_options, read_secret_files, secret_file_option


@click.command("all")
@click.option("--project", "scripts", multiple=True, type=click.Path(dir_okay=False), metavar="SCRIPT.py",
              help="Store this script as a RUNNING project and start it (repeatable).")
@click.option("--fetcher-num", type=int, default=None, help="Fetcher processes [1].")
@click.option("--processor-num", type=int, default=None, help="Processor processes [1].")
@click.option("--result-worker-num", type=int, default=None, help="Result worker processes [1].")
@click.option("--exit-when-done", is_flag=True,
              help="Stop once every --project has no ACTIVE task left and the queues are empty.")
@click.option("--rate", type=RATE, default=None, help="Rate of the --project scripts [their '# rate: N', else 1].")
@click.option("--burst", type=RATE, default=None, help="Burst of the --project scripts [their '# burst: N', else 3].")
@click.option("--block-private-addresses", is_flag=True, default=None,
              help="Refuse fetches to loopback, private, link-local and other non-public addresses "
                   "(checked after DNS, on every redirect).")
@click.option("--poolsize", type=int, default=None, help="Concurrent fetches per fetcher [100].")
@click.option("--scheduler-port", type=int, default=None, help="Scheduler control interface port [23333].")
@click.option("--no-webui", is_flag=True, help="Do not start the web UI.")
@click.option("--webui-host", default=None, help="Web UI address [127.0.0.1]; any other needs credentials.")
@click.option("--webui-port", type=int, default=None, help="Web UI port [5000].")
@click.option("--username", default=None, help="Web UI user name (login page and basic auth).")
@click.option("--password", default=None,
              help="Web UI password. A flag shows in ps: prefer SPIDERFLOW_PASSWORD or --password-file.")
@secret_file_option("password")
@click.option("--token", default=None, help="Web UI token for 'Authorization: Bearer' "
                                             "(shows in ps: prefer SPIDERFLOW_TOKEN or --token-file).")
@secret_file_option("token")
@click.option("--certfile", "webui_certfile", default=None, type=click.Path(dir_okay=False), metavar="PEM",
              help="Web UI: serve HTTPS with this certificate (chain).")
@click.option("--keyfile", "webui_keyfile", default=None, type=click.Path(dir_okay=False), metavar="PEM",
              help="Web UI: the certificate's private key [in --certfile].")
@click.option("--result-sink", default=None, metavar="NAME",
              help="Result sink of the result workers: resultdb (default), jsonl, an entry point, or module:Class.")
@queue_options
@db_options
@click.pass_context
@handles_errors
def all_command(ctx: click.Context, scripts: tuple[str, ...], exit_when_done: bool, rate: float | None,
                burst: float | None, no_webui: bool, **options) -> None:
    """Run the scheduler, fetchers, processors and result workers on this machine.

    Defaults: sqlite databases in the data directory and multiprocessing queues. Ctrl-C or
    SIGTERM stops everything (warm: in-flight work is finished); a second signal stops at once.
    SIGHUP stops everything warmly and starts it again in the same process.
    """
    settings = get_settings(ctx, **read_secret_files(options, "password", "token"))
    projects = [read_script(path) for path in scripts]
    ctx.exit(run_all(settings, projects, exit_when_done=exit_when_done, rate=rate, burst=burst,
                     webui=not no_webui))


COMMANDS = [all_command]
