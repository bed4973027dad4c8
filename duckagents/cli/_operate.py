"""Operator commands against a running server (``duckagents serve --gateway``), through its gateway:
``breaker reset|force-open|disable NAME``, ``drain NAME`` / ``resume NAME``, ``models load|unload|pull``
(beside ``models list``) and ``reload``.

Each sends one operator message (docs/gateway.md, *Operator messages*) with a token that has the ``admin``
scope; the server records who did what (the token's name) in a ``control_reply`` signal. A control the
server refuses is one line and exit 1; an unreachable server exit 4.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from ..gateway import control, fetch_status, pull, reload
from ._base import (
    DEFAULT_GATEWAY_URL,
    CommandError,
    Commands,
    ExitCode,
    add_url_options,
    check_url,
    token_from,
)
from ._pull import progress_line

#: ``breaker`` subcommands and the control each sends.
BREAKER_SWITCHES = {
    "reset": ("breaker_reset", "close the breaker and forget its failures (also ends force-open, disable)"),
    "force-open": ("breaker_force_open", "hold the breaker open: the provider gets no requests until reset"),
    "disable": ("breaker_disable", "switch the breaker off: it admits everything and never trips"),
}
_URL_HELP = f"the server's gateway, ws://HOST:PORT/ (default: $DUCKAGENTS_URL, else {DEFAULT_GATEWAY_URL})"


def add_commands(commands: Commands) -> None:
    """``breaker``, ``drain``, ``resume``, ``reload``, and ``models load|unload|pull``."""
    breaker = commands.group("breaker", help="switch a provider's circuit breaker on a running server")
    for switch, (_, text) in BREAKER_SWITCHES.items():
        parser = breaker.add(switch, run_breaker, help=text)
        parser.add_argument("name", help="the provider")
        _server_options(parser)
        parser.set_defaults(switch=switch)

    drain = commands.add(
        "drain", run_drain, help="send a provider of a running server no new requests (in flight ones finish)"
    )
    drain.add_argument("name", help="the provider")
    _server_options(drain)
    drain.set_defaults(action="drain")
    resume = commands.add("resume", run_drain, help="send a drained provider of a running server requests")
    resume.add_argument("name", help="the provider")
    _server_options(resume)
    resume.set_defaults(action="resume")

    reloading = commands.add(
        "reload", run_reload, help="make a running server re-read its config file (no restart)",
        description="Make a running server re-read its config file: added providers start, removed ones "
        "drain and stop, changed ones are replaced after draining; no request in flight is lost. An invalid "
        "file is refused with the error it gives at start, and the running configuration keeps serving.",
    )
    _server_options(reloading)

    models = commands.group("models", help="the models each provider offers")
    for command, text in (
        ("load", "load a model into a local provider's memory on a running server"),
        ("unload", "evict a model from a local provider's memory on a running server"),
        ("pull", "download a model into a local provider of a running server, showing its progress "
         "(the download goes on in the server if you leave)"),
    ):
        parser = models.add(command, run_models, help=text)
        parser.add_argument("model", nargs=None if command == "pull" else "?",
                            help="the model" + ("" if command == "pull" else " (default: the provider's)"))
        parser.add_argument("--provider", help="the local provider (default: the server's first one)")
        _server_options(parser)
        parser.set_defaults(model_command=command)


def _server_options(parser: argparse.ArgumentParser) -> None:
    add_url_options(parser, help=_URL_HELP)


def _server(args: argparse.Namespace) -> tuple[str, Any]:
    """The gateway URL (``--url``, ``$DUCKAGENTS_URL``, the default) and the token."""
    url = args.url or os.environ.get("DUCKAGENTS_URL") or DEFAULT_GATEWAY_URL
    return check_url(url, ("ws", "wss"), "--url"), token_from(args)


async def run_breaker(args: argparse.Namespace, out: TextIO) -> int:
    """Send the breaker switch; print what the agent says the breaker is now, and who did it."""
    url, token = _server(args)
    reply = await control(url, args.name, BREAKER_SWITCHES[args.switch][0], token=token)
    out.write(f"{args.name}: {reply['message']} (by {reply['principal']})\n")
    return ExitCode.OK


async def run_drain(args: argparse.Namespace, out: TextIO) -> int:
    """``drain`` / ``resume`` one provider."""
    url, token = _server(args)
    reply = await control(url, args.name, args.action, token=token)
    out.write(f"{args.name}: {reply['message']} (by {reply['principal']})\n")
    return ExitCode.OK


async def run_reload(args: argparse.Namespace, out: TextIO) -> int:
    """Ask the server to re-read its configuration; print what changed."""
    url, token = _server(args)
    report = await reload(url, token=token)
    changes = [
        f"{label} {', '.join(report[label])}" for label in ("added", "removed", "changed") if report[label]
    ]
    out.write("reloaded: " + "; ".join(changes or ["no provider changed"]) + "\n")
    for note_text in report["notes"]:
        out.write(f"note: {note_text}\n")
    return ExitCode.OK


async def run_models(args: argparse.Namespace, out: TextIO) -> int:
    """``models load|unload|pull`` on a running server."""
    url, token = _server(args)
    name = args.provider or await _first_local(url, token)
    if args.model_command == "pull":
        outcome = await pull(url, name, args.model, token=token, out=out, format_progress=progress_line)
        done = f"pulled {args.model} into {name}" if outcome == "success" else f"pull ended: {outcome}"
        out.write(done + "\n")
        return ExitCode.OK
    action = {"load": "model_load", "unload": "model_unload"}[args.model_command]
    reply = await control(url, name, action, model=args.model, token=token)
    out.write(f"{name}: {reply['message']}\n")
    return ExitCode.OK


async def _first_local(url: str, token: Any) -> str:
    """The server's first local (Ollama) provider."""
    status = await fetch_status(url, token=token)
    local = [a["provider"] for a in status.get("data", []) if a.get("kind") == "ollama"]
    if not local:
        raise CommandError("the server has no local (ollama) provider; name one with --provider")
    return str(local[0])
