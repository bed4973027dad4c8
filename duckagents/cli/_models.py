"""``duckagents models [list]``: the models each provider offers, in-process or of a running server.

The ``models`` group is where model commands go (``models list`` today); ``duckagents models`` alone runs
``list``.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from ._base import Commands, ExitCode, resolve_config, table, token_from
from ._remote import Server
from ._status import add_remote_options


def add_commands(commands: Commands) -> None:
    """``models`` and ``models list``."""
    models = commands.group("models", help="the models each provider offers", default=run_list)
    add_list_options(models.parent)
    listing = models.add("list", run_list, help="the models each provider offers (the default)")
    add_list_options(listing)


def add_list_options(parser: argparse.ArgumentParser | None) -> None:
    """The flags of ``models list`` (also taken by ``models`` alone)."""
    assert parser is not None
    add_remote_options(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per provider and model")


async def run_list(args: argparse.Namespace, out: TextIO) -> int:
    """Print provider and model, one row each (the default model marked)."""
    marked: list[tuple[str, str, str]] = []
    if args.url:
        rows = await Server(args.url, token_from(args), wait=args.wait).models()
        marked = [(r.provider, r.model, "") for r in rows]
    else:
        config = await resolve_config(args)
        for provider in config.providers:
            default = (provider.default_model,) if provider.default_model else ()
            listed = dict.fromkeys((*provider.models, *default))
            if not listed:
                marked.append((provider.name, "(any)", "takes any model name"))
            for model in listed:
                marked.append((provider.name, model, "default" if model == provider.default_model else ""))
    if args.json:
        objects = [{"provider": p, "model": m, "note": n} for p, m, n in marked]
        out.write(json.dumps(objects, indent=2) + "\n")
        return ExitCode.OK
    table([["provider", "model", "note"], *marked], out)
    return ExitCode.OK
