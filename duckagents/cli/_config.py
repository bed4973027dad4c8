"""``duckagents config check`` (validate, print the resolved config, secrets masked) and
``duckagents config init`` (write a commented starter file)."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..codec import converter
from ..config import Config
from ._base import CommandError, Commands, ExitCode, config_path, note, resolve_config

DEFAULT_PATH = "duckagents.toml"


def add_commands(commands: Commands) -> None:
    """``config check`` and ``config init``."""
    config = commands.group("config", help="check a config file, or write a starter one")
    check = config.add(
        "check", run_check,
        help="validate the config and print it resolved (defaults filled in, secrets masked)",
        description="Validate the config (--config, else $DUCKAGENTS_CONFIG, else the embedded default) and "
        "print it with every default filled in, as TOML (or JSON with --json). API keys and tokens are never "
        "printed: each variable they come from is shown as set or not set.",
    )
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    init = config.add(
        "init", run_init, help=f"write a commented starter config file (default {DEFAULT_PATH})",
        description="Write a commented starter config: the mock provider, ready to run with no API key, and "
        "OpenAI, Anthropic and Ollama providers to uncomment. Refuses to overwrite a file without --force.",
    )
    init.add_argument(
        "path", nargs="?", default=DEFAULT_PATH, help=f"where to write it (default {DEFAULT_PATH})"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")


# --- check -------------------------------------------------------------------------------------------


async def run_check(args: argparse.Namespace, out: TextIO) -> int:
    """Validate and print the resolved config; a summary (and what is disabled) goes to stderr."""
    config = await resolve_config(args)
    data = resolved(config)
    secrets = secret_sources(config)
    if args.json:
        out.write(json.dumps({**data, "secrets": secrets}, indent=2) + "\n")
    else:
        out.write(to_toml(data))
        if secrets:
            out.write("\n# Secrets come from the environment and are never printed:\n")
            for item in secrets:
                out.write(f"#   {item['variable']} ({item['for']}): {'set' if item['set'] else 'NOT SET'}\n")
    path = config_path(args)
    disabled = [f"{s['for']} ({s['variable']} is not set)" for s in secrets if not s["set"]]
    where = str(path) if path else "the embedded default"
    summary = f"duckagents: {where} is valid: {len(config.providers)} provider(s)"
    note(summary + (f"; disabled: {', '.join(disabled)}" if disabled else ""))
    return ExitCode.OK


def resolved(config: Config) -> dict[str, Any]:
    """The config as plain data, every default filled in (None values left out: TOML has no null)."""
    data: dict[str, Any] = _clean(converter.unstructure(config))
    for provider in data.get("providers", []):
        breaker = provider.get("breaker", {})
        if "tripping_kinds" in breaker:  # a set: printed in a stable order
            breaker["tripping_kinds"] = sorted(breaker["tripping_kinds"])
    return data


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_clean(v) for v in value]
        return sorted(items) if isinstance(value, set | frozenset) else items
    return value


def secret_sources(config: Config, environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Each environment variable the config takes a secret from, whom it is for, and whether it is set."""
    env = os.environ if environ is None else environ
    found = [
        {"variable": p.api_key_env, "for": f"provider {p.name}", "set": bool(env.get(p.api_key_env))}
        for p in config.providers if p.api_key_env
    ]
    found += [
        {"variable": t.env, "for": f"gateway token ({', '.join(t.scopes)})", "set": bool(env.get(t.env))}
        for t in config.gateway.tokens
    ]
    return found


def to_toml(data: Mapping[str, Any]) -> str:
    """``data`` as a TOML document: tables for the top-level tables, arrays of tables for lists of tables,
    inline tables below those."""
    lines: list[str] = []
    _table(data, "", lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: Mapping[str, Any], path: str, lines: list[str]) -> None:
    later = []
    for key, value in data.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            later.append((key, value))  # after the plain keys: a header ends the table
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in later:
        dotted = f"{path}.{_key(key)}" if path else _key(key)
        if isinstance(value, Mapping):
            lines += ["", f"[{dotted}]"]
            _table(value, dotted, lines)
            continue
        for item in value:
            lines += ["", f"[[{dotted}]]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in item.items()]  # nested tables inline


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf (refused by the config)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))


# --- init --------------------------------------------------------------------------------------------


async def run_init(args: argparse.Namespace, out: TextIO) -> int:
    """Write :data:`STARTER` to ``args.path`` (never over an existing file without ``--force``)."""
    path = write_starter(Path(args.path), force=args.force)
    out.write(
        f"wrote {path}: try `duckagents --config {path} config check`, "
        f"then `duckagents --config {path} ask hello`\n"
    )
    return ExitCode.OK


def write_starter(path: Path, *, force: bool) -> Path:
    """Write :data:`STARTER` to ``path``; a :class:`CommandError` when it exists (unless ``force``)."""
    if path.is_dir():
        raise CommandError(f"{path} is a directory; give the file to write, e.g. {path / DEFAULT_PATH}")
    if path.exists() and not force:
        raise CommandError(f"{path} exists; not overwriting it (use --force to replace it)")
    try:
        path.write_text(STARTER, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


#: What ``config init`` writes: runs as it is (the mock provider, no API key); every key is in
#: docs/configuration.md.
STARTER = """\
# duckagents configuration. Every key, its type, default and meaning: docs/configuration.md
# Check it with:  duckagents --config duckagents.toml config check
# API keys never go in this file: a provider names the environment variable that holds its key
# (api_key_env). A provider whose variable is not set is disabled (status shows why); the others serve.

health_interval = 30            # seconds between health probes / provider_status signals

[router]
strategy = "priority"           # priority | round_robin | least_busy | lowest_latency | cheapest
max_attempts = 3                # attempts per request, each on another agent
backoff_initial = 0.05          # seconds before a retry, doubled per attempt...
backoff_max = 2.0               # ...up to this
request_timeout = 120           # default deadline of a request, in seconds

# The mock provider: deterministic answers, no network, no key. Keep it as a last resort, or remove it.
[[providers]]
name = "mock"
kind = "mock"
default_model = "mock-1"
priority = 10                   # lower goes first with the priority strategy
# options = { latency = 0.2, failures = [{ kind = "upstream_5xx", count = 2 }] }   # script faults

# OpenAI (or any OpenAI-compatible server: set base_url). Uncomment, then export OPENAI_API_KEY.
# [[providers]]
# name = "gpt"
# kind = "openai"
# api_key_env = "OPENAI_API_KEY"
# default_model = "gpt-4o-mini"
# models = ["gpt-4o-mini", "gpt-4o"]          # the models this provider serves
# priority = 0
# cost_per_1k_input = 0.00015                 # USD, for the cheapest strategy
# cost_per_1k_output = 0.0006
# limits = { requests_per_minute = 500, tokens_per_minute = 200000 }
# breaker = { failure_threshold = 5, open_timeout = 60 }

# Anthropic. Uncomment, then export ANTHROPIC_API_KEY.
# [[providers]]
# name = "claude"
# kind = "anthropic"
# api_key_env = "ANTHROPIC_API_KEY"
# default_model = "claude-sonnet-4-6"
# priority = 1

# A local Ollama (http://127.0.0.1:11434 by default): no key.
# [[providers]]
# name = "local"
# kind = "ollama"
# default_model = "llama3.2"
# options = { auto_pull = true }            # pull a missing model, with progress signals
# priority = 2

[gateway]
enabled = false                 # or: duckagents serve --gateway
host = "127.0.0.1"
port = 8765
# [[gateway.tokens]]            # with tokens, every client must present one
# env = "DUCKAGENTS_TOKEN"
# scopes = ["subscribe", "request"]   # add "admin" for breaker, drain, models and reload
"""
