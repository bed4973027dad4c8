"""The router agent (duckagents.router): choice of agent, retries and failover, exactly one final result,
streams."""
