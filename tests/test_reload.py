"""Reloading the configuration of a running tree (app.Tree.reload / router.controls.reload): providers added,
removed and changed under load lose no request; an invalid configuration changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from duckagents.app import open_tree
from duckagents.bus import SignalBus
from duckagents.errors import ConfigError
from duckagents.messages import Message
from duckagents.router import is_final
from duckagents.signals import ControlAction, ControlReply, ProviderRequest, ProviderResponse
from tests.helpers import Recorder, assert_one_terminal_per_request

SLOW = '{ latency = { kind = "uniform", low = 0.5, high = 2.0 }, seed = SEED }'


def provider(name: str, seed: int = 1, priority: int = 0) -> str:
    options = SLOW.replace("SEED", str(seed))
    return f'[[providers]]\nname = "{name}"\nkind = "mock"\npriority = {priority}\noptions = {options}\n'


def write(path: Path, *providers: str, strategy: str = "round_robin") -> Path:
    path.write_text(f'[router]\nstrategy = "{strategy}"\n' + "".join(providers))
    return path


async def test_reload_under_load_adds_removes_and_replaces_without_losing_a_request(
    tmp_path: Path, autojump_clock: object
) -> None:
    config = write(tmp_path / "duck.toml", provider("a"), provider("b", 2), provider("c", 3))
    bus = SignalBus()
    rec = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        async with open_tree(config, bus=bus) as tree:
            router = tree.router
            old_c = tree.agents["c"]
            ids = [f"r{i}" for i in range(500)]
            for rid in ids:
                await router.submit(ProviderRequest(rid, (Message.user(rid),)))
            await trio.sleep(0.3)
            assert router.in_flight == 500
            assert {v.name: v.active > 0 for v in router.views.values()} == {"a": True, "b": True, "c": True}
            # b goes, c changes (another seed: a new agent in its place), d comes.
            write(config, provider("a"), provider("c", 30), provider("d", 4))
            report = await router.controls.reload(principal="cli")
            assert (report.added, report.removed, report.changed, report.unchanged) == (
                ("d",), ("b",), ("c",), ("a",)
            )
            assert list(router.views) == ["a", "c", "d"] and sorted(tree.agents) == ["a", "c", "d"]
            assert tree.agents["c"] is not old_c and tree.supervisor.children[-2:] == ["agent:d", "agent:c"]
            more = [f"m{i}" for i in range(30)]
            for rid in more:
                await router.submit(ProviderRequest(rid, (Message.user(rid),)))
            finals = await rec.wait_for(is_final, count=len(ids) + len(more))
        bus.close()
    by_request: dict[str, list[object]] = {}
    for signal in finals:
        by_request.setdefault(signal.subject or "", []).append(signal.data)
    assert sorted(by_request) == sorted(ids + more)
    assert all(len(v) == 1 and isinstance(v[0], ProviderResponse) for v in by_request.values())
    assert_one_terminal_per_request(rec)
    served_later = {f.data.provider for f in finals if f.subject in more}  # type: ignore[union-attr]
    assert served_later == {"a", "c", "d"}
    attempts_to_b = [s for s in rec.of("provider_request") if s.provider == "b"]
    drain = next(i for i, s in enumerate(rec.signals) if s.type == "control_reply" and s.provider == "b")
    assert all(rec.signals.index(s) < drain for s in attempts_to_b)  # none after b drained
    [announced] = [s.data for s in rec.of("control_reply") if s.data.action is ControlAction.RELOAD]  # type: ignore[union-attr]
    assert isinstance(announced, ControlReply) and announced.ok and announced.principal == "cli"
    assert announced.message == "added d; removed b; changed c"


async def test_invalid_config_is_refused_whole_and_the_old_one_keeps_serving(
    tmp_path: Path, autojump_clock: object
) -> None:
    config = write(tmp_path / "duck.toml", provider("a"))
    broken = tmp_path / "broken.toml"
    cases = [
        "[[providers]]\nname = 'x'\nkind = 'nope'\n",  # unknown kind
        "[[providers]\nname = 'x'",  # not TOML
        # a good new provider and one with a misspelt key: neither starts
        provider("a") + provider("b") + '[[providers]]\nname = "k"\nkind = "openai"\ndefualt_model = "x"\n',
    ]
    bus = SignalBus()
    rec = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        async with open_tree(config, bus=bus, environ={}) as tree:
            router = tree.router
            before = tree.config
            for text in cases:
                broken.write_text(text)
                with pytest.raises(ConfigError) as at_start:
                    async with open_tree(broken, environ={}):
                        pass
                with pytest.raises(ConfigError) as refused:
                    await router.controls.reload(broken, principal="token:OPS")
                assert str(refused.value) == str(at_start.value)  # the same message as at start
                assert tree.config is before and list(router.views) == ["a"] and list(tree.agents) == ["a"]
                assert tree.source == config
                assert (await router.complete("still there")).provider == "a"
        bus.close()
    assert "defualt_model" in str(refused.value)
    announced = [s.data for s in rec.of("control_reply")]
    assert [(r.action, r.ok, r.principal) for r in announced] == [  # type: ignore[union-attr]
        (ControlAction.RELOAD, False, "token:OPS")
    ] * 3
    assert announced[-1].message == str(refused.value)  # type: ignore[union-attr]


async def test_reload_needs_a_file_or_a_config(autojump_clock: object) -> None:
    async with open_tree() as tree:
        with pytest.raises(ConfigError, match="no file to re-read"):
            await tree.reload()
        report = await tree.reload(tree.config)
        assert report.unchanged == ("mock",) and report.describe() == "no provider changed"
