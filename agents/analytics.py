"""The analytics flow: order events into event-time windows (adapter around :mod:`streamcart.domain.analytics`).

It consumes ``events.orders`` and keeps, per source partition, the open windows in the ``analytics`` table (so
its state is co-partitioned with its input and rebuilt from the changelog like every other table). Windows that
close are stored for queries (for ``analytics_retention_s`` of event time) and emitted to the ``analytics.*``
topics, one result per window, source partition and currency or SKU.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import Runtime, consume, record_time_ms
from schemas.messages import Message
from streamcart.domain import analytics

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> Any:
    """Declare the analytics agent on the runtime's app."""
    settings = runtime.settings
    lateness_ms = int(settings.analytics_lateness_s * 1000)
    retention_ms = int(settings.analytics_retention_s * 1000)
    table = runtime.tables.analytics

    async def handle(message: Message, event: Any) -> None:
        if not analytics.is_counted(message):
            return  # a placement: it changes nothing (see streamcart.domain.analytics)
        partition = int(event.message.partition)
        state = table.windows(partition)
        seen = table.seen(partition, message.event_id)
        record_ms = record_time_ms(event)
        folded = analytics.fold(state, message, lateness_ms=lateness_ms, seen=seen, record_ms=record_ms)
        runtime.telemetry.analytics_folded(folded)
        if folded.state is not None and analytics.event_time(message, record_ms) != message.occurred_at:
            log.warning("%s %s is timed %.0f s after it was written to Kafka (a clock ahead?): counted as of when "
                        "it was written", type(message).__name__, message.event_id,
                        (message.occurred_at - (record_ms or 0)) / 1000)
        if folded.late:
            log.info("%s %s is late for %s (watermark %s)", type(message).__name__, message.event_id,
                     ", ".join(folded.late), state.watermark)
        if folded.state is not None:
            # Closed windows, then the state (naming this event), then "seen": a crash anywhere in between replays
            # the event, which closes the same windows again or is recognised as folded; nothing counts twice.
            if folded.closed and folded.state.watermark is not None:
                table.keep_closed(folded.closed, partition, forget_before=folded.state.watermark - retention_ms)
            table.put_windows(folded.state)
            table.mark_seen(partition, message.event_id, folded.closed_ids)
            closed = folded.closed
        else:  # a duplicate: send again what it sent the first time
            closed = tuple(w for name in folded.reemit if (w := table.closed(partition, name)) is not None)
        for window in closed:
            await runtime.emit(window.results(message.event_id), cause=event)

    async def analytics_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="analytics")

    return runtime.app.agent(runtime.source(runtime.topics.order_events), name="analytics")(analytics_agent)
