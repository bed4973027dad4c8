"""Property tests of the signal codec: every payload type round-trips; bad input is a ValueError."""

from __future__ import annotations

import enum
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.codec import dumps_signal, loads_signal, signal_to_dict
from duckagents.errors import ErrorKind
from duckagents.messages import ImagePart, Message, RequestOptions, TextPart, ToolSpec
from duckagents.signals import PAYLOAD_TYPES, ProviderErrorData, ProviderRequest, Signal, make_signal

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(max_size=20)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_json_scalars = st.none() | st.booleans() | st.integers() | _floats | _text
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_image_parts = st.builds(ImagePart, media_type=st.none() | _text, data=_text, url=st.none()) | st.builds(
    ImagePart, media_type=st.none() | _text, data=st.none(), url=_text
)

# Types whose valid values a plain field-by-field build cannot produce.
_SPECIAL: dict[Any, st.SearchStrategy[Any]] = {
    ImagePart: _image_parts,
    TextPart: st.builds(TextPart, text=_text),
    str: _text,
    int: st.integers(),
    float: _floats,
    bool: st.booleans(),
    type(None): st.none(),
    Any: _json,
}


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of the (resolved) type ``tp``: attrs classes field by field via st.builds."""
    if tp in _SPECIAL:
        return _SPECIAL[tp]
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*(strategy_for(arg) for arg in get_args(tp)))
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        item, *rest = get_args(tp)
        assert rest == [Ellipsis], f"only homogeneous tuples are supported, got {tp}"
        return st.lists(strategy_for(item), max_size=3).map(tuple)
    if origin is dict:
        key, value = get_args(tp)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and attrs.has(tp):
        attrs.resolve_types(tp)
        fields = {f.name: strategy_for(f.type) for f in attrs.fields(tp) if f.init}
        return st.builds(tp, **fields)
    raise TypeError(f"no strategy for {tp!r}; extend strategy_for")


def signals_of(payload_type: type[Any]) -> st.SearchStrategy[Signal]:
    """Signals around arbitrary payloads of one type, with arbitrary envelope ids, sources and times."""
    return st.builds(
        lambda data, source, signal_id, time: attrs.evolve(
            make_signal(data, source), id=signal_id, time=time
        ),
        strategy_for(payload_type),
        _text,
        _text,
        # Microseconds from the epoch to the end of year 9999, the range RFC 3339 can write.
        st.integers(min_value=0, max_value=253_402_300_799_999_999),
    )


_PAYLOADS: list[type[Any]] = [PAYLOAD_TYPES[name] for name in sorted(PAYLOAD_TYPES)]


@pytest.mark.parametrize("payload_type", _PAYLOADS, ids=sorted(PAYLOAD_TYPES))
def test_every_payload_type_round_trips(payload_type: type[Any]) -> None:
    @SETTINGS
    @given(signal=signals_of(payload_type))
    def round_trip(signal: Signal) -> None:
        text = dumps_signal(signal)
        assert loads_signal(text) == signal
        assert loads_signal(text.encode()) == signal
        assert json.loads(text)["type"] == payload_type.TYPE

    round_trip()


def test_the_strategies_cover_every_payload_type() -> None:
    # A payload type added later without a resolvable field type fails here, not silently.
    for payload_type in PAYLOAD_TYPES.values():
        strategy_for(payload_type)


def _assert_value_error_or_signal(text: str | bytes) -> None:
    try:
        result = loads_signal(text)
    except ValueError as exc:
        assert str(exc), "a ValueError must say what is wrong"
    else:
        assert isinstance(result, Signal)


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_garbage_is_a_value_error(text: str | bytes) -> None:
    _assert_value_error_or_signal(text)


@SETTINGS
@given(obj=_json)
def test_any_json_value_is_a_signal_or_a_value_error(obj: Any) -> None:
    _assert_value_error_or_signal(json.dumps(obj))


@st.composite
def corrupted_signals(draw: st.DrawFn) -> str:
    """A valid signal's JSON with one envelope attribute or payload field replaced by any JSON value."""
    payload_type = draw(st.sampled_from(_PAYLOADS))
    obj = signal_to_dict(draw(signals_of(payload_type)))
    target = obj["data"] if draw(st.booleans()) and obj["data"] else obj
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        target[key] = draw(_json)
    else:
        del target[key]
    return json.dumps(obj)


@SETTINGS
@given(text=corrupted_signals())
def test_wrong_field_types_are_a_value_error(text: str) -> None:
    _assert_value_error_or_signal(text)


def _request_with(field: str, value: Any) -> str:
    obj = signal_to_dict(make_signal(ProviderRequest("r1", (Message.user("hi"),)), "/t"))
    obj["data"][field] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messages", "hi"),
        ("messages", [{"role": "user", "content": 3}]),
        ("messages", [{"role": "robot"}]),
        ("attempt", "x"),
        ("options", {"temperature": "hot"}),
        ("deadline", "soon"),
    ],
)
def test_specific_wrong_types_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        loads_signal(_request_with(field, value))


# The converter refuses instead of coercing: a number or a list is not a str, a string is not a tuple of its
# characters, 1.5 is not an int.
@pytest.mark.parametrize(
    ("field", "value"), [("request_id", 5), ("model", [1]), ("required_features", "tools"), ("attempt", 1.5)]
)
def test_mistyped_scalars_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        loads_signal(_request_with(field, value))


# --- smoke tests of the envelope codec ---

def test_request_round_trip_keeps_every_field() -> None:
    request = ProviderRequest(
        "r1",
        (Message.system("be nice"), Message.user("hi", ImagePart(media_type="image/png", data="AAA"))),
        model="m",
        options=RequestOptions(stream=True, tools=(ToolSpec("f"),)),
    )
    signal = make_signal(request, "/router")
    assert loads_signal(dumps_signal(signal)) == signal
    assert signal.subject == "r1"


def test_failure_is_terminal_and_round_trips() -> None:
    signal = make_signal(ProviderErrorData("r1", ErrorKind.TIMEOUT, "slow", provider="p"), "/a")
    assert signal.is_terminal and signal.provider == "p"
    assert loads_signal(dumps_signal(signal)) == signal


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "invalid JSON"),
        ('{"specversion":"1.0","id":"1","source":"x","type":"nope","data":{}}', "unknown signal type"),
        ('{"specversion":"1.0","id":"1","source":"x","type":"provider_request","data":{}}', "messages"),
    ],
)
def test_bad_input_gives_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        loads_signal(text)


def test_enums_come_back_as_enums_not_strings() -> None:
    from duckagents.messages import FinishReason
    from duckagents.signals import ProviderResponse

    failure = loads_signal(dumps_signal(make_signal(ProviderErrorData("r", ErrorKind.TIMEOUT, "x"), "/a")))
    assert type(failure.data.kind) is ErrorKind
    response = loads_signal(dumps_signal(make_signal(ProviderResponse("r", "p", "m"), "/a")))
    assert type(response.data.finish_reason) is FinishReason


def test_encoded_signals_are_always_valid_utf8_json() -> None:
    request = ProviderRequest("r", (Message.user("a\ud800b \U0001f986 \udfff"),))
    text = dumps_signal(make_signal(request, "/t"))
    text.encode("utf-8")  # no lone surrogate left to fail on
    assert json.loads(text)["data"]["messages"][0]["content"][0]["text"] == "a\ufffdb \U0001f986 \ufffd"
    with pytest.raises(ValueError):
        dumps_signal(make_signal(ProviderRequest("r", (), deadline=float("nan")), "/t"))


def test_cost_principal_and_spend_round_trip() -> None:
    from duckagents.messages import Usage
    from duckagents.signals import MetricsSnapshot, ProviderResponse, ProviderStatus

    response = ProviderResponse("r", "p", "gpt-4o-mini", usage=Usage(1000, 500, 0.00045))
    text = dumps_signal(make_signal(response, "/a"))
    usage = json.loads(text)["data"]["usage"]
    assert usage == {"prompt_tokens": 1000, "completion_tokens": 500, "cost": 0.00045}
    assert loads_signal(text).data == response
    unknown = ProviderResponse("r", "p", "x", usage=Usage(1, 2))
    assert loads_signal(dumps_signal(make_signal(unknown, "/a"))).data.usage.cost is None  # type: ignore[union-attr]
    request = ProviderRequest("r", (Message.user("hi"),), principal="alice")
    assert loads_signal(dumps_signal(make_signal(request, "/router"))).data.principal == "alice"  # type: ignore[union-attr]
    status = ProviderStatus("p", 1.0, "closed", metrics=MetricsSnapshot(cost=0.5, cost_by_model={"m": 0.5}))
    assert loads_signal(dumps_signal(make_signal(status, "/a"))).data == status
