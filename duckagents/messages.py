"""The neutral chat data model every provider translates to and from its own wire format.

All types are frozen attrs classes; sequences are tuples so values can be shared between tasks safely.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Literal

import attrs

Role = Literal["system", "developer", "user", "assistant", "tool"]


@attrs.frozen
class TextPart:
    """A piece of text in a message."""

    text: str
    type: Literal["text"] = "text"


@attrs.frozen
class ImagePart:
    """An image in a message: inline base64 ``data`` with its ``media_type``, or a ``url``."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    type: Literal["image"] = "image"

    def __attrs_post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("an ImagePart needs exactly one of data (base64) or url")


Part = TextPart | ImagePart


def _content(value: str | Sequence[Part]) -> tuple[Part, ...]:
    """A message's parts: plain text becomes one text part (``Message("user", "hi")`` is the usual slip,
    which would otherwise iterate the string's characters); any sequence becomes a tuple."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, str):
        return (TextPart(value),)
    return tuple(value)


@attrs.frozen
class ToolCall:
    """A tool (function) call made by the assistant. ``arguments`` is the JSON text of the arguments (for an
    OpenAI ``custom`` tool, whose input is free-form, that raw input text)."""

    id: str
    name: str
    arguments: str = "{}"


@attrs.frozen
class ToolSpec:
    """A tool the model may call: a name, a description and a JSON-schema for its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = attrs.field(factory=lambda: {"type": "object", "properties": {}})


@attrs.frozen
class Message:
    """One chat turn. ``content`` is a tuple of parts; use :meth:`text` helpers to build plain turns."""

    role: Role
    content: tuple[Part, ...] = attrs.field(default=(), converter=_content)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, role: Role, text: str, **kwargs: Any) -> Message:
        """Build a message with a single text part."""
        return cls(role=role, content=(TextPart(text),), **kwargs)

    @classmethod
    def system(cls, text: str) -> Message:
        """A system prompt."""
        return cls.of("system", text)

    @classmethod
    def user(cls, text: str, *images: ImagePart) -> Message:
        """A user turn with text and optional images."""
        return cls(role="user", content=(TextPart(text), *images))

    @classmethod
    def assistant(cls, text: str = "", tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        """An assistant turn."""
        content: tuple[Part, ...] = (TextPart(text),) if text else ()
        return cls(role="assistant", content=content, tool_calls=tool_calls)

    @classmethod
    def tool_result(cls, tool_call_id: str, text: str) -> Message:
        """The result of a tool call, answering ``tool_call_id``."""
        return cls(role="tool", content=(TextPart(text),), tool_call_id=tool_call_id)

    @property
    def text(self) -> str:
        """The concatenated text parts."""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The image parts."""
        return tuple(p for p in self.content if isinstance(p, ImagePart))


class FinishReason(str, enum.Enum):
    """Why generation stopped, normalised across providers."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"
    OTHER = "other"


@attrs.frozen
class Usage:
    """Token usage of one request, and what it cost.

    ``cost`` is in USD, from the price table of the model that answered (docs/routing.md): set by the
    agent on every ``provider_response``; ``None`` when the model's price is not known (a provider's own
    usage figures never carry it).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@attrs.frozen
class RequestOptions:
    """Generation options of a request; ``None`` means the provider's default."""

    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None  # "auto" | "none" | "required" | a tool name
    response_format: Literal["text", "json_object"] | None = None
    #: May the agent drop the oldest turns (never the system prompt or last user turn) to fit the window?
    allow_trim: bool = False


@attrs.frozen
class Features:
    """What a provider/model supports."""

    streaming: bool = True
    tools: bool = False
    vision: bool = False
    system_prompt: bool = True
    json_mode: bool = False
    context_window: int = 8192
    max_output_tokens: int = 4096

    def supports(self, feature: str) -> bool:
        """True when the named boolean feature (``"tools"``, ``"vision"``, ...) is supported."""
        value = getattr(self, feature, None)
        if not isinstance(value, bool):
            raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURE_NAMES)}")
        return value


FEATURE_NAMES: tuple[str, ...] = ("streaming", "tools", "vision", "system_prompt", "json_mode")


def implied_features(messages: Sequence[Message], options: RequestOptions) -> set[str]:
    """The features a request needs by its content and options: ``tools``, ``vision``, ``json_mode``,
    ``system_prompt`` (a system or developer turn). The router and the agents both decide by this."""
    needed: set[str] = set()
    if options.tools:
        needed.add("tools")
    if any(message.images for message in messages):
        needed.add("vision")
    if options.response_format == "json_object":
        needed.add("json_mode")
    if any(message.role in ("system", "developer") for message in messages):
        needed.add("system_prompt")
    return needed
