"""The router's hot path: where the work of a request runs and what it must never cost.

``complete()`` is driven in the caller's own task and a ``stream()`` caller gets its chunks from a queue
the router's loop fills. These tests pin down what those shortcuts must keep: no task spawned per request,
the intake before any final result, the final result on the bus when ``complete()`` returns, crash
ordering, and the bounded chunk queue.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from duckagents.agents import ProviderAgent
from duckagents.app import open_tree
from duckagents.bus import SignalBus
from duckagents.config import Config
from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import Message, RequestOptions
from duckagents.providers import MockProvider
from duckagents.router import SOURCE, RouterAgent, is_final
from duckagents.router._agent_view import needs_of
from duckagents.router._chunk_queue import ChunkQueue
from duckagents.router._request import RoutedRequest
from duckagents.signals import (
    ProviderChunk,
    ProviderErrorData,
    ProviderRequest,
    Signal,
    SupervisorEvent,
    make_signal,
)
from tests.helpers import (
    Recorder,
    assert_one_terminal_per_request,
    mock_config,
    request,
    running_tree,
)


class Spawns(trio.abc.Instrument):
    """Counts the tasks spawned while installed."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


# --- no task per request ---------------------------------------------------------------------------


async def test_complete_spawns_no_task_and_returns_with_its_final_result_on_the_bus(
    autojump_clock: object,
) -> None:
    async with running_tree(mock_config("a")) as (tree, rec):
        for i in range(3):  # warm up: the agent's inbox pool grows to what one caller needs
            await tree.router.complete("warm up", request_id=f"w{i}")
        spawns = Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            for i in range(20):
                response = await tree.router.complete(f"question {i}", request_id=f"q{i}")
                assert response.provider == "a" and response.request_id == f"q{i}"
                # Subscribers have seen the final result by the time the caller has it.
                assert [s.data for s in rec.signals if is_final(s) and s.subject == f"q{i}"] == [response]
        finally:
            trio.lowlevel.remove_instrument(spawns)
        assert spawns.count == 0
    assert_one_terminal_per_request(rec)


# --- intake and final results ----------------------------------------------------------------------


async def test_a_request_stopped_before_its_task_ran_still_gets_its_intake(autojump_clock: object) -> None:
    async with running_tree(mock_config("a")) as (tree, rec):
        with tree.bus.expect("x") as waiter:
            await tree.router.submit(ProviderRequest("x", (Message.user("hi"),)))
            assert tree.router.cancel("x")  # before the router's task for it ran at all
            final = await waiter.wait()
        assert isinstance(final.data, ProviderErrorData) and final.data.kind is ErrorKind.CANCELLED
        assert final.data.attempt == 0  # no attempt was made
        await rec.wait_for(lambda s: is_final(s) and s.subject == "x")
        assert [s.source for s in rec.signals if s.subject == "x"] == [SOURCE, SOURCE]  # intake, final
    assert_one_terminal_per_request(rec)


async def test_a_caller_cancelled_before_complete_makes_no_request(autojump_clock: object) -> None:
    async with running_tree(mock_config("a")) as (tree, rec):
        with trio.CancelScope() as scope:
            scope.cancel()
            await tree.router.complete("hi", request_id="never")
        assert scope.cancelled_caught
        await trio.sleep(1)
        assert not tree.router.requests
        assert [s for s in rec.signals if s.subject and s.subject.startswith("never")] == []


async def test_shutdown_answers_callers_that_drive_their_own_requests(autojump_clock: object) -> None:
    config = Config(providers=(mock_config("a"),), health_interval=1000.0)
    kinds: list[ErrorKind] = []

    async def call(router: RouterAgent, i: int) -> None:
        try:
            await router.complete("hi", request_id=f"c{i}")
        except ProviderError as exc:
            kinds.append(exc.kind)

    async with trio.open_nursery() as outer:
        # The tree's own bus closes as soon as the tree is down: every final result must be out by then.
        async with open_tree(config, providers={"a": MockProvider(latency=100.0)}) as tree:
            recorder = Recorder(tree.bus)
            outer.start_soon(recorder.run)
            for i in range(3):
                outer.start_soon(call, tree.router, i)
            await trio.sleep(1)
            assert tree.router.in_flight == 3
    assert kinds == [ErrorKind.SHUTDOWN] * 3
    finals = [s for s in recorder.signals if is_final(s)]
    assert sorted(s.subject for s in finals) == ["c0", "c1", "c2"]  # type: ignore[type-var]
    assert_one_terminal_per_request(recorder)


async def test_a_stopping_router_waits_for_its_callers_final_results(autojump_clock: object) -> None:
    bus = SignalBus()
    config = mock_config("a")
    agent = ProviderAgent(config, bus, MockProvider(latency=100.0))
    router = RouterAgent(bus, [config])
    recorder = Recorder(bus)
    kinds: list[ErrorKind] = []

    async def call() -> None:
        try:
            await router.complete("hi", request_id="late")
        except ProviderError as exc:
            kinds.append(exc.kind)

    async with trio.open_nursery() as outer:
        outer.start_soon(recorder.run)
        await outer.start(agent.run)
        async with trio.open_nursery() as router_nursery:
            await router_nursery.start(router.run)
            assert await router.wait_ready()
            outer.start_soon(call)
            await trio.sleep(1)
            assert router.in_flight == 1
            router_nursery.cancel_scope.cancel()
        bus.close()  # at once: what the stopped router left unpublished is lost
        await recorder.wait_for(lambda s: is_final(s) and s.subject == "late", within=10)
        outer.cancel_scope.cancel()
    assert kinds == [ErrorKind.SHUTDOWN]
    assert_one_terminal_per_request(recorder)


@pytest.mark.parametrize("way", ["complete", "submit"])
async def test_a_bug_met_while_routing_one_request_fails_it_alone_with_internal(
    way: str, autojump_clock: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In the caller's task (complete) or a task of the router (submit): that request ends with one final
    ``internal`` result, its traceback is logged, and the router keeps serving (no crash, no restart)."""
    original = RoutedRequest._choose_agent

    async def choose_agent(self: RoutedRequest) -> object:
        if self.request_id == "boom":
            raise RuntimeError("injected routing bug")
        return await original(self)

    async with running_tree(mock_config("a")) as (tree, rec):
        monkeypatch.setattr(RoutedRequest, "_choose_agent", choose_agent)
        if way == "complete":
            with pytest.raises(ProviderError) as info:
                await tree.router.complete("hi", request_id="boom")
            failure = info.value
        else:
            await tree.router.submit(request("boom"))
            [final] = await rec.wait_for(lambda s: is_final(s) and s.subject == "boom")
            assert isinstance(final.data, ProviderErrorData)
            failure = final.data.to_error()
        assert failure.kind is ErrorKind.INTERNAL and not failure.retryable
        assert "RuntimeError: injected routing bug" in failure.message
        assert (await tree.router.complete("hi")).provider == "a"
        assert tree.supervisor.event_counts["crashed"] == 0 and tree.router.running
    assert_one_terminal_per_request(rec)
    [record] = [r for r in caplog.records if r.name == "duckagents.router"]
    assert "request boom failed with an internal error" in record.getMessage()
    assert "Traceback (most recent call last)" in record.getMessage()


# --- wakeups per request ---------------------------------------------------------------------------


class Reschedules(trio.abc.Instrument):
    """Counts how often one task is put back on the run queue (each time is a scheduler turn)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_the_router_is_not_woken_by_its_own_signals(autojump_clock: object) -> None:
    async with running_tree(mock_config("a")) as (tree, rec):
        router = tree.router
        seen: list[tuple[str, str]] = []
        handle = router._handle

        def recording_handle(signal: Signal) -> None:
            seen.append((signal.source, signal.type))
            handle(signal)

        router._handle = recording_handle  # type: ignore[method-assign]
        for i in range(5):
            await tree.router.complete(f"question {i}", request_id=f"q{i}")
        async with tree.router.stream("streamed", request_id="s") as stream:
            assert [c async for c in stream]
        await trio.sleep(1)
        # Its final results and dispatches are on the bus, but its inbox leaves them out...
        assert len([s for s in rec.signals if is_final(s)]) == 6
        assert not [source for source, _ in seen if source in (SOURCE, "/router/dispatch")]
        # ...while the agent's terminals (one per request) and chunks still get through.
        assert len([t for _, t in seen if t == "provider_response"]) == 6
        assert any(t == "provider_chunk" for _, t in seen)
    assert_one_terminal_per_request(rec)


# --- crash ordering --------------------------------------------------------------------------------


async def test_a_crash_ends_only_the_attempts_published_before_it() -> None:
    router = RouterAgent(SignalBus(), [mock_config("a")])
    messages = (Message.user("hi"),)
    needs = needs_of(messages, RequestOptions(), (), None)
    view = router.views["a"]
    requests = {}
    for name, mark in (("before", 4), ("after", 5)):
        routed = RoutedRequest(ProviderRequest(name, messages), needs, 100.0, router._context)
        routed._outstanding_on(view, 1)
        routed.dispatch_mark = mark  # the inbox position when its attempt went on the bus
        router.requests[name] = requests[name] = routed
    assert view.active == 2
    router.state.position = 4  # signals handled so far; the crash is the 5th
    crash = SupervisorEvent("duckagents", "agent:a", "crashed", "boom")
    router._handle(make_signal(crash, "/supervisor/duckagents"))
    lost = requests["before"]
    assert not lost.outstanding and lost.on_behalf_pending
    assert isinstance(lost.result, ProviderErrorData) and lost.result.kind is ErrorKind.AGENT_CRASHED
    assert lost.result.attempt == 1 and lost.result.provider == "a" and lost.result.retryable
    assert requests["after"].outstanding  # sent after the crash: its deadline covers it
    assert view.up is False and view.active == 1  # the lost attempt freed its slot


# --- streams ---------------------------------------------------------------------------------------


async def test_a_stream_consumer_that_falls_behind_gets_its_request_cancelled(autojump_clock: object) -> None:
    bus = SignalBus()
    config = mock_config("a")
    agent = ProviderAgent(config, bus, MockProvider(replies=["0123456789"], chunk_size=1, chunk_delay=0.1))
    router = RouterAgent(bus, [config], stream_buffer=3)
    recorder = Recorder(bus)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        await nursery.start(agent.run)
        await nursery.start(router.run)
        assert await router.wait_ready()
        received: list[str] = []
        with pytest.raises(ProviderError) as info:
            async with router.stream("hi", request_id="slow") as stream:
                await trio.sleep(100)  # read nothing while the chunks pile up
                async for chunk in stream:
                    received.append(chunk.delta)
        assert received == ["0", "1", "2"]  # what the queue held; the 4th chunk overflowed it
        error = info.value
        assert error.kind is ErrorKind.CANCELLED and error.partial
        assert "fell 3 chunks behind" in error.message
        await recorder.wait_for(lambda s: is_final(s) and s.subject == "slow")
        nursery.cancel_scope.cancel()
    assert_one_terminal_per_request(recorder)


def _chunk(index: int) -> ProviderChunk:
    return ProviderChunk("r", "a", index, str(index))


async def test_chunk_queue_is_bounded_wakes_its_reader_and_ends_cleanly() -> None:
    queue = ChunkQueue(2)
    queue.put(_chunk(0))
    queue.put(_chunk(1))
    with pytest.raises(trio.WouldBlock):
        queue.put(_chunk(2))
    assert [(await queue.get()).index, (await queue.get()).index] == [0, 1]
    got: list[int] = []

    async def reader() -> None:
        got.append((await queue.get()).index)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # parked: nothing queued
        queue.put(_chunk(3))
    assert got == [3]
    queue.put(_chunk(4))
    queue.close()
    with pytest.raises(trio.ClosedResourceError):
        queue.put(_chunk(5))
    assert (await queue.get()).index == 4  # what was queued before close is still delivered
    with pytest.raises(trio.EndOfChannel):
        await queue.get()

    abandoned = ChunkQueue(4)
    abandoned.put(_chunk(0))
    abandoned.abandon()
    assert len(abandoned) == 0
    with pytest.raises(trio.BrokenResourceError):
        abandoned.put(_chunk(1))
    with pytest.raises(trio.EndOfChannel):
        await abandoned.get()
