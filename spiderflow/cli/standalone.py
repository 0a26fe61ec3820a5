"""``spiderflow standalone --device-id ID``: the whole pipeline of ``spiderflow all`` as one registered device.

The device is the node ``ID`` (kind ``device``, named after the host unless ``--device-name``
says otherwise): it carries the host's health and the sums of its components, which are the
nodes ``ID/scheduler#0``, ``ID/fetcher#0``, ... A restart with the same id updates those
rows and keeps their history; while another live process holds the id, start-up is refused.
Every option of ``spiderflow all`` applies (its ``--poolsize`` is ``--concurrent-tasks`` here).
"""

from __future__ import annotations

import click

from .all import all_command
from .options import handles_errors

STANDALONE_FLAGS = {"device_id", "device_name", "concurrent_tasks", "dispatch_interval", "enable_monitoring",
                    "standalone_config"}


@click.command("standalone")
@click.option("--device-id", required=True, metavar="ID",
              help="Stable id of this device in the node registry (letters, digits, ._:@+-).")
@click.option("--device-name", default=None, metavar="NAME", help="Name shown for the device [the host name].")
@click.option("--concurrent-tasks", type=click.IntRange(min=1), default=None, metavar="N",
              help="Concurrent fetches of each fetcher (poolsize) [100].")
@click.option("--dispatch-interval", type=click.FloatRange(0, 86400, min_open=True), default=None, metavar="S",
              help="Seconds between the scheduler's (and processors') checks of projectdb for new and changed "
                   "projects (project_check_interval) [5].")
@click.option("--enable-monitoring", is_flag=True, default=None,
              help="Log the device's health every heartbeat, and every node that goes offline or comes back.")
@click.option("--config", "standalone_config", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="JSON (or .toml) file of settings, as `spiderflow -c FILE` (this one wins).")
@click.pass_context
@handles_errors
def standalone(ctx: click.Context, device_id: str, device_name: str | None, concurrent_tasks: int | None,
               dispatch_interval: float | None, enable_monitoring: bool | None, standalone_config: str | None,
               **options) -> None:
    """Run the scheduler, fetchers, processors, result workers and web UI on this machine as one device.

    Like `spiderflow all`, with a stable identity: `spiderflow nodes` shows the device (its
    host's CPU, memory, disk, load and network, its tasks and errors) and each of its
    components. SIGTERM or Ctrl-C stops it warmly and marks it stopped at once.
    """
    from ..nodes import check_node_id

    check_node_id(device_id, "--device-id")
    obj = ctx.find_root().obj
    if standalone_config:
        obj["config"] = standalone_config
    # settings `all` has no flag for; `all`'s own flags (None when not given) would hide the others
    obj["overrides"] = {**obj.get("overrides", {}), "project_check_interval": dispatch_interval,
                        "monitoring": enable_monitoring or None}
    ctx.invoke(all_command, **options, node_id=device_id, node_name=device_name, poolsize=concurrent_tasks)


# every option of `all` but --poolsize (--concurrent-tasks) and, added to `all` later, its node options
standalone.params.extend(p for p in all_command.params
                         if p.name not in ("poolsize", "node_id", "node_name") and p.name not in STANDALONE_FLAGS)

COMMANDS = [standalone]
