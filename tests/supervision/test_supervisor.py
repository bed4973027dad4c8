"""The supervisor, with real crashing children under the mock clock (and one over loopback sockets)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from duckagents.bus import Overflow, SignalBus, SignalFilter
from duckagents.errors import SupervisorGaveUp
from duckagents.supervision import (
    MAX_EVENTS,
    Backoff,
    ChildSpec,
    Intensity,
    Restart,
    Strategy,
    Supervisor,
    open_supervisor,
)
from duckagents.testing import LoopbackServer, Reply, serve_loopback


class Boom(Exception):
    """The crash our test children raise."""


class Lab:
    """Children whose lifecycle is recorded and whose crashes the test triggers.

    ``log`` holds ``(what, child)`` entries: ``start`` once a child is up, ``exit`` from its ``finally``.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.times: list[tuple[str, str, float]] = []
        self._triggers: dict[str, trio.Event] = {}
        self._changed = trio.Event()

    def record(self, what: str, name: str) -> None:
        self.log.append((what, name))
        self.times.append((what, name, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (without any timing assumption) until ``predicate`` holds and the supervisor is idle."""
        while not predicate():
            await self._changed.wait()
        await trio.testing.wait_all_tasks_blocked()

    def count(self, what: str, name: str) -> int:
        return self.log.count((what, name))

    def crash(self, name: str) -> None:
        """Make the running incarnation of ``name`` raise."""
        self._triggers[name].set()

    async def worker(
        self,
        name: str,
        *,
        exit_normally: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Up until triggered; then raises :class:`Boom` (or returns, with ``exit_normally``)."""
        trigger = self._triggers[name] = trio.Event()
        task_status.started()
        self.record("start", name)
        try:
            await trigger.wait()
            if not exit_normally:
                raise Boom(f"{name} crashed")
        finally:
            self.record("exit", name)

    async def crasher(
        self, name: str, after: float = 0.0, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Up, then crashes on its own after ``after`` seconds."""
        task_status.started()
        self.record("start", name)
        try:
            await trio.sleep(after)
            raise Boom(f"{name} crashed")
        finally:
            self.record("exit", name)

    def spec(self, name: str, restart: Restart = Restart.PERMANENT, **kwargs: Any) -> ChildSpec:
        return ChildSpec(name, partial(self.worker, name, **kwargs), restart=restart)


def starts(lab: Lab) -> list[str]:
    return [name for what, name in lab.log if what == "start"]


def exits(lab: Lab) -> list[str]:
    return [name for what, name in lab.log if what == "exit"]


# --- strategies ------------------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    lab = Lab()
    async with open_supervisor("s", [lab.spec("a"), lab.spec("b"), lab.spec("c")]) as sup:
        assert starts(lab) == ["a", "b", "c"] and sup.running == ["a", "b", "c"]
        lab.crash("b")
        await lab.until(lambda: lab.count("start", "b") == 2)
        assert lab.log[3:] == [("exit", "b"), ("start", "b")]
        assert sup.restarts == 1
        assert [e.event for e in sup.events if e.child == "b"] == ["started", "crashed", "restarted"]
        assert "Boom: b crashed" in sup.events[-2].reason


async def test_one_for_all_stops_others_in_reverse_and_restarts_all_in_order() -> None:
    lab = Lab()
    specs = [lab.spec(n) for n in "abcd"]
    async with open_supervisor("s", specs, strategy=Strategy.ONE_FOR_ALL, intensity=Intensity(3, 5)) as sup:
        lab.crash("b")
        await lab.until(lambda: len(starts(lab)) == 8)
        assert lab.log[4:] == [
            ("exit", "b"),
            ("exit", "d"),
            ("exit", "c"),
            ("exit", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert sup.restarts == 1  # a group restart counts once
        assert [e.event for e in sup.events][4:] == ["crashed", *["shutdown"] * 3, *["restarted"] * 4]


async def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it() -> None:
    lab = Lab()
    specs = [lab.spec(n) for n in "abcd"]
    async with open_supervisor("s", specs, strategy=Strategy.REST_FOR_ONE, intensity=Intensity(5, 5)) as sup:
        lab.crash("b")
        await lab.until(lambda: len(starts(lab)) == 7)
        assert lab.log[4:] == [
            ("exit", "b"),
            ("exit", "d"),
            ("exit", "c"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert sup.running == ["a", "b", "c", "d"]
        lab.crash("d")  # the last child: only itself
        await lab.until(lambda: len(starts(lab)) == 8)
        assert lab.log[-2:] == [("exit", "d"), ("start", "d")]


async def test_group_restart_drops_temporary_siblings() -> None:
    lab = Lab()
    specs = [lab.spec("a"), lab.spec("tmp", Restart.TEMPORARY), lab.spec("c")]
    async with open_supervisor("s", specs, strategy=Strategy.ONE_FOR_ALL) as sup:
        lab.crash("a")
        await lab.until(lambda: len(starts(lab)) == 5)
        assert starts(lab)[3:] == ["a", "c"]
        assert sup.children == ["a", "c"]


# --- restart types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "exit_normally", "restarted"),
    [
        (Restart.PERMANENT, False, True),
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, True),
        (Restart.TRANSIENT, True, False),
        (Restart.TEMPORARY, False, False),
        (Restart.TEMPORARY, True, False),
    ],
)
async def test_restart_types(restart: Restart, exit_normally: bool, restarted: bool) -> None:
    lab = Lab()
    specs = [lab.spec("x", restart, exit_normally=exit_normally), lab.spec("other")]
    async with open_supervisor("s", specs) as sup:
        lab.crash("x")
        await lab.until(lambda: lab.count("exit", "x") == 1)  # and the supervisor acted on it
        assert lab.count("start", "x") == (2 if restarted else 1)
        assert sup.children == (["x", "other"] if restarted else ["other"])
        assert sup.restarts == (1 if restarted else 0)
        assert sup.event_counts["crashed" if not exit_normally else "exited"] == 1
        assert lab.count("start", "other") == 1  # siblings untouched


async def test_crash_before_started_counts_as_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise Boom("could not start")
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor("s", [ChildSpec("f", flaky)], intensity=Intensity(5, 10))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(attempts) == 3 and sup.running == ["f"] and sup.restarts == 2
        assert sup.event_counts["crashed"] == 2 and sup.event_counts["restarted"] == 1
        nursery.cancel_scope.cancel()


# --- intensity -------------------------------------------------------------------------------------


async def test_exceeding_the_intensity_gives_up_and_stops_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = Lab()
    specs = [lab.spec("a"), ChildSpec("bad", partial(lab.crasher, "bad", 1.0)), lab.spec("c")]
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor("s", specs, intensity=Intensity(max_restarts=2, period=5)):
            await trio.sleep_forever()
    assert info.value.supervisor == "s" and info.value.child == "bad" and info.value.restarts == 2
    # Two restarts allowed within 5 s; the third crash (at t=3) exceeds the intensity.
    assert [t for what, n, t in lab.times if (what, n) == ("exit", "bad")] == [1.0, 2.0, 3.0]
    assert exits(lab)[-2:] == ["c", "a"]  # the others stopped in reverse start order
    assert lab.count("start", "a") == 1 and lab.count("exit", "a") == 1


async def test_crashes_spread_beyond_the_period_never_give_up(autojump_clock: trio.testing.MockClock) -> None:
    lab = Lab()
    sup = Supervisor("s", [ChildSpec("slow", partial(lab.crasher, "slow", 6.0))])  # OTP default: 1 in 5 s
    with trio.move_on_after(57):  # crashes at 6, 12, ..., 54 s
        await sup.run()
    assert sup.restarts == 9 and sup.event_counts["gave_up"] == 0


async def test_default_intensity_gives_up_on_the_second_quick_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = Lab()
    sup = Supervisor("s", [ChildSpec("x", partial(lab.crasher, "x", 2.0))])
    with pytest.raises(SupervisorGaveUp):
        await sup.run()
    assert trio.current_time() == pytest.approx(4.0) and sup.restarts == 1
    assert [e.event for e in sup.events] == ["started", "crashed", "restarted", "crashed", "gave_up"]


async def test_zero_restarts_gives_up_on_the_first_crash() -> None:
    lab = Lab()
    with pytest.raises(SupervisorGaveUp):
        async with open_supervisor("s", [lab.spec("a")], intensity=Intensity(max_restarts=0)):
            lab.crash("a")
            await trio.sleep_forever()
    assert starts(lab) == ["a"]


async def test_nested_supervisor_gives_up_and_the_outer_one_restarts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = Lab()
    runs = 0

    async def sometimes_crashes(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Crashes at once during the inner supervisor's first life, then behaves.
        nonlocal runs
        runs += 1
        task_status.started()
        if runs <= 2:
            raise Boom("early")
        await trio.sleep_forever()

    inner = Supervisor("inner", [ChildSpec("w", sometimes_crashes), lab.spec("sibling")])
    outer_specs = [lab.spec("first"), ChildSpec("inner", inner.run, shutdown_timeout=30)]
    async with open_supervisor("outer", outer_specs, intensity=Intensity(3, 60)) as outer:
        await trio.testing.wait_all_tasks_blocked()
        assert runs == 3 and inner.event_counts["gave_up"] == 1
        crash = next(e for e in outer.events if e.event == "crashed")
        assert crash.child == "inner" and "SupervisorGaveUp" in crash.reason
        assert outer.restarts == 1 and [e.event for e in outer.events][-1] == "restarted"
        assert inner.running == ["w", "sibling"] and lab.count("start", "sibling") == 2
        assert lab.count("start", "first") == 1  # one_for_one: the outer's other child untouched
    # The whole tree stopped in reverse start order: inner (its sibling, then w), then first.
    assert exits(lab)[-2:] == ["sibling", "first"]


async def test_a_tree_that_keeps_failing_escalates_to_the_top(autojump_clock: trio.testing.MockClock) -> None:
    lab = Lab()
    inner = Supervisor("inner", [ChildSpec("bad", partial(lab.crasher, "bad", 1.0))])
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor("outer", [ChildSpec("inner", inner.run)], intensity=Intensity(1, 60)):
            await trio.sleep_forever()
    assert info.value.supervisor == "outer" and info.value.child == "inner"
    assert inner.event_counts["gave_up"] == 2


# --- shutdown --------------------------------------------------------------------------------------


async def test_shutdown_is_in_reverse_start_order_and_leaks_no_task() -> None:
    lab = Lab()
    living = trio.lowlevel.current_statistics().tasks_living
    async with open_supervisor("s", [lab.spec(n) for n in "abc"]) as sup:
        await sup.add_child(lab.spec("d"))
        assert trio.lowlevel.current_statistics().tasks_living > living
    assert exits(lab) == ["d", "c", "b", "a"]
    assert trio.lowlevel.current_statistics().tasks_living == living
    assert [e.child for e in sup.events if e.event == "shutdown"] == ["d", "c", "b", "a"]
    assert sup.running == []


async def test_cancelling_the_supervisor_stops_children_one_by_one() -> None:
    order: list[str] = []

    async def slow_to_stop(
        name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            order.append(f"stopping {name}")
            with trio.CancelScope(shield=True):
                await trio.testing.wait_all_tasks_blocked()  # siblings would run now if also cancelled
            order.append(f"stopped {name}")

    specs = [ChildSpec(n, partial(slow_to_stop, n)) for n in "abc"]
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor("s", specs).run)
            scope.cancel()
    assert order == ["stopping c", "stopped c", "stopping b", "stopped b", "stopping a", "stopped a"]


async def test_a_child_overstaying_its_shutdown_timeout_is_reported_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = Lab()
    finished: list[float] = []

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)
            finished.append(trio.current_time())

    specs = [lab.spec("a"), ChildSpec("stubborn", stubborn, shutdown_timeout=2.0), lab.spec("c")]
    async with open_supervisor("s", specs) as sup:
        pass
    assert [(e.child, e.event) for e in sup.events][3:] == [
        ("c", "shutdown"),
        ("stubborn", "killed"),
        ("a", "shutdown"),
    ]
    assert [t for what, n, t in lab.times if what == "exit"] == [0.0, 2.0]  # a was stopped at t=2
    assert finished == [10.0]  # Trio cannot kill: the supervisor still waited for it


# --- run-time changes, backoff, events -------------------------------------------------------------


async def test_add_and_remove_children_at_run_time() -> None:
    lab = Lab()
    async with open_supervisor("s", [lab.spec("a")]) as sup:
        await sup.add_child(lab.spec("b"))
        assert sup.children == ["a", "b"] and sup.running == ["a", "b"] and starts(lab) == ["a", "b"]
        with pytest.raises(ValueError, match="already has a child 'b'"):
            await sup.add_child(lab.spec("b"))
        lab.crash("b")  # supervised like the others
        await lab.until(lambda: lab.count("start", "b") == 2)
        await sup.remove_child("a")
        assert sup.children == ["b"] and exits(lab) == ["b", "a"]
        with pytest.raises(KeyError, match="no child 'a'"):
            await sup.remove_child("a")
        assert [e.event for e in sup.events if e.child == "a"] == ["started", "shutdown"]
    assert exits(lab) == ["b", "a", "b"]


async def test_children_added_before_run_start_with_it() -> None:
    lab = Lab()
    sup = Supervisor("s", [lab.spec("a")])
    await sup.add_child(lab.spec("b"))
    await sup.remove_child("a")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert starts(lab) == ["b"]
        nursery.cancel_scope.cancel()


async def test_backoff_delays_grow_exponentially(autojump_clock: trio.testing.MockClock) -> None:
    lab = Lab()
    sup = Supervisor(
        "s",
        [ChildSpec("x", partial(lab.crasher, "x", 0.0))],
        intensity=Intensity(max_restarts=100, period=1000),
        backoff=Backoff(initial=1.0, factor=2.0, max=10.0, jitter=0.0),
    )
    with trio.move_on_after(40):
        await sup.run()
    times = [t for what, _, t in lab.times if what == "start"]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_backoff_jitter_stays_within_its_band(autojump_clock: trio.testing.MockClock) -> None:
    lab = Lab()
    sup = Supervisor(
        "s",
        [ChildSpec("x", partial(lab.crasher, "x", 0.0))],
        intensity=Intensity(max_restarts=100, period=1000),
        backoff=Backoff(initial=4.0, factor=1.0, max=100.0, jitter=0.5),
    )
    with trio.move_on_after(200):
        await sup.run()
    times = [t for what, _, t in lab.times if what == "start"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) > 20 and all(2.0 <= g <= 6.0 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 1  # jittered, not constant


async def test_events_go_to_the_bus_and_are_counted() -> None:
    lab = Lab()
    bus = SignalBus()
    with bus.subscribe(
        SignalFilter(types={"supervisor_event"}), buffer=64, overflow=Overflow.DROP_OLDEST
    ) as sub:
        async with open_supervisor("tree", [lab.spec("a"), lab.spec("b")], bus=bus) as sup:
            lab.crash("a")
            await lab.until(lambda: lab.count("start", "a") == 2)
        seen = []
        while sub.pending:
            seen.append(sub.receive_nowait())
    assert {s.source for s in seen} == {"/supervisor/tree"}
    assert [(s.data.child, s.data.event) for s in seen] == [  # type: ignore[union-attr]
        ("a", "started"),
        ("b", "started"),
        ("a", "crashed"),
        ("a", "restarted"),
        ("b", "shutdown"),
        ("a", "shutdown"),
    ]
    assert [s.data for s in seen] == sup.events
    assert sup.event_counts == {"started": 2, "crashed": 1, "restarted": 1, "shutdown": 2}
    assert "Supervisor('tree'" in repr(sup)


async def test_a_full_blocking_subscriber_does_not_stall_supervision(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = Lab()
    bus = SignalBus()
    with bus.subscribe(buffer=1):  # never read
        async with open_supervisor("s", [lab.spec("a"), lab.spec("b")], bus=bus) as sup:
            lab.crash("a")
            await lab.until(lambda: lab.count("start", "a") == 2)
    assert sup.lost_events > 0 and exits(lab) == ["a", "b", "a"]


async def test_secrets_in_crash_reasons_are_redacted() -> None:
    async def leaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        raise Boom("upstream said: invalid key sk-abcdefghijklmnopqrstuvwx")

    async with open_supervisor("s", [ChildSpec("l", leaky, restart=Restart.TEMPORARY)]) as sup:
        await trio.testing.wait_all_tasks_blocked()
    reason = next(e.reason for e in sup.events if e.event == "crashed")
    assert "sk-abc" not in reason and "***" in reason


def test_specs_are_validated() -> None:
    with pytest.raises(ValueError):
        Intensity(max_restarts=-1)
    with pytest.raises(ValueError):
        ChildSpec("x", Lab().worker, shutdown_timeout=-1)
    with pytest.raises(ValueError, match="already has a child"):
        Supervisor("s", [Lab().spec("a"), Lab().spec("a")])


async def test_a_running_supervisor_cannot_run_twice() -> None:
    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()
        nursery.cancel_scope.cancel()


async def test_an_error_in_the_block_stops_the_children_and_propagates_bare() -> None:
    lab = Lab()
    with pytest.raises(KeyError, match="oops"):
        async with open_supervisor("s", [lab.spec("a"), lab.spec("b")]):
            raise KeyError("oops")
    assert exits(lab) == ["b", "a"]


async def test_a_supervisor_can_run_again_after_it_stopped() -> None:
    lab = Lab()
    sup = Supervisor("s", [lab.spec("a")])
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            nursery.cancel_scope.cancel()
    await sup.add_child(lab.spec("b"))  # stopped: only recorded
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    assert starts(lab) == ["a", "a", "a", "b"] and exits(lab) == ["a", "a", "b", "a"]


# --- over real sockets -----------------------------------------------------------------------------


async def test_a_supervised_loopback_server_comes_back_after_a_crash() -> None:
    """A real HTTP server child on 127.0.0.1: crash it, and the supervisor brings it back on a new port."""
    lab = Lab()
    crash = trio.Event()
    urls: list[str] = []

    async def http_child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crash

        async def app(request: Any, fault: Any) -> Reply:
            return Reply.json({"path": request.path, "generation": len(urls)})

        async with serve_loopback(LoopbackServer(app)) as server:
            urls.append(server.url)
            task_status.started()
            lab.record("start", "http")
            await crash.wait()
            crash = trio.Event()
            raise Boom("server crashed")

    async with open_supervisor("web", [ChildSpec("http", http_child)]) as sup, httpx.AsyncClient() as client:
        first = await client.get(urls[-1] + "/a")
        assert first.json() == {"path": "/a", "generation": 1}
        crash.set()
        await lab.until(lambda: len(urls) == 2)
        second = await client.get(urls[-1] + "/b")
        assert second.json() == {"path": "/b", "generation": 2}
        assert sup.restarts == 1
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(urls[-1] + "/c")  # stopped with the supervisor


async def test_the_event_log_keeps_the_latest_events_but_counts_them_all() -> None:
    crashes = MAX_EVENTS  # each crash is two events (crashed, restarted): twice what the log keeps
    runs = 0

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs <= crashes:
            raise Boom(f"crash {runs}")
        await trio.sleep_forever()

    intensity = Intensity(max_restarts=crashes + 1, period=1.0)
    async with open_supervisor("s", [ChildSpec("f", flaky)], intensity=intensity) as sup:
        await trio.testing.wait_all_tasks_blocked()
        assert sup.running == ["f"] and sup.restarts == crashes
    events = sup.events
    assert len(events) == MAX_EVENTS
    assert sup.event_counts == {"started": 1, "crashed": crashes, "restarted": crashes, "shutdown": 1}
    assert (events[-2].event, events[-1].event) == ("restarted", "shutdown")
    assert events[-3].reason == f"Boom: crash {crashes}"  # the newest are kept, not the oldest


def test_every_public_name_is_importable_from_duckagents_supervision() -> None:
    # Supervision is split over private modules; callers import from duckagents.supervision._supervisor only.
    import duckagents.supervision._supervisor as supervision

    assert set(supervision.__all__) == {
        "Backoff",
        "ChildSpec",
        "Intensity",
        "Restart",
        "Strategy",
        "Supervisor",
        "open_supervisor",
    }
    for name in supervision.__all__:
        assert getattr(supervision, name).__name__ == name
    assert supervision.EMIT_TIMEOUT == 1.0 and supervision.MAX_EVENTS == 256  # as docs/supervision.md says
