"""Prices and budgets (duckagents.costs): the built-in price table, its lookup order, and the in-process
budget ledger (holds, settlement, calendar windows)."""
