"""The operator's messages of the gateway: ``status``, ``control`` and ``reload`` (docs/gateway.md).

Each is answered by one ``ack`` carrying its result (``status``: the status document; ``control``: the
agent's ``control_reply``; ``reload``: what the reload did) or one ``error`` frame (``control_failed``,
``invalid_config``, ``unavailable``). Controls act as the connection's principal (its token's name, never
the token), which the ``control_reply`` signal records.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..codec import unstructure
from ..errors import BusClosed, ConfigError, ControlError, redact
from ..signals import ControlAction, ControlReply
from ._auth import Principal
from ._feed import FleetFeed
from ._protocol import Control, ErrorCode, ProtocolError, Reload, StatusQuery, ack_frame

__all__ = ["OperableRouter", "answer"]


class Controls(Protocol):
    """What the gateway uses of ``router.controls`` (:class:`duckagents.router.OperatorControls`)."""

    async def send(
        self, provider: str, action: ControlAction | str, *, model: str | None = None, principal: str = "api"
    ) -> ControlReply:
        """Send one control to an agent; its reply, or ControlError."""
        ...

    async def reload(self, config: Any = None, *, principal: str = "api") -> Any:
        """Re-read the configuration; the report, or ConfigError / ControlError."""
        ...


@runtime_checkable
class OperableRouter(Protocol):
    """A router with operator controls and a status document (the tree's :class:`RouterAgent` is one)."""

    @property
    def controls(self) -> Controls:
        """The operator's switches and reload."""
        ...

    def status_document(self) -> dict[str, Any]:
        """The status document (docs/gateway.md, *Status document*)."""
        ...


async def answer(
    router: object,
    msg: StatusQuery | Control | Reload,
    principal: Principal,
    fleet: FleetFeed | None = None,
) -> str:
    """Carry out one operator message for ``principal``; its ``ack`` frame, or raise ProtocolError.
    ``fleet`` (a fleet gateway's replica) makes the status document the fleet's."""
    # Who acts, in the control_reply: the token's configured name (its env var's by default), never the token.
    who = f"token:{principal.token}" if principal.token else principal.name
    if not isinstance(router, OperableRouter):
        raise ProtocolError(ErrorCode.UNAVAILABLE, "this gateway's router has no operator controls", msg.id)
    try:
        if isinstance(msg, StatusQuery):
            document = router.status_document()
            if fleet is not None:
                document = fleet.fleet_document(document)
            return ack_frame(msg.id, status=document)
        if isinstance(msg, Control):
            reply = await router.controls.send(
                msg.provider, msg.action, model=msg.model, principal=who
            )
            return ack_frame(msg.id, reply=unstructure(reply))
        report = await router.controls.reload(principal=who)
        return ack_frame(msg.id, report=unstructure(report))
    except ConfigError as exc:
        raise ProtocolError(ErrorCode.INVALID_CONFIG, redact(str(exc)), msg.id) from None
    except ControlError as exc:
        raise ProtocolError(ErrorCode.CONTROL_FAILED, redact(str(exc)), msg.id) from None
    except BusClosed:
        raise ProtocolError(ErrorCode.UNAVAILABLE, "the router is shutting down", msg.id) from None
