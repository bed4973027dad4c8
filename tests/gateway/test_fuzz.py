"""Hypothesis drives the real gateway (in front of the real tree) over loopback with arbitrary JSON values
in every field of every message type, while a watcher is subscribed to everything.

Whatever the values (any type, depth, size, lone surrogates, integers of thousands of digits, NaN,
Infinity, 1e999), the server stays up, the watcher and a bystander keep getting their signals, every frame
any client receives is strict JSON (``support.strict_json``), every accepted request gets exactly one
terminal, and nothing trips an unexpected fault or an unencodable signal.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import connect, sees_request, serving, watcher


@attrs.frozen
class Raw:
    """JSON text spliced in as is: what ``json.dumps`` cannot write (huge integers, deep nesting)."""

    text: str


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)  # NaN, Infinity; lone surrogates come out as \ud800 escapes


SPECIAL = st.sampled_from(
    [
        Raw("9" * 5000),
        Raw("-" + "9" * 4400),
        Raw("1" * 20),
        Raw("1e999"),
        Raw("-1e999"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("[" * 3000 + "]" * 3000),
        Raw('{"a":' * 500 + "1" + "}" * 500),
        Raw('"\\ud800"'),
        Raw('"a\\udfffb"'),
        Raw('"\\ud83d\\ude00"'),  # a valid pair: an emoji
    ]
)
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
    | st.integers(0, 200_000).map(lambda n: "x" * n)
    | SPECIAL
)
NASTY = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)

REQUEST_OPTIONS = {
    "max_tokens": 50,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["zz"],
    "tools": [{"name": "t", "description": "d", "parameters": {"type": "object", "properties": {}}}],
    "tool_choice": "auto",
    "response_format": "text",
    "allow_trim": False,
    "stream": True,
}
TEMPLATES: dict[str, dict[str, Any]] = {
    "ping": {"type": "ping", "id": "ID", "v": 1},
    "subscribe": {
        "type": "subscribe",
        "id": "ID",
        "filter": {"types": ["provider_response"], "providers": ["mock"], "request_ids": ["r"]},
    },
    "unsubscribe": {"type": "unsubscribe", "id": "ID", "subscription": "ID"},
    "request": {
        "type": "request",
        "id": "ID",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "me"}],
        "model": "mock-1",
        "options": REQUEST_OPTIONS,
        "timeout": 30,
        "required_features": [],
    },
    "cancel": {"type": "cancel", "id": "ID", "request_id": "gw-1"},
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` (keys and indexes), the value itself included, plus a new key per object."""
    found = [prefix]
    if isinstance(value, dict):
        found.append((*prefix, "extra"))
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(value, dict):
        return {**value, head: replaced(value.get(head), tuple(rest), new)}
    copy = list(value)
    copy[head] = replaced(copy[head], tuple(rest), new)
    return copy


def string_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The places in ``value`` that hold a string."""
    if isinstance(value, str):
        return [prefix]
    if isinstance(value, dict):
        return [p for key, child in value.items() for p in string_paths(child, (*prefix, key))]
    if isinstance(value, list):
        return [p for index, child in enumerate(value) for p in string_paths(child, (*prefix, index))]
    return []


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, str]:
    """One client message (JSON text) and its id: valid, or with any text in one of its strings, or with
    an arbitrary value anywhere (half of them are requests, the message the most fields)."""
    kind = draw(st.sampled_from(["request"] * 4 + sorted(TEMPLATES)))
    msg_id = f"m{draw(st.integers(0, 10**6))}"
    template = json.loads(json.dumps(TEMPLATES[kind]).replace('"ID"', json.dumps(msg_id)))
    mode = draw(st.sampled_from(["valid", "text", "nasty", "nasty"]))
    strings = [p for p in string_paths(template) if p not in (("type",), ("id",))]
    if mode == "text" and strings:
        where = draw(st.sampled_from(strings))
        text = draw(st.text(st.characters(codec=None, exclude_categories=()), max_size=30))
        template = replaced(template, where, text)
    elif mode == "nasty":
        template = replaced(template, draw(st.sampled_from(paths(template))), draw(NASTY))
    return encode(template), msg_id


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(frames(), min_size=1, max_size=8))
async def test_arbitrary_values_in_every_field_of_every_op(messages: list[tuple[str, str]]) -> None:
    with trio.fail_after(60):
        async with serving(max_frame_bytes=2 * 1024 * 1024) as (tree, gateway), watcher(gateway) as watch:
            async with connect(gateway) as fuzzer:
                for text, _ in messages:
                    await fuzzer.send(text)
                await fuzzer.send({"type": "ping", "id": "barrier"})
                received = await fuzzer.recv_until(lambda f: f.get("id") == "barrier" and f["type"] == "ack")
                answers = [f for f in received if f["type"] in ("ack", "error")]
                assert len(answers) == len(messages) + 1  # every message answered once
                accepted = {f["request_id"] for f in answers if f["type"] == "ack" and "request_id" in f}
                terminals: dict[str, int] = {}

                def count(frame: dict[str, Any]) -> None:
                    own = frame.get("type") == "signal" and "request" in frame
                    event = frame["event"] if own else None
                    if event is not None and event["type"] in ("provider_response", "provider_error"):
                        terminals[event["subject"]] = terminals.get(event["subject"], 0) + 1

                for frame in received:
                    count(frame)
                while not accepted <= set(terminals):
                    count(await fuzzer.recv())
                await fuzzer.send({"type": "ping", "id": "end"})
                for frame in await fuzzer.recv_until(lambda f: f.get("id") == "end" and f["type"] == "ack"):
                    count(frame)
                assert terminals == dict.fromkeys(accepted, 1)
            async with connect(gateway) as bystander:  # the server is up, and serves the others
                await sees_request(watch, "bystander", bystander)
            stats = gateway.stats()
            assert (stats.faults, stats.unencodable) == (0, 0)
            assert tree.supervisor.running == ["router", "agent:mock"]
