"""Property: whatever the fallback chains and whatever each agent answers, every request ends with exactly
one final result and never goes back to a model it left (Hypothesis drives both)."""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.app import open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config, ModelConfig, ProviderConfig, RouterConfig
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import FinishReason, Usage
from duckagents.providers import Completion, MockProvider
from duckagents.router import DISPATCH, is_final
from duckagents.signals import ProviderRequest, ProviderResponse
from tests.helpers import Recorder, assert_one_terminal_per_request

#: What one call of a scripted agent does.
OUTCOMES = (
    "ok", "refusal", "upstream_5xx", "rate_limited", "overloaded", "not_found", "context_length",
    "invalid_request", "hang",
)
CHAINS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
REQUESTS = 3


class ScriptedAgent(MockProvider):
    """A mock whose successive calls follow ``script`` (then answer ``ok``)."""

    def __init__(self, script: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.script = deque(script)

    async def complete(self, request: ProviderRequest) -> Completion:
        self.calls += 1
        model = request.model or self.default_model
        outcome = self.script.popleft() if self.script else "ok"
        await trio.sleep(0.01)
        if outcome == "hang":
            await trio.sleep(3600)  # the agent's deadline (the provider's timeout) ends it
        if outcome in ("ok", "refusal"):
            finish = FinishReason.REFUSAL if outcome == "refusal" else FinishReason.STOP
            return Completion(model=model, content=outcome, finish_reason=finish, usage=Usage(3, 1))
        retry_after = 0.5 if outcome == "rate_limited" else None
        raise ProviderError(ErrorKind(outcome), f"scripted {outcome}", model=model, retry_after=retry_after)


@attrs.frozen
class Scenario:
    models: tuple[str, ...]
    #: (agent, model, script) per agent.
    agents: tuple[tuple[str, str, tuple[str, ...]], ...]
    #: model -> chain key -> targets (only models after it: no loops).
    chains: dict[str, dict[str, tuple[str, ...]]]
    max_fallbacks: int
    strategy: str


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 5))
    models = tuple(f"m{i}" for i in range(count))
    agents = []
    for i, model in enumerate(models):
        for j in range(draw(st.integers(1, 2))):
            script = draw(st.lists(st.sampled_from(OUTCOMES), max_size=4))
            agents.append((f"a{i}{j}", model, tuple(script)))
    chains: dict[str, dict[str, tuple[str, ...]]] = {}
    for i, model in enumerate(models):
        later = models[i + 1:]
        if not later:
            continue
        chains[model] = {
            key: tuple(draw(st.lists(st.sampled_from(later), unique=True, max_size=len(later))))
            for key in CHAINS
        }
    return Scenario(
        models, tuple(agents), chains, draw(st.integers(1, 5)),
        draw(st.sampled_from(["priority", "round_robin", "least_busy", "lowest_latency", "cheapest"])),
    )


def depth(chains: dict[str, dict[str, tuple[str, ...]]], model: str) -> int:
    targets = {t for chain in chains.get(model, {}).values() for t in chain}
    return max((1 + depth(chains, t) for t in targets), default=0)


def config_of(scenario: Scenario) -> Config:
    providers = tuple(
        ProviderConfig(name=name, kind="mock", default_model=model, timeout=5.0)
        for name, model, _ in scenario.agents
    )
    models = {m: ModelConfig(**chains) for m, chains in scenario.chains.items()}
    # The config refuses chains deeper than max_fallbacks; the runtime bound is what is tested.
    limit = max(scenario.max_fallbacks, depth(scenario.chains, scenario.models[0]),
                *(depth(scenario.chains, m) for m in scenario.models))
    router = RouterConfig(strategy=scenario.strategy, max_fallbacks=limit, backoff_initial=0.01)  # type: ignore[arg-type]
    return Config(providers=providers, router=router, models=models, health_interval=1000.0)


async def run(scenario: Scenario) -> tuple[Recorder, dict[str, ProviderResponse | ProviderError], int]:
    config = config_of(scenario)
    mocks = {
        name: ScriptedAgent(list(script), default_model=model) for name, model, script in scenario.agents
    }
    bus = SignalBus()
    recorder = Recorder(bus)
    outcomes: dict[str, ProviderResponse | ProviderError] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        async with open_tree(config, bus=bus, providers=mocks) as tree:

            async def one(request_id: str) -> None:
                try:
                    outcomes[request_id] = await tree.router.complete(
                        "hi", model=scenario.models[0], request_id=request_id, timeout=60
                    )
                except ProviderError as exc:
                    outcomes[request_id] = exc

            async with trio.open_nursery() as requests:
                for k in range(REQUESTS):
                    requests.start_soon(one, f"r{k}")
        bus.close()
    return recorder, outcomes, config.router.max_fallbacks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_request_ends_once_and_never_revisits_a_model(scenario: Scenario) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    recorder, outcomes, max_fallbacks = trio.run(run, scenario, clock=clock)
    assert_one_terminal_per_request(recorder)
    for request_id, outcome in outcomes.items():
        finals = [s.data for s in recorder.signals if is_final(s) and s.subject == request_id]
        assert len(finals) == 1, finals
        [final] = finals
        if isinstance(outcome, ProviderResponse):
            assert final == outcome
        else:
            assert final.kind is outcome.kind  # type: ignore[union-attr]
        sent = [
            s.data for s in recorder.of("provider_request", source=DISPATCH)
            if isinstance(s.data, ProviderRequest) and s.data.request_id == request_id
        ]
        assert [r.attempt for r in sent] == list(range(1, len(sent) + 1))
        # The models in the order the request went through them: each one entered at most once.
        hops = [r.model for i, r in enumerate(sent) if i == 0 or sent[i - 1].model != r.model]
        assert len(hops) == len(set(hops)), hops
        assert len(hops) <= 1 + max_fallbacks
        assert all(hop in scenario.models for hop in hops) and (not hops or hops[0] == scenario.models[0])
        answers = [
            t.data for k in range(1, len(sent) + 1)
            for t in recorder.terminals(f"{request_id}#{k}") if isinstance(t.data, ProviderResponse)
        ]
        # A response is the outcome whenever some attempt answered; the first plain answer ends it.
        assert isinstance(final, ProviderResponse) == bool(answers)
        plain = [a for a in answers if a.finish_reason is FinishReason.STOP]
        if plain:
            # The final result is that answer, listing every attempt when there was more than one.
            assert attrs.evolve(final, attempts=()) == plain[0] and plain[0].attempt == len(sent)
            assert len(final.attempts) == (len(sent) if len(sent) > 1 else 0)
