"""Who may use the HTTP door: the gateway's bearer tokens and scopes, and its browser Origin rule.

One token table (``[gateway] tokens``) serves both doors. ``request`` lets a client ask for completions,
``subscribe`` lets it watch (``/v1/status``, ``/metrics``); any valid token may list the models. The
health checks need none. Only ``Authorization: Bearer`` is read here: a token in a URL ends up in access
logs and proxy logs.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..gateway import Gatekeeper, Principal, origin_allowed
from ._asgi import Scope, header
from ._errors import ApiError

__all__ = ["Guard"]

_CHALLENGE = {"www-authenticate": 'Bearer realm="duckagents"'}


class Guard:
    """Checks a request's Origin and bearer token against the gatekeeper, and the scope it needs."""

    def __init__(self, gatekeeper: Gatekeeper, allowed_origins: Iterable[str]) -> None:
        self._gatekeeper = gatekeeper
        self._allowed_origins = tuple(allowed_origins)

    @property
    def open(self) -> bool:
        """True when no token is configured (every client has every scope)."""
        return self._gatekeeper.open

    def check(self, scope: Scope, needed: str | None = None) -> Principal:
        """The principal of the request; raises :class:`ApiError` 403 (Origin, scope) or 401 (token).
        ``needed`` None: any valid token will do."""
        # A page on another site can make the user's browser POST here (a "simple" request needs no
        # preflight): like the gateway, only pages served from loopback or allowed origins get in.
        if not origin_allowed(header(scope, b"origin"), self._allowed_origins):
            raise ApiError(
                403, "auth", "requests from this browser origin are not allowed", code="origin_not_allowed"
            )
        principal = self._gatekeeper.authenticate(_bearer(scope))
        if principal is None:
            raise ApiError(
                401,
                "auth",
                "missing or invalid bearer token (Authorization: Bearer ...)",
                code="invalid_api_key",
                headers=_CHALLENGE,
            )
        if needed is not None and needed not in principal.scopes:
            raise ApiError(403, "auth", f"this token lacks the {needed!r} scope", code="permission_denied")
        return principal


def _bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
