"""``duckagents pull MODEL``: download a model into a local (Ollama) provider, showing its progress."""

from __future__ import annotations

import argparse
from typing import TextIO

import trio
import trio.lowlevel

from ..errors import ProviderError
from ..signals import ProgressEvent
from ._base import CommandError, Commands, ExitCode, resolve_config


def add_commands(commands: Commands) -> None:
    """``pull``."""
    pull = commands.add(
        "pull", run_pull, help="download a model into a local (Ollama) provider, with progress"
    )
    pull.add_argument("model")
    pull.add_argument("--provider", help="the local provider agent (default: the first one)")


def progress_line(event: ProgressEvent) -> str:
    """One progress line: ``provider: status share% (done/total bytes)``."""
    if event.total:
        share = 100 * (event.completed or 0) / event.total
        return f"{event.provider}: {event.status} {share:5.1f}% ({event.completed}/{event.total} bytes)"
    return f"{event.provider}: {event.status}"


async def run_pull(args: argparse.Namespace, out: TextIO) -> int:
    """Pull ``args.model`` into a local provider of an in-process tree, printing its progress signals."""
    from ..agents import LocalAgent
    from ..app import open_tree
    from ..bus import Overflow, SignalFilter

    config = await resolve_config(args)
    async with open_tree(config) as tree:
        local = {name: a for name, a in tree.agents.items() if isinstance(a, LocalAgent)}
        if not local:
            raise CommandError("no local (ollama) provider is configured or answering on 127.0.0.1:11434")
        name = args.provider or next(iter(local))
        if name not in local:
            raise CommandError(
                f"{name!r} is not a local provider; local providers: {', '.join(local)}", ExitCode.USAGE
            )
        progress = SignalFilter(types=frozenset({ProgressEvent.TYPE}), providers=frozenset({name}))
        with tree.bus.subscribe(progress, buffer=256, overflow=Overflow.DROP_OLDEST) as events:
            async with trio.open_nursery() as nursery:

                async def show() -> None:
                    async for signal in events:
                        assert isinstance(signal.data, ProgressEvent)
                        out.write(progress_line(signal.data) + "\n")
                        out.flush()

                nursery.start_soon(show)
                try:
                    await local[name].pull(args.model)
                except ProviderError as exc:
                    raise CommandError(f"pull of {args.model} into {name} failed: {exc}") from None
                await trio.lowlevel.checkpoint()  # let the last progress line through
                nursery.cancel_scope.cancel()
    out.write(f"pulled {args.model} into {name}\n")
    return ExitCode.OK
