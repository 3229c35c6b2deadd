"""Logs: one JSON object per line (or plain text), carrying the ids of whatever is being handled.

A record's context comes from two places, both read when the record is formatted (in the task that logged it):
the fields bound with :func:`log_context` (an agent binds ``order_id``/``event_id`` around each message, the API
its ``request_id``) and the trace of :mod:`streamcart.tracing` (``trace_id``). faust and mode log through the
same root handler: a worker hands :func:`logging_config` to ``faust.Worker``, which would otherwise install its
own coloured console handler.

A line repeated word for word is written once per :data:`REPEAT_WINDOW_S` (:class:`RepeatedRecords`): while Kafka
is away, aiokafka logs each failed connection attempt, some 60 lines a second per worker. So is one of faust's and
mode's routine lines under load that differ only in the figure they measure (:data:`MEASURING`): in a burst, each
worker wrote a few hundred "Timer commit is overlapping (interval=0.2 runtime=0.31…)" and "producer buffer full
size 102" lines a minute.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
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


#: How long a line written is not written again word for word (logger, level and text the same).
REPEAT_WINDOW_S = 10.0

#: Routine lines of faust and mode that say how long or how much something was, per logger: lines that match the
#: same pattern with the same groups count as the same line for :class:`RepeatedRecords`, whatever the figures.
#: (A busy worker overruns its 0.2 s commit timer and fills faust's changelog buffer all the time; each such line
#: is news once, not a few times a second.)
MEASURING: Mapping[str, tuple[re.Pattern[str], ...]] = MappingProxyType({
    "mode.timers": (re.compile(r"Timer (\S+) is overlapping \(interval=\S+ runtime=\S+\)"),),
    "faust.transport.producer": (re.compile(r"producer buffer full size \d+"),
                                 re.compile(r"producer flush took \S+")),
})


def _same_as(logger: str, text: str) -> object:
    """What makes two lines of ``logger`` the same line: their text, or the :data:`MEASURING` pattern they match."""
    for pattern in MEASURING.get(logger, ()):
        if (match := pattern.fullmatch(text)) is not None:
            return pattern.pattern, match.groups()
    return text


class RepeatedRecords(logging.Filter):
    """Lets a record through once per ``window_s`` for the same logger, level, text and context (the ids bound with
    :func:`log_context`); the first one after that says how many like it were held back. Records that differ in any
    word or id (another order, another request) all go, except routine lines that differ only in a figure
    (:data:`MEASURING`), and so does every record with an exception."""

    #: Lines remembered; the least recently written is forgotten first.
    SIZE = 1024

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        # faust's consumer logs from a thread of its own; re-entrant, as logging's own locks are (a collection run
        # inside the lock may finalize something that logs).
        self._lock = threading.RLock()
        self._seen: OrderedDict[tuple[object, ...], list[float]] = OrderedDict()  # -> [written at, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a bad format: the handler reports it as it always did
            return True
        key = (record.name, record.levelno, _same_as(record.name, text), tuple(sorted(context_fields().items())))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                self._seen.move_to_end(key)
                return False
            held = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)  # (assigning an existing key leaves it where it was)
            while len(self._seen) > self.SIZE:
                self._seen.popitem(last=False)
        if held:
            record.msg, record.args = f"{text} ({held} more like it held back in the last {self.window_s:g} s)", ()
        return True


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` that sends every logger's records to stdout in ``log_format``."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"streamcart": {"()": formatter}},
        "filters": {"repeats": {"()": RepeatedRecords}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "streamcart",
                       "filters": ["repeats"]}
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
    }


def configure_logging(settings: Settings) -> None:
    """Set up this process's logging from its settings: call once, at its wiring point."""
    logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
    logging.captureWarnings(True)  # a Python warning is a record too, not a stray line on stderr
