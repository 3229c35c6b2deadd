"""Logs: one JSON object per line (or plain text), carrying the ids of whatever is being handled.

A record's context comes from two places, both read when the record is formatted (in the task that logged it):
the fields bound with :func:`log_context` (an agent binds ``order_id``/``event_id`` around each message, the API
its ``request_id``) and the trace of :mod:`streamcart.tracing` (``trace_id``). faust and mode log through the
same root handler: a worker hands :func:`logging_config` to ``faust.Worker``, which would otherwise install its
own coloured console handler.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from streamcart.settings import LogFormat, Settings
from streamcart.tracing import current_traceparent, trace_id

_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "log_fields", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add ``fields`` (``None`` values left out) to every record logged inside the block, in this task and in
    the tasks it starts."""
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def context_fields() -> dict[str, str]:
    """What a record logged here and now carries besides its message: bound fields and the trace id."""
    fields = dict(_fields.get())
    trace = trace_id(current_traceparent())
    if trace is not None:
        fields["trace_id"] = trace
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the context, any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **context_fields(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """A readable line for a person at a terminal, with the context as ``key=value`` after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{key}={value}" for key, value in context_fields().items())
        if not context:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the line it belongs to
        return f"{head} [{context}]{newline}{rest}"


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` that sends every logger's records to stdout in ``log_format``."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"streamcart": {"()": formatter}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "streamcart"}
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
    }


def configure_logging(settings: Settings) -> None:
    """Set up this process's logging from its settings: call once, at its wiring point."""
    logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
    logging.captureWarnings(True)  # a Python warning is a record too, not a stray line on stderr
