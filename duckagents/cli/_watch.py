"""``duckagents watch``: the live signal stream of a running gateway.

The human view shows each request once: its intake ``provider_request`` and its one final result, at the
caller level. Attempt-level signals (subject ``<request id>#<k>``: each attempt and its terminal) are left
out, or shown indented under their request with ``--attempts``; streamed chunks only when asked for with
``--type provider_chunk``. ``--json`` prints every signal the filter matches, one CloudEvent per line.
When the gateway goes away, ``watch`` says so and exits with :data:`ExitCode.UNREACHABLE`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

import trio_websocket

from ..errors import GatewayError, GatewayUnreachable
from ..gateway import PROTOCOL_VERSION, connect, format_event
from ..signals import PAYLOAD_TYPES, ProviderChunk
from ._base import (
    DEFAULT_GATEWAY_URL,
    CommandError,
    Commands,
    ExitCode,
    Unreachable,
    add_url_options,
    check_url,
    note,
    positive_int,
    token_from,
)

INDENT = "    "


def add_commands(commands: Commands) -> None:
    """``watch``."""
    watch = commands.add(
        "watch", run_watch, help="print the live signal stream of a running gateway",
        description="Print the live signals of a running gateway (duckagents serve --gateway): each request "
        "once (its intake and its final result), with --attempts its attempts indented under it; errors, "
        "status changes, restarts and progress as they happen.",
    )
    add_url_options(watch, default=DEFAULT_GATEWAY_URL, help=f"the gateway, ws://HOST:PORT/ (default "
                    f"{DEFAULT_GATEWAY_URL})")
    watch.add_argument("--type", action="append", choices=sorted(PAYLOAD_TYPES), metavar="TYPE",
                       help=f"signal type to show (repeatable); one of: {', '.join(sorted(PAYLOAD_TYPES))}")
    watch.add_argument("--provider", action="append", help="provider to show (repeatable)")
    watch.add_argument("--request-id", action="append", help="request id to show (repeatable)")
    watch.add_argument("--attempts", action="store_true",
                       help="also show each attempt of a request (indented under it)")
    watch.add_argument("--json", action="store_true",
                       help="every matching signal as one CloudEvent JSON object per line (for jq)")
    watch.add_argument("--limit", type=positive_int, default=None, metavar="N",
                       help="exit after this many lines")


def is_attempt_level(event: dict[str, Any]) -> bool:
    """True for an attempt's own signals (subject ``<request id>#<k>``)."""
    return "#" in str(event.get("subject") or "")


def render(event: dict[str, Any], *, attempts: bool, chunks: bool) -> str | None:
    """The human line for a CloudEvent, or None when the view leaves it out."""
    if event.get("type") == ProviderChunk.TYPE and not chunks:
        return None
    if is_attempt_level(event):
        return INDENT + format_event(event) if attempts else None
    return format_event(event)


async def run_watch(args: argparse.Namespace, out: TextIO) -> int:
    """Print signals until ``--limit`` lines, Ctrl-C, or the gateway going away (an error)."""
    url = check_url(args.url, ("ws", "wss"), "watch --url")
    wanted = {"types": args.type or [], "providers": args.provider or []}
    subscribe = {"type": "subscribe", "id": "watch", "v": PROTOCOL_VERSION,
                 "filter": {k: v for k, v in wanted.items() if v}}
    # A request id filter must match the attempts' subjects too, so it is applied here, not by the server.
    request_ids = set(args.request_id or ())
    chunks = ProviderChunk.TYPE in (args.type or [])
    printed = 0
    try:
        async with connect(url, token_from(args)) as ws:
            await ws.send_message(json.dumps(subscribe))
            while args.limit is None or printed < args.limit:
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "signal":
                    event = frame["event"]
                    if request_ids and str(event.get("subject") or "").partition("#")[0] not in request_ids:
                        continue
                    line = (json.dumps(event, separators=(",", ":")) if args.json
                            else render(event, attempts=args.attempts, chunks=chunks))
                    if line is None:
                        continue
                    out.write(line + "\n")
                    out.flush()
                    printed += 1
                elif kind == "dropped":
                    note(f"!! {frame.get('count')} signal(s) dropped: this client reads too slowly")
                elif kind == "error":
                    raise CommandError(
                        f"the gateway refused the subscription: {frame.get('code')}: {frame.get('message')}"
                    )
                elif kind == "ack" and frame.get("id") == "watch":
                    note(f"duckagents: watching {url} (Ctrl-C to stop)")
                elif kind == "hello" and frame.get("v") != PROTOCOL_VERSION:
                    raise CommandError(
                        f"the gateway speaks protocol v{frame.get('v')}, this client v{PROTOCOL_VERSION}"
                    )
    except GatewayUnreachable as exc:
        raise Unreachable(str(exc)) from None
    except GatewayError as exc:
        raise CommandError(str(exc)) from None
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
        said = "" if reason is None else f" ({reason.code} {reason.reason or reason.name})"
        raise Unreachable(f"the gateway at {url} went away{said}") from None
    return ExitCode.OK
