"""duckagents.validation: the one check of outside values that every door applies."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckagents import validation
from duckagents.errors import ErrorKind
from duckagents.messages import ImagePart, Message, RequestOptions, TextPart, ToolCall, ToolSpec
from duckagents.signals import ProviderRequest
from duckagents.validation import (
    DEFAULT_LIMITS,
    MAX_ERROR_CHARS,
    InvalidJSON,
    InvalidValue,
    ValidationLimits,
    check_json,
    check_request,
    dumps,
    loads,
)


def refused(text: str | bytes, limits: ValidationLimits = DEFAULT_LIMITS) -> InvalidValue:
    with pytest.raises(InvalidValue) as info:
        loads(text, limits)
    assert len(str(info.value)) <= MAX_ERROR_CHARS
    return info.value


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_valid_json_comes_back_as_is() -> None:
    text = '{"a": [1, -2.5, "é", null, true, {"b": "\\ud83d\\ude00"}], "big": 9007199254740991}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ('{"a": [1, NaN]}', "$.a[1]", "NaN"),
        ('{"a": Infinity}', "$.a", "Infinity"),
        ('{"a": -Infinity}', "$.a", "-Infinity"),
        ('{"a": {"b": 1e400}}', "$.a.b", "not finite"),
        ('{"x y": "\\ud800"}', '$["x y"]', "surrogate U+D800"),
        ('{"k": ["ok", "a\\udfffb"]}', "$.k[1]", "index 1"),
        ('{"\\udc00": 1}', "$", "object key"),
        ('{"n": 9007199254740992}', "$.n", "out of range"),
        ('{"n": -9007199254740992}', "$.n", "out of range"),
    ],
)
def test_bad_values_are_refused_with_their_path(text: str, path: str, words: str) -> None:
    error = refused(text)
    assert not isinstance(error, InvalidJSON)
    assert error.path.startswith(path) and words in error.problem
    assert error.document is not None  # decoded: a door can still read the message id


@pytest.mark.parametrize("digits", [20, 4301, 50_000])
def test_huge_integers_are_refused_unread_with_their_path(digits: int) -> None:
    error = refused('{"id": 7, "options": {"max_tokens": ' + "9" * digits + "}}")
    assert error.path == "$.options.max_tokens" and "out of range" in error.problem
    assert error.document["id"] == 7
    assert "9999999999999999999" not in str(error)  # never echoed back


def test_huge_integer_inside_a_string_is_just_text() -> None:
    assert loads('{"s": "' + "9" * 10_000 + '"}') == {"s": "9" * 10_000}


@pytest.mark.parametrize("depth", [65, 2_000, 200_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    error = refused(nested(depth))
    assert "nested deeper than 64" in error.problem


def test_depth_and_size_limits_are_configurable() -> None:
    limits = ValidationLimits(max_depth=3, max_bytes=100)
    assert loads(nested(3), limits) == [[[1]]]
    assert "nested deeper than 3" in refused(nested(4), limits).problem
    assert "larger than 100 bytes" in refused(json.dumps(["x" * 60, "y" * 60]), limits).problem
    assert "larger than 100 bytes" in refused(" " * 101, limits).problem
    assert ValidationLimits(max_integer=10).max_integer == 10
    assert refused("[11]", ValidationLimits(max_integer=10)).path == "$[0]"


@pytest.mark.parametrize(
    "bad", [{"max_depth": 0}, {"max_bytes": -1}, {"max_integer": 2**2000}, {"max_tools": 1.5}]
)
def test_limits_themselves_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ValidationLimits(**bad)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "nope", b"\xff\xfe", '{"a": 1} x'])
def test_malformed_text_is_invalid_json(text: str | bytes) -> None:
    assert isinstance(refused(text), InvalidJSON)


def test_error_messages_are_bounded_and_to_error_is_invalid_request() -> None:
    key = "k" * 5000
    error = refused(json.dumps({key: float("nan")}, allow_nan=True))
    assert len(str(error)) <= MAX_ERROR_CHARS and len(error.path) <= MAX_ERROR_CHARS
    provider_error = error.to_error("r1")
    assert provider_error.kind is ErrorKind.INVALID_REQUEST and not provider_error.retryable
    assert provider_error.request_id == "r1"


def test_dumps_never_writes_nan() -> None:
    assert dumps({"a": [1, 2.5]}) == '{"a":[1,2.5]}'
    with pytest.raises(ValueError):
        dumps({"a": math.inf})


# --- structured requests (the router's door) -------------------------------------------------------


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def req(text: str = "hi", **options: Any) -> ProviderRequest:
    return ProviderRequest("r", (Message.user(text),), options=RequestOptions(**options))


def request_refused(request: ProviderRequest, limits: ValidationLimits = DEFAULT_LIMITS) -> InvalidValue:
    with pytest.raises(InvalidValue) as info:
        check_request(request, limits)
    return info.value


def test_a_normal_request_passes() -> None:
    tool = ToolSpec("get_weather", "weather", deep_schema(3))
    image = Message("user", (TextPart("look"), ImagePart(media_type="image/png", data="aGk=")))
    check_request(ProviderRequest("r", (Message.system("be brief"), image), options=RequestOptions(
        max_tokens=100, temperature=0.5, top_p=1, tools=(tool,), stop=("\n",))))


def test_a_tool_schema_400_deep_is_refused_as_such() -> None:
    error = request_refused(req(tools=(ToolSpec("t", "", deep_schema(200)),)))
    assert error.path.startswith("$.options.tools[0].parameters")
    assert "tool schema nested deeper than 32" in error.problem


def test_tool_schema_size_and_count_are_bounded() -> None:
    big = {"type": "object", "description": "d" * 70_000}
    assert "tool schema larger than" in request_refused(req(tools=(ToolSpec("t", "", big),))).problem
    many = tuple(ToolSpec(f"t{i}") for i in range(129))
    assert request_refused(req(tools=many)).problem == "at most 128 tools"


@pytest.mark.parametrize(
    ("request_", "path"),
    [
        (req("a\ud800b"), "$.messages[0].content[0].text"),
        (req(max_tokens=10**5000), "$.options.max_tokens"),
        (req(max_tokens=0), "$.options.max_tokens"),
        (req(max_tokens=True), "$.options.max_tokens"),
        (req(temperature=math.nan), "$.options.temperature"),
        (req(temperature=-1.0), "$.options.temperature"),
        (req(top_p=1.5), "$.options.top_p"),
        (req(stop=("ok", "\udfff")), "$.options.stop[1]"),
        (req(tools=(ToolSpec("t", "", {"enum": [math.inf]}),)), "$.options.tools[0].parameters.enum[0]"),
        (req(tools=(ToolSpec("t", "", {"x": {1, 2}}),)), "$.options.tools[0].parameters.x"),
        (req(tools=(ToolSpec("t", "", {3: "x"}),)), "$.options.tools[0].parameters"),
        (ProviderRequest("r", (Message.user("hi"),), deadline=math.nan), "$.deadline"),
        (ProviderRequest("r\ud800", (Message.user("hi"),)), "$.request_id"),
    ],
)
def test_python_callers_bad_values_are_refused_with_their_path(request_: ProviderRequest, path: str) -> None:
    assert request_refused(request_).path == path


def test_total_request_size_is_bounded() -> None:
    limits = ValidationLimits(max_bytes=10_000)
    check_request(req("x" * 9_000), limits)
    assert "larger than 10000 bytes" in request_refused(req("x" * 11_000), limits).problem


# --- properties ------------------------------------------------------------------------------------

NASTY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(NASTY)
def test_what_passes_is_strict_json_and_what_fails_is_invalid_value(value: Any) -> None:
    text = json.dumps(value, allow_nan=True)
    try:
        decoded = loads(text)
    except InvalidValue as exc:
        assert len(str(exc)) <= MAX_ERROR_CHARS and exc.path.startswith("$")
        return
    # Accepted: encodes back without NaN, to UTF-8, and reads back the same.
    strict = dumps(decoded)
    strict.encode("utf-8")
    assert json.loads(strict) == decoded
    assert check_json(value) > 0


@settings(max_examples=300)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_any_text_decodes_or_is_refused_cleanly(text: str | bytes) -> None:
    try:
        loads(text)
    except InvalidValue:
        pass


# --- the request fast path -------------------------------------------------------------------------
# check_request reads the fields of the usual request directly and leaves anything unusual (and every
# refusal) to the generic walk. These hold it to the walk's rules and sizes.


def test_the_fast_path_knows_every_field_of_a_request() -> None:
    # A field added to ProviderRequest (or Message, RequestOptions...) switches the fast path off rather
    # than leaving the field unchecked; this test then says so.
    assert validation._FAST_PATH


@pytest.mark.parametrize(
    ("request_", "path"),
    [
        # Lone surrogates in strings that look ASCII everywhere else, in each kind of field.
        (ProviderRequest("r", (Message.user("plain"), Message.user("x" * 100 + "\udc00"))),
         "$.messages[1].content[0].text"),
        (ProviderRequest("r", (Message("user", (TextPart("hi"),), name="n\ud800"),)), "$.messages[0].name"),
        (ProviderRequest("r", (Message("user", (ImagePart(url="http://x/\ud800"),)),)),
         "$.messages[0].content[0].url"),
        (ProviderRequest("r", (Message.assistant("", (ToolCall("c", "f", '{"a": "\udbff"}'),)),)),
         "$.messages[0].tool_calls[0].arguments"),
        (ProviderRequest("r", (Message.user("hi"),), required_features=("tools", "\ud800")),
         "$.required_features[1]"),
        (ProviderRequest("r", (Message.user("hi"),), principal="p\ud800"), "$.principal"),
        (ProviderRequest("r", (Message.user("hi"),), model="m\udfff"), "$.model"),
        (req(tool_choice="\ud800"), "$.options.tool_choice"),
        (req(tools=(ToolSpec("t\ud800"),)), "$.options.tools[0].name"),
        # Numbers out of range in fields the fast path reads.
        (ProviderRequest("r", (Message.user("hi"),), attempt=2**60), "$.attempt"),
        (ProviderRequest("r", (Message.user("hi"),), deadline=math.inf), "$.deadline"),
        (req(temperature=math.inf), "$.options.temperature"),
        # Not the usual types: a list where a tuple belongs, a dict as a message.
        (ProviderRequest("r", [Message.user("a\ud800")]), "$.messages[0].content[0].text"),  # type: ignore[arg-type]
    ],
)
def test_the_fast_path_leaves_every_fault_to_the_walk(request_: ProviderRequest, path: str) -> None:
    assert request_refused(request_).path == path


def test_deep_nesting_is_still_refused_with_tight_limits() -> None:
    # A plain request is 5 containers deep (request, messages, message, content, part).
    with pytest.raises(InvalidValue, match="nested deeper than 4 levels"):
        check_request(req("hi"), ValidationLimits(max_depth=4, max_tool_schema_depth=1))
    check_request(req("hi"), ValidationLimits(max_depth=5, max_tool_schema_depth=1))
    # A tool schema starts 4 deep: with room for 32 levels of schema the whole needs 36.
    tool = ToolSpec("t", "", deep_schema(7))  # 15 containers deep (a schema and its properties a level)
    check_request(req(tools=(tool,)), ValidationLimits(max_depth=19))
    error = request_refused(req(tools=(tool,)), ValidationLimits(max_depth=18))
    assert "nested deeper than 18 levels" in error.problem
    assert error.path.startswith("$.options.tools[0].parameters")


def test_the_byte_budget_holds_to_the_byte_on_the_fast_path() -> None:
    request = req("é" * 1000, stop=("\n",), tools=(ToolSpec("t", "d", deep_schema(2)),))
    size = check_json(request)
    check_request(request, ValidationLimits(max_bytes=size))
    assert "larger than" in request_refused(request, ValidationLimits(max_bytes=size - 1)).problem


TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)
NUMBER = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats()
PARTS = st.lists(
    st.builds(TextPart, TEXT) | st.builds(ImagePart, media_type=st.none() | TEXT, url=TEXT), max_size=3
).map(tuple)
CALLS = st.lists(st.builds(ToolCall, TEXT, TEXT, TEXT), max_size=2).map(tuple)
MESSAGES = st.lists(
    st.builds(Message, st.sampled_from(["user", "assistant"]) | TEXT, PARTS, CALLS, st.none() | TEXT,
              st.none() | TEXT),
    max_size=3,
).map(tuple)
TOOLS = st.lists(
    st.builds(ToolSpec, TEXT, TEXT, st.dictionaries(TEXT, NASTY, max_size=3)), max_size=2
).map(tuple)
OPTIONS = st.builds(
    RequestOptions, stream=st.booleans(), max_tokens=NUMBER, temperature=NUMBER, top_p=NUMBER,
    stop=st.lists(TEXT, max_size=2).map(tuple), tools=TOOLS, tool_choice=st.none() | TEXT,
    response_format=st.none() | TEXT, allow_trim=st.booleans(),
)
REQUESTS = st.builds(
    ProviderRequest, TEXT, MESSAGES, model=st.none() | TEXT, options=OPTIONS, deadline=NUMBER,
    provider=st.none() | TEXT, attempt=NUMBER, required_features=st.lists(TEXT, max_size=2).map(tuple),
    principal=st.none() | TEXT,
)


@settings(max_examples=400)
@given(REQUESTS)
def test_the_fast_path_accepts_only_what_the_walk_accepts_and_sizes_alike(request: ProviderRequest) -> None:
    try:
        schema_sizes = validation._check_tools(request.options, DEFAULT_LIMITS, "$.options")
        fast = validation._request_size(request, schema_sizes, DEFAULT_LIMITS.max_integer)
    except (InvalidValue, validation._Unusual):
        return
    assert check_json(request) == fast
