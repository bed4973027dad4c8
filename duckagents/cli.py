"""The ``duckagents`` command: serve, ask, status, providers, pull, watch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio
import trio.lowlevel

from .config import DEFAULT_BASE_URLS, Config, default_config, load_config
from .errors import ConfigError, DuckAgentsError, ProviderError
from .signals import ProgressEvent

OLLAMA_PROBE_TIMEOUT = 0.5


async def _ollama_answers(base_url: str = DEFAULT_BASE_URLS["ollama"]) -> bool:
    """True when a local Ollama answers ``/api/version`` quickly."""
    try:
        async with httpx.AsyncClient(timeout=OLLAMA_PROBE_TIMEOUT) as client:
            response = await client.get(f"{base_url}/api/version")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def resolve_config(path: str | None) -> Config:
    """The config file given (or ``$DUCKAGENTS_CONFIG``), else the embedded default."""
    path = path or os.environ.get("DUCKAGENTS_CONFIG")
    if path:
        return load_config(Path(path))
    return default_config(with_ollama=await _ollama_answers())


def _table(rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _fmt_cost(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.6f}"


def _fmt_opt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


async def cmd_ask(args: argparse.Namespace, out: TextIO) -> int:
    """One request through the router (in-process, or a running gateway's); the answer streams to ``out``."""
    options: dict[str, Any] = {}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    url = args.url or os.environ.get("DUCKAGENTS_URL")
    if url:
        response = await _ask_gateway(args, url, options, out)
    else:
        response = await _ask_local(args, options, out)
    out.flush()
    if args.verbose:
        sys.stderr.write(
            f"[{response.provider}/{response.model}] {response.usage.prompt_tokens}+"
            f"{response.usage.completion_tokens} tokens, {_fmt_cost(response.usage.cost)}, "
            f"{response.latency * 1000:.1f} ms, "
            f"finish={response.finish_reason.value}\n"
        )
    return 0


async def _ask_gateway(args: argparse.Namespace, url: str, options: dict[str, Any], out: TextIO) -> Any:
    """Submit through a running ``duckagents serve --gateway`` (so ``watch`` clients see it)."""
    from .gateway import ask

    if args.provider:
        raise ConfigError("--provider cannot be used with --url: the server's router chooses")
    token = os.environ.get(args.token_env) if args.token_env else None
    response = await ask(
        url,
        args.prompt,
        token=token,
        model=args.model,
        request_timeout=args.timeout,
        options={**options, "stream": not args.no_stream},
        out=out,
    )
    if args.no_stream:
        out.write(response.content)
    out.write("\n")
    return response


async def _ask_local(args: argparse.Namespace, options: dict[str, Any], out: TextIO) -> Any:
    """Run the tree in this process for one request."""
    from .app import open_router

    config = await resolve_config(args.config)
    async with open_router(config) as router:
        if args.no_stream:
            response = await router.complete(
                args.prompt, model=args.model, provider=args.provider, timeout=args.timeout, **options
            )
            out.write(response.content + "\n")
        else:
            async with router.stream(
                args.prompt, model=args.model, provider=args.provider, timeout=args.timeout, **options
            ) as stream:
                async for chunk in stream:
                    out.write(chunk.delta)
                    out.flush()
                final = stream.response
            out.write("\n")
            if final is None:  # the stream raises on failure, so this is a broken invariant
                raise RuntimeError("stream ended without a final response")
            response = final
    return response


def _progress_line(event: ProgressEvent) -> str:
    if event.total:
        share = 100 * (event.completed or 0) / event.total
        return f"{event.provider}: {event.status} {share:5.1f}% ({event.completed}/{event.total} bytes)"
    return f"{event.provider}: {event.status}"


async def cmd_pull(args: argparse.Namespace, out: TextIO) -> int:
    """Download a model into a local (Ollama) provider, printing its progress."""
    from .agents import LocalAgent
    from .app import open_tree
    from .bus import Overflow, SignalFilter

    config = await resolve_config(args.config)
    async with open_tree(config) as tree:
        local = {name: a for name, a in tree.agents.items() if isinstance(a, LocalAgent)}
        if not local:
            raise ConfigError("no local (ollama) provider is configured or answering on 127.0.0.1:11434")
        name = args.provider or next(iter(local))
        if name not in local:
            raise ConfigError(f"{name!r} is not a local provider; local providers: {', '.join(local)}")
        progress = SignalFilter(types=frozenset({ProgressEvent.TYPE}), providers=frozenset({name}))
        with tree.bus.subscribe(progress, buffer=256, overflow=Overflow.DROP_OLDEST) as events:
            async with trio.open_nursery() as nursery:

                async def show() -> None:
                    async for signal in events:
                        assert isinstance(signal.data, ProgressEvent)
                        out.write(_progress_line(signal.data) + "\n")
                        out.flush()

                nursery.start_soon(show)
                await local[name].pull(args.model)
                await trio.lowlevel.checkpoint()  # let the last progress line through
                nursery.cancel_scope.cancel()
    out.write(f"pulled {args.model} into {name}\n")
    return 0


async def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Start the tree, probe every provider once, print a table."""
    from .app import open_router

    config = await resolve_config(args.config)
    async with open_router(config) as router:
        statuses = await router.status()
        budgets = await router.spend()
    rows: list[list[Any]] = [
        ["provider", "health", "breaker", "reachable", "req headroom", "tok headroom", "requests", "p50 ms",
         "spent $"]
    ]
    for s in statuses:
        rows.append(
            [
                s.provider,
                f"{s.health:.2f}",
                s.breaker_state,
                "yes" if s.reachable else "no",
                _fmt_opt(s.headroom.requests),
                _fmt_opt(s.headroom.tokens),
                s.metrics.total_requests,
                f"{s.metrics.latency.p50 * 1000:.1f}",
                f"{s.metrics.cost:.4f}",
            ]
        )
    _table(rows, out)
    spend = [
        [s.provider, model, f"{cost:.4f}"]
        for s in statuses
        for model, cost in s.metrics.cost_by_model.items()
    ]
    if spend:
        out.write("\n")
        _table([["provider", "model", "spent $"], *spend], out)
    if budgets:
        out.write("\n")
        _table(
            [["budget", "period", "limit $", "spent $", "held $"]]
            + [[b.account, b.window, f"{b.budget.usd:g}", f"{b.spent:.4f}", f"{b.held:.4f}"]
               for b in budgets],
            out,
        )
    return 0


async def cmd_providers(args: argparse.Namespace, out: TextIO) -> int:
    """Print the features of every provider/model."""
    from .app import open_router

    config = await resolve_config(args.config)
    async with open_router(config) as router:
        replies = await router.features()
    rows: list[list[Any]] = [["provider", "model", "stream", "tools", "vision", "json", "context", "max out"]]
    for r in replies:
        f = r.features
        yes = {True: "yes", False: "no"}
        rows.append(
            [
                r.provider,
                r.model,
                yes[f.streaming],
                yes[f.tools],
                yes[f.vision],
                yes[f.json_mode],
                f.context_window,
                f.max_output_tokens,
            ]
        )
    _table(rows, out)
    return 0


async def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Run the tree (and the gateway, the HTTP front door) until interrupted, printing status changes."""
    from contextlib import AsyncExitStack

    import attrs

    from .app import open_router

    config = await resolve_config(args.config)
    if args.gateway or args.port is not None or args.host is not None:
        gateway = attrs.evolve(
            config.gateway,
            enabled=True,
            host=args.host or config.gateway.host,
            port=config.gateway.port if args.port is None else args.port,
        )
        config = attrs.evolve(config, gateway=gateway)
    if args.http is not None:
        host, port = args.http
        http = attrs.evolve(config.http, enabled=True, host=host or config.http.host, port=port)
        config = attrs.evolve(config, http=http)
    async with open_router(config) as router, AsyncExitStack() as doors:
        names = ", ".join(p.name for p in config.providers)
        out.write(f"duckagents serving providers: {names}\n")
        front_door = None
        # The front door first: its metrics count from the bus before any client can send a request.
        if config.http.enabled:
            open_http = _http_door()
            front_door = await doors.enter_async_context(open_http(router, config))
            out.write(f"http listening on {front_door.url}\n")
        if config.gateway.enabled:
            from .gateway import open_gateway

            gw = await doors.enter_async_context(
                open_gateway(router, config.gateway, limits=config.validation)
            )
            if front_door is not None:
                front_door.metrics.gateway_stats = gw.stats
            out.write(f"gateway listening on {gw.url}\n")
        out.flush()
        interrupted = await _until_interrupted(router, out)
    return 130 if interrupted else 0


async def _until_interrupted(router: Any, out: TextIO) -> bool:
    """Print events until Ctrl-C (True), or until the bus closes (False).

    SIGINT is taken as a signal here rather than as a KeyboardInterrupt: that exception lands in
    whichever task runs when the signal comes, and a server framework's request task may swallow it
    (hypercorn logs and drops it), which would leave the process running. Leaving normally lets the
    doors drain and the tree answer every request still open; a second Ctrl-C, after this returned,
    interrupts at once.
    """
    import signal

    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await _print_events(router, out)
            nursery.cancel_scope.cancel()
    return interrupted


def _http_door() -> Any:
    """``duckagents.http.open_http``, or a clear error when the ``server`` extra is not installed."""
    try:
        from .http import open_http
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP front door needs the server extra (missing {exc.name}): "
            "pip install 'duckagents[server]'"
        ) from None
    return open_http


def http_address(text: str) -> tuple[str | None, int]:
    """``--http`` value ``[HOST:]PORT`` (IPv6 hosts in brackets) as (host or None, port)."""
    usage = "expected [HOST:]PORT, e.g. 8080, 0.0.0.0:8080 or [::1]:8080"
    text = text.strip()
    host: str | None = None
    port_text = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise argparse.ArgumentTypeError(f"invalid address {text!r}: {usage}")
        host, port_text = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: IPv6 hosts go in brackets ({usage})")
    if host is not None and (not host or any(c.isspace() for c in host)):
        raise argparse.ArgumentTypeError(f"invalid host in {text!r}: {usage}")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port_text!r}: a port is 0 to 65535 ({usage})")
    return host, int(port_text)


async def _print_events(router: Any, out: TextIO) -> None:
    from .bus import Overflow, SignalFilter
    from .gateway import format_signal

    interesting = frozenset({"provider_status", "provider_error", "supervisor_event", "progress"})
    signal_filter = SignalFilter(types=interesting)
    with router.bus.subscribe(signal_filter, buffer=256, overflow=Overflow.DROP_OLDEST) as sub:
        async for signal in sub:
            out.write(format_signal(signal) + "\n")
            out.flush()


async def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    """Connect to a running gateway and print the live signal stream."""
    from .gateway import watch

    token = os.environ.get(args.token_env) if args.token_env else None
    await watch(
        args.url,
        token=token,
        types=tuple(args.type or ()),
        providers=tuple(args.provider or ()),
        request_ids=tuple(args.request_id or ()),
        json_lines=args.json,
        out=out,
        limit=args.limit,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``duckagents`` command."""
    parser = argparse.ArgumentParser(prog="duckagents", description=__doc__)
    parser.add_argument("--config", "-c", help="TOML config file (default: $DUCKAGENTS_CONFIG or built-in)")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="send one prompt through the router and stream the answer")
    ask.add_argument("prompt")
    ask.add_argument("--model")
    ask.add_argument("--provider", help="pin the request to one provider agent")
    ask.add_argument("--timeout", type=float, default=None, help="seconds")
    ask.add_argument("--max-tokens", type=int, default=None)
    ask.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    ask.add_argument("--verbose", "-v", action="store_true", help="print provider, usage and latency")
    ask.add_argument(
        "--url", help="submit through a running gateway (default: $DUCKAGENTS_URL, else run in-process)"
    )
    ask.add_argument("--token-env", default="DUCKAGENTS_TOKEN", help="env var holding the gateway token")
    ask.set_defaults(func=cmd_ask)

    pull = sub.add_parser("pull", help="download a model into a local (Ollama) provider, with progress")
    pull.add_argument("model")
    pull.add_argument("--provider", help="the local provider agent (default: the first one)")
    pull.set_defaults(func=cmd_pull)

    status = sub.add_parser("status", help="providers, breaker states, limits and metrics")
    status.set_defaults(func=cmd_status)

    providers = sub.add_parser("providers", help="features per provider and model")
    providers.set_defaults(func=cmd_providers)

    serve = sub.add_parser("serve", help="run the supervision tree (and the WebSocket gateway)")
    serve.add_argument("--gateway", action="store_true", help="start the WebSocket gateway")
    serve.add_argument("--host", default=None, help="gateway bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="gateway port (default 8765)")
    serve.add_argument(
        "--http",
        type=http_address,
        default=None,
        metavar="[HOST:]PORT",
        help="start the HTTP front door (OpenAI-compatible API, /healthz, /readyz, /metrics); "
        "host default 127.0.0.1",
    )
    serve.set_defaults(func=cmd_serve)

    watch = sub.add_parser("watch", help="print the live signal stream of a running gateway")
    watch.add_argument("--url", default="ws://127.0.0.1:8765/")
    watch.add_argument("--token-env", default="DUCKAGENTS_TOKEN", help="env var holding the bearer token")
    watch.add_argument("--type", action="append", help="signal type to show (repeatable)")
    watch.add_argument("--provider", action="append", help="provider to show (repeatable)")
    watch.add_argument("--request-id", action="append", help="request id to show (repeatable)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line (for jq)")
    watch.add_argument("--limit", type=int, default=None, help="exit after this many signals")
    watch.set_defaults(func=cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``duckagents`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    stream = out or sys.stdout
    try:
        return int(trio.run(args.func, args, stream))
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C raised inside a nursery (e.g. the gateway's) arrives wrapped in a group.
        interrupt, rest = group.split(KeyboardInterrupt)
        if interrupt is not None and rest is None:
            return 130
        raise
    except ProviderError as exc:
        sys.stderr.write(f"duckagents: request failed: {exc}\n")
        return 2
    except DuckAgentsError as exc:
        sys.stderr.write(f"duckagents: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
