"""W3C trace context (``traceparent``) carried in Kafka headers and HTTP calls, so one order is one trace.

While a message (or a request) is handled, its span is the *current* one (:func:`span`, a context variable, so
concurrently handled messages each see their own): the messages it sends carry it (:func:`outgoing_traceparent`),
each HTTP call it makes is a child span, and its log records carry the trace id. Spans are only ids unless a
:class:`SpanRecorder` is installed (:mod:`streamcart.otel`, when an OpenTelemetry endpoint is configured).
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


class SpanRecorder(Protocol):
    """Records spans somewhere (an OpenTelemetry exporter); it mints their ids."""

    def span(self, name: str, parent: str | None, kind: SpanKind) -> AbstractContextManager[str]:
        """Record a span named ``name`` in ``parent``'s trace (a new trace when missing or malformed) while the
        block runs; yields its ``traceparent``."""
        ...


_recorder: SpanRecorder | None = None


def record_spans(recorder: SpanRecorder | None) -> None:
    """Install (or, with ``None``, remove) the process's span recorder: once, at its wiring point."""
    global _recorder
    _recorder = recorder


_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn trace propagation on or off for the process (``tracing`` setting; on unless measuring its cost)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def new_traceparent() -> str:
    """Start a new trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """A new span in the parent's trace, or a new trace when ``parent`` is missing or malformed."""
    match = _TRACEPARENT.match(parent or "")
    if match is None:
        return new_traceparent()
    trace_id, _, flags = match.groups()
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a ``traceparent`` value, for logs."""
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def current_traceparent() -> str | None:
    """The span being handled in this task, if any."""
    return _current.get()


@contextmanager
def span(parent: str | None, name: str, kind: SpanKind = "internal") -> Iterator[str]:
    """Handle something as a new span of ``parent``'s trace (a new trace without one): the current span inside
    the block. Yields its ``traceparent`` (empty while tracing is off)."""
    if not _enabled:
        yield ""
    elif _recorder is None:
        with _current_span(child_traceparent(parent)) as traceparent:
            yield traceparent
    else:
        with _recorder.span(name, parent, kind) as recorded, _current_span(recorded) as traceparent:
            yield traceparent


@contextmanager
def _current_span(traceparent: str) -> Iterator[str]:
    token = _current.set(traceparent)
    try:
        yield traceparent
    finally:
        _current.reset(token)


def call_span(name: str) -> AbstractContextManager[str]:
    """An outgoing HTTP call made now, as a child span of the current one: send the ``traceparent`` it yields."""
    return span(_current.get(), name, "client")


def outgoing_traceparent() -> str:
    """The ``traceparent`` for a message sent now: the current span's (the span that sent it is the parent of
    whatever handles it), or a new trace outside any."""
    return _current.get() or new_traceparent()
