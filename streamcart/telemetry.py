"""What a process measures about itself: Prometheus metrics, and the live figures the dashboard streams.

Metrics live in prometheus-client's default registry (served on ``/metrics`` by every worker). :class:`Telemetry`
is one worker's in-memory view of what it has just seen (orders placed, outcomes, saga latencies, each recent
order's timeline with the wall-clock time every step was recorded), which the dashboard gathers across workers.
It is lost with the process: the tables and topics are the record, this is only what a person watches.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

MESSAGES_PROCESSED = Counter(
    "streamcart_messages_processed", "Messages an agent handled (decoded and applied)", ["flow"]
)
MESSAGES_FAILED = Counter(
    "streamcart_messages_failed", "Messages an agent could not decode or process (sent to the DLQ)", ["flow", "error"]
)
DLQ_RECORDS = Gauge("streamcart_dlq_records", "Records in the dead-letter topic (all partitions)")
WAREHOUSE_DLQ_RECORDS = Gauge(
    "streamcart_warehouse_dlq_records", "Records in the warehouse's dead-letter topic: rows a Kafka Connect sink "
    "could not take")
DEAD_LETTERS = Counter(
    "streamcart_dead_letters", "Records this worker sent to the dead-letter topic, by the flow that failed on them",
    ["flow"],
)
CONSUMER_LAG = Gauge(
    "streamcart_consumer_lag", "Records not yet committed by the worker group, per partition this worker owns",
    ["topic", "partition"],
)
SAGA_STAGE = Histogram(
    "streamcart_saga_stage_seconds", "Time from an order's placement to each step the orders flow applies",
    ["stage"], buckets=LATENCY_BUCKETS,
)
SAGA_LATENCY = Histogram(
    "streamcart_saga_seconds", "Time from an order's placement to its outcome", ["outcome"], buckets=LATENCY_BUCKETS
)
ORDERS_PLACED = Counter("streamcart_orders_placed", "Orders accepted by the orders flow")
ORDERS_BY_OUTCOME = Counter("streamcart_orders_outcome", "Orders reaching an outcome", ["outcome", "reason"])
ORDERS_CANCELLED_AFTER_CONFIRMATION = Counter(
    "streamcart_orders_cancelled_after_confirmation",
    "Confirmed orders cancelled later at the customer's request (refunded and restocked); their outcome was counted "
    "when they were confirmed",
)
ORDERS_FORGOTTEN = Counter(
    "streamcart_orders_forgotten", "Settled orders forgotten by the tables once their retention ran out"
)
GATEWAY_CALLS = Histogram(
    "streamcart_gateway_call_seconds", "Payment gateway HTTP calls (one attempt each)", ["operation", "result"],
    buckets=LATENCY_BUCKETS,
)
GATEWAY_RETRIES = Counter("streamcart_gateway_retries", "Payment gateway attempts after the first", ["operation"])
GATEWAY_BREAKER = Gauge(
    "streamcart_gateway_breaker_open", "1 while a payment gateway circuit breaker (authorizations', or captures, "
    "voids and refunds') is open (or half-open: 0.5): the less healthy of the two"
)
ORDERS_PENDING = Gauge(
    "streamcart_orders_pending", "Orders placed and without an outcome yet in the partitions this worker owns, as "
    "its deadline timer last counted them"
)
TABLE_KEYS = Gauge(
    "streamcart_table_keys", "Keys in each table's active partitions on this worker (estimate)", ["table"]
)
STANDBY_BEHIND = Gauge(
    "streamcart_standby_records_behind", "Changelog records the standby copies this worker keeps "
    "(STREAMCART_STANDBY_REPLICAS) have yet to read, per table: 0 once every copy is caught up (and without copies)",
    ["table"],
)
ANALYTICS_LATE = Counter(
    "streamcart_analytics_late_events", "Order events that arrived after their window closed", ["metric"]
)
ANALYTICS_WINDOWS_CLOSED = Counter("streamcart_analytics_windows_closed", "Windows closed and emitted", ["metric"])
SAGA_QUEUE = Gauge(
    "streamcart_saga_queue_seconds", "How long records wait in this worker before the saga's flows (orders, "
    "inventory, payments, shipping) handle them: the longest of their sources' least waits of the last whole second "
    "(0 when they handled none); a queue that stands shows here"
)
KAFKA_REACHABLE = Gauge(
    "streamcart_kafka_reachable", "1 while this worker's API reaches the Kafka broker (its metadata requests are "
    "answered), 0 once two in a row went unanswered: it then refuses commands at once, and /readyz says not ready"
)
ORDERS_SHED = Counter(
    "streamcart_orders_shed", "New orders the API refused (503 overloaded), by reason: queue (the saga's flows were "
    "too far behind) or pace (more were asked than the pace the API learnt from that queue)", ["reason"]
)
for _reason in ("queue", "pace"):  # from 0: the first refusal is an increase() an alert sees
    ORDERS_SHED.labels(_reason)
SINK_RESTARTS = Counter(
    "streamcart_sink_restarts", "Warehouse sinks this worker restarted after Connect reported them failed",
    ["connector"],
)

BREAKER_LEVEL = {"closed": 0.0, "half-opened": 0.5, "opened": 1.0}

#: How much of the recent past the live figures cover.
RECENT_S = 60.0
#: Orders whose timeline is remembered (the most recent ones).
TIMELINES = 5_000
#: How many of its latest dead letters a worker shows on the dashboard (`streamcart dlq list` has them all).
DEAD_LETTERS_SHOWN = 10
#: A URL's query, which may carry a customer's webhook token: not shown on the dashboard.
_URL_QUERY = re.compile(r"(\bhttps?://[^\s?#]+)\?[^\s]*")


@dataclass(frozen=True, slots=True)
class Step:
    """One message the orders flow applied to an order, with when (wall clock) it was applied."""

    event: str
    event_id: str
    occurred_at: int
    recorded_at: int


class QueueDelay:
    """How long records wait before a flow handles them (written to Kafka → handled, on this worker's clock), per
    source topic: the least wait of each window of ``window_s``, as CoDel judges a queue. A queue that stands (more
    arrives than is handled) shows in the minimum; a burst the flow drains within the window does not, nor one slow
    record. The flow is as far behind as the longest standing queue among its sources: a queue of order commands
    while the events behind them still flow fresh is a backlog all the same."""

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock  # for the waits (records' timestamps are wall-clock times)
        self.monotonic = monotonic  # for the windows: a step of the wall clock neither freezes nor skips them
        self._start = monotonic()
        self._least: dict[str, float] = {}  # per source, of the window under way
        self._last: dict[str, float] = {}  # per source, of the whole window before it (none: nothing handled)

    def waited(self, source: str, written_ms: int | None) -> None:
        """A record of ``source`` written at ``written_ms`` (its Kafka timestamp; ``None``: unknown) is being
        handled now."""
        if written_ms is None:
            return
        self._roll(self.monotonic())
        wait = max(0.0, self.clock() - written_ms / 1000)
        if wait < self._least.get(source, math.inf):
            self._least[source] = wait

    def seconds(self) -> float | None:
        """The longest of the sources' least waits in the last whole window; ``None`` when nothing was handled in
        it (an idle flow)."""
        self._roll(self.monotonic())
        return max(self._last.values(), default=None)

    def _roll(self, now: float) -> None:
        if now - self._start < self.window_s:
            return
        # The window under way ends; it is the last whole one only if it ended less than a window ago (else the
        # flow handled nothing since, and the window before now is empty).
        self._last = self._least if now - self._start < 2 * self.window_s else {}
        self._least = {}
        self._start = now


class Telemetry:
    """One worker's live figures; fed by the flows, read by ``/v1/stream`` and the order timeline."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: This run of the worker: its counters start from zero at each start (the dashboard sums every run's).
        self.run = secrets.token_hex(8)
        self.placed = 0
        self.outcomes: Tally[str] = Tally()
        self.latencies: deque[tuple[float, float]] = deque(maxlen=20_000)  # (when, seconds to outcome)
        self.timelines: OrderedDict[str, list[Step]] = OrderedDict()
        #: How many of each message the orders flow applied or emitted (the saga's steps, for its live flow).
        self.steps: Tally[str] = Tally()
        self.breaker_state = "closed"
        #: The latest records this worker dead-lettered, newest last (what failed, where, why), for the dashboard.
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=DEAD_LETTERS_SHOWN)
        #: Orders still PENDING in this worker's partitions (the deadline index), ``None`` until first counted.
        self.pending: int | None = None
        #: How far behind the saga's flows are (the API refuses new orders beyond ``admission_max_delay_s``).
        self.saga_queue = QueueDelay(clock=clock)
        SAGA_QUEUE.set_function(lambda: self.saga_queue.seconds() or 0.0)

    # -- fed by the flows ------------------------------------------------------------------------------------

    def processed(self, flow: str) -> None:
        MESSAGES_PROCESSED.labels(flow).inc()

    def failed(self, flow: str, error: BaseException) -> None:
        MESSAGES_FAILED.labels(flow, type(error).__name__).inc()

    def may_dead_letter(self, *flows: str) -> None:
        """Export ``flows``' dead-letter counts from 0 on: a series that first appears at 1 has no increase for
        Prometheus (``increase()``), so the first dead letter of a flow would raise no alert."""
        for flow in flows:
            DEAD_LETTERS.labels(flow)

    def dead_lettered(self, flow: str, error: BaseException, source: str, key: bytes | None) -> None:
        """``flow`` sent the record at ``source`` (topic[partition]@offset) to the DLQ because of ``error``."""
        DEAD_LETTERS.labels(flow).inc()
        self.dead_letters.append({
            "at": int(self.clock() * 1000), "flow": flow, "source": source,
            "key": None if key is None else key.decode(errors="replace")[:80],
            "error": _URL_QUERY.sub(r"\1?…", f"{type(error).__name__}: {error}")[:200],
        })

    def order_step(
        self, order_id: str, message: Any, placed_at: int | None, outcome: str | None, emitted: tuple[Any, ...] = (),
        *, cancelled_after_confirmation: bool = False,
    ) -> None:
        """The orders flow applied ``message`` to ``order_id`` and sent ``emitted``; ``outcome`` is set when the
        order reached one now (it left PENDING: the saga's latency is measured to it, once per order).
        ``cancelled_after_confirmation``: a confirmed order was cancelled now, counted apart. Each step is
        remembered with the time (its event id is the one the order's history has).
        """
        now = self.clock()
        name = type(message).__name__
        first = order_id not in self.timelines
        steps = self.timelines.setdefault(order_id, [])
        self.timelines.move_to_end(order_id)
        for m in (message, *emitted):
            steps.append(Step(type(m).__name__, m.event_id, m.occurred_at, int(now * 1000)))
            self.steps[type(m).__name__] += 1
        while len(self.timelines) > TIMELINES:
            self.timelines.popitem(last=False)
        if name == "PlaceOrder" and first:
            self.placed += 1
            ORDERS_PLACED.inc()
        since_placed = None if placed_at is None else now - placed_at / 1000
        if since_placed is not None and since_placed >= 0:
            SAGA_STAGE.labels(name).observe(since_placed)
        if cancelled_after_confirmation:
            ORDERS_CANCELLED_AFTER_CONFIRMATION.inc()
        if outcome is not None:
            status, _, reason = outcome.partition(":")
            self.outcomes[outcome] += 1
            ORDERS_BY_OUTCOME.labels(status, reason).inc()
            if since_placed is not None and since_placed >= 0:
                SAGA_LATENCY.labels(status).observe(since_placed)
                self.latencies.append((now, since_placed))

    def orders_pending(self, count: int) -> None:
        """The deadline timer counted ``count`` orders without an outcome in the partitions this worker owns: the
        orders in flight, from the tables (the counters since start miss what a restarted worker took over)."""
        self.pending = count
        ORDERS_PENDING.set(count)

    def order_forgotten(self) -> None:
        ORDERS_FORGOTTEN.inc()

    def analytics_folded(self, folded: Any) -> None:
        for metric in folded.late:
            ANALYTICS_LATE.labels(metric).inc()
        for window in folded.closed:
            ANALYTICS_WINDOWS_CLOSED.labels(window.metric).inc()

    def breaker(self, state: str) -> None:
        self.breaker_state = state
        GATEWAY_BREAKER.set(BREAKER_LEVEL.get(state, 1.0))

    # -- read by the API -------------------------------------------------------------------------------------

    def timeline(self, order_id: str) -> list[Step]:
        return list(self.timelines.get(order_id, ()))

    def recent_latencies(self) -> list[float]:
        since = self.clock() - RECENT_S
        return [seconds for when, seconds in self.latencies if when >= since]

    def snapshot(self) -> dict[str, Any]:
        """The counters since start and the saga latencies of the last minute (the dashboard sums workers)."""
        return {
            "run": self.run,
            "placed": self.placed,
            "outcomes": dict(self.outcomes),
            "steps": dict(self.steps),
            "latencies": [round(s, 4) for s in self.recent_latencies()],
            "breaker": self.breaker_state,
            "dead_letters": list(self.dead_letters),
            "pending": self.pending,
        }
