"""``duckagents status`` and ``duckagents providers``: the agents of an in-process tree, or of a running
server (``--url``)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from ..codec import converter
from ..signals import FeatureReply, ProviderStatus
from ._base import (
    Commands,
    ExitCode,
    add_url_options,
    fmt_opt,
    positive_seconds,
    resolve_config,
    table,
    token_from,
)
from ._remote import Server, finite

#: Default seconds ``--url`` waits for a gateway's provider_status signals (the default health_interval
#: is 30 s, and the gateway may have no status message to ask instead).
DEFAULT_WAIT = 35.0
#: Breaker states in which an agent takes no requests.
_NOT_SERVING = frozenset({"open", "forced_open"})


def add_commands(commands: Commands) -> None:
    """``status`` and ``providers``."""
    status = commands.add(
        "status", run_status, help="providers, health, breaker states, limits and metrics",
        description="Each provider agent's health, breaker state, rate-limit headroom and metrics: of a "
        "running server with --url, else of a tree started in this process for the purpose.",
    )
    add_remote_options(status)
    status.add_argument("--json", action="store_true",
                        help="one JSON object per agent (a JSON array), with provider, state, reason, "
                        "breaker_state, health, headroom, metrics, reachable, detail (and instance: the "
                        "replica, for a fleet's server)")
    status.add_argument("--check", action="store_true",
                        help=f"exit {int(ExitCode.UNHEALTHY)} when a provider is down (for scripts, probes)")

    providers = commands.add(
        "providers", run_providers, help="features per provider and model",
        description="What each provider's models support (streaming, tools, vision, JSON mode, context "
        "window), of a running server with --url, else of a tree started in this process.",
    )
    add_remote_options(providers)
    providers.add_argument("--json", action="store_true", help="one JSON object per provider and model")


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--token-env`` and ``--wait``: ask a running server instead of starting a tree."""
    add_url_options(parser, help="a running server: ws://HOST:PORT/ (gateway) or http://HOST:PORT/ "
                    "(HTTP front door); default: start a tree in this process")
    parser.add_argument("--wait", type=positive_seconds, default=DEFAULT_WAIT, metavar="SECONDS",
                        help="with a gateway that has no status message: how long to wait for its agents' "
                        f"provider_status signals (default {DEFAULT_WAIT:g})")


def agent_name(status: ProviderStatus) -> str:
    """The provider's name, with ``@replica`` when a fleet's server listed it (``detail["instance"]``)."""
    instance = status.detail.get("instance")
    return f"{status.provider}@{instance}" if instance else status.provider


def health_state(status: ProviderStatus) -> tuple[str, str]:
    """``up``, ``degraded`` or ``down``, and why (empty when up)."""
    disabled = status.detail.get("disabled")
    if disabled:
        return "down", disabled
    if status.detail.get("down"):
        return "down", f"agent {status.detail['down']}"
    if status.breaker_state in _NOT_SERVING:
        return "down", f"circuit breaker {status.breaker_state}"
    if not status.reachable:
        why = status.detail.get("error") or status.detail.get("kind") or "health probe failed"
        return "down", f"unreachable: {why}"
    if status.draining:
        return "degraded", "drained by an operator: no new requests"
    if status.breaker_state != "closed":
        return "degraded", f"circuit breaker {status.breaker_state}"
    return "up", ""


async def run_status(args: argparse.Namespace, out: TextIO) -> int:
    """Print every agent's status; with ``--check``, exit non-zero when one is down."""
    budgets: list[Any] = []
    if args.url:
        statuses = await Server(args.url, token_from(args), wait=args.wait).status()
    else:
        from ..app import open_router

        config = await resolve_config(args)
        async with open_router(config) as router:
            statuses = await router.status()
            budgets = list(await router.spend())
    if args.json:
        objects = []
        for s in statuses:
            state, reason = health_state(s)
            extra = {"instance": s.detail["instance"]} if "instance" in s.detail else {}
            objects.append({**converter.unstructure(s), **extra, "state": state, "reason": reason})
        out.write(json.dumps(finite(objects), indent=2) + "\n")
    else:
        rows: list[list[Any]] = [
            ["provider", "state", "health", "breaker", "req headroom", "tok headroom", "requests", "p50 ms",
             "spent $", "reason"]
        ]
        for s in statuses:
            state, reason = health_state(s)
            rows.append(
                [
                    agent_name(s), state, f"{s.health:.2f}", s.breaker_state, fmt_opt(s.headroom.requests),
                    fmt_opt(s.headroom.tokens), s.metrics.total_requests,
                    f"{s.metrics.latency.p50 * 1000:.1f}", f"{s.metrics.cost:.4f}", reason[:80],
                ]
            )
        table(rows, out)
        spend = [
            [agent_name(s), model, f"{cost:.4f}"]
            for s in statuses
            for model, cost in s.metrics.cost_by_model.items()
        ]
        if spend:
            out.write("\n")
            table([["provider", "model", "spent $"], *spend], out)
        if budgets:
            out.write("\n")
            table(
                [["budget", "period", "limit $", "spent $", "held $"]]
                + [
                    [b.account, b.window, f"{b.budget.usd:g}", f"{b.spent:.4f}", f"{b.held:.4f}"]
                    for b in budgets
                ],
                out,
            )
    if args.check and any(health_state(s)[0] == "down" for s in statuses):
        return ExitCode.UNHEALTHY
    return ExitCode.OK


async def run_providers(args: argparse.Namespace, out: TextIO) -> int:
    """Print the features of every provider's default model."""
    if args.url:
        rows = await Server(args.url, token_from(args), wait=args.wait).models()
        replies: list[FeatureReply | None] = [r.features for r in rows]
        names = [(r.provider, r.model) for r in rows]
    else:
        from ..app import open_router

        config = await resolve_config(args)
        async with open_router(config) as router:
            found = await router.features()
        replies = list(found)
        names = [(r.provider, r.model) for r in found]
    if args.json:
        objects = [
            {"provider": p, "model": m, "features": None if r is None else converter.unstructure(r.features)}
            for (p, m), r in zip(names, replies, strict=True)
        ]
        out.write(json.dumps(finite(objects), indent=2) + "\n")
        return ExitCode.OK
    header = ["provider", "model", "stream", "tools", "vision", "json", "context", "max out"]
    rows_out: list[list[Any]] = [header]
    yes = {True: "yes", False: "no"}
    for (provider, model), reply in zip(names, replies, strict=True):
        if reply is None:
            rows_out.append([provider, model, *["?"] * 6])
            continue
        f = reply.features
        rows_out.append(
            [provider, model, yes[f.streaming], yes[f.tools], yes[f.vision], yes[f.json_mode],
             f.context_window, f.max_output_tokens]
        )
    table(rows_out, out)
    return ExitCode.OK
