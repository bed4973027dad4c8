"""What a :class:`~duckagents.providers._mock.MockProvider` is scripted to do next.

Replies and outcomes (failures, crashes, hangs) wait in two bounded queues; :class:`MockScript` holds them
and is the mock's scripting half (``push_reply``, ``fail_next``, ``crash_next``, ``crash_agent_next``,
``hang_next``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs

from ..errors import ErrorKind
from ..messages import FinishReason, Message, ToolCall
from ..signals import ProviderRequest

#: Scripted items (replies or failures) one provider holds at most; more is a test bug, so it raises.
MAX_SCRIPT = 4096


def mock_answer(text: str) -> str:
    """The unscripted answer: friendly, obviously from the mock, and a pure function of the prompt."""
    return f"Quack! This is the duckagents mock provider (no real LLM configured). You said: {text}"


@attrs.frozen
class MockReply:
    """One scripted answer. ``finish_reason`` defaults to ``tool_calls`` when there are tool calls."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    raw_finish_reason: str | None = None
    #: Characters per streamed chunk; ``None`` uses the provider's ``chunk_size``.
    chunk_size: int | None = None


@attrs.frozen
class MockFailure:
    """One scripted failure: the call raises ``ProviderError(kind, ...)``.

    In a stream, ``after_chunks`` text chunks are yielded first (a mid-stream failure).
    """

    kind: ErrorKind = attrs.field(converter=ErrorKind)
    message: str = "injected mock failure"
    retry_after: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0.0))
    )
    status: int | None = None
    after_chunks: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: How many calls in a row fail this way (in a config's ``failures`` list).
    count: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_SCRIPT)])


@attrs.frozen
class Crash:
    """The call raises ``RuntimeError(message)``."""

    message: str


@attrs.frozen
class AgentCrash:
    """The call raises ``AgentFault(message)``: the agent running the mock crashes."""

    message: str


@attrs.frozen
class Hang:
    """The call sleeps ``duration`` seconds shielded from cancellation before going on."""

    duration: float


Outcome = MockFailure | Crash | AgentCrash | Hang


class MockScript:
    """The scripting half of the mock provider: queued replies and queued outcomes, both bounded."""

    def __init__(self) -> None:
        self._replies: deque[MockReply] = deque()
        self._outcomes: deque[Outcome] = deque()

    def push_reply(self, *replies: str | MockReply) -> None:
        """Queue answers for the next completion calls, in order (a string is a plain text answer)."""
        if len(self._replies) + len(replies) > MAX_SCRIPT:
            raise ValueError(f"a mock provider holds at most {MAX_SCRIPT} scripted replies")
        self._replies.extend(MockReply(r) if isinstance(r, str) else r for r in replies)

    def fail_next(
        self,
        kind: ErrorKind | str,
        count: int = 1,
        retry_after: float | None = None,
        *,
        message: str = "injected mock failure",
        status: int | None = None,
        after_chunks: int = 0,
    ) -> None:
        """Make the next ``count`` completion calls raise ``ProviderError(kind)``."""
        failure = MockFailure(ErrorKind(kind), message, retry_after, status, after_chunks)
        for _ in range(count):
            self._queue_outcome(failure)

    def crash_next(self, count: int = 1, message: str = "injected crash in the mock provider") -> None:
        """Make the next ``count`` completion calls raise ``RuntimeError`` (simulates a provider bug: the
        agent fails that request with ``internal`` and keeps serving)."""
        for _ in range(count):
            self._queue_outcome(Crash(message))

    def crash_agent_next(
        self, count: int = 1, message: str = "injected agent fault in the mock provider"
    ) -> None:
        """Make the next ``count`` completion calls raise :class:`~duckagents.errors.AgentFault` (a fault of
        the agent's own machinery: the agent crashes and its supervisor restarts it)."""
        for _ in range(count):
            self._queue_outcome(AgentCrash(message))

    def hang_next(self, count: int = 1, duration: float = 3600.0) -> None:
        """Make the next ``count`` calls sleep ``duration`` seconds *shielded from cancellation* before
        answering: a wedged call that neither its deadline nor a cancel can interrupt."""
        for _ in range(count):
            self._queue_outcome(Hang(duration))

    def clear_script(self) -> None:
        """Forget every queued reply and failure."""
        self._replies.clear()
        self._outcomes.clear()

    def _queue_outcome(self, outcome: Outcome) -> None:
        if len(self._outcomes) >= MAX_SCRIPT:
            raise ValueError(f"a mock provider holds at most {MAX_SCRIPT} scripted failures")
        self._outcomes.append(outcome)

    def _next_outcome(self) -> Outcome | None:
        return self._outcomes.popleft() if self._outcomes else None

    def _next_reply(self, request: ProviderRequest) -> MockReply:
        if self._replies:
            return self._replies.popleft()
        return MockReply(mock_answer(last_user_text(request.messages)))


def last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return ""
