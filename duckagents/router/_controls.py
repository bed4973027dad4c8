"""Operator controls of a running tree, through its router: :class:`OperatorControls` (``router.controls``).

A control reaches its agent as a ``provider_control`` signal (source :data:`CONTROL_SOURCE`, addressed to
the agent, subject = the control's id) and is answered by exactly one ``control_reply`` saying who
(``principal``) did what and how it went. The router's signal loop hands each reply to the router's state
first (a breaker switch or a drain takes effect in the agent's view) and then to the waiting caller, so
when a control returns the router already routes by it. docs/signals.md, *Operator controls*, has the
flow; the gateway's ``control`` and ``reload`` ops and the CLI call these methods.

A reload is the tree's (:func:`duckagents.app.open_tree` registers it as :attr:`OperatorControls.reloader`);
its outcome is announced the same way, as a ``control_reply`` with action ``reload`` and no provider.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import attrs
import trio

from ..bus import SignalBus
from ..config import Config
from ..errors import BusClosed, ConfigError, ControlError
from ..signals import (
    MODEL_ACTIONS,
    ControlAction,
    ControlReply,
    ModelEntry,
    ProviderControl,
    Signal,
    make_signal,
    new_id,
)
from ._report import ReloadReport
from ._state import RouterState

__all__ = ["CONTROL_SOURCE", "DEFAULT_TIMEOUTS", "MAX_PENDING_CONTROLS", "OperatorControls", "Reloader"]

#: Source of ``provider_control`` signals and of the ``control_reply`` announcing a reload.
CONTROL_SOURCE = "/router/control"
#: Controls awaiting their reply, at most (more are refused).
MAX_PENDING_CONTROLS = 64
#: Seconds to wait for an agent's reply, by action (loading a large model takes minutes).
DEFAULT_TIMEOUTS: dict[ControlAction, float] = {
    ControlAction.MODELS_LIST: 30.0,
    ControlAction.MODEL_LOAD: 600.0,
    ControlAction.MODEL_UNLOAD: 60.0,
}
SWITCH_TIMEOUT = 10.0


class Reloader(Protocol):
    """Re-read the configuration and apply it to the running tree (see :meth:`duckagents.app.Tree.reload`)."""

    def __call__(
        self, config: Config | str | Path | None = None, *, principal: str = "api"
    ) -> Awaitable[ReloadReport]:
        """Apply ``config`` (None: re-read the file the tree was started from)."""
        ...


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: ControlReply | None = None


class OperatorControls:
    """The operator's switches over a running tree (see the module docstring).

    Every method takes ``principal``: who acts, as the ``control_reply`` will say (a gateway token's name,
    ``"api"``, ``"cli"``...; never a secret). A control that is refused or fails raises
    :class:`~duckagents.errors.ControlError` naming the reason; otherwise the agent's reply is returned.
    """

    def __init__(self, bus: SignalBus, state: RouterState, *, running: Callable[[], bool]) -> None:
        self._bus = bus
        self._state = state
        self._running = running
        self._pending: dict[str, _Pending] = {}
        #: Applies a reload to the tree; set by the tree that runs this router (None: nothing to reload).
        self.reloader: Reloader | None = None

    # --- the switches ------------------------------------------------------------------------------

    async def reset_breaker(self, provider: str, *, principal: str = "api") -> ControlReply:
        """Close ``provider``'s breaker and forget its failures (also ends forced open and disabled)."""
        return await self.send(provider, ControlAction.BREAKER_RESET, principal=principal)

    async def force_open_breaker(self, provider: str, *, principal: str = "api") -> ControlReply:
        """Hold ``provider``'s breaker open: it gets no requests until :meth:`reset_breaker`."""
        return await self.send(provider, ControlAction.BREAKER_FORCE_OPEN, principal=principal)

    async def disable_breaker(self, provider: str, *, principal: str = "api") -> ControlReply:
        """Switch ``provider``'s breaker off: it admits everything and never trips, until a reset."""
        return await self.send(provider, ControlAction.BREAKER_DISABLE, principal=principal)

    async def drain(self, provider: str, *, principal: str = "api") -> ControlReply:
        """Send ``provider`` no new attempts (from now: its view drains before the control goes out);
        those in flight finish. See :meth:`wait_idle`."""
        view = self._state.views.get(provider)
        before = view.draining if view is not None else False
        if view is not None:
            view.draining = True
            self._state.notify()
        try:
            return await self.send(provider, ControlAction.DRAIN, principal=principal)
        except ControlError:
            if view is not None and self._state.views.get(provider) is view:
                view.draining = before
                self._state.notify()
            raise

    async def resume(self, provider: str, *, principal: str = "api") -> ControlReply:
        """Send ``provider`` attempts again after a drain."""
        return await self.send(provider, ControlAction.RESUME, principal=principal)

    async def wait_idle(self, provider: str, within: float) -> bool:
        """Wait until no attempt the router sent is in flight on ``provider`` (e.g. after a drain); False
        when ``within`` seconds passed first."""
        state = self._state
        with trio.move_on_after(within):
            while (view := state.views.get(provider)) is not None and view.active:
                await state.changed.wait()
        view = state.views.get(provider)
        return view is None or not view.active

    async def list_models(self, provider: str, *, principal: str = "api") -> tuple[ModelEntry, ...]:
        """The models ``provider`` offers (a local one: those on its server, marked when loaded)."""
        return (await self.send(provider, ControlAction.MODELS_LIST, principal=principal)).models

    async def load_model(
        self, provider: str, model: str | None = None, *, principal: str = "api"
    ) -> ControlReply:
        """Load ``model`` (default: the agent's) into the local ``provider``'s memory."""
        return await self.send(provider, ControlAction.MODEL_LOAD, model=model, principal=principal)

    async def unload_model(
        self, provider: str, model: str | None = None, *, principal: str = "api"
    ) -> ControlReply:
        """Evict ``model`` (default: the agent's) from the local ``provider``'s memory."""
        return await self.send(provider, ControlAction.MODEL_UNLOAD, model=model, principal=principal)

    async def pull_model(self, provider: str, model: str, *, principal: str = "api") -> ControlReply:
        """Start downloading ``model`` into the local ``provider``; returns once it started. The pull runs
        in the agent, whoever asked may leave: follow its ``progress`` signals (``detail["task"]``)."""
        return await self.send(provider, ControlAction.MODEL_PULL, model=model, principal=principal)

    async def send(
        self,
        provider: str,
        action: ControlAction | str,
        *,
        model: str | None = None,
        principal: str = "api",
        reply_within: float | None = None,
    ) -> ControlReply:
        """Send one control to ``provider``'s agent and return its reply (``ok``); raises
        :class:`ControlError` when it is refused, fails, or gets no reply within ``reply_within`` seconds
        (default by action, :data:`DEFAULT_TIMEOUTS`)."""
        try:
            action = ControlAction(action)
        except ValueError:
            known = ", ".join(a.value for a in ControlAction if a is not ControlAction.RELOAD)
            raise ControlError(f"unknown control {action!r}; known: {known}") from None
        if action is ControlAction.RELOAD:
            raise ControlError("reload is the tree's, not an agent's: call reload()")
        if action is ControlAction.MODEL_PULL and not model:
            raise ControlError("model_pull needs the model to pull")
        if model is not None and action not in MODEL_ACTIONS:
            raise ControlError(f"{action.value} takes no model")
        views = self._state.views
        if provider not in views:
            raise ControlError(f"unknown provider {provider!r}; known: {', '.join(views) or 'none'}")
        if not self._running():
            raise ControlError("the router is not running")
        if len(self._pending) >= MAX_PENDING_CONTROLS:
            raise ControlError(f"{len(self._pending)} controls are awaiting replies; try again")
        control = ProviderControl(f"ctl-{new_id()}", provider, action, principal, model)
        wait = reply_within if reply_within is not None else DEFAULT_TIMEOUTS.get(action, SWITCH_TIMEOUT)
        pending = self._pending[control.request_id] = _Pending()
        try:
            signal = Signal(
                ProviderControl.TYPE, CONTROL_SOURCE, control, subject=control.request_id, provider=provider
            )
            try:
                await self._bus.publish(signal)
            except BusClosed:
                raise ControlError("the tree is shutting down") from None
            with trio.move_on_after(wait):
                await pending.done.wait()
        finally:
            del self._pending[control.request_id]
        reply = pending.reply
        if reply is None:
            raise ControlError(f"provider agent {provider} gave no reply to {action.value} within {wait:g} s")
        if not reply.ok:
            raise ControlError(f"{provider}: {action.value} failed: {reply.message}")
        return reply

    def take_reply(self, reply: ControlReply) -> None:
        """A ``control_reply`` from the router's signal loop (after the state took it): wake its caller."""
        pending = self._pending.get(reply.request_id)
        if pending is not None and pending.reply is None:
            pending.reply = reply
            pending.done.set()

    # --- reload --------------------------------------------------------------------------------------

    async def reload(
        self, config: Config | str | Path | None = None, *, principal: str = "api"
    ) -> ReloadReport:
        """Re-read the configuration (or apply ``config``) without a restart: added providers start,
        removed ones drain and stop, changed ones are replaced after draining; requests in flight are not
        lost. An invalid configuration is refused whole (:class:`ConfigError`, the same message as at
        start) and the running one keeps serving. Announced as a ``control_reply`` (action ``reload``)."""
        reloader = self.reloader
        if reloader is None:
            raise ControlError("this router runs in no tree that can reload (start it with open_tree)")
        try:
            report = await reloader(config, principal=principal)
        except (ConfigError, ControlError) as exc:
            failed = ControlReply(f"ctl-{new_id()}", ControlAction.RELOAD, principal, False, str(exc))
            await self._announce(failed)
            raise
        changes = {"added": report.added, "removed": report.removed, "changed": report.changed}
        detail = {key: ",".join(names) for key, names in changes.items() if names}
        reply = ControlReply(
            f"ctl-{new_id()}", ControlAction.RELOAD, principal, True, report.describe(), detail=detail
        )
        await self._announce(reply)
        return report

    async def _announce(self, reply: ControlReply) -> None:
        try:
            await self._bus.publish(make_signal(reply, CONTROL_SOURCE))
        except BusClosed:
            pass
