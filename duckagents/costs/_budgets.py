"""Spending limits: :class:`Budget`, the :class:`BudgetLedger` interface and :class:`InMemoryBudgets`.

A budget caps what an *account* may spend in USD per calendar day or month (UTC). Accounts are named
``provider:<name>`` (what one provider agent spends) and ``token:<name>`` (what requests submitted with
one gateway token spend, by the token's name). The router asks the ledger before it sends an attempt:
:meth:`BudgetLedger.reserve` holds the attempt's expected cost (an upper bound) on every account it
concerns, all or none, and refuses when one of them would go over; the attempt's terminal settles the
hold with the actual cost (:meth:`BudgetLedger.settle`). Because a hold is taken before the attempt is
sent, concurrent requests cannot together overspend: each sees what the others hold.

The interface is small on purpose: a fleet of processes can implement it on a shared store (e.g. one
Redis script per reserve and settle) and the router does not change.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs

__all__ = [
    "Budget",
    "BudgetHold",
    "BudgetLedger",
    "BudgetRefusal",
    "BudgetSpend",
    "InMemoryBudgets",
    "Period",
    "period_window",
    "provider_account",
    "token_account",
]

Period = Literal["day", "month"]
#: USD by which sums of float amounts may miss a budget exactly (five holds of 0.002 fill 0.01).
TOLERANCE = 1e-9


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class Budget:
    """At most ``usd`` per calendar ``period`` (UTC day or month)."""

    usd: float = attrs.field(validator=_positive)
    period: Period = "month"


def provider_account(name: str) -> str:
    """The account of what provider agent ``name`` spends."""
    return f"provider:{name}"


def token_account(name: str) -> str:
    """The account of what requests submitted with the gateway token named ``name`` spend."""
    return f"token:{name}"


def period_window(period: Period, wall_time: float) -> str:
    """The calendar window ``wall_time`` (seconds since the epoch) falls in: ``2026-11-30`` for a day,
    ``2026-11`` for a month (UTC)."""
    moment = _dt.datetime.fromtimestamp(wall_time, _dt.UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


@attrs.frozen
class BudgetHold:
    """``amount`` USD held on ``accounts`` until settled."""

    accounts: tuple[str, ...]
    amount: float
    #: The window each account's hold was taken in (a hold from a past window is not released twice).
    windows: tuple[str, ...]


@attrs.frozen
class BudgetRefusal:
    """Holding ``amount`` more would take ``account`` over its budget."""

    account: str
    budget: Budget
    spent: float
    held: float
    amount: float

    @property
    def message(self) -> str:
        """What a ``budget_exceeded`` error says."""
        return (
            f"{self.account} has spent ${self.spent:.4f} (plus ${self.held:.4f} held by requests in flight) "
            f"of its ${self.budget.usd:g} per {self.budget.period} budget; this request may cost up to "
            f"${self.amount:.4f}"
        )


@attrs.frozen
class BudgetSpend:
    """One account's budget and what was spent and is held in its current window."""

    account: str
    budget: Budget
    window: str
    spent: float
    held: float


class BudgetLedger(Protocol):
    """Where budgets are counted (in-process, or shared by a fleet)."""

    def covers(self, account: str) -> bool:
        """Does ``account`` have a budget? (Synchronous: the budgets come from the config.)"""
        ...

    async def reserve(self, accounts: Sequence[str], amount: float) -> BudgetHold | BudgetRefusal:
        """Hold ``amount`` USD on every one of ``accounts`` that has a budget, or on none of them if one
        would go over (a request costing nothing is never refused)."""
        ...

    async def settle(self, hold: BudgetHold, cost: float) -> None:
        """Release ``hold`` and count ``cost`` USD as spent on its accounts (in the current window)."""
        ...

    async def spend(self) -> list[BudgetSpend]:
        """Every account's budget with its spend and holds in the current window."""
        ...


@attrs.define
class _Account:
    budget: Budget
    window: str = ""
    spent: float = 0.0
    held: float = 0.0


class InMemoryBudgets:
    """A :class:`BudgetLedger` for one process. Nothing in it waits, so a reserve and its check are one
    step for Trio: concurrent requests cannot interleave between them.

    ``clock`` gives the wall time (seconds since the epoch) that decides the calendar window.
    """

    def __init__(self, budgets: Mapping[str, Budget], *, clock: Callable[[], float] = time.time) -> None:
        self._accounts = {name: _Account(budget) for name, budget in budgets.items()}
        self._clock = clock

    def __repr__(self) -> str:
        return f"InMemoryBudgets(accounts={sorted(self._accounts)})"

    def covers(self, account: str) -> bool:
        """Does ``account`` have a budget?"""
        return account in self._accounts

    def _current(self, account: _Account, now: float) -> _Account:
        window = period_window(account.budget.period, now)
        if account.window != window:  # a new day or month: nothing spent or held in it yet
            account.window, account.spent, account.held = window, 0.0, 0.0
        return account

    async def reserve(self, accounts: Sequence[str], amount: float) -> BudgetHold | BudgetRefusal:
        """See :meth:`BudgetLedger.reserve`."""
        now = self._clock()
        covered = [(name, self._current(self._accounts[name], now)) for name in accounts
                   if name in self._accounts]
        if amount > 0:
            for name, account in covered:
                if account.spent + account.held + amount > account.budget.usd + TOLERANCE:
                    return BudgetRefusal(name, account.budget, account.spent, account.held, amount)
        for _, account in covered:
            account.held += amount
        return BudgetHold(tuple(n for n, _ in covered), amount, tuple(a.window for _, a in covered))

    async def settle(self, hold: BudgetHold, cost: float) -> None:
        """See :meth:`BudgetLedger.settle`."""
        now = self._clock()
        for name, window in zip(hold.accounts, hold.windows, strict=True):
            account = self._current(self._accounts[name], now)
            if account.window == window:
                account.held = max(0.0, account.held - hold.amount)
            account.spent += cost

    async def spend(self) -> list[BudgetSpend]:
        """See :meth:`BudgetLedger.spend`."""
        now = self._clock()
        rows = []
        for name, account in self._accounts.items():
            current = self._current(account, now)
            rows.append(BudgetSpend(name, current.budget, current.window, current.spent, current.held))
        return rows
