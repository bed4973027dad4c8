"""Names of the Redis keys and channels of one fleet, with per-provider Cluster hash tags."""

from __future__ import annotations

import attrs

__all__ = ["FleetKeys"]


def _escape(name: str) -> str:
    # Braces would end the hash tag early (or start another); '%' is escaped so the mapping is injective.
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@attrs.frozen
class FleetKeys:
    """Every key of one provider shares the hash tag ``{<prefix>:<provider>}``, so the provider's limiter
    and breaker live in one Redis Cluster slot and a script may touch them together."""

    prefix: str

    def tag(self, provider: str) -> str:
        """The hash tag of a provider's keys."""
        return "{" + f"{self.prefix}:{_escape(provider)}" + "}"

    def rate_limit(self, provider: str, bucket: str = "default") -> str:
        """The hash holding a shared rate limiter's buckets (one per provider and ``bucket``)."""
        return f"{self.tag(provider)}:ratelimit:{_escape(bucket)}"

    def breaker(self, provider: str) -> str:
        """The hash holding a provider's shared circuit breaker."""
        return f"{self.tag(provider)}:breaker"

    @property
    def signals(self) -> str:
        """The capped stream of every replica's signals."""
        return f"{self.prefix}:signals"

    @property
    def notices(self) -> str:
        """The pub/sub channel of state-change notices (breakers)."""
        return f"{self.prefix}:notices"

    def replica(self, instance: str) -> str:
        """A replica's own status (JSON, expires unless rewritten)."""
        return f"{self.prefix}:replica:{_escape(instance)}"

    @property
    def replicas(self) -> str:
        """The sorted set of replicas (member: instance, score: when its status expires, ms)."""
        return f"{self.prefix}:replicas"

    def budget(self, account: str, window: str) -> str:
        """The hash of one budget account in one calendar window: spent, held, and each hold's amount.
        Every budget key shares one hash tag, so a reserve over several accounts is one script call."""
        return "{" + f"{self.prefix}:budgets" + "}" + f":{_escape(account)}:{_escape(window)}"

    def budget_holds(self, account: str, window: str) -> str:
        """The sorted set of one account's holds in one window (score: when the hold expires, ms)."""
        return self.budget(account, window) + ":holds"
