"""The one exception hierarchy of duckagents, the closed set of error kinds, and secret redaction.

Every failure a caller can see is a :class:`DuckAgentsError`. Failures of a provider call are a
:class:`ProviderError` whose :attr:`ProviderError.kind` comes from the closed :class:`ErrorKind` set, so
routers, breakers and clients can decide on a kind instead of parsing messages.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable


class ErrorKind(str, enum.Enum):
    """Why a provider request failed. A closed set: every ``provider_error`` signal carries one."""

    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    CIRCUIT_OPEN = "circuit_open"
    TIMEOUT = "timeout"
    UPSTREAM_4XX = "upstream_4xx"
    UPSTREAM_5XX = "upstream_5xx"
    OVERLOADED = "overloaded"
    CONTEXT_LENGTH = "context_length"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    NETWORK = "network"
    PROTOCOL = "protocol"
    UNSUPPORTED = "unsupported"
    NO_PROVIDER = "no_provider"
    AGENT_CRASHED = "agent_crashed"
    SHUTDOWN = "shutdown"
    CANCELLED = "cancelled"
    #: An unexpected exception (a bug, an unencodable value) while handling this one request: it failed
    #: alone, and another attempt would meet the same fault, so it is never retried.
    INTERNAL = "internal"
    #: Serving the request would take a provider's or a gateway token's spend over its budget.
    BUDGET_EXCEEDED = "budget_exceeded"


#: Kinds that another attempt (later, or on another provider) may cure.
RETRYABLE_KINDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.CIRCUIT_OPEN,
        ErrorKind.TIMEOUT,
        ErrorKind.UPSTREAM_5XX,
        ErrorKind.OVERLOADED,
        ErrorKind.NETWORK,
        ErrorKind.PROTOCOL,
        ErrorKind.AGENT_CRASHED,
    }
)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word`` (difflib), or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DuckAgentsError(Exception):
    """Base class of every error raised by duckagents."""


class ConfigError(DuckAgentsError):
    """The configuration is invalid; the message names the offending key and what was expected."""


class BusClosed(DuckAgentsError):
    """The signal bus (or a subscription on it) was closed."""


class SupervisorGaveUp(DuckAgentsError):
    """A supervisor exceeded its restart intensity and escalates to its parent.

    ``supervisor`` names it; ``child`` names the child whose crash exceeded the intensity.
    """

    def __init__(self, supervisor: str, child: str, restarts: int, period: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child!r} crashed more than "
            f"{restarts} time(s) in {period:g} s"
        )
        self.supervisor = supervisor
        self.child = child
        self.restarts = restarts
        self.period = period


class AgentFault(DuckAgentsError):
    """Raised by a provider (or an agent hook) when its own machinery is broken, not the request: the agent
    crashes and its supervisor restarts it (re-creating a provider built from a factory).

    Any other unexpected exception met while handling a request fails only that request (kind
    ``internal``) and leaves the agent serving. A request whose handling raised an ``AgentFault`` is not
    the cause of the crash, so the router may retry it on another agent.
    """


class ProviderError(DuckAgentsError):
    """A provider request failed.

    Carries the context a caller (or router) needs to decide what to do next, and never a secret:
    ``message`` passes through :func:`redact` with the secrets known to the raiser.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
        attempt: int | None = None,
        agent_id: str | None = None,
        breaker_state: str | None = None,
        partial: bool = False,
    ) -> None:
        self.kind = ErrorKind(kind)
        self.message = message
        self.provider = provider
        self.model = model
        self.retryable = (self.kind in RETRYABLE_KINDS) if retryable is None else retryable
        self.retry_after = retry_after
        self.status = status
        self.request_id = request_id
        self.attempt = attempt
        self.agent_id = agent_id
        self.breaker_state = breaker_state
        self.partial = partial
        super().__init__(str(self))

    def __str__(self) -> str:
        where = "/".join(p for p in (self.provider, self.model) if p)
        head = f"[{self.kind.value}{' ' + where if where else ''}"
        if self.status is not None:
            head += f" HTTP {self.status}"
        return f"{head}] {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, provider={self.provider!r}, "
            f"message={self.message!r})"
        )


class StreamProtocolError(ProviderError):
    """An upstream stream (SSE or NDJSON) was malformed or ended before its terminal event."""

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(ErrorKind.PROTOCOL, message, **context)  # type: ignore[arg-type]


class GatewayError(DuckAgentsError):
    """The WebSocket gateway refused a message or a connection."""


class GatewayUnreachable(GatewayError):
    """The gateway could not be reached (refused, DNS, timeout), refused the handshake (401, 403, 503),
    or went away; the message says which."""


class FleetUnavailable(DuckAgentsError):
    """Redis (fleet mode) did not answer within the bound, or failed; the caller falls back locally."""


class ControlError(DuckAgentsError):
    """An operator control (breaker switch, drain, model management, reload) was refused or failed; the
    message says why (unknown provider, unsupported by that agent, no reply in time, the agent's error)."""


class Secret:
    """A secret string (API key, token) whose repr and str never show the value.

    Use :meth:`reveal` at the single place the value goes on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call only where it goes on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


REDACTED = "***"

# Key-shaped tokens redacted even when the raiser did not know the secret (an upstream echoing a key).
_KEY_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)


def redact(text: str, secrets: Iterable[Secret | str | None] = ()) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced by ``***``."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return _KEY_PATTERNS.sub(REDACTED, text)

