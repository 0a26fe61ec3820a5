"""The ``spiderflow`` command: a thin click layer over :mod:`spiderflow.runtime`.

One module per command family: ``components`` (scheduler, fetcher, processor,
result-worker), ``one``, ``all``, ``standalone``, ``project``, ``export``, ``import_pyspider``, ``demo_site``, ``nodes``, ``queue``, ``job``, ``control`` (control and inspect); shared options in
``options``.

Settings are resolved once here (flag > ``SPIDERFLOW_*`` environment > ``-c`` config
file > defaults) into a frozen :class:`~spiderflow.settings.Settings` that is passed down;
nothing below the CLI reads the environment. Logging handlers are installed here only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any

import click

from .. import __version__
from ..exceptions import SpiderflowError, redact_url
from ..logs import EscapeControls
from ..runtime.signals import guard_startup, release_startup, starting
from ..settings import Settings, settings_from_environ

logger = logging.getLogger(__name__)

LOG_FORMAT = "[%(levelname).1s %(asctime)s %(process)d %(name)s] %(message)s"
#: the commands that run until stopped: a stop signal before they can stop warmly is logged
#: and ends them cleanly (:func:`spiderflow.runtime.signals.starting`); the others keep the
#: default handling of signals
SERVING_COMMANDS = frozenset({"one", "all", "standalone", "scheduler", "fetcher", "processor", "result-worker", "webui"})


def setup_logging(level: str, logfile: str | None = None) -> None:
    """Install one handler on the root logger (CLI and bench only): stderr, or the file *logfile*
    (appended; it and its directory created owner-only: :class:`spiderflow.runtime.worker.LogFile`)."""
    if logfile is not None:
        from ..runtime.worker import LogFile
        handler: logging.Handler = LogFile(logfile)
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=[handler], force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(EscapeControls())   # a task id or URL cannot end a line and forge the next
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))


def get_settings(ctx: click.Context, **overrides: Any) -> Settings:
    """Resolve the settings for a command: its flags over the group's config file and env."""
    obj = ctx.find_root().obj or {}
    try:
        return settings_from_environ(obj.get("config"), **{**obj.get("overrides", {}), **overrides})
    except SpiderflowError as exc:
        raise click.UsageError(str(exc)) from exc


class _Spiderflow(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        """The entry point: stop signals are guarded before anything else, and logged to stderr."""
        with starting("spiderflow"):
            if not logging.getLogger().handlers:
                setup_logging("INFO")   # until the settings say otherwise: a stop during start-up is logged
            return super().main(*args, **kwargs)


@click.group(cls=_Spiderflow, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": None})
@click.version_option(__version__, "-V", "--version", prog_name="spiderflow")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None,
              help="JSON (or .toml) file of settings; flags and SPIDERFLOW_* variables override it.")
@click.option("--data-dir", default=None, help="Directory of the default sqlite databases and counters [./data].")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log level [INFO].")
@click.pass_context
def main(ctx: click.Context, config: str | None, data_dir: str | None, log_level: str | None) -> None:
    """spiderflow: a crawl pipeline of scheduler, fetchers, processors and result workers.

    Projects are Python scripts; components are linked by bounded queues and run in one
    process, on one machine, or across many.
    """
    if ctx.invoked_subcommand in SERVING_COMMANDS:
        guard_startup(ctx.invoked_subcommand)   # name the start-up after the command
    else:
        release_startup()
    ctx.obj = {"config": config, "overrides": {"data_dir": data_dir, "log_level": log_level}}
    settings = get_settings(ctx)
    setup_logging(settings.log_level)


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the resolved settings as JSON (passwords and tokens hidden)."""
    settings = get_settings(ctx)
    data = dataclasses.asdict(settings)
    for secret in ("password", "token", "scheduler_token", "cookie_secret"):
        if data.get(secret):
            data[secret] = "***"
    for url_key in ("taskdb", "projectdb", "resultdb", "queue", "proxy"):
        if data.get(url_key):
            data[url_key] = redact_url(data[url_key])
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _register() -> None:
    from . import all as all_cmd
    from . import bench, components, demo_site, export, import_pyspider, job, nodes, one, project, queue, standalone, webui
    from .options import node_options, worker_options
    for module in (one, all_cmd, standalone, components, project, export, import_pyspider, demo_site, webui, bench,
                   nodes, queue, job):
        for command in module.COMMANDS:
            main.add_command(command)
    from . import control      # spiderflow control / spiderflow inspect (remote control)
    for command in control.COMMANDS:
        main.add_command(command)
    for command in (all_cmd.COMMANDS + components.COMMANDS + webui.COMMANDS):   # every serving command's node
        node_options(command)
        worker_options(command)     # -n/--hostname, --logfile, --pidfile, --detach; SIGHUP restarts
    for command in standalone.COMMANDS:     # its node name is the device's
        worker_options(command, name_option="--device-name")


_register()
