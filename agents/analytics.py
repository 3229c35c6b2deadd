"""The analytics flow: order events into event-time windows (adapter around :mod:`streamcart.domain.analytics`).

It consumes ``events.orders`` and keeps, per source partition, the open windows in the ``analytics`` table (so
its state is co-partitioned with its input and rebuilt from the changelog like every other table). Windows that
close are stored for queries (for ``analytics_retention_s`` of event time) and emitted to the ``analytics.*``
topics, one result per window, source partition and currency or SKU; a revenue window's is sent again, under the same
key, each time a late confirmation adds to what it would have been (its ``late_*`` figures).

A timer on every worker writes a :class:`~schemas.messages.ClockTick` to each partition it owns whose watermark has
fallen behind the time before which no order event can still come but late: the windows of a partition no order
event comes to close too (streamcart.domain.analytics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import cache
from itertools import count
from typing import Any

from agents.runtime import Runtime, consume, record_time_ms
from agents.timeouts import handled_to_end, restoring
from schemas.messages import ClockTick, Message
from streamcart.domain import analytics
from streamcart.ids import derive_id
from streamcart.partitioning import partition_for

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> Any:
    """Declare the analytics agent on the runtime's app."""
    settings = runtime.settings
    lateness_ms = int(settings.analytics_lateness_s * 1000)
    retention_ms = int(settings.analytics_retention_s * 1000)
    table = runtime.tables.analytics
    clock = Clock(runtime)

    async def handle(message: Message, event: Any) -> None:
        if not analytics.moves_clock(message):
            return  # a placement: it changes nothing (see streamcart.domain.analytics)
        partition = int(event.message.partition)
        state = table.windows(partition)
        tick = isinstance(message, ClockTick)
        seen = None if tick else table.seen(partition, message.event_id)  # a tick's are in the state
        record_ms = record_time_ms(event)
        folded = analytics.fold(state, message, lateness_ms=lateness_ms, seen=seen, record_ms=record_ms,
                                retention_ms=retention_ms)
        runtime.telemetry.analytics_folded(folded)
        if not tick and folded.state is not None and analytics.event_time(message, record_ms) != message.occurred_at:
            log.warning("%s %s is timed %.0f s after it was written to Kafka (a clock ahead?): counted as of when "
                        "it was written", type(message).__name__, message.event_id,
                        (message.occurred_at - (record_ms or 0)) / 1000)
        if folded.late:
            log.info("%s %s is late for %s (watermark %s)", type(message).__name__, message.event_id,
                     ", ".join(folded.late), state.watermark)
        if folded.state is not None:
            # Closed windows, then the state (naming this event), then "seen": a crash anywhere in between replays
            # the event, which closes the same windows again or is recognised as folded; nothing counts twice. A
            # tick also forgets the closed windows past their retention on a partition nothing closes on any more.
            if (folded.closed or tick) and folded.state.watermark is not None:
                table.keep_closed(folded.closed, partition, forget_before=folded.state.watermark - retention_ms)
            table.put_windows(folded.state)
            if not tick:
                table.mark_seen(partition, message.event_id, folded.sent_ids)
            state, sent = folded.state, folded.sent_ids
            just_closed = {analytics.window_id(w.metric, w.window): w for w in folded.closed}
            clock.note(partition, state.watermark)
        else:  # a duplicate: send again what it sent the first time (with the late figures come since)
            if not tick and seen is None:  # known as the state's last event: stored, but not marked seen yet
                table.mark_seen(partition, message.event_id, folded.reemit)
            sent, just_closed = folded.reemit, {}
            clock.note(partition, state.watermark)
        for name in sent:
            # One just closed as the fold has it: the table keeps none that is past its retention already.
            closed = just_closed.get(name) or table.closed(partition, name)
            await runtime.emit(analytics.window_results(state, name, closed, message.event_id), cause=event)

    async def analytics_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="analytics")

    async def tick_idle_partitions() -> None:
        # An exception escaping a faust timer kills the whole worker (notes/faust.md): never let one out.
        try:
            if not restoring(runtime):  # what the tables hold then is not all there is yet
                await clock.tick(owned_sources(runtime), int(time.time() * 1000), time.monotonic(),
                                 in_flight=lambda: in_flight(runtime), behind=lambda p: saga_behind(runtime, p))
        except Exception:
            log.exception("analytics clock tick failed; the next one tries again")

    runtime.app.timer(settings.timer_interval_s, name="analytics-clock")(tick_idle_partitions)
    agent = runtime.app.agent(runtime.source(runtime.topics.order_events), name="analytics")(analytics_agent)
    agent.clock = clock  # what the timer ticks with, for tests
    return agent


class Clock:
    """Writes a :class:`ClockTick` to each partition it is given whose watermark the tick would move
    (streamcart.domain.analytics, :func:`~streamcart.domain.analytics.tick_watermark`), one at a time: another only
    once the last was folded, or after :data:`~streamcart.domain.analytics.TICK_RESEND_MS`.

    It knows each partition's watermark from the flow (:meth:`note`), reading the table only for a partition the
    flow has not handled anything of since this worker started: a partition's state is up to ~1 MB of JSON.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.deadline_ms = int(runtime.settings.saga_timeout_s * 1000)
        self.lateness_ms = int(runtime.settings.analytics_lateness_s * 1000)
        self.watermarks: dict[int, int | None] = {}  # partition -> its watermark, as the flow last saw it
        self.last: dict[int, float] = {}  # partition -> when a tick was last written to it (monotonic s)

    def note(self, partition: int, watermark: int | None) -> None:
        """The flow folded (or read) ``partition``'s state: its watermark is ``watermark``."""
        self.watermarks[partition] = watermark

    def watermark(self, partition: int) -> int | None:
        if partition not in self.watermarks:
            self.watermarks[partition] = self.runtime.tables.analytics.windows(partition).watermark
        return self.watermarks[partition]

    async def tick(self, partitions: list[int], now_ms: int, now: float, *,
                   in_flight: Callable[[], Mapping[int, int]] = dict,
                   behind: Callable[[int], bool] = lambda _: False) -> list[int]:
        """Write the ticks due at ``now_ms`` (wall clock) and ``now`` (monotonic); the partitions ticked.
        ``in_flight()``: the oldest placement of the orders in flight, by partition (asked only when a tick may be
        due); ``behind(p)``: whether this worker has records of the saga for partition ``p`` still to handle."""
        ticked = []
        at_most = analytics.tick_watermark(now_ms, order_deadline_ms=self.deadline_ms, lateness_ms=self.lateness_ms,
                                           oldest_in_flight=None)
        for partition in partitions:
            if now - self.last.get(partition, float("-inf")) < analytics.TICK_RESEND_MS / 1000:
                continue
            watermark = self.watermark(partition)
            if not analytics.tick_due(watermark, at_most) or behind(partition):
                continue  # moved by events of late (the usual case under traffic), or more are coming
            # Asked now, not before an earlier partition's tick was sent: an order may have been placed meanwhile.
            to = analytics.tick_watermark(now_ms, order_deadline_ms=self.deadline_ms, lateness_ms=self.lateness_ms,
                                          oldest_in_flight=in_flight().get(partition))
            if not analytics.tick_due(watermark, to):
                continue
            self.last[partition] = now
            await self.runtime.send(clock_tick(partition, self.runtime.settings.partitions, now_ms, to))
            ticked.append(partition)
        return ticked


def in_flight(runtime: Runtime) -> dict[int, int]:
    """The oldest placement of the orders in flight this worker holds (its ``deadlines`` table, of the partitions
    it owns: a deadline is the placement plus an order's deadline), by partition."""
    deadline_ms = int(runtime.settings.saga_timeout_s * 1000)
    oldest: dict[int, int] = {}
    for order_id, deadline in runtime.tables.deadlines.items():
        partition, placed = partition_for(order_id, runtime.settings.partitions), deadline - deadline_ms
        oldest[partition] = min(oldest.get(partition, placed), placed)
    return oldest


def saga_behind(runtime: Runtime, partition: int) -> bool:
    """Whether this worker has records it has not handled (committed) yet on ``partition`` of a topic the saga
    sends an order's messages through, or does not know yet: an outcome may still come of them."""
    t = runtime.topics
    topics = (t.order_commands, t.inventory_events, t.payment_events, t.shipping_events, t.order_events)
    return not all(handled_to_end(runtime, topic, partition) for topic in topics)


def owned_sources(runtime: Runtime) -> list[int]:
    """The partitions of the order events (the analytics flow's source) this worker owns."""
    topic = runtime.topics.order_events
    return sorted(tp.partition for tp in runtime.app.assignor.assigned_actives() if tp.topic == topic)


def clock_tick(partition: int, partitions: int, now_ms: int, watermark: int) -> ClockTick:
    """A tick for ``partition`` at ``now_ms``, moving its watermark to ``watermark``."""
    event_id = derive_id("clock-tick", partition, now_ms)
    return ClockTick(event_id=event_id, occurred_at=now_ms, causation_id=event_id, correlation_id=event_id,
                     partition=partition, slot=slot(partition, partitions), watermark=watermark)


@cache
def slot(partition: int, partitions: int) -> str:
    """A key that lands on ``partition`` of a topic of ``partitions`` partitions (the first ``clock/{p}/{i}``)."""
    return next(key for i in count() if partition_for(key := f"clock/{partition}/{i}", partitions) == partition)
