"""--log-format json: one object per line; secrets redacted from messages, extras and tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from duckagents.cli._logs import configure_logging, learn_secrets
from duckagents.errors import Secret

SECRET = "tok-" + "7" * 24


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("duckagents")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def test_json_lines_redact_known_secrets_everywhere() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    learn_secrets([Secret(SECRET)])
    log = logging.getLogger("duckagents.test")
    log.info("connecting with %s", SECRET, extra={"token": SECRET, "attempt": 2})
    try:
        raise ValueError(f"upstream echoed {SECRET}")
    except ValueError:
        log.exception("failed")
    log.debug("below the threshold")
    logging.getLogger("httpx").info("library chatter below warning")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["connecting with ***", "failed"]
    assert lines[0]["token"] == "***" and lines[0]["attempt"] == 2 and lines[0]["level"] == "info"
    assert "ValueError: upstream echoed ***" in lines[1]["exception"]
    assert SECRET not in stream.getvalue()


def test_text_lines_redact_too() -> None:
    stream = io.StringIO()
    configure_logging("warning", "text", stream)
    learn_secrets([Secret(SECRET)])
    logging.getLogger("duckagents.test").warning("key %s", SECRET)
    assert stream.getvalue().rstrip().endswith("WARNING duckagents.test: key ***")

