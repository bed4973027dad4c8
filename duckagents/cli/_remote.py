"""A running server seen from the command line (``--url``): its agents' status and their models.

* ``http://`` / ``https://``: the HTTP front door, ``GET /v1/status`` and ``GET /v1/models``.
* ``ws://`` / ``wss://``: the WebSocket gateway. A gateway that answers the ``status`` message
  (``{"type": "status", "id": ...}`` acked with ``status``: the status document, the same JSON as the
  front door's ``GET /v1/status``, docs/gateway.md) is asked directly; one that does not know it
  (``unknown_type``) is watched instead: its ``provider_status`` signals, which every agent publishes at
  least every ``health_interval`` seconds and at once when its breaker changes.

Failures say why, in one line: HTTP 401 (token) vs connection refused vs timeout vs DNS.
"""

from __future__ import annotations

import json
import math
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

import attrs
import httpx
import trio
import trio_websocket

from ..codec import converter, signal_from_dict
from ..errors import GatewayUnreachable, Secret, redact
from ..gateway import PROTOCOL_VERSION, connect
from ..signals import FeatureReply, ProviderStatus
from ._base import CommandError, Unreachable, check_url, note

#: Seconds an HTTP call to the front door may take.
HTTP_TIMEOUT = 10.0
#: Once a first ``provider_status`` arrived, seconds without a new provider after which the list is done.
SETTLE = 1.0


@attrs.frozen
class ModelRow:
    """A model a server offers, and the providers offering it (with their features when known)."""

    provider: str
    model: str
    features: FeatureReply | None = None


class Server:
    """A running duckagents server at ``url`` (see the module docstring)."""

    def __init__(self, url: str, token: Secret | None, *, wait: float) -> None:
        check_url(url, ("ws", "wss", "http", "https"), "--url")
        self.url = url
        self.token = token
        #: Seconds to wait for the first ``provider_status`` when watching a gateway's stream.
        self.wait = wait

    @property
    def is_http(self) -> bool:
        """True for the HTTP front door, False for the WebSocket gateway."""
        return urllib.parse.urlsplit(self.url).scheme in ("http", "https")

    async def status(self) -> list[ProviderStatus]:
        """Every agent's latest status, as the server reports it."""
        if self.is_http:
            body = await self._get("/v1/status")
            return [_status_from(item) for item in _list_of(body, "data", self.url)]
        answer = await self._gateway_status()
        if answer is not None:
            return [_status_from(item) for item in _list_of(answer.get("status"), "data", self.url)]
        return await self._watch_status()

    async def models(self) -> list[ModelRow]:
        """The models the server offers, per provider."""
        if self.is_http:
            body = await self._get("/v1/models")
            rows = []
            for item in _list_of(body, "data", self.url):
                owners = item.get("providers") or [item.get("owned_by", "?")]
                rows += [ModelRow(str(owner), str(item.get("id"))) for owner in owners]
            return rows
        answer = await self._gateway_status()
        if answer is None:
            raise CommandError(
                f"the gateway at {_public(self.url)} does not answer the status message, so it cannot list "
                "its models; use the HTTP front door's http:// URL instead",
            )
        return [
            ModelRow(str(agent.get("provider")), str(model))
            for agent in _list_of(answer.get("status"), "data", self.url)
            for model in agent.get("models") or ()
        ]

    # --- HTTP front door ---------------------------------------------------------------------------

    async def _get(self, path: str) -> Any:
        headers = {"authorization": f"Bearer {self.token.reveal()}"} if self.token else {}
        target = self.url.rstrip("/") + path
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
                response = await client.get(target, headers=headers)
        except httpx.TimeoutException:
            raise Unreachable(f"{_public(target)}: timed out after {HTTP_TIMEOUT:g} s") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot connect to {_public(target)}: {_why(exc, self.url)}") from None
        if response.status_code == 401:
            raise Unreachable(
                f"{_public(target)} refused the request: HTTP 401 (missing or wrong token: set the variable "
                "--token-env names, default DUCKAGENTS_TOKEN)"
            )
        if response.status_code == 404:
            raise Unreachable(f"{_public(target)}: HTTP 404 (is this a duckagents HTTP front door?)")
        if response.status_code != 200:
            raise Unreachable(f"{_public(target)} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise Unreachable(f"{_public(target)} answered something that is not JSON") from None

    # --- WebSocket gateway -------------------------------------------------------------------------

    async def _gateway_status(self) -> dict[str, Any] | None:
        """The gateway's answer to the ``status`` message, or None when it does not know the message."""
        try:
            async with connect(self.url, self.token) as ws:
                await ws.send_message(json.dumps({"type": "status", "id": "status", "v": PROTOCOL_VERSION}))
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("id") != "status":
                        continue
                    if frame.get("type") == "ack":
                        return dict(frame)
                    if frame.get("code") in ("unknown_type", "invalid_message"):
                        return None
                    raise CommandError(
                        f"the gateway refused the status message: {frame.get('code')}: {frame.get('message')}"
                    )
        except GatewayUnreachable as exc:
            raise Unreachable(str(exc)) from None
        except trio_websocket.ConnectionClosed as exc:
            raise Unreachable(
                f"the gateway at {_public(self.url)} closed the connection: {exc.reason}"
            ) from None

    async def _watch_status(self) -> list[ProviderStatus]:
        """The agents' status from the gateway's ``provider_status`` signals (see the module docstring)."""
        note(
            f"duckagents: the gateway has no status message; waiting up to {self.wait:g} s for its agents' "
            "provider_status signals (they come every health_interval seconds)"
        )
        subscribe = {"type": "subscribe", "id": "status", "v": PROTOCOL_VERSION,
                     "filter": {"types": [ProviderStatus.TYPE]}}
        latest: dict[str, ProviderStatus] = {}  # by provider@replica
        try:
            async with connect(self.url, self.token) as ws:
                await ws.send_message(json.dumps(subscribe))
                deadline = trio.current_time() + self.wait
                quiet_until: float | None = None  # once statuses come: when the list counts as complete
                while True:
                    frame: Any = None
                    with trio.move_on_at(deadline if quiet_until is None else min(deadline, quiet_until)):
                        frame = json.loads(await ws.get_message())
                    if not isinstance(frame, dict):
                        break  # the time ran out
                    if frame.get("type") == "error":
                        raise CommandError(
                            "the gateway refused the subscription: "
                            f"{frame.get('code')}: {frame.get('message')}"
                        )
                    if frame.get("type") == "signal":
                        signal = signal_from_dict(frame["event"])
                        data = signal.data
                        if isinstance(data, ProviderStatus):
                            # A fleet gateway serves every replica's statuses, each naming its replica.
                            if signal.instance is not None:
                                data = attrs.evolve(data, detail={**data.detail, "instance": signal.instance})
                            key = f"{data.provider}@{signal.instance or ''}"
                            if key not in latest:
                                quiet_until = trio.current_time() + SETTLE
                            latest[key] = data
        except GatewayUnreachable as exc:
            raise Unreachable(str(exc)) from None
        except trio_websocket.ConnectionClosed as exc:
            raise Unreachable(f"the gateway at {_public(self.url)} went away: {exc.reason}") from None
        if not latest:
            raise CommandError(
                f"no provider_status from {_public(self.url)} within {self.wait:g} s "
                "(raise --wait to at least the server's health_interval)",
            )
        return list(latest.values())


def _status_from(item: Any) -> ProviderStatus:
    if not isinstance(item, dict):
        raise CommandError(f"the server sent a status that is not an object: {str(item)[:80]}")
    data = dict(item)
    if data.get("down"):  # the front door says why the supervisor marked the agent down
        data["detail"] = {**(data.get("detail") or {}), "down": str(data["down"])}
    if isinstance(data.get("instance"), str):  # a fleet's door lists every replica's agents
        data["detail"] = {**(data.get("detail") or {}), "instance": data["instance"]}
    headroom = dict(data.get("headroom") or {})
    headroom.pop("retry_after", None)  # the front door's relative form of retry_at
    data["headroom"] = headroom
    # Non-finite figures travel as null (JSON has no NaN); the status type wants numbers.
    metrics = _nulls_to_zero(data.get("metrics") or {})
    data["metrics"] = metrics
    try:
        return converter.structure(data, ProviderStatus)
    except Exception as exc:
        raise CommandError(f"the server sent a status this client cannot read: {exc}") from None


def _nulls_to_zero(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: 0.0 if v is None else _nulls_to_zero(v) for k, v in value.items()}
    return value


def _list_of(body: Any, key: str, url: str) -> Sequence[Any]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise CommandError(f"{_public(url)} answered without a {key!r} list: is it a duckagents server?")
    return items


def _public(url: str) -> str:
    """The URL without its query (which may carry ``?token=``), for messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _why(exc: BaseException, url: str) -> str:
    """Why an HTTP connection failed: DNS, refused, or the OS's reason."""
    parts = urllib.parse.urlsplit(url)
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(chain) < 32:  # causes, contexts, and the attempts inside an exception group
        current = todo.pop()
        chain.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host {parts.hostname!r} (DNS: {cause.strerror or cause})"
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"connection refused: nothing listens on {parts.netloc} "
                "(is `duckagents serve --http` running?)"
            )
    return redact(str(exc) or type(exc).__name__)


def finite(value: Any) -> Any:
    """``value`` with non-finite floats as None, so it can be written as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value

