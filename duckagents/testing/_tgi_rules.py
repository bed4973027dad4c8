"""How the loopback TGI server reads requests and what it rejects, as TGI's router does.

Body rejections come from axum (plain text: 415 wrong content type, 400 bad JSON, 422 wrong shape);
validation errors are TGI's own ``{"error", "error_type": "validation"}`` with TGI's wording.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._script import estimate_prompt_tokens
from ._server import HTTPRequest, Reply

_WORD = re.compile(r"\S+")


def error(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Reply:
    """TGI's error body."""
    return Reply.json({"error": message, "error_type": error_type}, status, headers)


def text(status: int, message: str) -> Reply:
    """A plain-text rejection (axum's extractors answer like this)."""
    return Reply(status, message.encode(), {"content-type": "text/plain; charset=utf-8"})


def json_reply(obj: Any, malformed: bool, headers: dict[str, str] | None = None) -> Reply:
    """A JSON 200; ``malformed`` cuts the document in half."""
    data = json.dumps(obj).encode()
    body = data[: len(data) // 2] if malformed else data
    return Reply(200, body, {"content-type": "application/json", **(headers or {})})


def read_body(request: HTTPRequest, required: str) -> dict[str, Any] | Reply:
    """The JSON body, or the rejection TGI answers with when it lacks the ``required`` field."""
    if "json" not in request.headers.get("content-type", ""):
        return text(415, "Expected request with `Content-Type: application/json`")
    try:
        body = request.json()
    except ValueError as exc:
        return text(400, f"Failed to parse the request body as JSON: {exc}")
    if not isinstance(body, dict) or required not in body:
        return text(
            422,
            f"Failed to deserialize the JSON body into the target type: missing field `{required}` "
            f"at line 1 column {len(request.body)}",
        )
    return body


def understand(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | Reply:
    """The chat messages as TGI deserialises them: ``role``, ``name``, ``tool_call_id``, and either
    ``content`` (a string or chunks) or ``tool_calls``, tried in that order (serde's untagged
    ``MessageBody``: a message with both keeps its text and silently loses its calls)."""
    out = []
    for i, message in enumerate(messages):
        kept: dict[str, Any] = {k: message[k] for k in ("role", "name", "tool_call_id") if k in message}
        content, calls = message.get("content"), message.get("tool_calls")
        if isinstance(content, str | list):
            kept["content"] = content
        elif isinstance(calls, list):
            kept["tool_calls"] = calls
        else:
            return text(
                422,
                f"Failed to deserialize the JSON body into the target type: messages[{i}]: data did not "
                "match any variant of untagged enum MessageBody",
            )
        out.append(kept)
    return out


def content_text(content: Any) -> str:
    """The text of a chat message's content (a string, or chunks of text and image_url parts)."""
    if isinstance(content, list):
        return " ".join(
            str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("type") == "text"
        )
    return "" if content is None else str(content)


def tokenize(inputs: str) -> list[dict[str, Any]]:
    """The stand-in tokenizer (one token per word, as ``estimate_prompt_tokens`` counts) with offsets."""
    return [
        {"id": sum(m.group().encode()) % 32000, "text": m.group(), "start": m.start(), "stop": m.end()}
        for m in _WORD.finditer(inputs)
    ]


def validate(
    prompt: str,
    *,
    max_input_tokens: int,
    max_total_tokens: int,
    max_new: Any = None,
    temperature: Any = None,
    stop: Any = None,
    generate: bool,
) -> Reply | int:
    """TGI's input validation; the input token count when the request is acceptable."""
    tokens = estimate_prompt_tokens(prompt)
    problem = None
    if generate and not prompt.strip():
        problem = "`inputs` cannot be empty"
    elif generate and isinstance(temperature, int | float) and temperature <= 0:
        problem = "`temperature` must be strictly positive"
    elif isinstance(stop, list) and len(stop) > 4:
        problem = f"`stop` supports up to 4 stop sequences. Given: {len(stop)}"
    elif tokens > max_input_tokens:
        problem = f"`inputs` must have less than {max_input_tokens} tokens. Given: {tokens}"
    elif isinstance(max_new, int) and tokens + max_new > max_total_tokens:
        problem = (
            f"`inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
            f"Given: {tokens} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    return error(422, f"Input validation error: {problem}", "validation") if problem else tokens
