"""``duckagents serve``: run the tree (and the WebSocket gateway, the HTTP front door) until SIGTERM or
SIGINT, then stop gracefully.

It prints each provider's health as soon as it is known, then only when it changes (state, breaker,
reason), plus errors, supervisor events, progress and operator controls (who did what) as they happen.
SIGHUP makes it re-read its config file (as ``duckagents reload`` does). The gateway serves the dashboard
page on its own address (and the front door at ``/``, when both run): docs/dashboard.md.

The graceful stop (docs/deploy.md): every door stops taking work, the tree drains (``Tree.drain``: the
requests in flight may finish within ``drain_timeout``, the rest end with ``shutdown``), the doors hand
out the last answers and the gateway's clients get the close frame 1001 (``Gateway.aclose``), then the
tree stops; exit status 0. A second signal during the drain stops at once (exit status 128 + its number).
The drain itself lives in the tree and the doors; this module only orders their calls.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import signal
from contextlib import AsyncExitStack
from typing import Any, TextIO

import attrs
import trio

from ..bus import Overflow, SignalFilter
from ..config import Config
from ..errors import ConfigError, ControlError
from ..signals import ProviderStatus
from ._base import CommandError, Commands, ExitCode, config_path, note, port_number, resolve_config
from ._status import health_state

#: Signals ``serve`` prints besides provider health changes.
_EVENTS = frozenset(
    {"provider_error", "supervisor_event", "progress", "control_reply", "fleet_degraded", "fleet_rejoined"}
)


def add_commands(commands: Commands) -> None:
    """``serve``."""
    serve = commands.add(
        "serve", run_serve, help="run the supervision tree (and the WebSocket gateway)",
        description="Run the supervision tree until SIGTERM or Ctrl-C, which drain: the requests in flight "
        "may finish within drain_timeout (a second signal stops at once). Prints each provider's health "
        "when it is first known and whenever it changes, and errors, restarts and progress as they happen.",
    )
    serve.add_argument("--gateway", action="store_true", help="start the WebSocket gateway")
    serve.add_argument("--host", default=None, help="gateway bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=None,
                       help="gateway port, 0 to 65535; 0 picks a free one (default 8765)")
    serve.add_argument(
        "--http", type=http_address, default=None, metavar="[HOST:]PORT",
        help="start the HTTP front door (OpenAI-compatible API, /healthz, /readyz, /metrics); "
        "host default 127.0.0.1",
    )


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


def with_gateway(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the gateway enabled (and moved) when ``--gateway``/``--host``/``--port`` say so."""
    if not (args.gateway or args.port is not None or args.host is not None):
        return config
    if args.host is not None and not args.host.strip():
        raise CommandError("--host must name an address, e.g. 127.0.0.1", ExitCode.USAGE)
    gateway = attrs.evolve(
        config.gateway,
        enabled=True,
        host=args.host or config.gateway.host,
        port=config.gateway.port if args.port is None else args.port,
    )
    return attrs.evolve(config, gateway=gateway)


def dashboard_pages_of(config: Config) -> Any:
    """The dashboard's pages for the gateway's address, unless ``[gateway] dashboard = false``."""
    if not config.gateway.dashboard:
        return None
    from ..live import dashboard_pages

    return dashboard_pages(auth=bool(config.gateway.tokens))


async def run_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Run the tree (and the gateway) until SIGTERM or SIGINT; then stop gracefully."""
    from ..app import open_tree

    file_config = await resolve_config(args)
    config = with_gateway(file_config, args)
    if args.http is not None:
        host, port = args.http
        http = attrs.evolve(config.http, enabled=True, host=host or config.http.host, port=port)
        config = attrs.evolve(config, http=http)
    # Signals are taken as messages for the whole run, never as a KeyboardInterrupt: that exception lands
    # in whichever task runs when the signal comes (a server framework's request task may swallow it), and
    # SIGTERM's default is to die on the spot, leaving clients without an answer or a close frame.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        # The tree runs on the file's config (what a reload compares with); the doors on the command line's.
        async with open_tree(file_config, source=config_path(args)) as tree:
            router, fleet = tree.router, tree.fleet
            names = ", ".join(p.name for p in config.providers)
            out.write(f"duckagents serving providers: {names}\n")
            if fleet is not None and config.fleet is not None:
                state = "degraded (Redis unreachable: local limits)" if fleet.degraded else "joined"
                out.write(f"fleet: replica {fleet.instance} of {config.fleet.masked_url}, {state}\n")
            out.flush()
            watched = SignalFilter(types=_EVENTS | {ProviderStatus.TYPE})
            # Subscribed before the first statuses are read, so no change falls between the two.
            with router.bus.subscribe(watched, buffer=256, overflow=Overflow.DROP_OLDEST) as signals:
                health = HealthLines(out)
                for status in await router.status():
                    health.show(status)
                async with AsyncExitStack() as doors:
                    front_door = gw = None
                    # The front door first: its metrics count from the bus before any client can send a
                    # request.
                    if config.http.enabled:
                        front_door = await doors.enter_async_context(
                            _http_door()(router, config, drain_timeout=config.drain_timeout, fleet=fleet)
                        )
                        out.write(f"http listening on {front_door.url}\n")
                    if config.gateway.enabled:
                        pages = dashboard_pages_of(config)
                        gw = await open_gateway_in(doors, router, config, pages, fleet)
                        if front_door is not None:
                            front_door.metrics.gateway_stats = gw.stats
                        out.write(f"gateway listening on {gw.url}\n")
                        if pages:
                            out.write(f"dashboard at {gw.http_url}\n")
                            if front_door is not None:  # the door serves it too, talking to this gateway
                                front_door.show_dashboard(gw.port, auth=bool(config.gateway.tokens))
                                out.write(f"dashboard at {front_door.url}/ (front door)\n")
                    out.flush()
                    return await _serve_until_stopped(
                        tree, received, signals, health, out, gateway=gw, http=front_door
                    )


#: Seconds each door gets, once the tree has drained, to hand out the last answers and close.
DOOR_GRACE = 5.0


async def _serve_until_stopped(
    tree: Any, received: Any, signals: Any, health: HealthLines, out: TextIO, *, gateway: Any, http: Any
) -> int:
    """Print events until the first SIGTERM / SIGINT, then stop gracefully; a second signal stops at once.

    Returns the exit status: 0 after a graceful stop (or when the bus closed), 128 + the signal's number
    when a second signal cut it short.
    """
    caught: list[int] = []
    stop = trio.Event()
    graceful = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            async for signum in received:
                caught.append(signum)
                if len(caught) == 1:
                    stop.set()
                else:
                    graceful.cancel()  # a second signal: stop at once

        async def print_events() -> None:
            await _print_events(signals, health, out)
            stop.set()  # the bus closed: nothing left to serve

        nursery.start_soon(watch_signals)
        nursery.start_soon(print_events)
        nursery.start_soon(_reload_on_sighup, tree.router, out)
        await stop.wait()
        if caught:
            name = signal.Signals(caught[0]).name
            out.write(
                f"duckagents: {name}: draining (up to {tree.config.drain_timeout:g} s; "
                "send it again to stop at once)\n"
            )
            out.flush()
            with graceful:
                await _stop_gracefully(tree, out, gateway=gateway, http=http)
            if graceful.cancelled_caught:
                out.write(f"duckagents: {signal.Signals(caught[-1]).name} again: stopping at once\n")
                out.flush()
                if gateway is not None:
                    await gateway.aclose(at_once=True)
                if http is not None:
                    await http.aclose(0)
        nursery.cancel_scope.cancel()
    if len(caught) > 1:
        return ExitCode.TERMINATED if caught[-1] == signal.SIGTERM else ExitCode.INTERRUPTED
    return ExitCode.OK


async def _stop_gracefully(tree: Any, out: TextIO, *, gateway: Any, http: Any) -> None:
    """The graceful stop: every door stops taking work, the tree drains (requests in flight may finish
    within ``drain_timeout``, the rest end with ``shutdown``), the doors hand out the last answers, the
    gateway's clients get their close frame 1001. Leaving the tree then stops the agents."""
    if gateway is not None:
        gateway.close_intake()
    if http is not None:
        http.close_intake()
    stopped = await tree.drain()
    if http is not None:
        await http.aclose(DOOR_GRACE)
    if gateway is not None:
        await gateway.aclose(DOOR_GRACE)
    cut = f"; {stopped} request(s) stopped at the drain timeout" if stopped else ""
    out.write(f"duckagents: drained{cut}\n")
    out.flush()


async def _reload_on_sighup(router: Any, out: TextIO) -> None:
    """Reload the configuration on each SIGHUP (the Unix way to ask a daemon to re-read its config)."""
    if not hasattr(signal, "SIGHUP"):  # pragma: no cover - not on Windows
        return
    with trio.open_signal_receiver(signal.SIGHUP) as received:
        async for _ in received:
            try:
                report = await router.controls.reload(principal="sighup")
            except (ConfigError, ControlError) as exc:
                note(f"duckagents: reload refused, the running configuration keeps serving: {exc}")
                continue
            out.write(f"reloaded: {report.describe()}\n")
            out.flush()


def _http_door() -> Any:
    """``duckagents.http.open_http``, or a clear error when the ``server`` extra is not installed."""
    try:
        from ..http import open_http
    except ImportError as exc:
        raise CommandError(
            f"the HTTP front door needs the server extra (missing {exc.name}): "
            "pip install 'duckagents[server]'"
        ) from None
    return open_http


async def open_gateway_in(
    doors: AsyncExitStack, router: Any, config: Config, pages: Any = None, fleet: Any = None
) -> Any:
    """The gateway (serving ``pages`` to plain HTTP; ``fleet``: this replica, whose fleet's signals it then
    serves), open in ``doors``; failing to listen is a one-line error (busy port...)."""
    from ..gateway import open_gateway

    where = config.gateway
    try:
        return await doors.enter_async_context(
            open_gateway(router, where, limits=config.validation, pages=pages, fleet=fleet)
        )
    except OSError as exc:
        raise _listen_error(exc, where.host, where.port) from None
    except BaseExceptionGroup as group:
        match, _ = group.split(OSError)
        if match is None:
            raise
        raise _listen_error(_first(match), where.host, where.port) from None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _listen_error(exc: BaseException, host: str, port: int) -> CommandError:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return CommandError(
            f"cannot listen on {host}:{port}: the address is already in use (another server? choose another "
            "--port, or 0 for any free one)"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return CommandError(f"cannot listen on {host}:{port}: {host} is not an address of this machine")
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return CommandError(f"cannot listen on {host}:{port}: permission denied (ports below 1024 need root)")
    return CommandError(f"cannot listen on {host}:{port}: {exc}")


class HealthLines:
    """Prints a provider's health when first seen and then only when it changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: dict[str, tuple[str, str, str]] = {}

    def show(self, status: ProviderStatus) -> None:
        """Print ``status`` if it says something new about its provider."""
        state, reason = health_state(status)
        key = (state, reason, status.breaker_state)
        if self.last.get(status.provider) == key:
            return
        self.last[status.provider] = key
        because = f": {reason}" if reason else ""
        when = _dt.datetime.now(_dt.UTC).strftime("%H:%M:%S")
        self.out.write(
            f"{when} {status.provider} {state}{because} (health {status.health:.2f}, "
            f"breaker {status.breaker_state})\n"
        )
        self.out.flush()


async def _print_events(signals: Any, health: HealthLines, out: TextIO) -> None:
    from ..gateway import format_signal

    async for event in signals:
        if isinstance(event.data, ProviderStatus):
            health.show(event.data)
        else:
            out.write(format_signal(event) + "\n")
            out.flush()
