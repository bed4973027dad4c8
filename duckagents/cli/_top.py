"""``duckagents top``: a full-screen live table of a running server (``--url``) or of a tree run here.

The view itself is :mod:`duckagents.live` (docs/dashboard.md); it needs ``rich``, the ``top`` extra.
"""

from __future__ import annotations

import argparse
import os
from contextlib import AsyncExitStack
from typing import Any, TextIO

from ._base import CommandError, Commands, ExitCode, add_url_options, check_url, port_number, resolve_config
from ._serve import dashboard_pages_of, open_gateway_in, with_gateway


def add_commands(commands: Commands) -> None:
    """``top``."""
    top = commands.add(
        "top", run_top, help="a full-screen live table of a running server (--url) or of a tree run here",
        description="The live figures of every agent (health, breaker, headroom, in flight, latency, spend, "
        "restarts), the last minute's rates and the latest requests, redrawn a few times a second; q quits. "
        "With --url (or $DUCKAGENTS_URL): a running server's gateway; without: a tree run here from the "
        "configuration (with --gateway, its gateway and dashboard too).",
    )
    add_url_options(top, help="a running gateway, ws://HOST:PORT/ (default: $DUCKAGENTS_URL, else run the "
                    "tree here)")
    top.add_argument("--refresh", type=redraws, default=4.0, metavar="N",
                     help="redraws per second, 0.1 to 60 (default 4)")
    top.add_argument("--gateway", action="store_true", help="without --url: also start the gateway")
    top.add_argument("--host", default=None, help="gateway bind address (default 127.0.0.1)")
    top.add_argument("--port", type=port_number, default=None,
                     help="gateway port, 0 to 65535; 0 picks a free one (default 8765)")


def redraws(text: str) -> float:
    """``--refresh``: redraws per second."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError("must be between 0.1 and 60 redraws per second")
    return value


async def run_top(args: argparse.Namespace, out: TextIO) -> int:
    """Draw until ``q``; the figures come from ``--url`` or from a tree run here."""
    try:
        from ..live import Link, follow_gateway, follow_tree
        from ..live import run_top as draw
    except ModuleNotFoundError as exc:
        raise CommandError(
            f"duckagents top needs {exc.name}: pip install 'duckagents[top]'", ExitCode.ERROR
        ) from None

    url = args.url or os.environ.get("DUCKAGENTS_URL")
    if url:
        url = check_url(url, ("ws", "wss"), "--url")
        token = os.environ.get(args.token_env) if args.token_env else None

        async def remote(state: Any, link: Any) -> None:
            await follow_gateway(url, state, link, token=token)

        return int(await draw(remote, Link(url), out=out, refresh=args.refresh))

    from ..app import open_tree

    config = with_gateway(await resolve_config(args), args)
    async with open_tree(config) as tree, AsyncExitStack() as doors:

        async def local(state: Any, link: Any) -> None:
            await follow_tree(tree, state, link)

        where = "in-process tree"
        if config.gateway.enabled:
            gateway = await open_gateway_in(doors, tree.router, config, dashboard_pages_of(config))
            where += f", gateway {gateway.url}"
        return int(await draw(local, Link(where), out=out, refresh=args.refresh))
