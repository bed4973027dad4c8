"""The pure state machines (duckagents.resilience): circuit breaker and rate limiter, driven by Hypothesis
state machines."""
