"""Crash reasons are readable: groups flattened in events, full tracebacks in the log, the give-up's
cause kept, and a nested supervisor's give-up contained by a temporary spec in its parent."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from duckagents.bus import SignalBus, SignalFilter
from duckagents.codec import dumps_signal, loads_signal
from duckagents.errors import SupervisorGaveUp
from duckagents.signals import SupervisorEvent
from duckagents.supervision import ChildSpec, Intensity, Restart, Supervisor, open_supervisor
from duckagents.supervision._events import describe, error_fields, format_crash


class Boom(Exception):
    """The crash of our test children."""


def raise_in_nursery() -> BaseException:
    """A real Trio nursery group around a Boom raised two frames deep (what an actor's crash looks like)."""

    def inner() -> None:
        raise Boom("the real reason, key sk-abcdefghijklmnopqrstuvwxyz")

    async def task() -> None:
        inner()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)

    try:
        trio.run(main)
    except BaseException as exc:
        return exc
    raise AssertionError("no crash")


def test_groups_are_flattened_and_redacted() -> None:
    group = raise_in_nursery()
    assert isinstance(group, BaseExceptionGroup)
    reason = describe(group)
    assert reason.startswith("Boom: the real reason") and "sk-abc" not in reason
    assert error_fields(group) == ("Boom", "the real reason, key ***")
    two = ExceptionGroup("outer", [ValueError("v"), ExceptionGroup("inner", [KeyError("k")])])
    assert describe(two) == "ValueError: v (and 1 more)"
    text = format_crash(group)
    assert "Traceback (most recent call last)" in text and "in inner" in text and "Boom" in text
    assert "sk-abc" not in text and "Exceptions from Trio nursery" not in text
    assert "exception 2 of 2" in format_crash(two)
    assert describe(None) == "" and error_fields(None) == ("", "")


def test_the_new_event_fields_round_trip_and_old_ones_stay() -> None:
    from duckagents.signals import make_signal

    event = SupervisorEvent("s", "c", "crashed", "Boom: x", 2, "Boom", "x")
    back = loads_signal(dumps_signal(make_signal(event, "/supervisor/s")))
    assert back.data == event
    envelope = '{"specversion":"1.0","id":"1","source":"/s","type":"supervisor_event",'
    data = '"data":{"supervisor":"s","child":"c","event":"crashed","reason":"r","restarts":0}}'
    old = loads_signal(envelope + data)  # a producer that knows only the old fields
    assert old.data == SupervisorEvent("s", "c", "crashed", "r", 0)


async def crashing(
    crashes: list[int], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    crashes.append(1)
    async with trio.open_nursery() as nursery:  # the crash comes wrapped in a group, like an actor's

        async def fail() -> None:
            raise Boom(f"crash number {len(crashes)}")

        nursery.start_soon(fail)


async def steady(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


async def test_a_nested_supervisor_gives_up_alone_with_readable_reasons_and_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bus = SignalBus()
    crashes: list[int] = []
    spec = ChildSpec("agent:x", crashing, (crashes,))
    inner = Supervisor("agent:x", [spec], intensity=Intensity(2, 60), bus=bus)
    children = [
        ChildSpec("router", steady),
        ChildSpec("agent:x", inner.run, restart=Restart.TEMPORARY, shutdown_timeout=10),
    ]
    caplog.set_level(logging.ERROR, logger="duckagents.supervision")
    with bus.subscribe(SignalFilter(types={"supervisor_event"}), buffer=100) as sub:
        async with open_supervisor("root", children, intensity=Intensity(0, 10), bus=bus) as root:
            await trio.sleep(1)
            assert root.running == ["router"]  # the root did not give up (its budget is 0 restarts)
            assert root.children == ["router"] and root.restarts == 0
        bus.close()
        events = [s.data async for s in sub]
    assert len(crashes) == 3  # the first run and two restarts, then the budget (2 in 60 s) ran out
    gave_up = [e for e in events if isinstance(e, SupervisorEvent) and e.event == "gave_up"]
    assert [(e.supervisor, e.child) for e in gave_up] == [("agent:x", "agent:x")]
    assert (gave_up[0].error_type, gave_up[0].error_message) == ("Boom", "crash number 3")
    assert gave_up[0].reason == "Boom: crash number 3"
    crashed_in_root = [e for e in events if e.supervisor == "root" and e.event == "crashed"]  # type: ignore[union-attr]
    assert [e.error_type for e in crashed_in_root] == ["SupervisorGaveUp"]  # type: ignore[union-attr]
    # Every crash and the give-up logged, with the real traceback.
    records = [r.getMessage() for r in caplog.records]
    crash_lines = [m for m in records if "child agent:x crashed: Boom" in m]
    assert len(crash_lines) == 3 and all("Traceback (most recent call last)" in m for m in crash_lines)
    assert all("in fail" in m for m in crash_lines)
    [give_up] = [m for m in records if "gave up" in m and m.startswith("supervisor agent:x")]
    assert "crash number 3" in give_up and "Traceback" in give_up
    nested = "supervisor root: child agent:x crashed: supervisor 'agent:x' gave up"
    assert any(m.startswith(nested) for m in records)


async def test_the_give_up_keeps_its_cause(autojump_clock: trio.testing.MockClock) -> None:
    crashes: list[int] = []
    supervisor = Supervisor("s", [ChildSpec("c", crashing, (crashes,))], intensity=Intensity(0, 5))
    with pytest.raises(SupervisorGaveUp) as info:
        await supervisor.run()
    cause = info.value.__cause__
    assert isinstance(cause, BaseExceptionGroup) and describe(cause) == "Boom: crash number 1"
