"""The ``duckagents`` command: ask, status, providers, models, breaker, drain, resume, reload, pull, serve,
watch, top, config, completion.

Layout: one private module per command group, each with ``add_commands(commands)`` adding its commands to
the table (:class:`~._base.Commands`); :data:`COMMAND_GROUPS` lists them in ``--help`` order. A new group
is a new module plus one line there. A command is ``async def run(args, out) -> int`` (run under Trio);
it fails by raising: :class:`~._base.CommandError` (one line, its exit code), ``ProviderError`` (the
request failed), ``ConfigError`` (invalid configuration). :func:`main` turns every failure into one line on
stderr and the documented exit code (:class:`ExitCode`); tracebacks only with ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TextIO

import trio

from .. import __version__
from ..errors import ConfigError, DuckAgentsError, GatewayUnreachable, ProviderError
from . import _ask, _completion, _config, _models, _operate, _pull, _serve, _status, _top, _watch
from ._base import (
    EXIT_CODES_HELP,
    CommandError,
    Commands,
    ExitCode,
    HelpFormatter,
    Parser,
    add_common_options,
)
from ._logs import configure_logging

__all__ = ["COMMAND_GROUPS", "ExitCode", "build_parser", "main"]

#: The modules that add commands, in ``--help`` order.
COMMAND_GROUPS: tuple[ModuleType, ...] = (
    _ask, _status, _models, _operate, _pull, _serve, _watch, _top, _config, _completion
)

log = logging.getLogger("duckagents.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``duckagents`` command."""
    parser = Parser(
        prog="duckagents",
        description="Supervised LLM provider agents on Trio: ask, inspect and serve them.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"duckagents {__version__}")
    add_common_options(parser, defaults=True)
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    commands = Commands(subparsers, parser)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``duckagents`` command; returns the exit status (see :class:`ExitCode`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    configure_logging(args.log_level, args.log_format)
    stream = out or sys.stdout
    try:
        return int(trio.run(args.run, args, stream))
    except BaseException as exc:
        return report(exc)


def report(exc: BaseException) -> int:
    """One line on stderr for ``exc`` (the most telling leaf of an exception group); its exit code."""
    leaf = _telling_leaf(exc)
    if isinstance(leaf, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(leaf, CommandError):
        code, message = leaf.code, str(leaf)
    elif isinstance(leaf, ProviderError):
        code, message = ExitCode.REQUEST_FAILED, f"request failed: {leaf}"
    elif isinstance(leaf, GatewayUnreachable):
        code, message = ExitCode.UNREACHABLE, str(leaf)
    elif isinstance(leaf, ConfigError):
        code, message = ExitCode.ERROR, str(leaf)
    elif isinstance(leaf, DuckAgentsError):
        code, message = ExitCode.ERROR, str(leaf)
    elif isinstance(leaf, BrokenPipeError):
        return ExitCode.ERROR  # the reader went away (e.g. `| head`): nothing left to tell
    elif isinstance(leaf, Exception):
        log.debug("unexpected error", exc_info=leaf)
        code = ExitCode.ERROR
        message = (
            f"internal error: {type(leaf).__name__}: {leaf} (run with --log-level debug for the traceback)"
        )
    else:
        raise exc
    sys.stderr.write(f"duckagents: {_one_line(message)}\n")
    sys.stderr.flush()
    return int(code)


def _telling_leaf(exc: BaseException) -> BaseException:
    """The leaf of an exception group that says the most: an interrupt, then our own errors, then any."""
    leaves: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
        else:
            leaves.append(current)
    for kind in (KeyboardInterrupt, CommandError, DuckAgentsError, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
