"""Provider agents (duckagents.agents): the base agent's inbox, attempts, limiter/breaker/metrics, health, and
each provider-specific agent over loopback servers."""
