"""The one cattrs converter: signals and data types to and from JSON (CloudEvents 1.0 structured mode)."""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any, TypeVar, get_args, get_origin

import cattrs
from cattrs import cols
from cattrs.preconf.json import make_converter

from .errors import ErrorKind
from .messages import FinishReason, ImagePart, Part, TextPart
from .signals import PAYLOAD_TYPES, ControlAction, Payload, Signal

T = TypeVar("T")

converter: cattrs.Converter = make_converter(omit_if_default=False, forbid_extra_keys=False)

_PARTS: dict[str, type[Any]] = {"text": TextPart, "image": ImagePart}


# JSON from outside (gateway clients, config files) must not be coerced silently: 5 is not "5", "yes"
# is not True, 1.5 is not 1, and the string "tools" is not the tuple ('t', 'o', 'o', 'l', 's').
def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _array_only(type_: Any) -> Any:
    origin, args = get_origin(type_), get_args(type_)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = cols.homogenous_tuple_structure_factory(type_, converter)
    elif origin is list:
        inner = cols.list_structure_factory(type_, converter)
    else:
        inner = converter._structure_frozenset

    def hook(value: Any, t: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected an array, got {type(value).__name__}")
        return inner(value, t)

    return hook


def _is_homogeneous_sequence(type_: Any) -> bool:
    origin, args = get_origin(type_), get_args(type_)
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis
    return origin in (list, frozenset)


def _strict_enum(value: Any, type_: Any) -> Any:
    try:
        return type_(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in type_)
        raise ValueError(f"{value!r} is not one of {choices}") from None


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
# The ``str`` hook above would catch ``str``-based enums through their MRO; give each its own.
for _enum in (ErrorKind, FinishReason, ControlAction):
    converter.register_structure_hook(_enum, _strict_enum)
converter.register_structure_hook_factory(_is_homogeneous_sequence, _array_only)


def _structure_part(value: Any, _: Any) -> Part:
    if not isinstance(value, dict):
        raise TypeError(f"a message part must be an object, got {type(value).__name__}")
    kind = value.get("type", "text")
    cls = _PARTS.get(kind)
    if cls is None:
        raise ValueError(f"unknown message part type {kind!r}; expected 'text' or 'image'")
    return converter.structure(value, cls)  # type: ignore[no-any-return]


converter.register_structure_hook(Part, _structure_part)  # type: ignore[arg-type]


def _unstructure_payload(value: Any) -> Any:
    return converter.unstructure(value, unstructure_as=type(value))


converter.register_unstructure_hook(Payload, _unstructure_payload)  # type: ignore[arg-type]


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MICROSECOND = _dt.timedelta(microseconds=1)


def _rfc3339(micros: int) -> str:
    return (_EPOCH + micros * _MICROSECOND).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> int:
    when = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("signal time must carry a UTC offset (RFC 3339)")
    return (when - _EPOCH) // _MICROSECOND


def signal_to_dict(signal: Signal) -> dict[str, Any]:
    """The CloudEvents JSON object of a signal (``provider`` and ``instance`` are extension attributes)."""
    out: dict[str, Any] = {
        "specversion": signal.specversion,
        "id": signal.id,
        "source": signal.source,
        "type": signal.type,
        "time": _rfc3339(signal.time),
        "datacontenttype": signal.datacontenttype,
        "data": converter.unstructure(signal.data, unstructure_as=type(signal.data)),
    }
    if signal.subject is not None:
        out["subject"] = signal.subject
    if signal.provider is not None:
        out["provider"] = signal.provider
    if signal.instance is not None:
        out["instance"] = signal.instance
    return out


def signal_from_dict(obj: Any) -> Signal:
    """Parse a CloudEvents JSON object into a :class:`Signal`; raises ``ValueError`` on bad input."""
    if not isinstance(obj, dict):
        raise ValueError("a signal must be a JSON object")
    if obj.get("specversion") != "1.0":
        raise ValueError("unsupported or missing specversion (expected '1.0')")
    kind = obj.get("type")
    cls = PAYLOAD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown signal type {kind!r}")
    for key in ("id", "source"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"signal attribute {key!r} must be a string")
    instance = obj.get("instance")
    if instance is not None and not isinstance(instance, str):
        raise ValueError("signal attribute 'instance' must be a string")
    try:
        data = converter.structure(obj.get("data"), cls)
        when = _parse_time(obj["time"]) if "time" in obj else None
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid {kind} data: {describe_error(exc)}") from None
    extra: dict[str, Any] = {} if when is None else {"time": when}
    return Signal(
        type=kind,  # type: ignore[arg-type]
        source=obj["source"],
        id=obj["id"],
        data=data,
        subject=obj.get("subject"),
        provider=obj.get("provider"),
        datacontenttype=obj.get("datacontenttype", "application/json"),
        instance=instance,
        **extra,
    )


_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MAX_U64 = 2**64 - 1


def parse_stream_id(text: str) -> tuple[int, int]:
    """A fleet signal's CloudEvents id (its Redis stream entry id, ``"<ms>-<seq>"``) as a comparable pair;
    ``ValueError`` for anything else (it comes from clients that resume). docs/fleet.md."""
    match = _STREAM_ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a fleet event id (expected <milliseconds>-<sequence>): {str(text)[:60]!r}")
    ms, seq = int(match[1]), int(match[2])
    if ms > _MAX_U64 or seq > _MAX_U64:
        raise ValueError(f"fleet event id out of range: {text[:60]!r}")
    return ms, seq


def dumps_signal(signal: Signal) -> str:
    """Serialise a signal to a CloudEvents JSON string, always valid JSON text that encodes to UTF-8.

    Raises ``ValueError`` for a non-finite number (``allow_nan=False``), ``RecursionError`` for data
    nested beyond the interpreter's limit, ``TypeError`` for a non-JSON value. A lone surrogate (an
    upstream's broken text: no UTF-8 can carry it) is replaced by U+FFFD.
    """
    text = json.dumps(signal_to_dict(signal), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Through UTF-16, which pairs surrogates that make a character and replaces the lone ones.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def loads_signal(text: str | bytes) -> Signal:
    """Parse a CloudEvents JSON string; raises ``ValueError`` with a clear message on bad input."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    return signal_from_dict(obj)


def structure(value: Any, cls: type[T]) -> T:
    """Structure plain data into ``cls`` with the shared converter."""
    return converter.structure(value, cls)


def unstructure(value: Any) -> Any:
    """Unstructure an attrs value into plain JSON-ready data with the shared converter."""
    return converter.unstructure(value)


def _format_leaf(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def describe_error(exc: BaseException) -> str:
    """A one-line, path-qualified description of a structuring error (for users' error messages)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, format_exception=_format_leaf))
    return str(exc)
