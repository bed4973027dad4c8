"""Incremental stream parsers: Server-Sent Events and newline-delimited JSON.

Both are fed byte chunks however the network split them and yield complete items; the result is the
same for every split. Bounded: a line longer than ``max_line`` raises instead of growing without limit.
Malformed input raises :class:`~._base.WireFormatError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol, TypeVar

import attrs

from ._base import WireFormatError

MAX_LINE = 4 * 1024 * 1024

T = TypeVar("T")


#: The older name of :class:`~._base.WireFormatError`, kept for callers of the public API.


@attrs.frozen
class SSEEvent:
    """One Server-Sent Event (``event`` defaults to ``"message"``)."""

    data: str
    event: str = "message"
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON; raises :class:`~._base.WireFormatError` when it is not JSON."""
        return sse_json(self.data)


def sse_json(data: str) -> Any:
    """SSE ``data`` parsed as JSON; raises :class:`~._base.WireFormatError` when it is not JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise WireFormatError("SSE data is JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise WireFormatError(f"SSE data is not JSON: {exc.msg}: {data[:80]!r}") from None


class _LineSplitter:
    def __init__(self, max_line: int) -> None:
        self._buffer = bytearray()
        self._max_line = max_line
        self._pending_cr = False

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []  # an empty chunk must not forget a pending \r (of a \r\n split around it)
        if not self._buffer and not self._pending_cr and b"\r" not in data:
            # Fast path, the usual case: nothing carried over and \n endings only, so the complete lines
            # are decoded in one go (\n never occurs inside a UTF-8 sequence) and split in C.
            end = data.rfind(b"\n")
            if 0 <= end <= self._max_line:  # then no line in it can be longer than max_line
                if end + 1 < len(data):
                    self._buffer += data[end + 1 :]
                    if len(self._buffer) > self._max_line:
                        raise WireFormatError(f"stream line longer than {self._max_line} bytes")
                return _decode(data[:end]).split("\n")
        if self._pending_cr and data[:1] == b"\n":
            data = data[1:]  # the \n of a \r\n that was split across chunks
        self._pending_cr = False
        self._buffer += data
        buf = self._buffer
        lines: list[str] = []
        start = 0
        size = len(buf)
        while True:
            idx_n = buf.find(b"\n", start)
            idx_r = buf.find(b"\r", start, idx_n if idx_n >= 0 else size)
            idx = idx_r if idx_r >= 0 else idx_n
            if idx < 0:
                break
            if idx - start > self._max_line:  # also when the whole line came in one chunk
                raise WireFormatError(f"stream line longer than {self._max_line} bytes")
            lines.append(_decode(bytes(buf[start:idx])))
            if idx == idx_r and idx + 1 < size and buf[idx + 1] == 0x0A:
                start = idx + 2
            else:
                start = idx + 1
                self._pending_cr = idx == idx_r and idx + 1 == size
        del buf[:start]
        if len(buf) > self._max_line:
            raise WireFormatError(f"stream line longer than {self._max_line} bytes")
        return lines

    def rest(self) -> str:
        out = _decode(bytes(self._buffer))
        self._buffer.clear()
        return out


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"stream is not valid UTF-8: {exc.reason}") from None


class SSEParser:
    """Feed bytes, get :class:`SSEEvent` objects (per the WHATWG event-stream rules we need).

    :meth:`feed_data` / :meth:`close_data` are the same parser for callers that only need each event's
    data (the event name and id are still tracked, just not returned), without an object per event;
    ``data_only=True`` makes :meth:`feed` / :meth:`close` return that too.
    """

    def __init__(self, max_line: int = MAX_LINE, *, data_only: bool = False) -> None:
        self._full = not data_only
        self._lines = _LineSplitter(max_line)
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, data: bytes) -> list[Any]:
        """Consume a chunk; return the events (or, ``data_only``, their data) it completed."""
        return self._run(self._lines.feed(data), self._full)

    def close(self) -> list[Any]:
        """End of input: an unterminated final event is dispatched if it has data."""
        return self._run(self._final_lines(), self._full)

    def feed_data(self, data: bytes) -> list[str]:
        """Like :meth:`feed`, returning only the ``data`` of each completed event."""
        return self._run(self._lines.feed(data), False)

    def close_data(self) -> list[str]:
        """Like :meth:`close`, returning only the ``data`` of the final event, if any."""
        return self._run(self._final_lines(), False)

    def _final_lines(self) -> list[str]:
        rest = self._lines.rest()
        return [rest, ""] if rest else [""]

    def _run(self, lines: list[str], full: bool) -> Any:
        # One loop for both result shapes; `data:` lines and blank lines (the usual traffic) are handled
        # inline, any other field in _field.
        out: list[Any] = []
        data = self._data
        for line in lines:
            if line[:5] == "data:":
                data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line:
                self._field(line)
            elif data:
                text = data[0] if len(data) == 1 else "\n".join(data)
                out.append(SSEEvent(text, self._event or "message", self._id) if full else text)
                data.clear()
                self._event = ""
            else:
                self._event = ""
        return out

    def _field(self, line: str) -> None:
        if line[0] == ":":
            return  # comment / keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value


class NDJSONParser:
    """Feed bytes, get parsed JSON values, one per non-empty line."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._lines = _LineSplitter(max_line)

    def feed(self, data: bytes) -> list[Any]:
        """Consume a chunk; return the values of the lines it completed."""
        return [_parse_json_line(line) for line in self._lines.feed(data) if line.strip()]

    def close(self) -> list[Any]:
        """End of input: parse a final line that had no newline."""
        rest = self._lines.rest()
        return [_parse_json_line(rest)] if rest.strip() else []


def _parse_json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise WireFormatError("NDJSON line is JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise WireFormatError(f"NDJSON line is not JSON: {exc.msg}: {line[:80]!r}") from None


class _Parser(Protocol[T]):
    def feed(self, data: bytes) -> list[T]: ...

    def close(self) -> list[T]: ...


async def _parse(parser: _Parser[T], chunks: AsyncIterator[bytes]) -> AsyncGenerator[T, None]:
    async for chunk in chunks:
        for item in parser.feed(chunk):
            yield item
    for item in parser.close():
        yield item


def iter_sse(chunks: AsyncIterator[bytes], max_line: int = MAX_LINE) -> AsyncGenerator[SSEEvent, None]:
    """Parse an async byte stream (e.g. ``response.aiter_raw()``) into SSE events."""
    return _parse(SSEParser(max_line), chunks)


def iter_ndjson(chunks: AsyncIterator[bytes], max_line: int = MAX_LINE) -> AsyncGenerator[Any, None]:
    """Parse an async byte stream into JSON values, one per line."""
    return _parse(NDJSONParser(max_line), chunks)
