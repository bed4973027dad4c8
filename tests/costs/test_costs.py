"""Prices and budgets, pure: lookup order of the price table, and the ledger's holds and windows."""

from __future__ import annotations

import datetime as dt

import pytest
import trio

from duckagents.costs import (
    BUILTIN_PRICES,
    FREE,
    PRICES_DATE,
    Budget,
    BudgetHold,
    BudgetRefusal,
    InMemoryBudgets,
    ModelPrice,
    PriceTable,
    builtin_price,
    period_window,
    provider_account,
    token_account,
)


def test_builtin_prices_match_by_the_longest_prefix_and_are_dated() -> None:
    assert dt.date.fromisoformat(PRICES_DATE)
    assert builtin_price("openai", "gpt-4o-mini") == ModelPrice(0.15, 0.60)
    assert builtin_price("openai", "gpt-4o-mini-2024-07-18") == ModelPrice(0.15, 0.60)
    assert builtin_price("openai", "gpt-4o-2024-08-06") == ModelPrice(2.50, 10.00)  # not gpt-4o-mini's
    assert builtin_price("openai", "gpt-4.1-nano") == ModelPrice(0.10, 0.40)  # not gpt-4's
    assert builtin_price("openai", "ft:gpt-4o-mini:acme::abc") == ModelPrice(0.15, 0.60)
    assert builtin_price("anthropic", "claude-sonnet-4-5-20250929") == ModelPrice(3.00, 15.00)
    assert builtin_price("anthropic", "claude-opus-4-5") == ModelPrice(5.00, 25.00)  # not opus-4's
    assert builtin_price("anthropic", "claude-opus-4-20250514") == ModelPrice(15.00, 75.00)
    assert builtin_price("openai", "llama3.2") is None
    assert builtin_price("ollama", "llama3.2") is None  # no table: local kinds are free by rule
    assert all(p.input >= 0 and p.output >= 0 for table in BUILTIN_PRICES.values() for p in table.values())


def test_cost_is_per_million_tokens() -> None:
    assert ModelPrice(3.0, 15.0).cost(2000, 100) == pytest.approx(0.0075)
    assert ModelPrice.per_1k(0.00015, 0.0006) == ModelPrice(0.15, 0.6)
    assert ModelPrice.per_1k(None, None) is None
    with pytest.raises(ValueError, match="input must be >= 0"):
        ModelPrice(-1.0, 0.0)


def test_price_lookup_order() -> None:
    table = PriceTable({"gpt-4o-mini": ModelPrice(1.0, 2.0), "llama3.2": ModelPrice(0.01, 0.02)})
    own = ModelPrice(9.0, 9.0)
    assert table.price("openai", "gpt-4o-mini", own) == own  # the provider's own prices first
    assert table.price("openai", "gpt-4o-mini") == ModelPrice(1.0, 2.0)  # then the config's per model
    assert table.price("openai", "gpt-4o") == ModelPrice(2.5, 10.0)  # then the built-in list price
    assert table.price("ollama", "llama3.2") == ModelPrice(0.01, 0.02)  # a priced local model
    assert table.price("ollama", "gemma:2b") == FREE  # local kinds are free otherwise
    assert table.price("mock", "mock-1") == FREE and table.price("tgi", "tgi") == FREE
    assert table.price("openai", "my-vllm-model") is None  # unknown: no cost figure


def test_period_windows_are_utc_days_and_months() -> None:
    moment = dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC).timestamp()
    assert period_window("day", moment) == "2026-11-30"
    assert period_window("month", moment) == "2026-11"
    assert period_window("day", moment + 120) == "2026-12-01"


async def test_holds_are_all_or_nothing_and_settle_with_the_actual_cost() -> None:
    now = [dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC).timestamp()]
    ledger = InMemoryBudgets(
        {provider_account("gpt"): Budget(1.0, "day"), token_account("alice"): Budget(0.5, "month")},
        clock=lambda: now[0],
    )
    assert ledger.covers("provider:gpt") and not ledger.covers("provider:other")
    accounts = ["provider:gpt", "token:alice", "provider:other"]
    hold = await ledger.reserve(accounts, 0.3)
    assert isinstance(hold, BudgetHold) and hold.accounts == ("provider:gpt", "token:alice")
    # alice has 0.2 left (0.3 held): refused, and nothing is held on gpt for the refused request.
    refused = await ledger.reserve(accounts, 0.25)
    assert isinstance(refused, BudgetRefusal) and refused.account == "token:alice"
    assert "$0.5 per month budget" in refused.message
    spend = {s.account: s for s in await ledger.spend()}
    assert spend["provider:gpt"].held == pytest.approx(0.3)
    assert spend["token:alice"].held == pytest.approx(0.3)
    await ledger.settle(hold, 0.1)  # it cost less than the worst case held
    spend = {s.account: s for s in await ledger.spend()}
    assert (spend["token:alice"].spent, spend["token:alice"].held) == (pytest.approx(0.1), 0.0)
    assert isinstance(await ledger.reserve(accounts, 0.4), BudgetHold)  # 0.1 + 0.4 fits 0.5 exactly
    # A request that costs nothing is never refused, even with the budget used up.
    assert isinstance(await ledger.reserve(accounts, 0.0), BudgetHold)
    assert isinstance(await ledger.reserve(accounts, 0.01), BudgetRefusal)


async def test_a_new_day_starts_a_new_window_and_an_old_hold_is_not_released_twice() -> None:
    now = [dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC).timestamp()]
    ledger = InMemoryBudgets({"provider:gpt": Budget(1.0, "day")}, clock=lambda: now[0])
    old = await ledger.reserve(["provider:gpt"], 0.9)
    assert isinstance(old, BudgetHold)
    assert isinstance(await ledger.reserve(["provider:gpt"], 0.2), BudgetRefusal)
    now[0] += 120  # past midnight (UTC)
    fresh = await ledger.reserve(["provider:gpt"], 0.2)
    assert isinstance(fresh, BudgetHold) and fresh.windows == ("2026-12-01",)
    await ledger.settle(old, 0.5)  # the old day's request ended today: its cost counts today
    [spend] = await ledger.spend()
    assert (spend.window, spend.spent, spend.held) == ("2026-12-01", pytest.approx(0.5), pytest.approx(0.2))


async def test_concurrent_reservations_never_overspend() -> None:
    ledger = InMemoryBudgets({"provider:p": Budget(0.01, "day")})
    granted: list[BudgetHold] = []

    async def one() -> None:
        hold = await ledger.reserve(["provider:p"], 0.002)
        if isinstance(hold, BudgetHold):
            granted.append(hold)
            await trio.sleep(0.01)
            await ledger.settle(hold, 0.002)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    [spend] = await ledger.spend()
    assert len(granted) == 5 and spend.spent == pytest.approx(0.01) and spend.held == 0.0


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="usd must be > 0"):
        Budget(0.0)
