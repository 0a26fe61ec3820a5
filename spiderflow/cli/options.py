"""Options shared by several commands, and the one way errors reach the user."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..exceptions import SpiderflowError


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
