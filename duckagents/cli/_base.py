"""What every command shares: exit codes, one-line errors, the command table, checked flag values, the
config a command runs on, and plain-text tables."""

from __future__ import annotations

import argparse
import enum
import logging
import math
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import httpx

from ..config import DEFAULT_BASE_URLS, Config, default_config, load_config
from ..errors import Secret
from ._logs import learn_secrets

#: Seconds the embedded default waits for a local Ollama to answer before leaving it out.
OLLAMA_PROBE_TIMEOUT = 0.5
#: Where ``serve --gateway`` listens by default, so where clients look by default.
DEFAULT_GATEWAY_URL = "ws://127.0.0.1:8765/"

log = logging.getLogger("duckagents.cli")


class ExitCode(enum.IntEnum):
    """The exit status of ``duckagents``; documented in ``--help`` and the README."""

    OK = 0
    #: The configuration is invalid, or the command could not do its job (e.g. a failed pull).
    ERROR = 1
    #: The command line is wrong: an unknown command or flag, a bad flag value.
    USAGE = 2
    #: The request reached the router and ended with a ``provider_error`` (its kind is printed).
    REQUEST_FAILED = 3
    #: The server given by ``--url`` cannot be reached, refused the connection, or went away.
    UNREACHABLE = 4
    #: ``status --check``: at least one provider is down.
    UNHEALTHY = 5
    #: Interrupted (Ctrl-C); for ``serve``, a second Ctrl-C that cut its drain short (a first one drains:
    #: exit status 0).
    INTERRUPTED = 130
    #: ``serve``: a second SIGTERM cut its drain short (a first one drains: exit status 0).
    TERMINATED = 143


EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    invalid configuration, or the command failed (e.g. a pull)
  2    usage error: unknown command or flag, bad flag value
  3    the request failed (the error kind is printed)
  4    the server (--url) is unreachable, refused the connection, or went away
  5    status --check: a provider is down
  130  interrupted (Ctrl-C; serve: a second one during the drain)
  143  serve: a second SIGTERM during the drain (a first SIGTERM or Ctrl-C drains and exits 0)
"""


class CommandError(Exception):
    """A failure a command reports as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(CommandError):
    """The server given by ``--url`` cannot be reached, refused us, or went away."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.UNREACHABLE)


# --- the command table -----------------------------------------------------------------------------

#: What a command runs: ``await run(args, out)`` returns the exit status.
Runner = Callable[[argparse.Namespace, TextIO], Awaitable[int]]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps text laid out in lines (the exit-code table) as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit with :data:`ExitCode.USAGE`."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--config``, ``--log-level`` and ``--log-format``: accepted before and after the subcommand.

    The subcommands' copies default to SUPPRESS, so a value given before the subcommand is kept.
    """
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    config = parser.add_argument(
        "--config", "-c", metavar="FILE", **({"default": None} | unset),
        help="TOML config file (default: $DUCKAGENTS_CONFIG, else the embedded default)",
    )
    config.complete = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # type: ignore[attr-defined]
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), **({"default": "warning"} | unset),
        help="log threshold, to stderr (default: warning)",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), **({"default": "text"} | unset),
        help="log lines as text, or one JSON object per line (default: text)",
    )


class Commands:
    """The subcommand table. Each command group's module adds its commands with ``add_commands(commands)``
    (see ``duckagents/cli/__init__.py``); :meth:`group` makes a command with subcommands of its own."""

    def __init__(
        self, subparsers: Any, root: argparse.ArgumentParser, parent: argparse.ArgumentParser | None = None
    ) -> None:
        self._subparsers = subparsers
        self._groups: dict[str, Commands] = {}
        #: The parser of the whole command (``duckagents``).
        self.root = root
        #: The parser of the group these commands belong to (None at the top level).
        self.parent = parent

    def add(self, name: str, run: Runner, *, help: str, description: str | None = None) -> Parser:
        """A command: its parser (add its flags to it), running ``run``."""
        parser: Parser = self._subparsers.add_parser(
            name, help=help, description=description or help, epilog=EXIT_CODES_HELP,
            formatter_class=HelpFormatter,
        )
        add_common_options(parser, defaults=False)
        parser.set_defaults(run=run)
        return parser

    def group(self, name: str, *, help: str, default: Runner | None = None) -> Commands:
        """A command with subcommands (``duckagents config check``); ``default`` runs when none is given.

        Asking again for a group already made returns it, so another module can add subcommands to it
        (``models load`` next to ``models list``)."""
        if name in self._groups:
            return self._groups[name]
        parser: Parser = self._subparsers.add_parser(
            name, help=help, description=help, epilog=EXIT_CODES_HELP,
            formatter_class=HelpFormatter,
        )
        add_common_options(parser, defaults=False)
        subparsers = parser.add_subparsers(
            title="commands", dest=f"{name}_command", metavar="COMMAND", required=default is None,
            parser_class=Parser,
        )
        if default is not None:
            parser.set_defaults(run=default)
        group = self._groups[name] = Commands(subparsers, self.root, parser)
        return group


# --- checked flag values (argparse types: a bad value is a usage error naming the flag) ------------


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


#: The largest integer a count flag takes (no upstream accepts more tokens than this anyway).
MAX_COUNT = 100_000_000


def positive_int(text: str) -> int:
    """An integer from 1 to :data:`MAX_COUNT`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_COUNT}, got {text!r}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free port), got {text!r}")
    return value


def check_url(url: str, schemes: Sequence[str], what: str) -> str:
    """``url`` if its scheme is one of ``schemes`` and it names a host; else a :class:`CommandError`
    (usage) saying which scheme is expected."""
    parts = urllib.parse.urlsplit(url)
    expected = " or ".join(f"{s}://" for s in schemes)
    example = DEFAULT_GATEWAY_URL if "ws" in schemes else "http://127.0.0.1:8080/"
    if parts.scheme not in schemes or not parts.hostname:
        shown = url if len(url) <= 80 else url[:79] + "…"
        hint = ""
        if parts.scheme in ("http", "https") and "ws" in schemes:
            hint = " (that is an HTTP URL; the gateway speaks WebSocket)"
        raise CommandError(
            f"{what} takes a {expected} URL, e.g. {example}; got {shown!r}{hint}", ExitCode.USAGE
        )
    try:
        parts.port  # noqa: B018 - raises for an invalid port
    except ValueError:
        raise CommandError(
            f"invalid port in {what} URL {url!r}: a port is 0 to 65535", ExitCode.USAGE
        ) from None
    return url


def token_from(args: argparse.Namespace) -> Secret | None:
    """The bearer token for ``--url``, from the environment variable named by ``--token-env``."""
    name = getattr(args, "token_env", None)
    value = os.environ.get(name) if name else None
    return Secret(value) if value else None


def add_url_options(parser: argparse.ArgumentParser, *, help: str, default: str | None = None) -> None:
    """``--url`` (a running server) and ``--token-env`` (where its bearer token is)."""
    parser.add_argument("--url", default=default, help=help)
    parser.add_argument(
        "--token-env", default="DUCKAGENTS_TOKEN", metavar="VAR",
        help="environment variable holding the server's bearer token (default: DUCKAGENTS_TOKEN)",
    )


# --- the configuration a command runs on -----------------------------------------------------------


async def ollama_answers(base_url: str = DEFAULT_BASE_URLS["ollama"]) -> bool:
    """True when a local Ollama answers ``/api/version`` quickly."""
    try:
        async with httpx.AsyncClient(timeout=OLLAMA_PROBE_TIMEOUT) as client:
            response = await client.get(f"{base_url}/api/version")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file: ``--config``, else ``$DUCKAGENTS_CONFIG``, else None (the embedded default)."""
    path = getattr(args, "config", None) or os.environ.get("DUCKAGENTS_CONFIG")
    return Path(path) if path else None


async def resolve_config(args: argparse.Namespace) -> Config:
    """The config file given (``--config`` or ``$DUCKAGENTS_CONFIG``), else the embedded default."""
    path = config_path(args)
    if path is not None:
        log.info("configuration from %s", path)
        config = load_config(path)
    else:
        config = default_config(with_ollama=await ollama_answers())
        log.info("embedded default configuration: providers %s", ", ".join(p.name for p in config.providers))
    learn_secrets(config_secrets(config))
    return config


def config_secrets(config: Config, environ: dict[str, str] | None = None) -> list[Secret]:
    """The secret values a config points at (API keys, gateway tokens), for redaction."""
    env = os.environ if environ is None else environ
    names = [p.api_key_env for p in config.providers] + [t.env for t in config.gateway.tokens]
    return [Secret(env[n]) for n in names if n and env.get(n)]


# --- output ----------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Columns padded to their widest cell, the header underlined."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def fmt_opt(value: float | None, spec: str = ".0f") -> str:
    """``value`` formatted, or ``-`` for None."""
    return "-" if value is None else format(value, spec)


def note(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout is for the command's output)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
