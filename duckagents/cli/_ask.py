"""``duckagents ask``: one request, in-process or through a running gateway; ``-v`` shows the attempts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import attrs

from ..bus import Overflow, SignalFilter
from ..errors import ProviderError
from ..signals import ProviderErrorData, ProviderRequest, ProviderResponse, Signal
from ._base import (
    CommandError,
    Commands,
    ExitCode,
    add_url_options,
    check_url,
    note,
    positive_int,
    positive_seconds,
    resolve_config,
    token_from,
)

_ATTEMPT_TYPES = frozenset({ProviderRequest.TYPE, ProviderResponse.TYPE, ProviderErrorData.TYPE})
#: Signals ``ask -v`` keeps while its request runs in-process (attempt-level ones are a few per attempt).
ATTEMPT_BUFFER = 1024


def add_commands(commands: Commands) -> None:
    """``ask``."""
    ask = commands.add(
        "ask", run_ask, help="send one prompt through the router and stream the answer",
        description="Send one prompt through the router and stream the answer to stdout. The prompt is "
        "the words given (no quotes needed), or stdin with '-'.",
    )
    ask.add_argument("prompt", nargs="+", metavar="PROMPT", help="the prompt; '-' reads it from stdin")
    ask.add_argument("--model", help="the model to ask for (default: the chosen provider's)")
    ask.add_argument("--provider", help="pin the request to one provider agent (in-process only)")
    ask.add_argument("--timeout", type=positive_seconds, default=None, metavar="SECONDS",
                     help="deadline of the request (default: the router's request_timeout)")
    ask.add_argument("--max-tokens", type=positive_int, default=None, metavar="N")
    ask.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    ask.add_argument("--verbose", "-v", action="store_true",
                     help="print provider, usage and latency, and each attempt when there were several")
    add_url_options(ask, help="submit through a running gateway, ws://HOST:PORT/ "
                    "(default: $DUCKAGENTS_URL, else run the tree in this process)")


def read_prompt(words: list[str]) -> str:
    """The prompt: the words joined by spaces, or stdin for ``-``."""
    if words == ["-"]:
        text = sys.stdin.read()
        if not text.strip():
            raise CommandError("ask -: stdin held no prompt", ExitCode.USAGE)
        return text.rstrip("\n")
    return " ".join(words)


async def run_ask(args: argparse.Namespace, out: TextIO) -> int:
    """One request; the answer streams to ``out``; ``-v`` adds a summary (and the attempts) on stderr."""
    prompt = read_prompt(args.prompt)
    options: dict[str, Any] = {}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    url = args.url or os.environ.get("DUCKAGENTS_URL")
    attempts: list[Signal] | None = [] if args.verbose else None
    try:
        if url:
            check_url(url, ("ws", "wss"), "ask --url" if args.url else "$DUCKAGENTS_URL")
            response = await _ask_gateway(args, url, prompt, options, out, attempts)
        else:
            response = await _ask_local(args, prompt, options, out, attempts)
    except ProviderError as exc:
        out.flush()
        if attempts:
            _print_attempts(attempts, exc.request_id)
        raise
    out.flush()
    if args.verbose:
        if attempts:
            _print_attempts(attempts, response.request_id)
        cost = "cost unknown" if response.usage.cost is None else f"${response.usage.cost:.6f}"
        note(
            f"[{response.provider}/{response.model}] {response.usage.prompt_tokens}+"
            f"{response.usage.completion_tokens} tokens, {cost}, {response.latency * 1000:.1f} ms, "
            f"finish={response.finish_reason.value}"
        )
    return ExitCode.OK


async def _ask_gateway(
    args: argparse.Namespace, url: str, prompt: str, options: dict[str, Any], out: TextIO,
    attempts: list[Signal] | None,
) -> ProviderResponse:
    """Submit through a running ``duckagents serve --gateway`` (so ``watch`` clients see it)."""
    from ..gateway import ask

    if args.provider:
        raise CommandError(
            "--provider cannot be used with --url: the server's router chooses", ExitCode.USAGE
        )
    response = await ask(
        url, prompt, token=token_from(args), model=args.model, request_timeout=args.timeout,
        options={**options, "stream": not args.no_stream}, out=out, attempts=attempts,
    )
    if args.no_stream:
        out.write(response.content)
    out.write("\n")
    return response


async def _ask_local(
    args: argparse.Namespace, prompt: str, options: dict[str, Any], out: TextIO,
    attempts: list[Signal] | None,
) -> ProviderResponse:
    """Run the tree in this process for one request."""
    from ..app import open_router

    config = await resolve_config(args)
    async with open_router(config) as router:
        watching = SignalFilter(types=_ATTEMPT_TYPES)
        with router.bus.subscribe(watching, buffer=ATTEMPT_BUFFER, overflow=Overflow.DROP_OLDEST) as seen:
            try:
                if args.no_stream:
                    response = await router.complete(
                        prompt, model=args.model, provider=args.provider, timeout=args.timeout, **options
                    )
                    out.write(response.content + "\n")
                else:
                    async with router.stream(
                        prompt, model=args.model, provider=args.provider, timeout=args.timeout, **options
                    ) as stream:
                        async for chunk in stream:
                            out.write(chunk.delta)
                            out.flush()
                    out.write("\n")
                    if stream.response is None:  # the stream raises on failure: a broken invariant
                        raise RuntimeError("stream ended without a final response")
                    response = stream.response
            finally:
                if attempts is not None:
                    attempts += _drain(seen)
    return response


def _drain(subscription: Any) -> list[Signal]:
    import trio

    signals = []
    while True:
        try:
            signals.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return signals


@attrs.frozen
class Attempt:
    """One attempt of a request, as ``ask -v`` shows it."""

    number: int
    provider: str
    model: str | None
    #: ``ok``, or the error kind.
    outcome: str
    #: Seconds from dispatch to the attempt's terminal, when both were seen.
    latency: float | None


def attempts_of(signals: Iterable[Signal], request_id: str | None) -> list[Attempt]:
    """The attempts of ``request_id`` from its attempt-level signals (subject ``<id>#<k>``), in order."""
    dispatched: dict[str, Signal] = {}
    ended: dict[str, Signal] = {}
    for signal in signals:
        subject = signal.subject or ""
        head, sep, _ = subject.rpartition("#")
        if not sep or (request_id is not None and head != request_id):
            continue
        if isinstance(signal.data, ProviderRequest):
            dispatched.setdefault(subject, signal)
        else:
            ended.setdefault(subject, signal)
    found = []
    for subject, request in dispatched.items():
        data = request.data
        assert isinstance(data, ProviderRequest)
        terminal = ended.get(subject)
        outcome, model, latency = "no answer seen", data.model, None
        if terminal is not None:
            latency = (terminal.time - request.time) / 1e6
            end = terminal.data
            if isinstance(end, ProviderResponse):
                outcome, model = "ok", end.model
            elif isinstance(end, ProviderErrorData):
                outcome, model = str(getattr(end.kind, "value", end.kind)), end.model or model
        found.append(Attempt(data.attempt, data.provider or request.provider or "?", model, outcome, latency))
    return sorted(found, key=lambda a: a.number)


def _print_attempts(signals: list[Signal], request_id: str | None) -> None:
    """Each attempt on stderr, when there was more than one (one attempt is the summary line's)."""
    attempts = attempts_of(signals, request_id)
    if len(attempts) < 2:
        return
    for a in attempts:
        where = f"{a.provider}/{a.model}" if a.model else a.provider
        took = "" if a.latency is None else f" in {a.latency * 1000:.1f} ms"
        note(f"attempt {a.number}: {where} {a.outcome}{took}")
