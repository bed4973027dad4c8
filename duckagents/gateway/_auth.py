"""Handshake checks of the gateway: bearer tokens (constant-time), scopes, and the browser Origin.

Tokens are read once, from the environment variables named by :class:`~duckagents.config.TokenConfig`,
and held as :class:`~duckagents.errors.Secret`; nothing here ever puts a token in a message or a log.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import urllib.parse
from collections.abc import Iterable, Mapping

import attrs

from ..config import GatewayConfig
from ..errors import ConfigError, Secret

#: ``subscribe``: watch signals and read the status; ``request``: submit and cancel requests; ``admin``:
#: operator controls (breakers, drain, models) and reload.
SCOPES: frozenset[str] = frozenset({"subscribe", "request", "admin"})
ANONYMOUS = "anonymous"


@attrs.frozen
class Principal:
    """Who is on a connection: a label safe to log (the token's env var name) and its scopes.

    ``token`` is the token's configured name (``[[gateway.tokens]] name``, default its env var): requests
    submitted on the connection carry it as ``ProviderRequest.principal`` (per-token budgets). None when
    the gateway takes no tokens.
    """

    name: str
    scopes: frozenset[str]
    token: str | None = None


@attrs.frozen
class Verdict:
    """The handshake decision: ``status`` 0 to accept as ``principal``, else the HTTP status to reject."""

    status: int
    principal: Principal | None = None
    reason: str = ""


@attrs.frozen
class _Token:
    secret: Secret
    principal: Principal


def load_tokens(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> tuple[_Token, ...]:
    """Read every configured token from its environment variable; a missing one is a ConfigError."""
    env = os.environ if environ is None else environ
    tokens = []
    for token in config.tokens:
        value = env.get(token.env)
        if not value:
            raise ConfigError(f"gateway token: environment variable {token.env} is not set")
        principal = Principal(f"token:{token.env}", frozenset(token.scopes), token.label)
        tokens.append(_Token(Secret(value), principal))
    return tuple(tokens)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """May a browser page served from ``origin`` connect?

    No Origin header: not a browser, allowed (the token still applies). With an allow-list, the origin
    must be in it (``"*"`` allows any). Without one, only pages served from loopback hosts may connect, so
    that an arbitrary web site open in the user's browser cannot drive a local gateway.
    """
    if origin is None:
        return True
    allowed = tuple(allowed)
    if allowed:
        return "*" in allowed or origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}
    parsed = urllib.parse.urlsplit(origin)
    return parsed.scheme in ("http", "https") and is_loopback_host(parsed.hostname or "")


def bearer_token(headers: Mapping[str, str], target: str) -> str | None:
    """The token from ``Authorization: Bearer ...``, else from the ``token`` query parameter."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    query = urllib.parse.urlsplit(target).query
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("token")
    return values[0] if values else None


class Gatekeeper:
    """Decides on each WebSocket handshake: Origin (403), then token (401)."""

    def __init__(self, config: GatewayConfig, environ: Mapping[str, str] | None = None) -> None:
        self._tokens = load_tokens(config, environ)
        self._allowed_origins = config.allowed_origins

    @property
    def open(self) -> bool:
        """True when no token is configured (loopback only): every client gets every scope, admin too."""
        return not self._tokens

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """The configured tokens, for :func:`~duckagents.errors.redact`."""
        return tuple(t.secret for t in self._tokens)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of the presented token, or None. Compares in constant time against every token."""
        if self.open:
            return Principal(ANONYMOUS, SCOPES)
        if presented is None:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        # Compare against every token (no early exit) so timing says nothing about which one was close.
        for token in self._tokens:
            if hmac.compare_digest(candidate, token.secret.reveal().encode("utf-8")) and found is None:
                found = token.principal
        return found

    def check(self, headers: Mapping[str, str], target: str) -> Verdict:
        """The verdict for a handshake with lower-cased ``headers`` and request ``target``."""
        if not origin_allowed(headers.get("origin"), self._allowed_origins):
            return Verdict(403, reason="origin not allowed")
        principal = self.authenticate(bearer_token(headers, target))
        if principal is None:
            return Verdict(401, reason="missing or wrong token")
        return Verdict(0, principal)
