"""The router asks each agent what it supports (``feature_check``; the replies reach the board).

Asked when the router starts and whenever an agent with unknown features shows up (a status, or a
supervisor's ``started`` / ``restarted``), since a check sent while the agent was down is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BusClosed
from ..signals import FeatureCheck, make_signal, new_id
from ._agent_view import AgentView
from ._state import DISPATCH

if TYPE_CHECKING:
    from ._router import RouterAgent

__all__ = ["ask_features"]


def ask_features(router: RouterAgent, view: AgentView) -> None:
    """Ask ``view``'s agent for its features unless they are known or being asked for."""
    if view.features or view.features_asked or not router.running:
        return
    view.features_asked = True
    router._spawn(_send_feature_checks, router, view)


async def _send_feature_checks(router: RouterAgent, view: AgentView) -> None:
    """One check for the default model and one per configured model."""
    checks = router.board.feature_checks
    # Forget the unanswered checks of an earlier ask, so the table stays bounded.
    for check_id in [c for c, (name, _) in checks.items() if name == view.name]:
        del checks[check_id]
    try:
        for model in dict.fromkeys([None, *view.config.models]):
            check_id = new_id()
            checks[check_id] = (view.name, model is None)
            check = FeatureCheck(check_id, provider=view.name, model=model)
            await router.bus.publish(make_signal(check, DISPATCH))
    except BusClosed:
        pass
    finally:
        view.features_asked = False
