"""FaultLog: a fault contained in one request is described for its error and logged, once per kind and
interval, so a client repeating a poison request cannot flood the log."""

from __future__ import annotations

import logging

import pytest
import trio

from duckagents.errors import Secret
from duckagents.supervision import FaultLog

LOGGER = "duckagents.test-faults"


def poison(text: str) -> ValueError:
    try:
        raise ValueError(text)
    except ValueError as exc:
        return exc


def other_fault() -> KeyError:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        return exc


async def test_each_kind_is_logged_once_per_interval_with_a_count_of_the_rest(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultLog(logging.getLogger(LOGGER), interval=60.0)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    for index in range(5):
        faults.request_failed(poison("bad input"), f"agent a#1: request r{index}")
    faults.request_failed(other_fault(), "agent a#1: request k1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and faults.total == 6
    assert lines[0].startswith("agent a#1: request r0 failed with an internal error")
    assert "Traceback (most recent call last)" in lines[0] and "ValueError: bad input" in lines[0]
    assert lines[1].startswith("agent a#1: request k1") and "KeyError" in lines[1]
    await trio.sleep(61)
    faults.request_failed(poison("bad input"), "agent a#1: request r9")
    assert "request r9" in caplog.records[-1].getMessage()
    assert "(4 more like it in the last 60 s, not logged)" in caplog.records[-1].getMessage()


async def test_the_description_is_bounded_redacted_and_valid_unicode(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultLog(logging.getLogger(LOGGER))
    secret = "sk-test-key-0123456789abcdefghijkl"
    exc = poison(f"bad {secret} \ud800 " + "x" * 1_000_000)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    description = faults.request_failed(exc, "router: request r1", [Secret(secret)])
    assert description.startswith("ValueError: bad *** \\ud800 x") and len(description) <= 300
    description.encode("utf-8")
    [record] = caplog.records
    text = record.getMessage()
    assert secret not in text and "\\ud800" in text and len(text) < 40_000
    text.encode("utf-8")
    assert "characters left out" in text and text.rstrip().endswith("x")


async def test_exception_groups_are_described_by_their_first_leaf(autojump_clock: object) -> None:
    faults = FaultLog(logging.getLogger(LOGGER))
    group = ExceptionGroup("from a nursery", [poison("inner"), other_fault()])
    assert faults.request_failed(group, "agent a#1: request g") == "ValueError: inner"
