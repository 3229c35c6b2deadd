"""W3C trace context (``traceparent``) carried in Kafka headers and HTTP calls, so one order is one trace.

While a message (or a request) is handled, its span is the *current* one (:func:`span`, a context variable, so
concurrently handled messages each see their own): outgoing calls carry a child of it
(:func:`outgoing_traceparent`) and log records its trace id.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


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
def span(parent: str | None) -> Iterator[str]:
    """Handle something as a new span of ``parent``'s trace (a new trace without one): the current span inside
    the block. Yields its ``traceparent``."""
    traceparent = child_traceparent(parent)
    token = _current.set(traceparent)
    try:
        yield traceparent
    finally:
        _current.reset(token)


def outgoing_traceparent() -> str:
    """The ``traceparent`` for a call made now: a child of the current span (a new trace outside any)."""
    return child_traceparent(_current.get())
