"""``duckagents top``: the live figures of a running tree as a full-screen terminal table.

The figures come from :class:`~._state.LiveState`, fed either by a running server's gateway
(:func:`follow_gateway`: the ``status`` message for a snapshot, then the signal stream, reconnecting by
itself) or by a tree in this process (:func:`follow_tree`). :func:`run_top` draws them with rich's
``Live`` on the terminal's alternate screen a few times a second and returns when ``q`` is pressed; the
keys are read in cbreak mode by a Trio task waiting on the terminal's file descriptor, so nothing blocks
the event loop (Ctrl-C still interrupts).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import attrs
import trio
import trio_websocket
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..app import Tree
from ..bus import Overflow, SignalFilter
from ..codec import signal_to_dict, unstructure
from ..errors import GatewayError, Secret
from ..gateway import PROTOCOL_VERSION, connect
from ._state import AgentFigures, FeedEntry, LiveState, percentile

__all__ = ["SIGNAL_TYPES", "Link", "follow_gateway", "follow_tree", "render", "run_top"]

#: The signal types the live views subscribe to (provider_chunk stays out: it is most of the traffic).
SIGNAL_TYPES = (
    "provider_status",
    "supervisor_event",
    "provider_request",
    "provider_response",
    "provider_error",
    "control_reply",
    "fleet_degraded",
    "fleet_rejoined",
)
#: A fleet stream id (``<milliseconds>-<sequence>``), the only kind of id a subscription resumes after.
_STREAM_ID = re.compile(r"\d+-\d+")
QUIT_KEYS = frozenset(b"qQ")
SPARK = " ▁▂▃▄▅▆▇█"
BREAKER_STYLE = {
    "closed": ("closed", "green"),
    "half_open": ("half-open", "yellow"),
    "open": ("open", "bold red"),
    "forced_open": ("forced open", "bold red"),
    "disabled": ("disabled", "blue"),
}
MAX_BACKOFF = 5.0
#: Seconds a snapshot (output not a terminal) waits for the agents when no status answer comes.
SNAPSHOT_WAIT = 5.0


@attrs.define
class Link:
    """Where the figures come from and whether that is live now (shown in the title line)."""

    where: str
    live: bool = False
    text: str = "connecting…"
    server: str = ""
    #: Set once a full snapshot of the agents is in (the gateway's ``status`` answer, or a tree's own).
    snapshot: trio.Event = attrs.field(factory=trio.Event)

    def set(self, live: bool, text: str) -> None:
        """Record the connection's state."""
        self.live, self.text = live, text


# --- sources ---------------------------------------------------------------------------------------------


async def follow_gateway(
    url: str,
    state: LiveState,
    link: Link,
    *,
    token: str | Secret | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Feed ``state`` from the gateway at ``url`` until cancelled, reconnecting after every failure
    (backing off up to 5 s) and resuming from the last event id where the gateway offers it."""
    failures = 0
    while True:
        try:
            async with connect(url, token) as ws:
                await _stream(ws, state, link, clock)
            why = "the server closed the connection"
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            why = "connection lost" if reason is None else f"closed {reason.code} {reason.reason or ''}"
        except GatewayError as exc:
            why = str(exc)
        failures = 1 if link.live else failures + 1
        state.disconnected()
        delay = min(MAX_BACKOFF, 0.25 * 2 ** min(failures, 5))
        link.set(False, f"disconnected: {why}; retrying in {delay:.1f} s")
        await trio.sleep(delay)


async def _stream(ws: trio_websocket.WebSocketConnection, state: LiveState, link: Link, clock: Any) -> None:
    while True:
        frame = json.loads(await ws.get_message())
        if not isinstance(frame, dict):
            continue
        kind = frame.get("type")
        if kind == "hello":
            link.server = str(frame.get("server") or "")
            link.set(True, "live")
            subscribe: dict[str, Any] = {
                "type": "subscribe",
                "id": "live",
                "v": PROTOCOL_VERSION,
                "filter": {"types": list(SIGNAL_TYPES)},
            }
            # A fleet gateway keeping a stream replays what was missed, after the last stream id seen
            # (signals delivered while its replica was degraded carry local ids: not resumable).
            if frame.get("resume") and _STREAM_ID.fullmatch(state.last_event_id or ""):
                subscribe["since"] = state.last_event_id
            await ws.send_message(json.dumps(subscribe))
            await ws.send_message(json.dumps({"type": "status", "id": "status", "v": PROTOCOL_VERSION}))
        elif kind == "ack" and frame.get("id") == "status" and isinstance(frame.get("status"), dict):
            state.apply_status_document(frame["status"], clock())
            link.snapshot.set()
        elif kind == "ack" and frame.get("id") == "live" and frame.get("missed"):
            missed = frame["missed"]
            state.note_missed(missed if isinstance(missed, int) and not isinstance(missed, bool) else 1)
        elif kind == "signal" and isinstance(frame.get("event"), dict):
            state.apply(frame["event"], clock())
        elif kind == "dropped" and isinstance(frame.get("count"), int):
            state.note_missed(frame["count"])
        # An error answering "status" means an older gateway: the agents' status signals will do.


async def follow_tree(
    tree: Tree, state: LiveState, link: Link, *, clock: Callable[[], float] = time.time
) -> None:
    """Feed ``state`` from a tree running in this process until cancelled."""
    wanted = SignalFilter(types=frozenset(SIGNAL_TYPES))
    with tree.bus.subscribe(wanted, buffer=4096, overflow=Overflow.DROP_OLDEST) as signals:
        for status in await tree.router.status():
            state.apply({"type": "provider_status", "data": unstructure(status)}, clock())
        link.set(True, "live")
        link.snapshot.set()
        dropped = 0
        async for signal in signals:
            if signals.dropped != dropped:
                state.note_missed(signals.dropped - dropped)
                dropped = signals.dropped
            state.apply(signal_to_dict(signal), clock())


# --- drawing ---------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds * 1000:.0f} ms"


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.0f}k" if value >= 10000 else f"{value:.0f}"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.2f}" if value >= 1 else f"${value:.4f}"


def _bar(value: float | None, limit: float | None, refusing: bool, width: int = 6) -> Text:
    if value is None:
        return Text("unlimited", style="dim")
    if refusing:
        return Text("▱" * width + " refusing", style="bold red")
    if not limit:
        return Text(_count(value))
    share = max(0.0, min(1.0, value / limit))
    filled = round(share * width)
    style = "red" if share < 0.2 else "green"
    text = Text("▰" * filled, style=style)
    text.append("▱" * (width - filled), style="dim")
    text.append(f" {_count(value)}/{_count(limit)}")
    return text


def _breaker(agent: AgentFigures, now: float) -> Text:
    name, style = BREAKER_STYLE.get(agent.breaker or "", (agent.breaker or "?", "dim"))
    text = Text(name, style=style)
    if agent.half_open_at is not None:
        left = agent.half_open_at - now
        text.append(f" {max(0, int(left + 0.999))}s" if left > 0 else " due", style="dim")
    return text


def _state_cell(agent: AgentFigures) -> Text:
    if agent.gave_up:
        return Text("gave up", style="bold red")
    if agent.up is False:
        return Text("down", style="bold red")
    return Text("up" if agent.up else "…", style="green")


def _agents_table(state: LiveState, now: float) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # (header, justify, least width): the figures keep their width, the model column gives way first.
    for name, justify, width in (
        ("agent", "left", 8), ("model", "left", 10), ("state", "left", 5), ("health", "right", 6),
        ("breaker", "left", 10), ("req headroom", "left", 16), ("tok headroom", "left", 16),
        ("in flight", "right", 9), ("p50", "right", 6), ("p95", "right", 6), ("spend", "right", 7),
        ("restarts", "right", 8), ("requests", "right", 8),
    ):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    for key in sorted(state.agents):
        agent = state.agents[key]
        flash = agent.flashing(now)
        health = "-" if agent.health is None else f"{agent.health:.2f}"
        if agent.reachable is False:
            health += " unreachable"
        restarts = Text(str(agent.restarts), style="bold red" if flash == "crash" else "")
        table.add_row(
            agent.key,
            " · ".join(filter(None, (agent.kind, agent.model))) or "-",
            _state_cell(agent),
            health,
            _breaker(agent, now),
            _bar(agent.headroom_requests, agent.limit_requests, agent.refusing),
            _bar(agent.headroom_tokens, agent.limit_tokens, agent.refusing),
            _count(agent.in_flight(now)),
            _ms(agent.latency(0.5)),
            _ms(agent.latency(0.95)),
            _usd(agent.spend),
            restarts,
            _count(agent.requests),
            style={"crash": "on dark_red", "breaker": "on dark_orange3"}.get(flash, ""),
        )
    return table


def _spark(values: list[float]) -> str:
    top = max(values, default=0.0) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in values)


def _rates(state: LiveState, now: float) -> Text:
    from ._state import BUCKET_SECONDS

    minute = state.recent(60.0, now)
    window = state.window(now)
    per_second = [(r.ok + r.failed) / BUCKET_SECONDS if r else 0.0 for r in window]
    text = Text("last 60 s  ", style="bold")
    text.append(f"{minute.ok / 60:.2f} ok/s  ", style="green")
    text.append(f"{minute.failed / 60:.2f} failed/s  ", style="red" if minute.failed else "")
    p50, p95 = percentile(minute.latencies, 0.5), percentile(minute.latencies, 0.95)
    text.append(f"latency p50 {_ms(p50)} p95 {_ms(p95)}  ")
    if minute.errors:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(minute.errors.items(), key=lambda kv: -kv[1]))
        text.append(f"attempt errors: {kinds}", style="yellow")
    span = len(window) * BUCKET_SECONDS
    text.append(
        f"\nrequests/s, last {span / 60:.0f} min " if span >= 120 else f"\nrequests/s, last {span:.0f} s "
    )
    text.append(_spark(per_second), style="cyan")
    text.append(f" max {max(per_second, default=0.0):.1f}/s", style="dim")
    return text


def _feed_table(state: LiveState, rows: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for name in ("time", "request", "model", "provider", "attempts", "latency", "outcome"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    entries: list[FeedEntry] = []
    for entry in reversed(state.feed.values()):
        entries.append(entry)
        if len(entries) >= rows:
            break
    for entry in entries:
        provider = Text(entry.provider or ("…" if entry.ok is None else "-"))
        others = [p for p in entry.tried if p != entry.provider]
        if entry.failover and others:
            provider.append(f" ← {', '.join(others)}", style="dim")
        attempts = Text(str(entry.attempts or "-"), style="bold yellow" if entry.failover else "")
        if entry.failover:
            attempts.append(" ↻", style="bold yellow")
        outcome = Text(
            "running" if entry.ok is None else entry.outcome,
            style="dim" if entry.ok is None else "" if entry.ok else "bold red",
        )
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(entry.at)),
            entry.request_id,
            entry.model or "-",
            provider,
            attempts,
            _ms(entry.latency),
            outcome,
        )
    return table


def render(state: LiveState, link: Link, now: float, *, height: int = 40) -> RenderableType:
    """The whole screen: title, agents, rates, replicas (in a fleet) and as many requests as fit."""
    title = Text("duckagents top", style="bold")
    title.append(f"  {link.where}", style="dim")
    title.append("  ")
    title.append(f" {link.text} ", style="reverse green" if link.live else "reverse red")
    if state.missed:
        title.append(f"  {state.missed} event(s) missed", style="yellow")
    title.append("   q quits", style="dim")
    parts: list[RenderableType] = [title, _agents_table(state, now), _rates(state, now)]
    if state.replicas:
        replicas = Text("replicas  ", style="bold")
        for name in sorted(state.replicas):
            replica = state.replicas[name]
            style = "yellow" if replica.degraded else "green"
            replicas.append(f"{name} ({'degraded' if replica.degraded else 'joined'})  ", style=style)
        parts.append(replicas)
    used = 4 + len(state.agents) + 4 + (1 if state.replicas else 0) + 4
    parts.append(_feed_table(state, max(3, height - used)))
    return Group(*parts)


# --- the terminal ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def wait_for_quit(fd: int) -> None:
    """Return once ``q`` is read from the terminal ``fd`` (cbreak mode while waiting)."""
    with _cbreak(fd):
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                keys = os.read(fd, 64)
            except BlockingIOError:
                continue
            if not keys or QUIT_KEYS.intersection(keys):
                return


async def run_top(
    feed: Callable[[LiveState, Link], Any],
    link: Link,
    *,
    out: TextIO | None = None,
    refresh: float = 4.0,
    keys: int | None = None,
) -> int:
    """Run ``feed(state, link)`` (a source above) and draw until ``q`` is read from the terminal ``keys``
    (default: stdin when it is a terminal). Output that is not a terminal gets one plain snapshot, taken
    once a full snapshot of the agents is in (a gateway without the ``status`` message gives none: then
    after :data:`SNAPSHOT_WAIT` seconds of its signals). Returns the exit status (0)."""
    out = sys.stdout if out is None else out
    console = Console(file=out)
    state = LiveState()
    if keys is None and sys.stdin.isatty():
        keys = sys.stdin.fileno()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed, state, link)
        if not console.is_terminal:
            with trio.move_on_after(SNAPSHOT_WAIT):
                await link.snapshot.wait()
            console.print(render(state, link, time.time(), height=console.height))
            nursery.cancel_scope.cancel()
            return 0
        with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False) as live:

            async def draw() -> None:
                while True:
                    live.update(render(state, link, time.time(), height=console.height), refresh=True)
                    await trio.sleep(1 / refresh)

            nursery.start_soon(draw)
            if keys is not None:
                await wait_for_quit(keys)
            else:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
    return 0
