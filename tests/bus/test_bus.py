"""The signal bus: filters, overflow policies, fan-out, unsubscribe/close, terminal waiters, counters."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.bus import Overflow, SignalBus, SignalFilter, Subscription, TerminalClaims
from duckagents.errors import BusClosed, ErrorKind, ProviderError
from duckagents.signals import (
    ProviderChunk,
    ProviderErrorData,
    ProviderResponse,
    Signal,
    SupervisorEvent,
    make_signal,
)


def chunk(request_id: str = "r1", provider: str = "p1", index: int = 0) -> Signal:
    return make_signal(ProviderChunk(request_id, provider, index, f"d{index}"), "/test")


def response(request_id: str = "r1", provider: str = "p1", content: str = "ok") -> Signal:
    return make_signal(ProviderResponse(request_id, provider, "m", content), "/test")


def failure(request_id: str = "r1", provider: str = "p1") -> Signal:
    return make_signal(ProviderErrorData(request_id, ErrorKind.UPSTREAM_5XX, "bad", provider=provider), "/t")


def event() -> Signal:  # no subject, no provider
    return make_signal(SupervisorEvent("s", "c", "started"), "/supervisor/s")


def drain(sub: Subscription) -> list[Signal]:
    out: list[Signal] = []
    while True:
        try:
            out.append(sub.receive_nowait())
        except (trio.WouldBlock, BusClosed):
            return out


# --- filters ---------------------------------------------------------------------------------------


def test_filter_fields_each_and_combined() -> None:
    c1, c2, r1, ev = chunk("r1", "p1"), chunk("r2", "p2"), response("r1", "p2"), event()
    assert SignalFilter().matches(ev) and SignalFilter().matches(c1)
    by_type = SignalFilter(types={"provider_chunk"})
    assert [by_type.matches(s) for s in (c1, c2, r1, ev)] == [True, True, False, False]
    by_provider = SignalFilter(providers={"p2"})
    assert [by_provider.matches(s) for s in (c1, c2, r1, ev)] == [False, True, True, False]
    by_request = SignalFilter(request_ids={"r1"})
    assert [by_request.matches(s) for s in (c1, c2, r1, ev)] == [True, False, True, False]
    both = SignalFilter(types={"provider_chunk"}, request_ids={"r1"})
    assert [both.matches(s) for s in (c1, c2, r1, ev)] == [True, False, False, False]
    all_three = SignalFilter(types={"provider_response"}, providers={"p2"}, request_ids={"r1", "r9"})
    assert [all_three.matches(s) for s in (c1, c2, r1, ev)] == [False, False, True, False]
    assert not SignalFilter(request_ids=frozenset()).matches(c1)


def test_filter_takes_a_lone_string_as_one_name() -> None:
    assert SignalFilter(types="provider_chunk").types == frozenset({"provider_chunk"})  # type: ignore[arg-type]
    assert SignalFilter(providers=["a", "b"]).providers == frozenset({"a", "b"})


async def test_subscriptions_receive_exactly_what_their_filter_matches() -> None:
    bus = SignalBus()
    subs = {
        "all": bus.subscribe(),
        "chunks": bus.subscribe(SignalFilter(types={"provider_chunk"})),
        "p2": bus.subscribe(SignalFilter(providers={"p2"})),
        "r1": bus.subscribe(SignalFilter(request_ids={"r1"})),
        "r1_terminal": bus.subscribe(
            SignalFilter(types={"provider_response", "provider_error"}, request_ids={"r1"})
        ),
        "r1_r2_p1": bus.subscribe(SignalFilter(providers={"p1"}, request_ids={"r1", "r2"})),
    }
    signals = [chunk("r1", "p1"), chunk("r2", "p2"), response("r1", "p2"), failure("r2", "p1"), event()]
    for s in signals:
        await bus.publish(s)
    got = {name: [s.id for s in drain(sub)] for name, sub in subs.items()}
    ids = [s.id for s in signals]
    assert got["all"] == ids
    assert got["chunks"] == [ids[0], ids[1]]
    assert got["p2"] == [ids[1], ids[2]]
    assert got["r1"] == [ids[0], ids[2]]
    assert got["r1_terminal"] == [ids[2]]
    assert got["r1_r2_p1"] == [ids[0], ids[3]]


_names = st.sampled_from(["a", "b", "c"])
_optional_set = st.none() | st.frozensets(_names, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    filters=st.lists(st.tuples(_optional_set, _optional_set, _optional_set), min_size=1, max_size=6),
    envelopes=st.lists(
        st.tuples(
            st.sampled_from(["provider_chunk", "provider_response"]), st.none() | _names, st.none() | _names
        ),
        max_size=8,
    ),
)
def test_indexed_delivery_agrees_with_filter_matches(
    filters: list[tuple[frozenset[str] | None, ...]], envelopes: list[tuple[str, str | None, str | None]]
) -> None:
    """Whatever the mix of indexed (request id) and scanned subscriptions, each gets exactly the signals
    its filter matches, in publish order."""

    async def scenario() -> None:
        bus = SignalBus()
        subs = [bus.subscribe(SignalFilter(t, p, r)) for t, p, r in filters]
        signals = [
            Signal(type=kind, source="/x", data=chunk().data, subject=rid, provider=prov)
            for kind, prov, rid in envelopes
        ]
        for s in signals:
            await bus.publish(s)
        for sub in subs:
            assert drain(sub) == [s for s in signals if sub.filter.matches(s)]
        expected = sum(sub.filter.matches(s) for sub in subs for s in signals)
        assert bus.stats().delivered == expected

    trio.run(scenario)


# --- overflow policies -----------------------------------------------------------------------------


async def test_block_overflow_makes_the_publisher_wait_for_room() -> None:
    bus = SignalBus()
    sub = bus.subscribe(buffer=2, overflow=Overflow.BLOCK)
    published: list[int] = []

    async def publisher() -> None:
        for i in range(4):
            await bus.publish(chunk(index=i))
            published.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert published == [0, 1] and sub.pending == 2  # the third publish is stuck
        assert (await sub.receive()).data.index == 0  # type: ignore[union-attr]
        await trio.testing.wait_all_tasks_blocked()
        assert published == [0, 1, 2] and sub.pending == 2
        assert (await sub.receive()).data.index == 1  # type: ignore[union-attr]
    assert published == [0, 1, 2, 3]
    assert [s.data.index for s in drain(sub)] == [2, 3]  # type: ignore[union-attr]
    assert sub.dropped == 0 and bus.stats().dropped == 0


async def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    bus = SignalBus()
    sub = bus.subscribe(buffer=3, overflow=Overflow.DROP_OLDEST)
    other = bus.subscribe(buffer=2, overflow=Overflow.DROP_OLDEST)
    for i in range(10):
        await bus.publish(chunk(index=i))  # never waits: nobody reads
    assert [s.data.index for s in drain(sub)] == [7, 8, 9]  # type: ignore[union-attr]
    assert [s.data.index for s in drain(other)] == [8, 9]  # type: ignore[union-attr]
    assert sub.dropped == 7 and other.dropped == 8
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.dropped, stats.subscribers) == (10, 20, 15, 2)


async def test_slow_drop_oldest_subscriber_does_not_stall_publishing() -> None:
    bus = SignalBus()
    slow = bus.subscribe(buffer=4, overflow=Overflow.DROP_OLDEST)  # never reads
    fast = bus.subscribe(buffer=8, overflow=Overflow.BLOCK)
    received: list[int] = []

    async def reader() -> None:
        async for s in fast:
            received.append(s.data.index)  # type: ignore[union-attr]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(1000):
            await bus.publish(chunk(index=i))
        bus.close()
    assert received == list(range(1000))
    assert slow.dropped == 996 and [s.data.index for s in drain(slow)] == [996, 997, 998, 999]  # type: ignore[union-attr]
    assert bus.stats().dropped == 996


def test_invalid_buffers_are_refused() -> None:
    bus = SignalBus()
    with pytest.raises(ValueError, match="buffer"):
        bus.subscribe(buffer=0, overflow=Overflow.DROP_OLDEST)
    with pytest.raises(ValueError, match="buffer"):
        bus.subscribe(buffer=-1)
    with pytest.raises(ValueError, match="default_buffer"):
        SignalBus(default_buffer=0)


async def test_zero_buffer_block_subscription_is_a_rendezvous() -> None:
    bus = SignalBus()
    sub = bus.subscribe(buffer=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus.publish, chunk(index=5))
        await trio.testing.wait_all_tasks_blocked()
        assert sub.pending == 0
        assert (await sub.receive()).data.index == 5  # type: ignore[union-attr]


# --- fan-out ---------------------------------------------------------------------------------------


async def test_hundred_subscribers_each_get_every_matching_signal_in_order() -> None:
    bus = SignalBus(default_buffer=4)  # small buffers: publishing interleaves with the readers
    results: dict[int, list[int]] = {}

    async def reader(n: int, sub: Subscription) -> None:
        with sub:
            results[n] = [s.data.index async for s in sub]  # type: ignore[union-attr]

    async with trio.open_nursery() as nursery:
        for n in range(100):
            # Even readers take every chunk, odd ones only provider p1's: every third chunk is p1's.
            flt = SignalFilter(types={"provider_chunk"}) if n % 2 == 0 else SignalFilter(providers={"p1"})
            nursery.start_soon(reader, n, bus.subscribe(flt))
        for i in range(60):
            await bus.publish(chunk(provider="p1" if i % 3 == 0 else "p2", index=i))
            await bus.publish(event())  # matches nobody
        bus.close()
    assert len(results) == 100
    for n, got in results.items():
        assert got == (list(range(60)) if n % 2 == 0 else list(range(0, 60, 3))), n
    assert bus.stats().delivered == 50 * 60 + 50 * 20


# --- unsubscribe and close -------------------------------------------------------------------------


async def test_unsubscribe_wakes_a_blocked_receiver() -> None:
    bus = SignalBus()
    sub = bus.subscribe()
    outcome: list[str] = []

    async def receiver() -> None:
        with pytest.raises(BusClosed):
            await sub.receive()
        outcome.append("woke")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        sub.close()
    assert outcome == ["woke"]
    assert bus.stats().subscribers == 0
    await bus.publish(chunk())  # nobody left; does not fail
    assert bus.stats().delivered == 0


async def test_leaving_the_with_block_unsubscribes_and_ends_iteration() -> None:
    bus = SignalBus()
    with bus.subscribe(SignalFilter(request_ids={"r1"})) as sub:
        assert bus.stats().subscribers == 1
        await bus.publish(chunk("r1"))
    assert sub.closed and bus.stats().subscribers == 0
    with pytest.raises(BusClosed):
        sub.receive_nowait()
    assert [s async for s in sub] == []
    sub.close()  # idempotent
    assert bus.stats().subscribers == 0


async def test_unsubscribe_releases_a_publisher_blocked_on_it() -> None:
    bus = SignalBus()
    stuck = bus.subscribe(buffer=1)
    live = bus.subscribe(buffer=10)
    done = trio.Event()

    async def publisher() -> None:
        await bus.publish(chunk(index=0))
        await bus.publish(chunk(index=1))  # stuck's buffer is full
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        stuck.close()
    assert [s.data.index for s in drain(live)] == [0, 1]  # type: ignore[union-attr]


async def test_closing_the_bus_ends_subscriptions_after_they_drain() -> None:
    bus = SignalBus()
    sub = bus.subscribe()
    for i in range(3):
        await bus.publish(chunk(index=i))
    bus.close()
    assert sub.closed and bus.closed
    assert [s.data.index async for s in sub] == [0, 1, 2]  # type: ignore[union-attr]
    with pytest.raises(BusClosed):
        await sub.receive()
    with pytest.raises(BusClosed):
        await bus.publish(chunk())
    with pytest.raises(BusClosed):
        bus.subscribe()
    with pytest.raises(BusClosed):
        bus.expect("r1")
    bus.close()  # idempotent


async def test_closing_the_bus_wakes_blocked_receivers_and_publishers() -> None:
    bus = SignalBus()
    empty = bus.subscribe(SignalFilter(types={"provider_response"}))
    full = bus.subscribe(buffer=1)
    await bus.publish(chunk(index=0))
    outcomes: list[str] = []

    async def receiver() -> None:
        with pytest.raises(BusClosed):
            await empty.receive()
        outcomes.append("receiver")

    async def publisher() -> None:
        with pytest.raises(BusClosed):
            await bus.publish(chunk(index=1))
        outcomes.append("publisher")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        bus.close()
    assert sorted(outcomes) == ["publisher", "receiver"]
    assert [s.data.index for s in drain(full)] == [0]  # type: ignore[union-attr]


# --- terminal waiters ------------------------------------------------------------------------------


async def test_expect_returns_the_first_terminal_signal(autojump_clock: trio.testing.MockClock) -> None:
    bus = SignalBus()
    with bus.expect("r1") as waiter:

        async def agent() -> None:
            await trio.sleep(3)
            await bus.publish(chunk("r1"))  # not terminal
            await bus.publish(response("r2"))  # another request
            await bus.publish(failure("r1"))
            await bus.publish(response("r1"))  # a second terminal is ignored

        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            got = await waiter.wait(deadline=trio.current_time() + 10)
            assert trio.current_time() == pytest.approx(3.0)
        assert got.type == "provider_error" and got.subject == "r1"
        assert await waiter.wait() is got  # stays answered
    assert bus.stats().waiters == 0


async def test_expect_times_out_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    bus = SignalBus()
    start = trio.current_time()
    with bus.expect("r1") as waiter:
        await bus.publish(chunk("r1"))
        with pytest.raises(ProviderError) as info:
            await waiter.wait(deadline=start + 5)
    assert trio.current_time() == pytest.approx(start + 5)
    assert info.value.kind is ErrorKind.TIMEOUT and info.value.request_id == "r1" and info.value.retryable


async def test_an_answer_that_arrived_wins_over_a_passed_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = SignalBus()
    with bus.expect("r1") as waiter:
        await bus.publish(response("r1"))
        await trio.sleep(10)
        assert (await waiter.wait(deadline=trio.current_time() - 1)).type == "provider_response"


async def test_many_waiters_for_one_request_and_close_wakes_them() -> None:
    bus = SignalBus()
    first, second, other = bus.expect("r1"), bus.expect("r1"), bus.expect("r2")
    assert bus.stats().waiters == 3
    await bus.publish(response("r1"))
    assert first.result is not None and first.result is second.result
    outcome: list[str] = []

    async def waiting() -> None:
        with pytest.raises(BusClosed):
            await other.wait()
        outcome.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting)
        await trio.testing.wait_all_tasks_blocked()
        bus.close()
    assert outcome == ["closed"]
    assert (await first.wait()).type == "provider_response"  # an answered waiter keeps its answer


async def test_stats_count_published_delivered_and_subscribers() -> None:
    bus = SignalBus()
    a = bus.subscribe()
    b = bus.subscribe(SignalFilter(types={"provider_response"}))
    waiter = bus.expect("r1")
    await bus.publish(chunk("r1"))
    await bus.publish(response("r1"))
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.subscribers, stats.waiters) == (2, 4, 2, 1)
    a.close()
    b.close()
    waiter.close()
    assert bus.stats().subscribers == 0 and bus.stats().waiters == 0
    assert "SignalBus(" in repr(bus) and "Subscription(" in repr(a) and "r1" in repr(waiter)


# --- source exclusion ------------------------------------------------------------------------------


def test_exclude_sources_leaves_out_only_those_sources() -> None:
    mine = make_signal(ProviderChunk("r1", "p1", 0, "x"), "/router")
    theirs = chunk("r1", "p1")  # source /test
    f = SignalFilter(types={"provider_chunk"}, exclude_sources="/router")
    assert f.exclude_sources == frozenset({"/router"})
    assert [f.matches(s) for s in (mine, theirs, response("r1"))] == [False, True, False]
    assert not SignalFilter(exclude_sources={"/x"}).matches_all


async def test_a_subscription_excluding_a_source_is_not_woken_by_it() -> None:
    bus = SignalBus()
    with bus.subscribe(SignalFilter(exclude_sources={"/router"})) as sub:
        await bus.publish(make_signal(ProviderChunk("r1", "p1", 0, "own"), "/router"))
        assert bus.publish_nowait(make_signal(ProviderChunk("r1", "p1", 1, "own"), "/router"))
        await bus.publish(chunk("r1", index=2))
        assert [s.data.index for s in drain(sub)] == [2]  # type: ignore[union-attr]


# --- publish_nowait ---------------------------------------------------------------------------------


async def test_publish_nowait_delivers_to_every_match_without_a_scheduler_turn() -> None:
    bus = SignalBus()
    general = bus.subscribe(SignalFilter(types={"provider_response"}))
    targeted = bus.subscribe(SignalFilter(request_ids={"r1"}))
    other = bus.subscribe(SignalFilter(request_ids={"r2"}))
    with bus.expect("r1") as waiter:
        # Synchronous: no other task can run in between, so both subscribers have it right away.
        assert bus.publish_nowait(response("r1"))
        assert [s.type for s in drain(general)] == ["provider_response"]
        assert [s.type for s in drain(targeted)] == ["provider_response"]
        assert drain(other) == []
        assert waiter.result is not None and waiter.result.subject == "r1"
    stats = bus.stats()
    assert (stats.published, stats.delivered) == (1, 3)


def test_publish_nowait_delivers_nothing_when_a_block_subscriber_is_full() -> None:
    bus = SignalBus()
    roomy = bus.subscribe(buffer=10)
    tight = bus.subscribe(SignalFilter(request_ids={"r1"}), buffer=1)
    assert bus.publish_nowait(chunk("r1", index=0))
    # tight is full: all or nothing, so roomy does not get it either, and nothing is counted.
    assert not bus.publish_nowait(chunk("r1", index=1))
    assert bus.publish_nowait(chunk("r2", index=2))  # tight does not want it: no reason to wait
    assert [s.data.index for s in drain(roomy)] == [0, 2]  # type: ignore[union-attr]
    assert [s.data.index for s in drain(tight)] == [0]  # type: ignore[union-attr]
    assert bus.publish_nowait(chunk("r1", index=3))  # room again
    assert bus.stats().published == 3


def test_publish_nowait_never_waits_on_drop_oldest_and_refuses_a_rendezvous() -> None:
    bus = SignalBus()
    lossy = bus.subscribe(buffer=2, overflow=Overflow.DROP_OLDEST)
    for i in range(5):
        assert bus.publish_nowait(chunk(index=i))
    assert [s.data.index for s in drain(lossy)] == [3, 4]  # type: ignore[union-attr]
    assert lossy.dropped == 3 and bus.stats().dropped == 3
    lossy.close()
    with bus.subscribe(buffer=0):  # a rendezvous always needs the awaiting publish
        assert not bus.publish_nowait(chunk())
    bus.close()
    with pytest.raises(BusClosed):
        bus.publish_nowait(chunk())


async def test_publish_nowait_sees_room_taken_by_a_blocked_publisher() -> None:
    bus = SignalBus()
    sub = bus.subscribe(buffer=1)
    assert bus.publish_nowait(chunk(index=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus.publish, chunk(index=1))
        await trio.testing.wait_all_tasks_blocked()
        # The receive frees a place that Trio hands straight to the blocked publisher: still full.
        assert sub.receive_nowait().data.index == 0  # type: ignore[union-attr]
        assert not bus.publish_nowait(chunk(index=2))
    assert [s.data.index for s in drain(sub)] == [1]  # type: ignore[union-attr]
    assert bus.publish_nowait(chunk(index=3))


async def test_a_cancelled_blocked_publisher_gives_its_place_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = SignalBus()
    sub = bus.subscribe(buffer=1)
    assert bus.publish_nowait(chunk(index=0))
    with trio.move_on_after(1):
        await bus.publish(chunk(index=1))  # stuck: the buffer is full
    assert sub.receive_nowait().data.index == 0  # type: ignore[union-attr]
    assert bus.publish_nowait(chunk(index=2))  # the cancelled publish does not hold the freed place
    assert [s.data.index for s in drain(sub)] == [2]  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(1, 4),
    ops=st.lists(st.sampled_from(["nowait", "receive"]), max_size=40),
)
def test_publish_nowait_agrees_with_a_bounded_queue_model(size: int, ops: list[str]) -> None:
    bus = SignalBus()
    block = bus.subscribe(buffer=size)
    lossy = bus.subscribe(buffer=size, overflow=Overflow.DROP_OLDEST)
    model: list[int] = []
    lossy_model: list[int] = []
    for n, op in enumerate(ops):
        if op == "nowait":
            published = bus.publish_nowait(chunk(index=n))
            assert published == (len(model) < size)
            if published:
                model.append(n)
                lossy_model = [*lossy_model, n][-size:]
        elif model:
            assert block.receive_nowait().data.index == model.pop(0)  # type: ignore[union-attr]
        else:
            with pytest.raises(trio.WouldBlock):
                block.receive_nowait()
        assert block.pending == len(model)
    assert [s.data.index for s in drain(lossy)] == lossy_model  # type: ignore[union-attr]


# --- module layout -----------------------------------------------------------------------------------


def test_every_public_name_is_importable_from_duckagents_bus() -> None:
    # The bus layer keeps its modules private; callers import from duckagents.bus only.
    import duckagents.bus as bus_module


    assert sorted(bus_module.__all__) == [
        "BusStats",
        "Overflow",
        "SignalBus",
        "SignalFilter",
        "Subscription",
        "TerminalClaims",
        "TerminalWaiter",
    ]
    for name in bus_module.__all__:
        assert getattr(bus_module, name).__name__ == name
    bus = SignalBus()
    # What the bus hands out are instances of the re-exported classes, not look-alikes.
    with bus.subscribe() as sub, bus.expect("r1") as waiter:
        assert isinstance(sub, bus_module.Subscription) and isinstance(sub.filter, SignalFilter)
        assert isinstance(waiter, bus_module.TerminalWaiter)
        assert sub.overflow is Overflow.BLOCK
    assert isinstance(bus.stats(), bus_module.BusStats)


def test_terminal_claims_let_exactly_one_party_publish_and_stay_bounded() -> None:
    claims = TerminalClaims(capacity=2)
    assert claims.take("nobody-coordinates") and claims.take(None)  # not opened: nothing to decide
    claims.open("r#1")
    assert claims.take("r#1")  # the first taker publishes...
    assert not claims.take("r#1")  # ...the second stays silent, and the claim is settled
    assert len(claims) == 0
    claims.open("r#2")
    claims.forget("r#2")  # the router saw the agent's terminal: done with it
    assert len(claims) == 0
    for subject in ("a#1", "b#1", "c#1"):
        claims.open(subject)
    assert len(claims) == 2 and claims.forgotten == 1  # bounded: the oldest goes first
