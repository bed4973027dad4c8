"""Provider-neutral scripted replies shared by every loopback wire server."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping

import attrs

from ..messages import FinishReason, ToolCall


@attrs.frozen
class ScriptedReply:
    """What a loopback server answers to one completion request, in neutral terms.

    Each wire server renders it in its provider's format (body, or stream events split into ``chunk_size``
    character pieces). ``raw_finish_reason`` overrides the rendered finish reason string verbatim (e.g.
    Anthropic's ``"refusal"``). ``tool_call_style`` is how the OpenAI wire renders ``tool_calls``:
    ``"function"`` tool calls, ``"custom"`` tool calls (``arguments`` is the raw ``input``), or the
    deprecated ``"function_call"`` (the first call only, finish reason ``function_call``); the other
    wires have one style and ignore it.
    """

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = FinishReason.STOP
    raw_finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunk_size: int = 4
    tool_call_style: str = "function"

    def finish_name(self, names: Mapping[FinishReason, str], tool_calls: str) -> str:
        """The finish reason string a wire renders: ``raw_finish_reason`` verbatim, else ``tool_calls``
        for a reply that stopped with tool calls, else the wire's name of ``finish_reason``."""
        if self.raw_finish_reason is not None:
            return self.raw_finish_reason
        if self.tool_calls and self.finish_reason is FinishReason.STOP:
            return tool_calls
        return names[self.finish_reason]


def echo_reply(last_user_text: str) -> ScriptedReply:
    """The default answer when nothing is scripted: deterministic, derived from the prompt."""
    return ScriptedReply(text=f"echo: {last_user_text}")


class ReplyScript:
    """A bounded FIFO of scripted replies; when empty, :func:`echo_reply` answers."""

    def __init__(self, maxlen: int = 1024) -> None:
        self._replies: deque[ScriptedReply] = deque(maxlen=maxlen)

    def push(self, *replies: ScriptedReply) -> None:
        """Queue replies for the next completion requests, in order."""
        self._replies.extend(replies)

    def next(self, last_user_text: str, *, json_mode: bool = False) -> ScriptedReply:
        """The reply for the next request; in ``json_mode`` the echo is a JSON document too."""
        reply = self._replies.popleft() if self._replies else echo_reply(last_user_text)
        if json_mode and reply == echo_reply(last_user_text):
            reply = attrs.evolve(reply, text=json.dumps({"echo": last_user_text}))
        return reply


def split_text(text: str, size: int) -> list[str]:
    """Split text into pieces of at most ``size`` characters (at least one piece, maybe empty)."""
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def estimate_prompt_tokens(text: str) -> int:
    """The servers' stand-in tokenizer: one token per whitespace-separated word, at least 1."""
    return max(1, len(text.split()))
