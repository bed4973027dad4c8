"""The loopback Ollama server's model store: local models, loaded models and their keep-alive expiry.

Expiry is on the Trio clock, so a ``MockClock`` drives it. Renders the model objects of ``/api/tags``,
``/api/ps`` and ``/api/show`` the way Ollama does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from ..providers import parse_duration

DEFAULT_KEEP_ALIVE = 300.0  # Ollama keeps a model loaded 5 minutes unless told otherwise
MODIFIED_AT = "2024-12-01T10:00:00.000000+00:00"
#: How Ollama renders "loaded forever" (a negative keep_alive): a date centuries ahead.
FOREVER = "2318-01-01T00:00:00+00:00"


@attrs.frozen
class OllamaModel:
    """A model the server has "pulled"."""

    name: str
    family: str = "llama"
    context_length: int = 131072
    capabilities: tuple[str, ...] = ("completion", "tools")
    size: int = 2_019_393_189
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"

    @property
    def digest(self) -> str:
        """A stable fake sha256 digest."""
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        """The ``details`` object of tags/ps/show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


DEFAULT_MODELS: tuple[OllamaModel, ...] = (
    OllamaModel("llama3.2:latest"),
    OllamaModel(
        "llava:latest",
        context_length=4096,
        capabilities=("completion", "vision"),
        size=4_733_363_377,
        parameter_size="7B",
        quantization_level="Q4_0",
    ),
    OllamaModel(
        "gemma:2b",
        family="gemma",
        context_length=8192,
        capabilities=("completion",),
        size=1_678_456_656,
        parameter_size="3B",
        quantization_level="Q4_0",
    ),
)


def canonical(name: str) -> str:
    """``llama3.2`` and ``llama3.2:latest`` name the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def now_iso(offset: float = 0.0) -> str:
    """Wall-clock time ``offset`` seconds from now, RFC 3339 (``created_at``, ``expires_at``)."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)).isoformat()


def keep_alive_seconds(value: Any) -> float:
    """Ollama's keep_alive: seconds as a number or a Go duration ("5m", "-1m"); negative = forever."""
    if value is None or value == "" or isinstance(value, bool):
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    sign = -1.0 if text.startswith("-") else 1.0
    seconds = parse_duration(text.lstrip("-"))
    return DEFAULT_KEEP_ALIVE if seconds is None else sign * seconds


class ModelStore:
    """Local models by canonical name, and loaded ones with their expiry (``math.inf``: never)."""

    def __init__(self, models: Iterable[OllamaModel] = DEFAULT_MODELS) -> None:
        self.models: dict[str, OllamaModel] = {m.name: m for m in models}
        self.loaded: dict[str, float] = {}

    def get(self, name: str) -> OllamaModel | None:
        """The local model called ``name`` (tag optional), or None."""
        return self.models.get(canonical(name))

    def add(self, name: str) -> OllamaModel:
        """The model called ``name``, created as if just pulled when missing."""
        return self.models.setdefault(canonical(name), OllamaModel(canonical(name)))

    def touch(self, name: str, keep_alive: Any) -> bool:
        """Load ``name`` for ``keep_alive``; True when the request unloads it instead (``keep_alive: 0``)."""
        seconds = keep_alive_seconds(keep_alive)
        if seconds == 0:
            self.loaded.pop(name, None)
            return True
        self.loaded[name] = math.inf if seconds < 0 else trio.current_time() + seconds
        return False

    def loaded_names(self) -> list[str]:
        """Names of the models loaded now; expired ones are dropped."""
        now = trio.current_time()
        for name in [n for n, until in self.loaded.items() if until <= now]:
            del self.loaded[name]
        return sorted(self.loaded)

    def tags(self) -> list[dict[str, Any]]:
        """``GET /api/tags`` entries."""
        return [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": MODIFIED_AT,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
            }
            for m in self.models.values()
        ]

    def ps(self) -> list[dict[str, Any]]:
        """``GET /api/ps`` entries for the loaded models (VRAM = size: everything on the "GPU")."""
        now = trio.current_time()
        out = []
        for name in self.loaded_names():
            m = self.models.get(name) or OllamaModel(name)
            left = self.loaded[name] - now
            out.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "size": m.size,
                    "digest": m.digest,
                    "details": m.details(),
                    "expires_at": now_iso(left) if math.isfinite(left) else FOREVER,
                    "size_vram": m.size,
                    "context_length": min(m.context_length, 4096),
                }  # loaded with Ollama's default num_ctx
            )
        return out

    @staticmethod
    def show(model: OllamaModel) -> dict[str, Any]:
        """``POST /api/show`` for ``model``: the context length sits under ``<arch>.context_length``."""
        return {
            "license": "LICENSE",
            "modelfile": f"FROM {model.name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": model.details(),
            "model_info": {
                "general.architecture": model.family,
                "general.parameter_count": 3_212_749_888,
                f"{model.family}.context_length": model.context_length,
                f"{model.family}.embedding_length": 3072,
            },
            "capabilities": list(model.capabilities),
            "modified_at": MODIFIED_AT,
        }
