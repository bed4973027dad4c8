"""What requests cost and how much may be spent: model prices and budgets.

Pure bookkeeping, no I/O: ``_prices`` (the built-in list prices, :class:`PriceTable`), ``_budgets``
(:class:`Budget`, the :class:`BudgetLedger` interface the router reserves against, and the in-process
:class:`InMemoryBudgets`). docs/routing.md describes how they are used.
"""

from ._budgets import (
    TOLERANCE,
    Budget,
    BudgetHold,
    BudgetLedger,
    BudgetRefusal,
    BudgetSpend,
    InMemoryBudgets,
    Period,
    period_window,
    provider_account,
    token_account,
)
from ._prices import BUILTIN_PRICES, FREE, LOCAL_KINDS, PRICES_DATE, ModelPrice, PriceTable, builtin_price

__all__ = [
    "BUILTIN_PRICES",
    "FREE",
    "LOCAL_KINDS",
    "PRICES_DATE",
    "TOLERANCE",
    "Budget",
    "BudgetHold",
    "BudgetLedger",
    "BudgetRefusal",
    "BudgetSpend",
    "InMemoryBudgets",
    "ModelPrice",
    "Period",
    "PriceTable",
    "builtin_price",
    "period_window",
    "provider_account",
    "token_account",
]
