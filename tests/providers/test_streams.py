"""Properties of the incremental SSE and NDJSON parsers, and of the OpenAI stream path on garbage input."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckagents.errors import ErrorKind, ProviderError
from duckagents.messages import Message
from duckagents.providers import (
    NDJSONParser,
    OpenAIProvider,
    SSEEvent,
    SSEParser,
    StreamEnd,
    WireFormatError,
    iter_ndjson,
    iter_sse,
)
from duckagents.signals import ProviderRequest
from duckagents.testing import Fault, StreamReply, open_openai_server

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
# Field values: any text without line breaks (the SSE grammar has no way to carry one inside a value).
LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=30)
NAME = LINE_TEXT.filter(lambda s: s != "" and not s.startswith(" "))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (duplicates give empty chunks, which must be harmless)."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(parser: SSEParser | NDJSONParser, chunks: Sequence[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    return out


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A serialised SSE stream and the events a correct parser yields from it."""
    eol = draw(ENDINGS)
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.none() | NAME)
        new_id = draw(st.none() | LINE_TEXT)
        data = draw(st.lists(LINE_TEXT, min_size=1, max_size=3))
        fields = [f"data: {d}" if draw(st.booleans()) else f"data:{d}" for d in data]
        if name is not None:
            fields.append(f"event: {name}")
        if new_id is not None:
            fields.append(f"id: {new_id}")
            last_id = new_id  # the last event id persists across events
        fields = draw(st.permutations(fields))
        for _ in range(draw(st.integers(0, 2))):  # comments / keep-alives anywhere
            fields.insert(draw(st.integers(0, len(fields))), f":{draw(LINE_TEXT)}")
        if draw(st.booleans()):
            fields.append("retry: 1000")  # a field we ignore
        lines += [*fields, ""]
        data_values = [f.partition(":")[2].removeprefix(" ") for f in fields if f.startswith("data:")]
        expected.append(SSEEvent("\n".join(data_values), name or "message", last_id))
    if draw(st.booleans()):
        lines.append(": trailing keep-alive")
    return "".join(line + eol for line in lines).encode(), expected


@FAST
@given(sse_streams(), st.lists(st.integers(0, 2000), max_size=12))
def test_sse_same_events_however_split(stream: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    data, expected = stream
    assert feed_all(SSEParser(), split(data, cuts)) == expected
    assert feed_all(SSEParser(), [bytes([b]) for b in data]) == expected  # the worst split: byte by byte


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(
    st.lists(JSON_VALUES, max_size=8),
    ENDINGS,
    st.lists(st.integers(0, 1000), max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_ndjson_same_values_however_split(
    values: list[Any], eol: str, cuts: list[int], blank_lines: bool, final_newline: bool
) -> None:
    lines = [json.dumps(v, ensure_ascii=False) for v in values]
    if blank_lines:
        lines = [x for line in lines for x in (line, "  ")]
    text = eol.join(lines) + (eol if final_newline else "")
    assert feed_all(NDJSONParser(), split(text.encode(), cuts)) == values


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_garbage_gives_format_error_or_clean_result(data: bytes, cuts: list[int]) -> None:
    for parser in (SSEParser(max_line=64), NDJSONParser(max_line=64)):
        try:
            out = feed_all(parser, split(data, cuts))
        except WireFormatError:
            continue
        for item in out:
            if isinstance(item, SSEEvent):
                with contextlib.suppress(WireFormatError):  # data that is not JSON: only WireFormatError
                    item.json()


@pytest.mark.parametrize("text", ["[" * 20_000, '{"a":' * 20_000])
def test_deeply_nested_json_is_a_format_error(text: str) -> None:
    with pytest.raises(WireFormatError):
        NDJSONParser().feed(text.encode() + b"\n")
    with pytest.raises(WireFormatError):
        SSEEvent(text).json()


@FAST
@given(st.integers(1, 40), st.integers(1, 30), st.lists(st.integers(0, 200), max_size=6), ENDINGS)
def test_line_longer_than_max_line_raises_however_split(
    max_line: int, extra: int, cuts: list[int], eol: str
) -> None:
    long_line = ("data: " + "x" * (max_line + extra))[: max_line + extra]
    for parser_type in (SSEParser, NDJSONParser):
        with pytest.raises(WireFormatError, match="longer than"):
            feed_all(parser_type(max_line=max_line), split((long_line + eol + eol).encode(), cuts))
    fitting = "1" * max_line  # exactly max_line is allowed
    assert feed_all(NDJSONParser(max_line=max_line), split((fitting + eol).encode(), cuts)) == [int(fitting)]


def test_split_crlf_survives_an_empty_chunk() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == [] and parser.feed(b"") == []
    assert parser.feed(b"\n") == [] and parser.feed(b"\r\n") == [SSEEvent("a")]


async def _aiter(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_async_iterators() -> None:
    events = [e async for e in iter_sse(_aiter([b"event: x\nda", b"ta: 1\n\ndata: 2"]))]
    assert events == [SSEEvent("1", "x"), SSEEvent("2")]
    assert [v async for v in iter_ndjson(_aiter([b'{"a"', b": 1}\n[2]"]))] == [{"a": 1}, [2]]


# --- the OpenAI stream path on garbage -------------------------------------------------------------

REQUEST = ProviderRequest("r1", (Message.user("hi"),))


async def _drain(provider: OpenAIProvider) -> list[Any]:
    async with contextlib.aclosing(provider.stream(REQUEST)) as events:
        return [e async for e in events]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_openai_stream_on_garbage_body_is_protocol_error_or_clean(body: bytes, cuts: list[int]) -> None:
    async def stream_body(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=_Chunks(split(body, cuts)), headers={"content-type": "text/event-stream"}
        )

    async def main() -> None:
        async with OpenAIProvider("https://x.example/v1", transport=httpx.MockTransport(stream_body)) as prov:
            try:
                events = await _drain(prov)
            except ProviderError as exc:
                assert exc.kind is ErrorKind.PROTOCOL
            else:  # garbage that happens to be a valid stream (e.g. a bare ``data:[DONE]``) ends cleanly
                assert isinstance(events[-1], StreamEnd)
                assert not any(isinstance(e, StreamEnd) for e in events[:-1])

    trio.run(main)


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: {not json\n\n"],
        [b"\xff\xfe\xfd\n\n"],
        [b'data: {"choices": 7}\n\n'],
        [b": only comments\n\n"],
        [
            b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "zero"}]}}]}\n\n',
            b"data: [DONE]\n\n",
        ],
    ],
)
async def test_garbage_sse_from_server_does_not_crash_the_callers_nursery(pieces: list[bytes]) -> None:
    outcomes: list[str] = []

    async def consumer(prov: OpenAIProvider) -> None:
        try:
            await _drain(prov)
        except ProviderError as exc:
            outcomes.append(exc.kind.value)

    async def sibling() -> None:
        await trio.lowlevel.checkpoint()
        outcomes.append("sibling done")

    async with open_openai_server() as server, OpenAIProvider(server.base_url) as prov:
        server.inject(Fault(reply=StreamReply(pieces, headers={"content-type": "text/event-stream"})))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer, prov)
            nursery.start_soon(sibling)
        # The same provider (and connection pool) still works afterwards.
        events = await _drain(prov)
    assert sorted(outcomes) == ["protocol", "sibling done"]
    assert isinstance(events[-1], StreamEnd) and events[-1].completion.content == "echo: hi"


@FAST
@given(sse_streams(), st.lists(st.integers(0, 2000), max_size=12))
def test_sse_data_only_api_matches_events(stream: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    data, expected = stream
    parser = SSEParser()
    out: list[str] = []
    for chunk in split(data, cuts):
        out.extend(parser.feed_data(chunk))
    out.extend(parser.close_data())
    assert out == [event.data for event in expected]
