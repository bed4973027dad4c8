"""Smoke tests of the envelope codec (property tests live in test_signals.py)."""

import pytest

from duckagents.codec import dumps_signal, loads_signal
from duckagents.errors import ErrorKind
from duckagents.messages import ImagePart, Message, RequestOptions, ToolSpec
from duckagents.signals import ProviderFailure, ProviderRequest, make_signal


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
    signal = make_signal(ProviderFailure("r1", ErrorKind.TIMEOUT, "slow", provider="p"), "/a")
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

    failure = loads_signal(dumps_signal(make_signal(ProviderFailure("r", ErrorKind.TIMEOUT, "x"), "/a")))
    assert type(failure.data.kind) is ErrorKind
    response = loads_signal(dumps_signal(make_signal(ProviderResponse("r", "p", "m"), "/a")))
    assert type(response.data.finish_reason) is FinishReason
