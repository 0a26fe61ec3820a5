"""Options shared by several commands, and the one way errors reach the user."""

from __future__ import annotations

import contextlib
import functools
import math
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
