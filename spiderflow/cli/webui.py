"""``spiderflow webui``: the web UI alone, against the scheduler's control interface and the databases."""

from __future__ import annotations

import logging

import click

from ..runtime.compose import LOCAL_QUEUES, start_node
from ..runtime.signals import install_stop_signals
from . import get_settings
from .options import db_options, handles_errors, read_secret_files, secret_file_option

logger = logging.getLogger(__name__)


@click.command("webui")
@click.option("--host", "webui_host", default=None,
              help="Address to serve on [127.0.0.1]; any other needs credentials.")
@click.option("--port", "webui_port", type=int, default=None, help="Port [5000].")
@click.option("--username", default=None, help="User name for the login page and basic auth.")
@click.option("--password", default=None,
              help="Password (with --username). A flag shows in ps: prefer SPIDERFLOW_PASSWORD or --password-file.")
@secret_file_option("password")
@click.option("--token", default=None, help="Token for 'Authorization: Bearer' (scripts) and the login page "
                                             "(shows in ps: prefer SPIDERFLOW_TOKEN or --token-file).")
@secret_file_option("token")
@click.option("--cookie-secret", default=None,
              help="Secret that signs session cookies [random per process: a restart logs everyone out].")
@click.option("--certfile", "webui_certfile", default=None, type=click.Path(dir_okay=False), metavar="PEM",
              help="Serve HTTPS with this certificate (chain).")
@click.option("--keyfile", "webui_keyfile", default=None, type=click.Path(dir_okay=False), metavar="PEM",
              help="The certificate's private key [in --certfile].")
@click.option("--scheduler-host", default=None, help="Scheduler control interface address [127.0.0.1].")
@click.option("--scheduler-port", type=int, default=None, help="Scheduler control interface port [23333].")
@click.option("--scheduler-token", default=None,
              help="Token of the scheduler's control interface (shows in ps: prefer SPIDERFLOW_SCHEDULER_TOKEN "
                   "or --scheduler-token-file).")
@secret_file_option("scheduler_token")
@click.option("--queue", default=None, metavar="URL",
              help="Shared queue backend (redis://, amqp://) whose queue sizes the dashboard shows.")
@db_options
@click.pass_context
@handles_errors
def webui(ctx: click.Context, **options) -> None:
    """Run the web UI: dashboard, script editor and debugger, tasks, results and the JSON API."""
    from ..queues import connect_queues
    from ..webui import build_webui

    settings = get_settings(ctx, **read_secret_files(options, "password", "token", "scheduler_token"))
    queues = node = None
    try:
        if settings.queue and settings.queue.split("://", 1)[0].lower() not in LOCAL_QUEUES:
            queues = connect_queues(settings.queue, settings.queue_bounds(), prefix=settings.queue_prefix)
        server = build_webui(settings, queues=queues)
        install_stop_signals(server.stop, "webui")
        click.echo(f"spiderflow web UI on {server.url}", err=True)
        node = start_node("webui", settings)
        server.run()
    finally:
        if node is not None:
            node.stop()
        for queue in (queues or {}).values():
            queue.close()


COMMANDS = [webui]
