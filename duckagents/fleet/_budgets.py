"""Budgets counted fleet-wide: :class:`FleetBudgets`, a :class:`~duckagents.costs.BudgetLedger` in Redis.

The same bookkeeping as :class:`~duckagents.costs.InMemoryBudgets` (holds taken before an attempt is
sent, settled with its actual cost, all accounts of a reserve at once or none), done by one call of
``budget.lua`` each, atomically: concurrent requests of every replica see each other's holds, so together
they cannot overspend. A hold carries an expiry (``hold_ttl``): one whose replica died is released.

While the fleet is degraded, a local ledger decides with this replica's share of what was left of each
budget when Redis was last seen (remaining / ``expected_replicas``); what it spends meanwhile is added to
the shared accounts when the fleet re-joins. The shares add up to at most what was left, so the fleet
cannot overspend while degraded either (up to what one replica saw last).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from ..costs import TOLERANCE, Budget, BudgetHold, BudgetRefusal, BudgetSpend, InMemoryBudgets, period_window
from ..errors import FleetUnavailable
from ._fleet import Fleet, number
from ._health import FleetStatus

__all__ = ["FleetBudgetHold", "FleetBudgets"]

log = logging.getLogger("duckagents.fleet")

#: Keys of a window live this long after their last write (longer than a month).
KEY_TTL = 40 * 24 * 3600.0
#: Default seconds a hold lasts when its attempt never settles (its replica died).
HOLD_TTL = 900.0


@attrs.frozen
class FleetBudgetHold(BudgetHold):
    """A hold taken in Redis (``shared``) or by the local fallback; ``hold_id`` names it in Redis."""

    hold_id: str = ""
    shared: bool = True


class FleetBudgets:
    """A budget ledger shared by the fleet (see the module docstring). ``clock`` is the wall clock
    (seconds since the epoch) that decides the calendar window and the holds' expiry."""

    def __init__(
        self,
        fleet: Fleet,
        budgets: Mapping[str, Budget],
        *,
        hold_ttl: float = HOLD_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not hold_ttl > 0:
            raise ValueError(f"hold_ttl must be > 0, got {hold_ttl!r}")
        self.fleet = fleet
        self.budgets = dict(budgets)
        self.hold_ttl = hold_ttl
        self._clock = clock
        self._ids = 0
        # What Redis last said per account: (window, spent, held); the local fallback's base.
        self._seen: dict[str, tuple[str, float, float]] = {}
        self._local: InMemoryBudgets | None = None
        # Spent while degraded, per account: added to the shared accounts on re-join.
        self._unshared: dict[str, float] = {}
        self._unwatch = fleet.health.watch(self._health_changed)

    def __repr__(self) -> str:
        return f"FleetBudgets(accounts={sorted(self.budgets)}, instance={self.fleet.instance!r})"

    def close(self) -> None:
        """Stop following the fleet's health."""
        self._unwatch()

    def covers(self, account: str) -> bool:
        """Does ``account`` have a budget?"""
        return account in self.budgets

    async def reserve(self, accounts: Sequence[str], amount: float) -> BudgetHold | BudgetRefusal:
        """See :meth:`~duckagents.costs.BudgetLedger.reserve`."""
        covered = [a for a in accounts if a in self.budgets]
        if not self.fleet.health.degraded:
            try:
                return await self._reserve_shared(covered, amount)
            except FleetUnavailable:
                pass
        local = self._local_ledger()
        hold = await local.reserve(covered, amount)
        if isinstance(hold, BudgetHold):
            return FleetBudgetHold(hold.accounts, hold.amount, hold.windows, shared=False)
        return hold

    async def settle(self, hold: BudgetHold, cost: float) -> None:
        """See :meth:`~duckagents.costs.BudgetLedger.settle`."""
        shared = isinstance(hold, FleetBudgetHold) and hold.shared
        if isinstance(hold, FleetBudgetHold) and shared and not self.fleet.health.degraded:
            try:
                await self._settle_shared(hold, cost)
                return
            except FleetUnavailable:
                pass
        if not shared and self._local is not None:
            await self._local.settle(hold, cost)
        # Counted in Redis on re-join (a shared hold left there expires by itself).
        for account in hold.accounts:
            self._unshared[account] = self._unshared.get(account, 0.0) + cost

    async def spend(self) -> list[BudgetSpend]:
        """See :meth:`~duckagents.costs.BudgetLedger.spend`: the fleet's totals (as last seen, plus
        this replica's unshared spend, while degraded)."""
        accounts = list(self.budgets)
        if accounts and not self.fleet.health.degraded:
            try:
                await self._run("spend", accounts, self._windows(accounts), [])
            except FleetUnavailable:
                pass
        rows = []
        for account in accounts:
            budget = self.budgets[account]
            fresh = (period_window(budget.period, self._clock()), 0.0, 0.0)
            window, spent, held = self._seen.get(account, fresh)
            rows.append(BudgetSpend(account, budget, window, spent + self._unshared.get(account, 0.0), held))
        return rows

    async def share_unshared(self) -> None:
        """Add what was spent while degraded to the shared accounts (the replica calls it on re-join)."""
        pending = {a: c for a, c in self._unshared.items() if c}
        if not pending or self.fleet.health.degraded:
            return
        accounts = list(pending)
        costs = [number(pending[a]) for a in accounts]
        await self._run("add", accounts, self._windows(accounts), costs)
        for account in accounts:
            self._unshared[account] -= pending[account]

    # --- internals ---------------------------------------------------------------------------------

    def _windows(self, accounts: Sequence[str]) -> list[str]:
        now = self._clock()
        return [period_window(self.budgets[a].period, now) for a in accounts]

    async def _run(
        self, op: str, accounts: Sequence[str], windows: Sequence[str], args: list[str]
    ) -> list[str]:
        keys = []
        for account, window in zip(accounts, windows, strict=True):
            keys += [self.fleet.keys.budget(account, window), self.fleet.keys.budget_holds(account, window)]
        now_ms = round(self._clock() * 1000)
        argv = [op, str(now_ms), str(round(KEY_TTL * 1000)), *args]
        first = 2 if op == "reserve" else 0
        reply = await self.fleet.run_script(
            "budget", keys, argv, f"budget {op}", reply_length=first + 2 * len(accounts)
        )
        try:
            totals = [float(v) for v in reply[first:]]
        except ValueError:
            raise self.fleet.unavailable(f"budget {op}: unexpected script reply {reply!r}") from None
        if op != "reserve" or reply[0] == "1":
            for n, (account, window) in enumerate(zip(accounts, windows, strict=True)):
                self._seen[account] = (window, totals[2 * n], totals[2 * n + 1])
        return reply

    async def _reserve_shared(self, accounts: list[str], amount: float) -> BudgetHold | BudgetRefusal:
        windows = self._windows(accounts)
        if not accounts:
            return FleetBudgetHold((), amount, (), hold_id="", shared=True)
        self._ids += 1
        hold_id = f"{self.fleet.instance}:{self._ids}"
        expiry = round((self._clock() + self.hold_ttl) * 1000)
        budgets = [number(self.budgets[a].usd) for a in accounts]
        args = [number(amount), number(TOLERANCE), hold_id, str(expiry), *budgets]
        reply = await self._run("reserve", accounts, windows, args)
        if reply[0] == "1":
            return FleetBudgetHold(tuple(accounts), amount, tuple(windows), hold_id=hold_id, shared=True)
        index = int(reply[1]) - 1
        account = accounts[index]
        spent, held = float(reply[2 + 2 * index]), float(reply[3 + 2 * index])
        return BudgetRefusal(account, self.budgets[account], spent, held, amount)

    async def _settle_shared(self, hold: FleetBudgetHold, cost: float) -> None:
        if not hold.accounts:
            return
        current = self._windows(hold.accounts)
        if list(hold.windows) == current:
            args = [number(hold.amount), number(cost), hold.hold_id]
            await self._run("settle", hold.accounts, hold.windows, args)
            return
        # A new day or month began: the hold goes with its window, the cost counts in the new one.
        await self._run("settle", hold.accounts, hold.windows, [number(hold.amount), "0", hold.hold_id])
        await self._run("add", hold.accounts, current, [number(cost)] * len(hold.accounts))

    def _local_ledger(self) -> InMemoryBudgets:
        if self._local is None:
            self._local = self._share_of_what_is_left()
        return self._local

    def _share_of_what_is_left(self) -> InMemoryBudgets:
        replicas = self.fleet.config.expected_replicas
        now = self._clock()
        shares = {}
        for account, budget in self.budgets.items():
            left = budget.usd
            seen = self._seen.get(account)
            if seen is not None and seen[0] == period_window(budget.period, now):
                left = budget.usd - seen[1] - seen[2]
            # A Budget must be positive: an exhausted account gets a share too small to hold anything.
            shares[account] = Budget(max(left / replicas, 1e-12), budget.period)
        return InMemoryBudgets(shares, clock=self._clock)

    def _health_changed(self, status: FleetStatus) -> None:
        if status.degraded:
            self._local = self._share_of_what_is_left()
        else:
            self._local = None

    async def run(self) -> None:
        """Share what was spent while degraded whenever the fleet re-joins, until cancelled."""
        while True:
            await self.fleet.health.wait_joined()
            try:
                await self.share_unshared()
            except FleetUnavailable:
                continue
            await self.fleet.health.wait_degraded()

