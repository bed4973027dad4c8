"""``--log-level`` and ``--log-format``: stdlib logging to stderr, as text or one JSON object per line.

Every line passes through :func:`~duckagents.errors.redact` with the secrets of the loaded config (API
keys, gateway tokens) and the key-shaped patterns it knows, so a secret never reaches a log line even when
a message or a traceback carries one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from ..errors import Secret, redact

#: The attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_secrets: set[Secret] = set()


def learn_secrets(secrets: Iterable[Secret]) -> None:
    """Redact these values from every log line from now on."""
    _secrets.update(secrets)


def _clean(text: str) -> str:
    return redact(text, _secrets)


class TextFormatter(logging.Formatter):
    """``time level logger: message`` with secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return _clean(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the
    record's ``extra`` fields, and ``exception`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _clean(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = _clean(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = _clean(self.formatException(record.exc_info))
        return json.dumps(line, default=lambda v: _clean(str(v)), ensure_ascii=False)


_handler: logging.Handler | None = None


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send the ``duckagents`` loggers at ``level``, and the libraries' warnings and errors, to ``stream``."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    threshold = getattr(logging, level.upper())
    # Debug lines of httpx, trio-websocket... would drown ours: the libraries log from warning up.
    root.setLevel(max(threshold, logging.WARNING))
    logging.getLogger("duckagents").setLevel(threshold)
    _handler = handler
