"""Which provider class and which agent class serve each ``ProviderConfig.kind``.

Provider-specific agent subclasses live in ``duckagents.agents._<module>`` (``_openai``, ``_anthropic``,
``_local`` for Ollama, ``_tgi``) and are named ``<X>Agent`` (or exported as ``AGENT``); while a module
does not exist yet its kind is served by the base :class:`~duckagents.agents.ProviderAgent`. :func:`register`
adds or overrides a kind (tests, plugins).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import attrs
import httpx

from ..bus import SignalBus
from ..config import ProviderConfig
from ..errors import ConfigError
from ..providers import DisabledProvider, MockProvider, Provider
from ._agent import ProviderAgent

__all__ = ["Registration", "agent_class", "build_agent", "provider_factory", "register"]

ProviderFactory = Callable[..., Provider]
log = logging.getLogger("duckagents.agents")


@attrs.frozen
class Registration:
    """Where a kind's provider class and agent subclass live (module path, class name)."""

    provider: tuple[str, str]
    agent: tuple[str, str] | None = None


_BUILTIN: dict[str, Registration] = {
    "openai": Registration(("duckagents.providers._openai", "OpenAIProvider"),
                           ("duckagents.agents._openai", "OpenAIAgent")),
    "anthropic": Registration(("duckagents.providers._anthropic", "AnthropicProvider"),
                              ("duckagents.agents._anthropic", "AnthropicAgent")),
    "ollama": Registration(("duckagents.providers._ollama", "OllamaProvider"),
                           ("duckagents.agents._local", "LocalAgent")),
    "tgi": Registration(("duckagents.providers._tgi", "TGIProvider"), ("duckagents.agents._tgi", "TGIAgent")),
    "mock": Registration(("duckagents.providers._mock", "MockProvider")),
}
_custom_providers: dict[str, ProviderFactory] = {}
_custom_agents: dict[str, type[ProviderAgent]] = {}


def register(
    kind: str, *, provider: ProviderFactory | None = None, agent: type[ProviderAgent] | None = None
) -> None:
    """Serve ``kind`` with this provider constructor and/or agent class (overrides the built-in)."""
    if provider is not None:
        _custom_providers[kind] = provider
    if agent is not None:
        _custom_agents[kind] = agent


def _import_optional(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # not written (yet): the caller falls back
        raise  # the module exists but one of its imports is missing: a real error


def agent_class(kind: str) -> type[ProviderAgent]:
    """The agent class for ``kind``: a registered one, the kind's subclass module, else the base."""
    if kind in _custom_agents:
        return _custom_agents[kind]
    registration = _BUILTIN.get(kind)
    if registration is None or registration.agent is None:
        return ProviderAgent
    module_name, class_name = registration.agent
    module = _import_optional(module_name)
    if module is None:
        return ProviderAgent
    found = getattr(module, class_name, None) or getattr(module, "AGENT", None)
    if found is None:
        # Named differently: take the one ProviderAgent subclass the module defines.
        defined = [
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, ProviderAgent) and obj is not ProviderAgent
            and obj.__module__ == module.__name__
        ]
        found = defined[0] if len(defined) == 1 else None
    if not (inspect.isclass(found) and issubclass(found, ProviderAgent)):
        raise ConfigError(f"{module_name} defines no ProviderAgent subclass {class_name}")
    return found


def provider_class(kind: str) -> ProviderFactory:
    """The provider constructor for ``kind``; :class:`ConfigError` for an unknown kind."""
    if kind in _custom_providers:
        return _custom_providers[kind]
    registration = _BUILTIN.get(kind)
    if registration is None:
        known = ", ".join(sorted({*_BUILTIN, *_custom_providers}))
        raise ConfigError(f"unknown provider kind {kind!r}; known: {known}")
    module_name, class_name = registration.provider
    cls: ProviderFactory = getattr(importlib.import_module(module_name), class_name)
    return cls


def provider_factory(
    config: ProviderConfig,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Callable[[], Provider]:
    """A zero-argument constructor of ``config``'s provider (an agent calls it again after a restart).

    The API key is read now, from ``environ`` (default ``os.environ``), so a missing key fails at start
    with a :class:`ConfigError`. ``options`` keys the provider's constructor accepts are passed to it
    (agent subclasses read the others); the mock takes all of them. One mock instance serves every
    restart, so its script survives a crash.
    """
    api_key = config.api_key(environ)
    if config.kind == "mock" and "mock" not in _custom_providers:
        mock = MockProvider.from_options(
            config.options, base_url=config.url, api_key=api_key, default_model=config.default_model,
            timeout=config.timeout,
        )
        return lambda: mock
    cls = provider_class(config.kind)
    kwargs: dict[str, Any] = {"base_url": config.url, "api_key": api_key, "timeout": config.timeout}
    if config.default_model:
        kwargs["default_model"] = config.default_model
    if transport is not None:
        kwargs["transport"] = transport
    accepted = _keyword_names(cls)
    kwargs.update({k: v for k, v in config.options.items() if k in accepted and k not in kwargs})
    return lambda: cls(**kwargs)


def _keyword_names(cls: ProviderFactory) -> frozenset[str]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(
        name for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def build_agent(
    config: ProviderConfig,
    bus: SignalBus,
    *,
    provider: Provider | None = None,
    environ: Mapping[str, str] | None = None,
    **agent_options: Any,
) -> ProviderAgent:
    """The agent for ``config``: its kind's agent class around its provider (or ``provider``, if given:
    then the caller owns it and closes it).

    A provider whose API key variable is not set gets a base agent around a
    :class:`~duckagents.providers.DisabledProvider`: it shows as down with the reason
    (``"OPENAI_API_KEY is not set"``) and takes no requests, while the other providers serve.
    """
    cls = agent_class(config.kind)
    if provider is not None:
        return cls(config, bus, provider, **agent_options)
    missing = config.missing_key(environ)
    if missing is not None:
        log.warning("provider %r is disabled: %s", config.name, missing)
        disabled = DisabledProvider(config.kind, missing, config.default_model)
        return ProviderAgent(config, bus, disabled, **agent_options)
    return cls(config, bus, provider_factory=provider_factory(config, environ=environ), **agent_options)
