"""Options shared by several commands, and the one way errors reach the user."""

from __future__ import annotations

import contextlib
import functools
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..exceptions import ConfigError, SpiderflowError


class Number(click.ParamType):
    """A finite float from *low* to *high*: click's float takes ``inf`` and ``nan``, which no
    rate, burst or time may be."""

    name = "number"

    def __init__(self, low: float = 0.0, high: float = 1e6, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above = number > self.low if self.low_open else number >= self.low
        if not (math.isfinite(number) and above and number <= self.high):
            self.fail(f"{value!r} is not a number {'above' if self.low_open else 'from'} {self.low:.15g}"
                      f"{' and at most' if self.low_open else ' to'} {self.high:.15g}", param, ctx)
        return number


#: A project's rate (tasks per second) or burst.
RATE = Number(0.0, 1e6)
#: A time limit or timeout in seconds (above 0, at most a day).
SECONDS = Number(0.0, 86400.0, low_open=True)


def db_options(func: Callable) -> Callable:
    """--taskdb, --projectdb, --resultdb: SQLAlchemy URLs."""
    for role in ("resultdb", "projectdb", "taskdb"):
        func = click.option(f"--{role}", default=None, metavar="URL",
                            help=f"{role} URL, e.g. sqlite:///data/{role[:-2]}.db or postgresql://user@host/db.")(func)
    return func


def queue_options(func: Callable) -> Callable:
    """--queue URL, --queue-maxsize and --queue-prefix."""
    func = click.option("--queue-prefix", default=None, metavar="WORD",
                        help="Start of the redis keys and RabbitMQ queue names [spiderflow]: clusters sharing "
                             "a Redis db or RabbitMQ vhost need different ones (a URL's ?prefix= wins).")(func)
    func = click.option("--queue-maxsize", type=int, default=None,
                        help="Bound of every queue [100]; newtask_queue holds 20 times as many.")(func)
    func = click.option("--queue", default=None, metavar="URL",
                        help="Queue backend: redis://host:6379/0, amqp://user:pass@host:5672/vhost, ...")(func)
    return func


def node_options(command: Any) -> Any:
    """--node-id and --node-name (a command's function or an already built click Command)."""
    command = click.option("--node-name", default=None, metavar="NAME",
                           help="Name shown for this node in `spiderflow nodes` and the web UI [the id].")(command)
    return click.option("--node-id", default=None, metavar="ID",
                        help="Stable id of this node in the registry: a restart with it updates its row and keeps "
                             "its history; a second live node with it is refused [a new random id per start]."
                        )(command)


WORKER_CODES = ("%p the node name (-n, else COMMAND@HOST), %n its part before '@', %h its part after '@' "
                "(else the host name), %d that host's domain, %i the process index (0: this process; under "
                "`all`/`standalone` 1, 2, ... for its components: scheduler, fetchers, processors, result "
                "workers, web UI), %I the same as '', -1, -2, ..., %% a %")


def worker_options(command: Any, name_option: str = "--node-name") -> Any:
    """-n/--hostname, --logfile, --pidfile and --detach on a serving command (its function or an
    already built click Command), whose body then runs through :func:`spiderflow.runtime.worker.serve`
    (SIGHUP then restarts it in place). *name_option* is the option -n stands for."""
    name_param = name_option.lstrip("-").replace("-", "_")
    if isinstance(command, click.Command):
        command.callback = _serving(command.callback, name_param, name_option)
    else:
        command = _serving(command, name_param, name_option)
    command = click.option("-n", "--hostname", default=None, metavar="NAME",
                           help=f"Node name of this process, as {name_option} (give one of them): %h the host "
                                "name, %n its part before the first dot, %d the part after it, %% a %; e.g. "
                                "-n fetcher1@%h. Under `all` each component is NAME/KIND#N.")(command)
    command = click.option("--logfile", default=None, metavar="PATH",
                           help="Log to this file instead of stderr (appended; created owner-only, with its "
                                f"directory). {WORKER_CODES}. Under `all`, a PATH with %i or %I gives each "
                                "process a file of its own; without, they share it "
                                "[--detach: DATA_DIR/logs/COMMAND.log].")(command)
    command = click.option("--pidfile", default=None, metavar="PATH",
                           help="Write this process's pid to this file (owner-only), removed at exit; refuse "
                                "to start while it names a running spiderflow process, replace it when that "
                                "process has gone. The codes of --logfile [--detach: DATA_DIR/COMMAND.pid].")(command)
    return click.option("--detach", is_flag=True, default=False,
                        help="Run in the background as a daemon (no terminal, working directory kept); print "
                             "its pid and log file once it runs. With --logfile [DATA_DIR/logs/COMMAND.log] and "
                             "--pidfile [DATA_DIR/COMMAND.pid]. SIGHUP to any serving command restarts it in "
                             "place (warm stop, then the same pid runs the same command again).")(command)


def _serving(callback: Callable, name_param: str, name_option: str) -> Callable:
    @functools.wraps(callback)
    def serve(**kwargs: Any) -> Any:
        from ..runtime import worker
        from . import get_settings, setup_logging

        hostname, logfile, pidfile = (kwargs.pop(key, None) for key in ("hostname", "logfile", "pidfile"))
        detach = bool(kwargs.pop("detach", False))
        if worker.serving():    # `standalone` runs `all` in its own process: its options were applied once
            return callback(**kwargs)
        ctx = click.get_current_context()
        if hostname is not None:
            if kwargs.get(name_param) is not None:
                raise click.UsageError(f"give -n/--hostname or {name_option}, not both")
            with user_errors():
                kwargs[name_param] = worker.expand_hostname(hostname)
        settings = get_settings(ctx)
        command = ctx.command.name or ctx.info_name or "spiderflow"
        node_name = kwargs.get(name_param) or settings.node_name or f"{command}@{socket.gethostname()}"

        def body() -> int:
            try:
                callback(**kwargs)
            except click.exceptions.Exit as exc:
                return exc.exit_code
            return 0

        with user_errors():
            code = worker.serve(command, body, node_name=node_name, data_dir=settings.data_dir, logfile=logfile,
                                pidfile=pidfile, detach=detach,
                                use_logfile=lambda path: setup_logging(settings.log_level, path))
        if code:
            ctx.exit(code)
    return serve


def secret_file_option(name: str) -> Callable:
    """``--<name>-file PATH``: the secret *name* (password, token, ...) read from a file, kept out of ``ps``."""
    flag = name.replace("_", "-")
    return click.option(f"--{flag}-file", f"{name}_file", default=None, metavar="PATH",
                        help=f"Read --{flag} from the first line of this file (not shown by ps).")


def read_secret_files(options: dict[str, Any], *names: str) -> dict[str, Any]:
    """*options* with each ``<name>_file`` of *names* replaced by ``<name>``: the file's first line, stripped."""
    options = dict(options)
    for name in names:
        path = options.pop(f"{name}_file", None)
        if path is None:
            continue
        flag = name.replace("_", "-")
        if options.get(name) is not None:
            raise ConfigError(f"give --{flag} or --{flag}-file, not both")
        try:
            with open(path, encoding="utf-8") as fh:
                line = fh.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"--{flag}-file {path!r}: cannot read it: {why}") from exc
        if not line:
            raise ConfigError(f"--{flag}-file {path!r}: its first line is empty")
        options[name] = line
    return options


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn spiderflow's errors into a one-line message and exit status 2 (no traceback)."""
    try:
        yield
    except SpiderflowError as exc:
        raise click.ClickException(str(exc)) from exc


def handles_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return func(*args, **kwargs)
    return wrapper
