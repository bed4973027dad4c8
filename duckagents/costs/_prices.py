"""What a model costs: :class:`ModelPrice`, the built-in list prices, and :class:`PriceTable`.

Prices are USD per million tokens, input and output apart (the unit the providers publish). The
built-in table holds the list prices of the known OpenAI and Anthropic models (standard tier: no batch,
cache or long-context rates), as of :data:`PRICES_DATE`; the config overrides them per model
(``[models."name"] price``) and per provider (``cost_per_1k_input`` / ``cost_per_1k_output``). Models
served by local kinds (Ollama, TGI, the mock) cost 0 unless the config prices them. docs/routing.md has
the lookup order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "BUILTIN_PRICES",
    "FREE",
    "LOCAL_KINDS",
    "PRICES_DATE",
    "ModelPrice",
    "PriceTable",
    "builtin_price",
]

#: When the built-in prices were last checked against the providers' published list prices.
PRICES_DATE = "2026-11-30"
#: Provider kinds that run on your own hardware: their models cost nothing unless the config says so.
LOCAL_KINDS = frozenset({"ollama", "tgi", "mock"})


def _not_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class ModelPrice:
    """USD per million tokens of input (prompt) and of output (completion)."""

    input: float = attrs.field(default=0.0, validator=_not_negative)
    output: float = attrs.field(default=0.0, validator=_not_negative)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for this many tokens."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000

    @classmethod
    def per_1k(cls, input_per_1k: float | None, output_per_1k: float | None) -> ModelPrice | None:
        """From prices per 1,000 tokens (a provider's ``cost_per_1k_*``); None when neither is set."""
        if input_per_1k is None and output_per_1k is None:
            return None
        return cls((input_per_1k or 0.0) * 1000, (output_per_1k or 0.0) * 1000)


FREE = ModelPrice()

#: List prices by provider kind and model prefix (a model matches the longest prefix it equals or
#: extends with ``-``: ``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``). Checked on PRICES_DATE.
BUILTIN_PRICES: dict[str, dict[str, ModelPrice]] = {
    "openai": {
        "gpt-5": ModelPrice(1.25, 10.00),
        "gpt-5-mini": ModelPrice(0.25, 2.00),
        "gpt-5-nano": ModelPrice(0.05, 0.40),
        "gpt-4.1": ModelPrice(2.00, 8.00),
        "gpt-4.1-mini": ModelPrice(0.40, 1.60),
        "gpt-4.1-nano": ModelPrice(0.10, 0.40),
        "gpt-4o": ModelPrice(2.50, 10.00),
        "gpt-4o-mini": ModelPrice(0.15, 0.60),
        "chatgpt-4o-latest": ModelPrice(5.00, 15.00),
        "gpt-4-turbo": ModelPrice(10.00, 30.00),
        "gpt-4": ModelPrice(30.00, 60.00),
        "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
        "o1": ModelPrice(15.00, 60.00),
        "o1-mini": ModelPrice(1.10, 4.40),
        "o1-preview": ModelPrice(15.00, 60.00),
        "o3": ModelPrice(2.00, 8.00),
        "o3-mini": ModelPrice(1.10, 4.40),
        "o4-mini": ModelPrice(1.10, 4.40),
    },
    "anthropic": {
        "claude-fable-5": ModelPrice(10.00, 50.00),
        "claude-sonnet-5": ModelPrice(2.00, 10.00),
        "claude-opus-4-8": ModelPrice(5.00, 25.00),
        "claude-opus-4-7": ModelPrice(5.00, 25.00),
        "claude-opus-4-6": ModelPrice(5.00, 25.00),
        "claude-opus-4-5": ModelPrice(5.00, 25.00),
        "claude-opus-4-1": ModelPrice(15.00, 75.00),
        "claude-opus-4": ModelPrice(15.00, 75.00),
        "claude-4-opus": ModelPrice(15.00, 75.00),
        "claude-sonnet-4-6": ModelPrice(3.00, 15.00),
        "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
        "claude-sonnet-4": ModelPrice(3.00, 15.00),
        "claude-4-sonnet": ModelPrice(3.00, 15.00),
        "claude-haiku-4-5": ModelPrice(1.00, 5.00),
        "claude-3-7-sonnet": ModelPrice(3.00, 15.00),
        "claude-3-5-sonnet": ModelPrice(3.00, 15.00),
        "claude-3-5-haiku": ModelPrice(0.80, 4.00),
        "claude-3-opus": ModelPrice(15.00, 75.00),
        "claude-3-haiku": ModelPrice(0.25, 1.25),
    },
}


def _base_name(model: str) -> str:
    # ``org/model`` and fine-tunes (``ft:gpt-4o-mini:org::id``) are priced as their base model.
    name = model.rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def builtin_price(kind: str, model: str) -> ModelPrice | None:
    """The built-in list price of ``model`` served by a provider of ``kind``, if the table knows it."""
    table = BUILTIN_PRICES.get(kind)
    if not table:
        return None
    name = _base_name(model)
    best = None
    for prefix in table:
        if (name == prefix or name.startswith(prefix + "-")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return table[best] if best is not None else None


class PriceTable:
    """The price of a model on a provider, in this order:

    1. the provider's own prices (``cost_per_1k_input`` / ``cost_per_1k_output``), for every model it
       serves;
    2. the config's price for the model (``[models."name"] price``);
    3. the built-in list price (:data:`BUILTIN_PRICES`) for the provider's kind;
    4. 0 for a local kind (:data:`LOCAL_KINDS`);
    5. otherwise unknown (``None``): such a response carries ``usage.cost = None``.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def price(self, kind: str, model: str, provider_price: ModelPrice | None = None) -> ModelPrice | None:
        """The price of ``model`` served by a provider of ``kind`` (whose own prices are
        ``provider_price``), or None when it is not known."""
        if provider_price is not None:
            return provider_price
        override = self.overrides.get(model)
        if override is not None:
            return override
        listed = builtin_price(kind, model)
        if listed is not None:
            return listed
        return FREE if kind in LOCAL_KINDS else None
