"""Shared helpers of the agent/router/e2e/load tests: a bus recorder and request builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import attrs
import trio

from duckagents.agents import ProviderAgent
from duckagents.app import Tree, open_tree
from duckagents.bus import Overflow, SignalBus, SignalFilter
from duckagents.config import Config, ProviderConfig, RouterConfig
from duckagents.messages import Message, RequestOptions
from duckagents.providers import MockProvider, Provider
from duckagents.signals import ProviderRequest, Signal, make_signal


class Recorder:
    """Keeps every signal (matching a filter) published on a bus, for assertions.

    Subscribes on creation (BLOCK, large buffer: it never drops); :meth:`run` must run in a nursery.
    """

    def __init__(
        self, bus: SignalBus, signal_filter: SignalFilter | None = None, buffer: int = 200_000
    ) -> None:
        self.sub = bus.subscribe(signal_filter, buffer=buffer, overflow=Overflow.BLOCK)
        self.signals: list[Signal] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        """Record until the bus closes (or the task is cancelled)."""
        with self.sub:
            async for signal in self.sub:
                self.signals.append(signal)
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(
        self, predicate: Callable[[Signal], bool], count: int = 1, *, after: int = 0, within: float = 3600.0
    ) -> list[Signal]:
        """Wait until ``count`` recorded signals (from index ``after`` on) satisfy ``predicate``; returns
        all that do. Fails after ``within`` seconds (of the test's clock: a hang becomes a failure)."""
        with trio.fail_after(within):
            while True:
                found = [s for s in self.signals[after:] if predicate(s)]
                if len(found) >= count:
                    return found
                await self._changed.wait()

    def of(self, type_: str, **envelope: object) -> list[Signal]:
        """Recorded signals of a type whose envelope attributes equal the given values."""
        return [
            s for s in self.signals
            if s.type == type_ and all(getattr(s, k) == v for k, v in envelope.items())
        ]

    def terminals(self, subject: str | None = None) -> list[Signal]:
        """Terminal signals (of one subject, if given)."""
        return [s for s in self.signals if s.is_terminal and (subject is None or s.subject == subject)]


def request(
    request_id: str = "r1",
    text: str = "hello",
    *,
    provider: str | None = None,
    attempt: int = 1,
    deadline: float | None = None,
    messages: Iterable[Message] | None = None,
    **options: object,
) -> ProviderRequest:
    """A request (options are RequestOptions fields)."""
    return ProviderRequest(
        request_id,
        tuple(messages) if messages is not None else (Message.user(text),),
        options=RequestOptions(**options),  # type: ignore[arg-type]
        provider=provider,
        attempt=attempt,
        deadline=deadline,
    )


async def send(bus: SignalBus, payload: ProviderRequest, source: str = "/test") -> str:
    """Publish an attempt request like the router does (subject ``<id>#<attempt>``); returns the subject."""
    subject = f"{payload.request_id}#{payload.attempt}"
    await bus.publish(attrs.evolve(make_signal(payload, source), subject=subject))
    return subject


@asynccontextmanager
async def running_agent(
    config: ProviderConfig | None = None,
    provider: Provider | None = None,
    *,
    agent_class: type[ProviderAgent] = ProviderAgent,
    **agent_options: object,
) -> AsyncIterator[tuple[ProviderAgent, SignalBus, Recorder]]:
    """A bus, a recorder on it and a running agent (cancelled on exit)."""
    bus = SignalBus()
    agent = agent_class(
        config or ProviderConfig(name="m", kind="mock"), bus, provider or MockProvider(), **agent_options  # type: ignore[arg-type]
    )
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        await nursery.start(agent.run)
        yield agent, bus, recorder
        nursery.cancel_scope.cancel()


def assert_one_terminal_per_request(recorder: Recorder) -> None:
    """Every ``provider_request`` signal recorded (intake or attempt) has exactly one terminal signal
    with its subject, and no terminal answers a request that was never made."""
    requests = [s.subject for s in recorder.signals if s.type == "provider_request"]
    assert len(requests) == len(set(requests)), "a request subject was published twice"
    terminals: dict[str | None, int] = {}
    for signal in recorder.terminals():
        terminals[signal.subject] = terminals.get(signal.subject, 0) + 1
    expected = dict.fromkeys(requests, 1)
    wrong = {
        k: terminals.get(k, 0) for k in {*terminals, *expected} if terminals.get(k, 0) != expected.get(k, 0)
    }
    assert not wrong, f"subject -> terminals, where not exactly one per request: {sorted(wrong.items())[:10]}"


@asynccontextmanager
async def running_tree(
    *providers: ProviderConfig,
    mocks: dict[str, Provider] | None = None,
    health_interval: float = 1000.0,
    **router_options: object,
) -> AsyncIterator[tuple[Tree, Recorder]]:
    """A whole tree (supervisor, agents, router) on a recorded bus. On exit the tree shuts down and the
    bus closes; the recorder then holds every signal, shutdown ones included."""
    config = Config(
        providers=providers, router=RouterConfig(**router_options), health_interval=health_interval  # type: ignore[arg-type]
    )
    bus = SignalBus()
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, providers=mocks) as tree:
            yield tree, recorder
        bus.close()  # the recorder drains what is left, then ends


def mock_config(name: str, priority: int = 0, **kwargs: object) -> ProviderConfig:
    """A ``kind = "mock"`` provider config."""
    return ProviderConfig(name=name, kind="mock", priority=priority, **kwargs)  # type: ignore[arg-type]
