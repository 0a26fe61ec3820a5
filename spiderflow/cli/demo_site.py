"""``spiderflow demo-site``: serve the local demo/test site (link farm, httpbin-like pages)."""

from __future__ import annotations

import click

from . import get_settings


@click.command("demo-site", context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--allow-remote", is_flag=True, help="Allow a host other than loopback.")
@click.pass_context
def demo_site(ctx: click.Context, host: str, port: int, allow_remote: bool) -> None:
    """Serve the demo site that examples/quickstart.py crawls, until Ctrl-C."""
    from ..testing.server import main as serve
    get_settings(ctx)
    argv = ["--host", host, "--port", str(port)] + (["--allow-remote"] if allow_remote else [])
    ctx.exit(serve(argv))


COMMANDS = [demo_site]
