"""Validate what our providers really send (as the loopback servers recorded it) against the published
OpenAPI documents in ``shared/reference/`` (beside the checkout in CI), with jsonschema.

OpenAPI 3.0's ``nullable: true`` (TGI's document, and a few places of OpenAI's 3.1 one) is rewritten to
JSON Schema's ``null`` type first; every other keyword jsonschema reads as it is.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

jsonschema = pytest.importorskip("jsonschema")

OPENAI = "openai-openapi.yaml"
TGI = "tgi-openapi.json"


def _candidates(name: str) -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [repo.parent / "shared/reference" / name, Path("/work/shared/reference") / name]


@functools.cache
def _components(name: str) -> dict[str, Any] | None:
    path = next((p for p in _candidates(name) if p.exists()), None)
    if path is None:
        return None
    if name.endswith(".json"):
        spec = json.loads(path.read_text())
    else:
        yaml = pytest.importorskip("yaml")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads 3 MB in about a second
        spec = yaml.load(path.read_text(), Loader=loader)
    return _without_nullable(spec["components"])  # type: ignore[no-any-return]


def _without_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _without_nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is not True:
        return out
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}


def schema_validator(spec: str, schema: str) -> Any:
    """A validator for ``#/components/schemas/<schema>`` of ``spec`` (skips when the file is absent)."""
    components = _components(spec)
    if components is None:
        pytest.skip(f"{spec} is not available beside the checkout")
    assert schema in components["schemas"], f"{spec} has no schema {schema}"
    root = {"$ref": f"#/components/schemas/{schema}", "components": components}
    return jsonschema.Draft202012Validator(root)


def assert_valid(spec: str, schema: str, instance: Any) -> None:
    """Fail with every violation when ``instance`` does not validate against the schema."""
    errors = sorted(schema_validator(spec, schema).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors[:5]
    )


def violations(spec: str, schema: str, instance: Any) -> list[str]:
    """The violation messages (empty when ``instance`` is valid)."""
    return [e.message for e in schema_validator(spec, schema).iter_errors(instance)]
