"""Validation of values from outside, the same at every door (gateway frames, HTTP bodies, router calls).

Three layers, each raising :class:`InvalidValue` (whose ``path`` names the culprit, ``$.options.stop[2]``):

* **Decoding** (:func:`loads`): JSON text is parsed with bounded number parsers, so an integer of 4,300
  digits is never turned into an ``int`` (converting it, or printing it later, would raise) and ``NaN``,
  ``Infinity`` or ``1e400`` never become floats. Malformed text raises :class:`InvalidJSON`.
* **Values** (:func:`check_json`): every string is valid Unicode (no lone surrogate: it cannot be encoded
  as UTF-8, so every provider would fail on it), every number finite, every integer within
  ``±max_integer``, the nesting at most ``max_depth`` deep and the encoded size at most ``max_bytes``. The
  walk is iterative: a value nested 100,000 deep is refused, not a ``RecursionError``.
* **Shape** (:func:`check`, :func:`check_object`): a JSON value against the type hints of an attrs class,
  strictly (``"5"`` is not ``5``, unknown keys are errors), before the shared cattrs converter
  (deliberately lenient) structures it.

:func:`check_request` applies the value rules to an already structured :class:`ProviderRequest` (the
router's door: Python callers can put ``nan``, a lone surrogate or a 400-deep tool schema in one too) and
adds the request's own rules: tools at most ``max_tools``, each tool schema at most
``max_tool_schema_depth`` deep and ``max_tool_schema_bytes`` large, ``max_tokens`` >= 1, ``temperature``
>= 0, ``top_p`` in [0, 1].

Limits are a :class:`ValidationLimits` (the ``[validation]`` table of the configuration; defaults in
docs/limits.md). Error messages are bounded (:data:`MAX_ERROR_CHARS`) and never echo the bad value.
Everything we send is encoded by :func:`dumps` (``allow_nan=False``): a frame with a non-finite number is
never written.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

from .errors import DuckAgentsError, ErrorKind, ProviderError
from .messages import ImagePart, Message, RequestOptions, TextPart, ToolCall, ToolSpec
from .signals import ProviderRequest

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_ERROR_CHARS",
    "InvalidJSON",
    "InvalidValue",
    "ValidationLimits",
    "check",
    "check_json",
    "check_messages",
    "check_object",
    "check_options",
    "check_request",
    "dumps",
    "loads",
]

#: Error messages are cut to this many characters: an error never echoes megabytes back.
MAX_ERROR_CHARS = 300
# Shape checks stop descending past this depth (the value checks have already bounded it anyway).
_MAX_SHAPE_DEPTH = 256


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _integer_bound(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    _at_least_one(_, attribute, value)
    if value.bit_length() > 1024:  # the bound itself must stay printable and cheap to compare
        raise ValueError(f"{attribute.name} must be below 2**1024")


@attrs.frozen
class ValidationLimits:
    """Bounds on values from outside. The ``[validation]`` table of the configuration."""

    #: Encoded size of one value (a frame, a body, a request), in bytes of UTF-8 JSON.
    max_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_at_least_one)
    #: Nesting of arrays and objects (``[[1]]`` is 2 deep).
    max_depth: int = attrs.field(default=64, validator=_at_least_one)
    #: Largest integer magnitude. 2**53 - 1 is what every JSON parser (JavaScript's too) reads exactly.
    max_integer: int = attrs.field(default=2**53 - 1, validator=_integer_bound)
    #: Tools of one request.
    max_tools: int = attrs.field(default=128, validator=_at_least_one)
    #: Nesting of one tool's ``parameters`` schema.
    max_tool_schema_depth: int = attrs.field(default=32, validator=_at_least_one)
    #: Encoded size of one tool's ``parameters`` schema, in bytes.
    max_tool_schema_bytes: int = attrs.field(default=64 * 1024, validator=_at_least_one)


DEFAULT_LIMITS = ValidationLimits()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class InvalidValue(DuckAgentsError, ValueError):
    """A value from outside was refused. ``path`` locates it (``$`` is the whole value), ``problem`` says
    what is wrong; ``str()`` is ``"<path>: <problem>"``, at most :data:`MAX_ERROR_CHARS` characters.

    ``document`` is what :func:`loads` decoded, when the refusal came after decoding (a door can still read
    the message id out of it to address its answer); otherwise None.
    """

    def __init__(self, path: str, problem: str, *, document: Any = None) -> None:
        self.path = _clip(path)
        self.problem = _clip(problem)
        self.document = document
        # A deep path is shortened in the middle, so that the message always ends with the problem.
        shown = path if len(path) <= 150 else f"{path[:100]}...{path[-47:]}"
        super().__init__(_clip(f"{shown}: {self.problem}"))

    def to_error(self, request_id: str | None = None) -> ProviderError:
        """The ``invalid_request`` :class:`ProviderError` a router door raises for this refusal."""
        return ProviderError(ErrorKind.INVALID_REQUEST, str(self), retryable=False, request_id=request_id)


class InvalidJSON(InvalidValue):
    """The text is not JSON at all (syntax, encoding)."""


# --- encoding ------------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON of ``value``; raises ``ValueError`` rather than writing ``NaN`` or ``Infinity``."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# --- decoding ------------------------------------------------------------------------------------


class _Refused:
    """Stands in the decoded document for a number the bounded parsers refused, so that the value walk
    can report it with its path."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a finite number (JSON has no NaN or Infinity)")


# Above this many digits, converting an integer costs enough to matter (the interpreter's guard: 4,300).
_INT_GUARD = 10_000


class _TooManyDigits(Exception):
    """The C parser met an integer beyond the interpreter's guard."""


def _decode(text: str, parse_int: Callable[[str], int | _Refused] | None, max_depth: int) -> Any:
    try:
        return json.loads(text, parse_int=parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidJSON("$", f"{exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidValue("$", f"nested deeper than {max_depth} levels") from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise _TooManyDigits from None


def _int_parser(limits: ValidationLimits) -> Callable[[str], int | _Refused]:
    digits = len(str(limits.max_integer))

    def parse_int(text: str) -> int | _Refused:
        # Counted before converting: int() of a few thousand digits is where Python's 4,300-digit guard
        # (and its cost) starts. JSON integers have no leading zeros, so more digits means larger.
        if len(text) - (text[0] == "-") > digits:
            return _Refused(_out_of_range(limits.max_integer))
        return int(text)

    return parse_int


def loads(text: str | bytes, limits: ValidationLimits = DEFAULT_LIMITS) -> Any:
    """Decode JSON text from outside and check it with :func:`check_json`.

    Raises :class:`InvalidJSON` when the text is not JSON (or not UTF-8), :class:`InvalidValue` (with
    ``document`` set when decoding succeeded) when a value breaks a limit.
    """
    if len(text) > limits.max_bytes:
        raise InvalidValue("$", f"larger than {limits.max_bytes} bytes")
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON("$", f"not UTF-8 (byte {exc.start})") from None
    # Floats need no parser of their own: 1e400 decodes to inf, which the value walk refuses with its
    # path. Integers are parsed by the C parser (several times faster) as long as Python's guard against
    # converting 4,300+ digits stands: a longer literal then fails the whole parse, and a second one with
    # the bounded parser finds it and its path. Without the guard (an application may lift it), every
    # integer goes through the bounded parser.
    guarded = 0 < sys.get_int_max_str_digits() <= _INT_GUARD
    try:
        document = _decode(text, None if guarded else _int_parser(limits), limits.max_depth)
    except _TooManyDigits:
        document = _decode(text, _int_parser(limits), limits.max_depth)
    try:
        check_json(document, limits)
    except InvalidValue as exc:
        raise InvalidValue(exc.path, exc.problem, document=document) from None
    return document


# --- values --------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A path is kept as a linked list of (parent, key) while walking, and spelled out only for an error.
_Link = tuple[Any, str | int] | None


def _spell(link: _Link, root: str) -> str:
    keys: list[str | int] = []
    while link is not None:
        link, key = link
        keys.append(key)
    out = [root]
    for key in reversed(keys):
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif _IDENTIFIER.match(key):
            out.append(f".{key}")
        else:
            out.append(f"[{json.dumps(key[:40])}]")
    return "".join(out)


def _string_problem(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"string holds a lone surrogate U+{code:04X} at index {exc.start} (not valid Unicode)"
    return None


def _string_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _out_of_range(max_integer: int) -> str:
    return f"integer out of range (magnitude at most {max_integer})"


def _scalar_problem(item: Any, max_integer: int) -> str | None:
    """What is wrong with a scalar (None when nothing); ``"container"`` for anything else."""
    kind = type(item)
    if kind is str:
        return _string_problem(item)
    if kind is int:
        # Never str() the integer: beyond 4,300 digits that raises, and it could be megabytes.
        return None if -max_integer <= item <= max_integer else _out_of_range(max_integer)
    if kind is float:
        return None if math.isfinite(item) else "number is not finite (NaN or Infinity)"
    if item is None or kind is bool:
        return None
    if kind is _Refused:
        return str(item.problem)
    if isinstance(item, enum.Enum):
        return _scalar_problem(item.value, max_integer)
    if isinstance(item, str | int | float):  # subclasses of the JSON scalars
        return _scalar_problem(kind.__mro__[-2](item), max_integer)
    return "container"


@functools.cache
def _field_names(cls: type) -> tuple[tuple[str, ...], int]:
    """An attrs class's field names, and what they add to the encoded size (braces, keys, quotes)."""
    names = tuple(field.name for field in attrs.fields(cls))
    return names, 2 + sum(len(name) + 4 for name in names)


def _walk(
    value: Any, *, max_depth: int, max_bytes: int, max_integer: int, root: str = "$", what: str = "value"
) -> int:
    """Check ``value`` iteratively; returns its approximate encoded size in bytes.

    Accepts JSON values and, for structured Python values, attrs instances (their fields), tuples and
    enums (their value). Scalars are checked in their container's loop (this is the hot path: a 1 MiB
    frame can hold half a million numbers); only containers go on the stack.
    """
    problem = _scalar_problem(value, max_integer)
    if problem != "container":
        if problem is not None:
            raise InvalidValue(root, problem)
        return 8 if not isinstance(value, str) else _string_bytes(value) + 2
    size = 0
    # Entries: (container, its depth, the link to its path).
    stack: list[tuple[Any, int, _Link]] = [(value, 0, None)]
    while stack:
        item, depth, link = stack.pop()
        if depth >= max_depth:
            raise InvalidValue(_spell(link, root), f"{what} nested deeper than {max_depth} levels")
        children: Iterable[tuple[str | int, Any]]
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    raise InvalidValue(_spell(link, root), f"object key of type {type(key).__name__}")
                if not key.isascii() and _string_problem(key) is not None:
                    raise InvalidValue(_spell((link, key[:40]), root), f"object key: {_string_problem(key)}")
                size += len(key) + 4
            children = item.items()
            size += 2
        elif isinstance(item, list | tuple):
            children = enumerate(item)
            size += 2 + len(item)
        elif attrs.has(type(item)):
            # A structured value: its fields stand for the keys of its JSON object.
            cls: type = type(item)
            names, names_size = _field_names(cls)
            children = [(name, getattr(item, name)) for name in names]
            size += names_size
        else:
            raise InvalidValue(_spell(link, root), f"not a JSON value ({type(item).__name__})")
        for key, child in children:
            kind = type(child)
            if kind is str:
                if not child.isascii():
                    problem = _string_problem(child)
                    if problem is not None:
                        raise InvalidValue(_spell((link, key), root), problem)
                    size += len(child.encode("utf-8")) + 2
                else:
                    size += len(child) + 2
            elif kind is int:
                if not -max_integer <= child <= max_integer:
                    raise InvalidValue(_spell((link, key), root), _out_of_range(max_integer))
                size += 8
            elif kind is float:
                if not math.isfinite(child):
                    raise InvalidValue(_spell((link, key), root), "number is not finite (NaN or Infinity)")
                size += 12
            elif child is None or kind is bool:
                size += 5
            else:
                problem = _scalar_problem(child, max_integer)
                if problem == "container":
                    stack.append((child, depth + 1, (link, key)))
                elif problem is not None:
                    raise InvalidValue(_spell((link, key), root), problem)
                else:
                    size += 12
        if size > max_bytes:
            raise InvalidValue(_spell(link, root), f"{what} larger than {max_bytes} bytes")
    return size


def check_json(value: Any, limits: ValidationLimits = DEFAULT_LIMITS, path: str = "$") -> int:
    """Check a decoded JSON value (or a structured one) against ``limits``; returns its approximate
    encoded size. Raises :class:`InvalidValue` naming the first offending place under ``path``."""
    return _walk(
        value,
        max_depth=limits.max_depth,
        max_bytes=limits.max_bytes,
        max_integer=limits.max_integer,
        root=path,
    )


# --- requests ------------------------------------------------------------------------------------


def check_messages(
    messages: Iterable[Message], limits: ValidationLimits = DEFAULT_LIMITS, path: str = "$.messages"
) -> None:
    """Check chat messages: the value rules over every field (text, images, tool calls)."""
    check_json(tuple(messages), limits, path)


def check_options(
    options: RequestOptions, limits: ValidationLimits = DEFAULT_LIMITS, path: str = "$.options"
) -> None:
    """Check generation options: the tools' schemas, the value rules, and the ranges of the numbers."""
    _check_tools(options, limits, path)
    check_json(options, limits, path)
    _check_numbers(options, path)


def _check_tools(options: RequestOptions, limits: ValidationLimits, path: str) -> list[int]:
    """Check the tools' count and schemas; returns the encoded size of each schema."""
    tools = options.tools
    if not isinstance(tools, tuple | list):
        raise InvalidValue(f"{path}.tools", "must be a sequence of tools")
    if len(tools) > limits.max_tools:
        raise InvalidValue(f"{path}.tools", f"at most {limits.max_tools} tools")
    # Before the walk of the whole: a schema too deep is reported as one, not as a value nested too deeply.
    return [
        _walk(
            getattr(tool, "parameters", None),
            max_depth=limits.max_tool_schema_depth,
            max_bytes=limits.max_tool_schema_bytes,
            max_integer=limits.max_integer,
            root=f"{path}.tools[{index}].parameters",
            what="tool schema",
        )
        for index, tool in enumerate(tools)
    ]


def _check_numbers(options: RequestOptions, path: str) -> None:
    # Paths are spelled only for an error: this runs for every request.
    max_tokens, temperature, top_p = options.max_tokens, options.temperature, options.top_p
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        _number(max_tokens, f"{path}.max_tokens", integer=True, low=1)
    if temperature is not None and (type(temperature) not in (int, float) or not temperature >= 0):
        _number(temperature, f"{path}.temperature", low=0)
    if top_p is not None and (type(top_p) not in (int, float) or not 0 <= top_p <= 1):
        _number(top_p, f"{path}.top_p", low=0, high=1)


def _number(value: Any, path: str, *, integer: bool = False, low: float, high: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise InvalidValue(path, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
    if value < low or (high is not None and value > high):
        raise InvalidValue(path, f"must be >= {low:g}" + ("" if high is None else f" and <= {high:g}"))


class _Unusual(Exception):
    """The request fast path met something it leaves to the generic walk (which finds any fault)."""


def _text_size(text: Any) -> int:
    # One C-level scan for the usual case; encoding (which finds lone surrogates) only for non-ASCII.
    if type(text) is not str:
        raise _Unusual
    if text.isascii():
        return len(text) + 2
    try:
        return len(text.encode("utf-8")) + 2
    except UnicodeEncodeError:
        raise _Unusual from None


def _optional_text_size(text: Any) -> int:
    return 5 if text is None else _text_size(text)


def _texts_size(texts: Any) -> int:
    if type(texts) is not tuple:
        raise _Unusual
    size = 2 + len(texts)
    for text in texts:
        size += _text_size(text)
    return size


def _number_size(value: Any, max_integer: int) -> int:
    kind = type(value)
    if value is None or kind is bool:
        return 5
    if kind is int and -max_integer <= value <= max_integer:
        return 8
    if kind is float and math.isfinite(value):
        return 12
    raise _Unusual


# The classes the request fast path knows, with the fields it reads. Another field would go unchecked
# there, so the fast path is only used while these are exactly the classes' fields (a test holds it).
_FAST_FIELDS: dict[type, tuple[str, ...]] = {
    ProviderRequest: (
        "request_id", "messages", "model", "options", "deadline", "provider", "attempt",
        "required_features", "principal",
    ),
    Message: ("role", "content", "tool_calls", "tool_call_id", "name"),
    TextPart: ("text", "type"),
    ImagePart: ("media_type", "data", "url", "type"),
    ToolCall: ("id", "name", "arguments"),
    RequestOptions: (
        "stream", "max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice", "response_format",
        "allow_trim",
    ),
    ToolSpec: ("name", "description", "parameters"),
}
_FAST_PATH = all(_field_names(cls)[0] == names for cls, names in _FAST_FIELDS.items())
_REQUEST_NAMES = _field_names(ProviderRequest)[1]
_MESSAGE_NAMES = _field_names(Message)[1]
_TEXT_NAMES = _field_names(TextPart)[1]
_IMAGE_NAMES = _field_names(ImagePart)[1]
_CALL_NAMES = _field_names(ToolCall)[1]
_OPTIONS_NAMES = _field_names(RequestOptions)[1]
_TOOL_NAMES = _field_names(ToolSpec)[1]
# Containers of the fixed shape go 4 deep (request, messages, message, content, part); a tool schema
# starts at depth 4 (request, options, tools, tool, parameters).
_FIXED_DEPTH = 4


def _request_size(request: ProviderRequest, schema_sizes: list[int], max_integer: int) -> int:
    """The encoded size :func:`check_json` computes for ``request``, by reading its known fields directly
    (no stack, no paths); raises :class:`_Unusual` wherever a value is not of the usual type or breaks a
    rule, so that the generic walk decides and names the culprit. The tools' schemas were checked
    already: their sizes come in ``schema_sizes``."""
    messages = request.messages
    options = request.options
    if type(messages) is not tuple or type(options) is not RequestOptions:
        raise _Unusual
    size = (
        _REQUEST_NAMES
        + _text_size(request.request_id)
        + 2 + len(messages)
        + _optional_text_size(request.model)
        + _number_size(request.deadline, max_integer)
        + _optional_text_size(request.provider)
        + _number_size(request.attempt, max_integer)
        + _texts_size(request.required_features)
        + _optional_text_size(request.principal)
    )
    for message in messages:
        if type(message) is not Message:
            raise _Unusual
        content: tuple[Any, ...] = message.content  # its parts told apart by exact type below
        calls = message.tool_calls
        if type(content) is not tuple or type(calls) is not tuple:
            raise _Unusual
        size += (
            _MESSAGE_NAMES
            + _text_size(message.role)
            + 4 + len(content) + len(calls)
            + _optional_text_size(message.tool_call_id)
            + _optional_text_size(message.name)
        )
        for part in content:
            kind = type(part)
            if kind is TextPart:
                size += _TEXT_NAMES + _text_size(part.text) + _text_size(part.type)
            elif kind is ImagePart:
                size += (
                    _IMAGE_NAMES
                    + _optional_text_size(part.media_type)
                    + _optional_text_size(part.data)
                    + _optional_text_size(part.url)
                    + _text_size(part.type)
                )
            else:
                raise _Unusual
        for call in calls:
            if type(call) is not ToolCall:
                raise _Unusual
            size += _CALL_NAMES + _text_size(call.id) + _text_size(call.name) + _text_size(call.arguments)
    tools = options.tools
    if type(tools) is not tuple:
        raise _Unusual
    size += (
        _OPTIONS_NAMES
        + _number_size(options.stream, max_integer)
        + _number_size(options.max_tokens, max_integer)
        + _number_size(options.temperature, max_integer)
        + _number_size(options.top_p, max_integer)
        + _texts_size(options.stop)
        + 2 + len(tools)
        + _optional_text_size(options.tool_choice)
        + _optional_text_size(options.response_format)
        + _number_size(options.allow_trim, max_integer)
    )
    for tool, schema_size in zip(tools, schema_sizes, strict=True):
        if type(tool) is not ToolSpec or type(tool.parameters) is not dict:
            raise _Unusual
        size += _TOOL_NAMES + _text_size(tool.name) + _text_size(tool.description) + schema_size
    return size


def check_request(request: ProviderRequest, limits: ValidationLimits = DEFAULT_LIMITS) -> None:
    """Check a whole :class:`ProviderRequest` before it reaches an agent: :func:`check_options`' rules,
    then every value rule over every field (the total size included). Raises :class:`InvalidValue`; a
    router door answers with :meth:`InvalidValue.to_error` (kind ``invalid_request``)."""
    # check_options' rules, without walking the options twice (the whole request's walk covers them).
    schema_sizes = _check_tools(request.options, limits, "$.options")
    # The usual request (plain types, within every limit) is checked by reading its fields directly;
    # anything else, and every refusal, goes through the generic walk, which names the culprit. The fast
    # path applies the walk's rules and adds sizes as it does, so both accept exactly the same requests.
    checked = False
    if (
        _FAST_PATH
        and type(request) is ProviderRequest
        and limits.max_depth >= limits.max_tool_schema_depth + _FIXED_DEPTH
    ):
        try:
            checked = _request_size(request, schema_sizes, limits.max_integer) <= limits.max_bytes
        except _Unusual:
            pass
    if not checked:
        check_json(request, limits)
    _check_numbers(request.options, "$.options")
    deadline = request.deadline
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
        raise InvalidValue("$.deadline", f"must be a number, got {_kind(deadline)}")


# --- shape ---------------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check(value: Any, tp: Any, path: str = "$", depth: int = 0) -> None:
    """Raise :class:`InvalidValue` unless the JSON ``value`` fits the Python type ``tp`` exactly: JSON
    strings for ``str``, integers (not booleans) for ``int``, finite numbers for ``float``, arrays for
    tuples, objects without unknown keys for attrs classes, one of the allowed values for ``Literal``."""
    if depth > _MAX_SHAPE_DEPTH:
        raise InvalidValue(path, "nested too deeply")
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        _check_union(value, typing.get_args(tp), path, depth)
        return
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(value, str | int) or isinstance(value, bool) or value not in allowed:
            raise InvalidValue(path, f"must be one of {', '.join(repr(a) for a in allowed)}")
        return
    if tp is type(None):
        if value is not None:
            raise InvalidValue(path, f"must be null, got {_kind(value)}")
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidValue(path, f"must be a boolean, got {_kind(value)}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(path, f"must be an integer, got {_kind(value)}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidValue(path, f"must be a finite number, got {_kind(value)}")
        return
    if tp is str:
        if not isinstance(value, str):
            raise InvalidValue(path, f"must be a string, got {_kind(value)}")
        return
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise InvalidValue(path, f"must be an array, got {_kind(value)}")
        (item_type, *_) = typing.get_args(tp)
        for index, item in enumerate(value):
            check(item, item_type, f"{path}[{index}]", depth + 1)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidValue(path, f"must be an object, got {_kind(value)}")
        return
    if isinstance(tp, type) and attrs.has(tp):
        check_object(value, tp, path, depth)
        return
    raise TypeError(f"validation.check does not know the type {tp!r}")  # a bug in our types, not the input


def _check_union(value: Any, alternatives: tuple[Any, ...], path: str, depth: int) -> None:
    if value is None and type(None) in alternatives:
        return
    tags = _tags(alternatives)
    if tags and isinstance(value, dict) and "type" in value:
        # A tagged union (message parts): the "type" key picks the class, so the error can name it.
        chosen = tags.get(value["type"]) if isinstance(value["type"], str) else None
        if chosen is None:
            raise InvalidValue(f"{path}.type", f"must be one of {', '.join(repr(t) for t in tags)}")
        check_object(value, chosen, path, depth)
        return
    errors: list[InvalidValue] = []
    for alternative in alternatives:
        if alternative is type(None):
            continue
        try:
            check(value, alternative, path, depth)
            return
        except InvalidValue as exc:
            errors.append(exc)
    # The deepest complaint is the most useful one (it names the field that broke the best candidate).
    raise max(errors, key=lambda e: len(e.path))


@functools.cache
def _tags(alternatives: tuple[Any, ...]) -> dict[str, type]:
    """Map tag -> class when every alternative is an attrs class with a ``type: Literal[...]`` field."""
    tags: dict[str, type] = {}
    for alternative in alternatives:
        if alternative is type(None):
            continue
        if not (isinstance(alternative, type) and attrs.has(alternative)):
            return {}
        hint = _hints(alternative).get("type")
        if typing.get_origin(hint) is not Literal:
            return {}
        tags.update({tag: alternative for tag in typing.get_args(hint)})
    return tags


def check_object(value: Any, cls: type, path: str = "$", depth: int = 0) -> None:
    """Check a JSON object against an attrs class: required fields present, no unknown keys, types right."""
    if not isinstance(value, dict):
        raise InvalidValue(path, f"must be an object, got {_kind(value)}")
    fields = attrs.fields_dict(cls)
    unknown = [key for key in value if key not in fields]
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in sorted(map(str, unknown))[:5])
        raise InvalidValue(path, f"unknown field(s) {shown}; allowed: {', '.join(fields)}")
    hints = _hints(cls)
    for name, field in fields.items():
        if name not in value:
            if field.default is attrs.NOTHING:
                raise InvalidValue(f"{path}.{name}", "required field missing")
            continue
        check(value[name], hints[name], f"{path}.{name}", depth + 1)
