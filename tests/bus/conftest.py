"""The signal bus (duckagents.bus): subscriptions, overflow policies, filters, the request-id index and
terminal waiters."""
