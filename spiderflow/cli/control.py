"""``spiderflow control COMMAND`` and ``spiderflow inspect WHAT``: remote control of a running cluster.

Both broadcast over the cluster's queue backend (see :mod:`spiderflow.control`), read from
the same config and flags as the components (``-c``, ``--queue``, ``--queue-prefix``,
``--projectdb``; without a queue URL, the ``spiderflow all`` of the data directory). Every
node answers unless ``-d/--destination NAME`` (repeatable: a name or id ``spiderflow nodes``
shows) says which; replies are collected for ``--timeout`` seconds (1) at most; ``--json``
prints ``{node name: reply}``. The exit status is 1 when no node replied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..exceptions import ConfigError
from . import get_settings
from .options import RATE, SECONDS, handles_errors


def _options(func: Callable) -> Callable:
    """-d/--destination, --timeout, --json and where the cluster is: on the groups and on each command."""
    func = click.option("--projectdb", default=None, metavar="URL",
                        help="projectdb URL: where rate limits, pauses and revokes are stored.")(func)
    func = click.option("--queue-prefix", default=None, metavar="WORD", help="The cluster's queue prefix.")(func)
    func = click.option("--queue", default=None, metavar="URL",
                        help="The cluster's queue backend (redis://..., amqp://...) [the data directory's "
                             "`spiderflow all`].")(func)
    func = click.option("--json", "as_json", is_flag=True, default=None,
                        help="Print JSON: {node name: reply}.")(func)
    func = click.option("--timeout", type=SECONDS, default=None, help="Seconds to wait for replies [1].")(func)
    return click.option("-d", "--destination", multiple=True, metavar="NAME",
                        help="Only this node (a name or id from `spiderflow nodes`); repeatable [every node].")(func)


def _merged(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The command's options over its group's."""
    group = (ctx.parent.params if ctx.parent is not None else {}) or {}
    out = {}
    for key in ("timeout", "as_json", "queue", "queue_prefix", "projectdb"):
        value = options.get(key)
        out[key] = group.get(key) if value is None else value
    out["destination"] = list(group.get("destination") or ()) + list(options.get("destination") or ())
    return out


def _client(ctx: click.Context, opts: dict[str, Any]):
    from ..control import ControlClient
    settings = get_settings(ctx, queue=opts["queue"], queue_prefix=opts["queue_prefix"], projectdb=opts["projectdb"])
    return ControlClient(settings)


def _run(ctx: click.Context, options: dict[str, Any], call: Callable[[Any, dict[str, Any]], dict[str, Any]],
         what: str) -> None:
    opts = _merged(ctx, options)
    timeout = opts["timeout"] or 1.0
    kwargs = {"destination": opts["destination"] or None, "timeout": timeout}
    with _client(ctx, opts) as client:
        replies = call(client, kwargs)
    if opts["as_json"]:
        click.echo(json.dumps(replies, indent=2, sort_keys=True, default=str))
    else:
        for name in sorted(replies):
            click.echo(_format(name, replies[name]))
    if not replies:
        raise click.ClickException(f"no node replied within {timeout:g} s")
    if not opts["as_json"]:
        n = len(replies)
        click.echo(f"\n{n} node{'s' if n != 1 else ''} {'online' if what == 'ping' else 'replied'}.")


def _format(name: str, reply: Any) -> str:
    """Celery's layout: ``->  name: OK`` and the reply indented below (control characters escaped:
    a reply is another process's text)."""
    if isinstance(reply, dict) and "error" in reply and len(reply) <= 3:
        return f"->  {name}: ERROR\n        {_text(reply['error'])}" + _extra(reply, "error")
    if isinstance(reply, dict) and "ok" in reply:
        return f"->  {name}: OK\n        {_text(reply['ok'])}" + _extra(reply, "ok")
    if isinstance(reply, list):
        if not reply:
            return f"->  {name}: OK\n    - empty -"
        return f"->  {name}: OK\n" + "\n".join(f"    * {json.dumps(item, sort_keys=True, default=str)}"
                                              for item in reply)
    body = json.dumps(reply, indent=4, sort_keys=True, default=str).replace("\n", "\n    ")
    return f"->  {name}: OK\n    {body}"


def _extra(reply: dict[str, Any], main: str) -> str:
    rest = {k: v for k, v in reply.items() if k != main}
    return ("\n        " + _text(", ".join(f"{k} {v}" for k, v in rest.items()))) if rest else ""


def _text(value: Any) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


# -- control ---------------------------------------------------------------------------------------------

@click.group("control")
@_options
def control(**_options: Any) -> None:
    """Tell the nodes of a running cluster something: ping, shutdown, rate limits, revokes, pool sizes.

    Commands that change the cluster (rate-limit, time-limit, pause, resume, revoke) are
    stored in the shared projectdb first, so they hold for nodes started later; the broadcast
    applies them at once. The bus trusts the queue backend's credentials (with scheduler_token
    set, commands are signed and nodes refuse unsigned ones).
    """


@control.command("ping")
@_options
@click.pass_context
@handles_errors
def ping(ctx: click.Context, **options: Any) -> None:
    """Every live node answers pong, with its kind, pid, host and uptime."""
    _run(ctx, options, lambda c, kw: c.call("ping", **kw), "ping")


@control.command("shutdown")
@_options
@click.pass_context
@handles_errors
def shutdown(ctx: click.Context, **options: Any) -> None:
    """Warm shutdown of the destination nodes (every node without -d): they finish the work in hand and exit."""
    _run(ctx, options, lambda c, kw: c.call("shutdown", **kw), "shutdown")


def _rate(value: str) -> float:
    from ..control import parse_rate
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@control.command("rate-limit")
@click.argument("project")
@click.argument("rate")
@click.argument("burst", type=RATE, required=False)
@_options
@click.pass_context
@handles_errors
def rate_limit(ctx: click.Context, project: str, rate: str, burst: float | None, **options: Any) -> None:
    """PROJECT's rate: RATE tasks per second (or 200/m, 1000/h), and BURST (kept if not given)."""
    per_second = _rate(rate)
    _run(ctx, options, lambda c, kw: c.rate_limit(project, per_second, burst, **kw), "rate-limit")


@control.command("time-limit")
@click.argument("project")
@click.argument("seconds")
@click.option("--soft", type=SECONDS, default=None,
              help="Not at run time: a processor's soft limit is its --soft-time-limit (process_soft_time_limit).")
@_options
@click.pass_context
@handles_errors
def time_limit(ctx: click.Context, project: str, seconds: str, soft: float | None, **options: Any) -> None:
    """The time limit of PROJECT's callbacks: SECONDS (over the script's and process_time_limit), or
    `none` to drop it; processors apply it to the callbacks they start from now on."""
    if seconds.lower() in ("none", "off"):
        limit = None
    else:
        limit = SECONDS.convert(seconds, None, ctx)
    if soft is not None:
        raise ConfigError("--soft: the soft limit is not changed at run time; start the processors with "
                          "--soft-time-limit SECONDS (or process_soft_time_limit in the config); set SECONDS only")
    _run(ctx, options, lambda c, kw: c.time_limit(project, limit, **kw), "time-limit")


@control.command("pause")
@click.argument("project")
@_options
@click.pass_context
@handles_errors
def pause(ctx: click.Context, project: str, **options: Any) -> None:
    """Set PROJECT STOP: the scheduler dispatches nothing more of it (tasks in flight finish)."""
    _run(ctx, options, lambda c, kw: c.pause(project, **kw), "pause")


@control.command("resume")
@click.argument("project")
@_options
@click.pass_context
@handles_errors
def resume(ctx: click.Context, project: str, **options: Any) -> None:
    """Set PROJECT RUNNING again."""
    _run(ctx, options, lambda c, kw: c.resume(project, **kw), "resume")


@control.command("revoke")
@click.argument("taskids", nargs=-1)
@click.option("--project", default=None, metavar="NAME",
              help="The task ids are this project's [any project's]; without task ids, every task of it "
                   "accepted so far.")
@click.option("--terminate", is_flag=True, help="Also abort the fetch in flight (a running callback's outcome "
                                                "is dropped when it returns).")
@_options
@click.pass_context
@handles_errors
def revoke(ctx: click.Context, taskids: tuple[str, ...], project: str | None, terminate: bool,
           **options: Any) -> None:
    """Revoke TASKIDS (or, with --project alone, every task of a project): they are not fetched or
    processed, and the scheduler marks them BAD. Revokes are kept in the shared projectdb for
    revoke_expires (3 h), so restarted nodes honour them."""
    _run(ctx, options, lambda c, kw: c.revoke(list(taskids), project, terminate=terminate, **kw), "revoke")


@control.command("pool-grow")
@click.argument("n", type=click.IntRange(1, 100_000), default=1)
@_options
@click.pass_context
@handles_errors
def pool_grow(ctx: click.Context, n: int, **options: Any) -> None:
    """N more concurrent fetches per fetcher, N more child processes per prefork processor (a solo
    processor answers that its pool is one worker); use -d to aim at one kind."""
    _run(ctx, options, lambda c, kw: c.call("pool_grow", {"n": n}, **kw), "pool-grow")


@control.command("pool-shrink")
@click.argument("n", type=click.IntRange(1, 100_000), default=1)
@_options
@click.pass_context
@handles_errors
def pool_shrink(ctx: click.Context, n: int, **options: Any) -> None:
    """N fewer concurrent fetches per fetcher, or child processes per prefork processor (at least 1);
    the work in flight finishes."""
    _run(ctx, options, lambda c, kw: c.call("pool_shrink", {"n": n}, **kw), "pool-shrink")


@control.command("autoscale")
@click.argument("max_", metavar="MAX", type=click.IntRange(1, 100_000))
@click.argument("min_", metavar="MIN", type=click.IntRange(1, 100_000))
@_options
@click.pass_context
@handles_errors
def autoscale(ctx: click.Context, max_: int, min_: int, **options: Any) -> None:
    """Fetch slots (fetchers) or child processes (prefork processors) between MIN and MAX: grown while
    every one is busy and the queue has more, shrunk when idle."""
    _run(ctx, options, lambda c, kw: c.call("autoscale", {"max": max_, "min": min_}, **kw), "autoscale")


# -- inspect ---------------------------------------------------------------------------------------------

@click.group("inspect")
@_options
def inspect(**_options: Any) -> None:
    """Ask the nodes of a running cluster what they are doing: active, reserved, stats, registered, revoked, conf."""


def _inspect_command(what: str, doc: str) -> click.Command:
    @_options
    @click.pass_context
    @handles_errors
    def command(ctx: click.Context, **options: Any) -> None:
        _run(ctx, options, lambda c, kw: c.call(what, **kw), what)

    command.__doc__ = doc
    return inspect.command(what)(command)


for _what, _doc in (
        ("active", "Tasks in flight on each fetcher and processor."),
        ("reserved", "Tasks each fetcher and processor took from a queue and has not started."),
        ("stats", "Each node's counters, pool, pid, rusage, RSS and uptime."),
        ("registered", "The projects each processor (and the scheduler) has loaded, with their script version."),
        ("revoked", "The revokes in force on each node."),
        ("conf", "Each node's settings (passwords and tokens hidden)."),
        ("ping", "Every live node answers pong.")):
    _inspect_command(_what, _doc)

COMMANDS = [control, inspect]
