"""Every HTTP provider has the same shape: the same modules, function names, one format-error type and
one streaming path; and the public surface of ``duckagents.providers`` (older names kept as aliases)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest

import duckagents.providers as providers
from duckagents.messages import Message
from duckagents.providers import (
    AnthropicProvider,
    HTTPProvider,
    OllamaProvider,
    OpenAIProvider,
    TGIProvider,
)
from duckagents.signals import ProviderRequest

HTTP_PROVIDERS = {
    "openai": OpenAIProvider, "anthropic": AnthropicProvider, "ollama": OllamaProvider, "tgi": TGIProvider
}
PACKAGE = Path(providers.__file__).parent


@pytest.mark.parametrize("name", HTTP_PROVIDERS)
def test_each_provider_has_the_same_modules_and_names(name: str) -> None:
    modules = {
        part: importlib.import_module(f"duckagents.providers._{name}{part}")
        for part in ("", "_models", "_wire", "_errors")
    }
    cls = HTTP_PROVIDERS[name]
    assert issubclass(cls, HTTPProvider) and cls.__module__ == f"duckagents.providers._{name}"
    assert callable(modules["_models"].features_for)
    for function in ("build_body", "parse_completion"):
        assert callable(getattr(modules["_wire"], function)), (name, function)
    assembler = modules["_wire"].StreamAssembler("m")
    assert assembler.done is False and callable(assembler.feed) and callable(assembler.finish)
    for function in ("error_kind", "make_error", "rate_limit"):
        assert callable(getattr(modules["_errors"], function)), (name, function)
    parameters = inspect.signature(modules["_errors"].make_error).parameters
    assert list(parameters)[:3] == ["status", "headers", "body"]
    assert {"provider", "model", "secrets", "now", "request_id", "partial"} <= set(parameters)


def _exception_classes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")) for b in node.bases)
    ]


def test_one_format_error_type() -> None:
    defined = {path.name: _exception_classes(path) for path in PACKAGE.glob("_*.py")}
    assert {name: classes for name, classes in defined.items() if classes} == {
        "_base.py": ["WireFormatError", "InBandError"]
    }


def _request() -> ProviderRequest:
    return ProviderRequest("r1", (Message.user("hi"),))


@pytest.mark.parametrize("factory", HTTP_PROVIDERS.values())
async def test_one_streaming_path(factory: Any) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    async with factory("http://upstream.test", transport=transport) as provider:
        streams = [provider.stream(_request())]
        if isinstance(provider, TGIProvider):
            streams.append(provider.generate_stream("hi"))
        if isinstance(provider, OllamaProvider):
            streams.append(provider.pull("llama3.2"))
        for stream in streams:
            # No generator layer between the caller and the shared loop: stream() hands it back.
            assert stream.ag_code is HTTPProvider._stream.__code__
            await stream.aclose()


def test_public_surface_names_each_table_after_its_api() -> None:
    assert providers.openai_model_family("gpt-4o").prefix == "gpt-4o"  # type: ignore[union-attr]
    assert providers.is_openai_reasoning_model("o3") and not providers.is_openai_reasoning_model("gpt-4o")
    assert providers.anthropic_model_family("claude-opus-4-1").exclusive_sampling
    assert providers.ollama_canonical_model_name("llama3.2") == "llama3.2:latest"
    assert providers.OPENAI_UNKNOWN_MODEL_FEATURES.context_window == 8_192
    assert set(providers.__all__) == {n for n in dir(providers) if not n.startswith("_")} - {"annotations"}
