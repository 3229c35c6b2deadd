"""W3C trace context (``traceparent``) carried in Kafka headers and HTTP calls, so one order is one trace."""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


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
