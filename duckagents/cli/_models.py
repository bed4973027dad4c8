"""``duckagents models [list]``: the models each provider offers, in-process or of a running server.

The ``models`` group is where model commands go (``models list`` here; ``load``, ``unload``, ``pull`` in
``_operate``); ``duckagents models`` alone runs ``list``. ``list --live`` asks each agent of a running
server for what its upstream has now (the ``models_list`` control), which for a local provider is the
models on its server with those loaded in memory.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from ..gateway import control, fetch_status
from ._base import CommandError, Commands, ExitCode, check_url, resolve_config, table, token_from
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
    parser.add_argument("--provider", metavar="NAME", help="only this provider's models")
    parser.add_argument(
        "--live", action="store_true",
        help="with --url ws://... (a gateway): ask each agent what its upstream offers now (a local "
        "provider: the models on its server, marked loaded; needs a token with the admin scope)",
    )  # fmt: skip


async def run_list(args: argparse.Namespace, out: TextIO) -> int:
    """Print provider and model, one row each (the default model marked)."""
    marked: list[tuple[str, str, str]] = []
    if args.live:
        marked = await _live(args)
    elif args.url:
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
    if args.provider:
        known = {p for p, _, _ in marked}
        if args.provider not in known and not args.live:
            raise CommandError(f"no provider named {args.provider!r} (there are: {', '.join(sorted(known))})")
        marked = [row for row in marked if row[0] == args.provider]
    if args.json:
        objects = [{"provider": p, "model": m, "note": n} for p, m, n in marked]
        out.write(json.dumps(objects, indent=2) + "\n")
        return ExitCode.OK
    table([["provider", "model", "note"], *marked], out)
    return ExitCode.OK


async def _live(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Each agent's own list (the ``models_list`` control), from the running server at ``--url``."""
    if not args.url:
        raise CommandError("--live asks a running server: give its gateway with --url ws://HOST:PORT/")
    url = check_url(args.url, ("ws", "wss"), "--url")
    token = token_from(args)
    if args.provider:
        providers = [args.provider]
    else:
        status = await fetch_status(url, token=token)
        providers = [str(agent["provider"]) for agent in status.get("data", [])]
    marked = []
    for provider in providers:
        reply = await control(url, provider, "models_list", token=token)
        for entry in reply.get("models") or ():
            marked.append((provider, str(entry.get("name")), _note(entry)))
    return marked


def _note(entry: dict[str, Any]) -> str:
    """``loaded``, and the size, when the agent knows them."""
    notes = ["loaded"] if entry.get("loaded") else []
    if entry.get("size"):
        notes.append(f"{entry['size'] / 1e9:.1f} GB")
    return ", ".join(notes)
