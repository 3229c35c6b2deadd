"""Analytics by event time (DESIGN.md §3.10): window arithmetic, folds, and one partition's window state.

Every worker aggregates the order events of the partitions it owns, so each window's result here is the exact
result over the orders of one source partition (a *partial*); a window's total is the sum of its partials over
the partitions, which is what the API gathers across the workers. This keeps the state co-partitioned with the
events topic: no repartition hop, and a crash replays into the same partition's state.

Event time is the ``occurred_at`` of the order events (the saga's derived events carry their order's time), unless
it is more than :data:`MAX_AHEAD_MS` (15 minutes) after its record's Kafka timestamp: then it counts at that
timestamp (:func:`event_time`; a clock that ran fast must not close every window at once). A
partition's *watermark* is the latest event time it has seen; a window ``[start, end)`` stays open while
``watermark < end + lateness``, then it closes and its result is final. An event for a closed window is *late*:
counted per metric and reported, never folded in silently; what a late confirmation would have added to its revenue
window is kept beside it (``late_windows``), so revenue on time plus revenue late is every confirmed total, window
by window (invariant I6, which ``streamcart audit`` checks), and the window's result is sent again with it
(:func:`window_results`). A duplicate (an ``event_id`` already folded) changes nothing.

Every metric counts outcomes, so the outcomes are the clock: an event that counts toward no metric (an
OrderPlaced) changes nothing, not even the watermark, and costs no write. Its time is not lost: the order's outcome
carries the same time or a later one (a confirmation carries its order's time, a cancellation by timeout the
deadline). Were it to move the watermark without being stored, a replay after a crash could close a window
another way than the first run did; stored, it would cost a state write per order for no count.

A partition that no outcome comes to would keep its last windows open for good, and no window could be final
(that needs every partition's watermark past it). So the partition's owner writes a :class:`ClockTick` to it once
the time before which no outcome can still come to it has passed the next window's close (:func:`tick_watermark`,
:func:`tick_due`): in line with the order events, the tick moves the watermark there and closes what it passes,
exactly as an event would (:func:`fold`). That time is the tick's less an order's deadline, and never later than
the placement of the partition's oldest order in flight (an outcome carries its order's time, or its deadline);
the owner writes no tick while it is behind on what the saga sends to the partition (agents/analytics.py).

Pure: no faust, Kafka or clock import. Time comes in the messages and their records' timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.messages import (
    ClockTick,
    Message,
    OrderCancelled,
    OrderConfirmed,
    OutcomeWindow,
    RevenueWindow,
    SkuUnitsWindow,
    WindowResult,
)
from streamcart.ids import derive_id

MINUTE_MS = 60_000

#: Counters of one window: what a fold accumulates (``{"cents.EUR": 1200, "orders.EUR": 2}``, ``{sku: units}``).
Counts = dict[str, int]


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A half-open event-time interval ``[start, end)`` in epoch milliseconds."""

    start: int
    end: int


def tumbling(t: int, size_ms: int) -> Window:
    """The one tumbling window of ``size_ms`` holding time ``t`` (aligned to the epoch)."""
    start = t - t % size_ms
    return Window(start, start + size_ms)


def hopping(t: int, size_ms: int, hop_ms: int) -> tuple[Window, ...]:
    """Every window of ``size_ms`` starting on a multiple of ``hop_ms`` that holds ``t``, oldest first."""
    last = t - t % hop_ms
    first = last - size_ms + hop_ms
    return tuple(Window(s, s + size_ms) for s in range(first, last + hop_ms, hop_ms) if s <= t < s + size_ms)


def _add(counts: Counts, key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass(frozen=True, slots=True)
class Fold:
    """One metric as a fold: which windows an event falls in, how it adds to a window, and the window's result.

    ``add`` returns ``False`` for a message that does not count toward this metric (it still moves the clock).
    """

    metric: str
    windows: Callable[[int], tuple[Window, ...]]
    add: Callable[[Counts, Message], bool]
    #: ``(window, counts, late counts, partition, cause)``: the late counts are those of a metric that keeps them.
    result: Callable[[Window, Counts, Counts, int, str], tuple[WindowResult, ...]]
    #: Whether what late events would have added is kept per window (:attr:`PartitionWindows.late_windows`): for
    #: revenue, a few counters per currency; not for units, whose per-SKU counters could outgrow the state.
    keeps_late: bool = False

    @staticmethod
    def initialize() -> Counts:
        return {}


def _envelope(kind: type[WindowResult], window: Window, partition: int, closed_by: str, *parts: str) -> dict[str, Any]:
    """A window result's envelope: its id names the window, the partition and what it is about (deterministic)."""
    return {
        "event_id": derive_id(kind.__name__, window.start, window.end, partition, *parts),
        "occurred_at": window.end,
        "causation_id": closed_by,
        "correlation_id": f"{kind.__name__}/{window.start}",
        "window_start": window.start,
        "window_end": window.end,
        "source_partition": partition,
    }


def _add_revenue(counts: Counts, message: Message) -> bool:
    if not isinstance(message, OrderConfirmed):
        return False
    _add(counts, f"cents.{message.currency}", message.total_cents)
    _add(counts, f"orders.{message.currency}", 1)
    return True


def _revenue_results(window: Window, counts: Counts, late: Counts, partition: int,
                     closed_by: str) -> tuple[WindowResult, ...]:
    currencies = sorted({key.split(".", 1)[1] for key in (*counts, *late) if key.startswith("orders.")})
    return tuple(_revenue_result(window, counts, late, partition, closed_by, currency) for currency in currencies)


def _revenue_result(window: Window, counts: Counts, late: Counts, partition: int, closed_by: str,
                    currency: str) -> RevenueWindow:
    cents, orders = f"cents.{currency}", f"orders.{currency}"
    late_cents, late_orders = late.get(cents, 0), late.get(orders, 0)
    # Each time late confirmations add to a result it is sent again, under an id of its own: one id, one content.
    late_parts = (late_orders, late_cents) if late_orders else ()
    return RevenueWindow(
        **_envelope(RevenueWindow, window, partition, closed_by, currency, *late_parts), currency=currency,
        revenue_cents=counts.get(cents, 0), orders=counts.get(orders, 0), late_revenue_cents=late_cents,
        late_orders=late_orders,
    )


#: The most SKUs one units window names; the units of any further SKU are counted under :data:`OTHER_SKUS`. A
#: partition's open windows are one table value, rewritten at each event and bounded by Kafka's message size (1 MB):
#: a catalog of thousands of SKUs selling in one 5-minute window would otherwise outgrow it, and a worker that
#: cannot write its state stops (and the next owner of the partition with it). 1,000 SKUs of up to 64 characters
#: in each of the open windows stay under it (about 0.75 MB at the 5-minute maximum lateness).
MAX_SKUS_PER_WINDOW = 1_000
#: The units of the SKUs beyond the first :data:`MAX_SKUS_PER_WINDOW` of a window (not an identifier any SKU can have).
OTHER_SKUS = "*"


def _add_units(counts: Counts, message: Message) -> bool:
    if not isinstance(message, OrderConfirmed):
        return False
    for line in message.lines:
        sku = line.sku if line.sku in counts or len(counts) < MAX_SKUS_PER_WINDOW else OTHER_SKUS
        _add(counts, sku, line.quantity)
    return True


def _units_results(window: Window, counts: Counts, _late: Counts, partition: int,
                   closed_by: str) -> tuple[WindowResult, ...]:
    return tuple(
        SkuUnitsWindow(**_envelope(SkuUnitsWindow, window, partition, closed_by, sku), sku=sku, units=units)
        for sku, units in sorted(counts.items())
    )


CONFIRMED = "confirmed"
CANCELLED_PREFIX = "cancelled."


def _add_outcome(counts: Counts, message: Message) -> bool:
    if isinstance(message, OrderConfirmed):
        _add(counts, CONFIRMED, 1)
    elif isinstance(message, OrderCancelled):
        _add(counts, CANCELLED_PREFIX + message.reason, 1)
    else:
        return False
    return True


def _outcome_results(window: Window, counts: Counts, _late: Counts, partition: int,
                     closed_by: str) -> tuple[WindowResult, ...]:
    return (
        OutcomeWindow(
            **_envelope(OutcomeWindow, window, partition, closed_by),
            confirmed=counts.get(CONFIRMED, 0), cancelled_by_reason=cancelled_by_reason(counts),
        ),
    )


def cancelled_by_reason(counts: Counts) -> dict[str, int]:
    """The cancellations of an outcomes window's counts, by reason."""
    return {k.removeprefix(CANCELLED_PREFIX): v for k, v in sorted(counts.items()) if k.startswith(CANCELLED_PREFIX)}


#: Revenue and confirmed orders per 1-minute tumbling window, by currency (invariant I6: summed over windows,
#: it equals the confirmed totals).
REVENUE = Fold("revenue", lambda t: (tumbling(t, MINUTE_MS),), _add_revenue, _revenue_results, keeps_late=True)
#: Units sold per SKU per 5-minute window hopping every minute.
SKU_UNITS = Fold("sku-units", lambda t: hopping(t, 5 * MINUTE_MS, MINUTE_MS), _add_units, _units_results)
#: Outcomes per 1-minute tumbling window: confirmed, and cancelled by reason.
OUTCOMES = Fold("outcomes", lambda t: (tumbling(t, MINUTE_MS),), _add_outcome, _outcome_results)

FOLDS: dict[str, Fold] = {fold.metric: fold for fold in (REVENUE, SKU_UNITS, OUTCOMES)}


def window_id(metric: str, window: Window) -> str:
    """How a window is named in state and tables: ``"revenue/1700000040000/1700000100000"``."""
    return f"{metric}/{window.start}/{window.end}"


def parse_window_id(name: str) -> tuple[str, Window]:
    metric, start, end = name.rsplit("/", 2)
    return metric, Window(int(start), int(end))


class PartitionWindows(BaseModel):
    """The open windows of one source partition, its watermark and its late-event counts."""

    model_config = ConfigDict(frozen=True)

    partition: int
    watermark: int | None = None
    open: dict[str, Counts] = Field(default_factory=dict)
    late: dict[str, int] = Field(default_factory=dict)
    #: What late events would have added to windows already closed, by window id (metrics that keep it, see
    #: :attr:`Fold.keeps_late`); forgotten with the closed windows, ``retention`` after their end.
    late_windows: dict[str, Counts] = Field(default_factory=dict)
    #: The last event folded and the windows whose results it sent (:attr:`Folded.sent_ids`): how a redelivery of
    #: it is recognised even when the crash came between storing this state and marking the event seen.
    last_event_id: str | None = None
    last_closed: tuple[str, ...] = ()
    #: The latest ticks that moved the watermark (at most :data:`TICKS_KEPT`, oldest first) and the windows each
    #: closed: a tick is not marked seen like an event (nothing would ever forget the mark), this is how a
    #: redelivered one is recognised.
    ticks: dict[str, tuple[str, ...]] = Field(default_factory=dict)


class ClosedWindow(BaseModel):
    """A window whose result is final: its counts, and the results emitted for it."""

    model_config = ConfigDict(frozen=True)

    metric: str
    start: int
    end: int
    partition: int
    counts: Counts

    @property
    def window(self) -> Window:
        return Window(self.start, self.end)

    def results(self, closed_by: str, late: Counts | None = None) -> tuple[WindowResult, ...]:
        """Its results, with what late events would have added (``late``, of a metric that keeps it)."""
        return FOLDS[self.metric].result(self.window, self.counts, late or {}, self.partition, closed_by)


def window_results(state: PartitionWindows, name: str, closed: ClosedWindow | None,
                   cause: str) -> tuple[WindowResult, ...]:
    """The results of window ``name`` (closed) of ``state``'s partition as they stand: its final counts
    (``closed``, as stored; ``None`` when no event came to it in time) with what late events would have added so
    far; none once its retention is over. Whichever event sends them (``cause``), a window's results are its
    latest, under ids that name their figures, so a redelivery never sends an older one after a newer."""
    late = state.late_windows.get(name)
    if closed is None:
        if not late:
            return ()
        metric, window = parse_window_id(name)
        closed = ClosedWindow(metric=metric, start=window.start, end=window.end, partition=state.partition, counts={})
    return closed.results(cause, late)


@dataclass(frozen=True, slots=True)
class Folded:
    """What one event did: the new state (``None``: unchanged), the windows it closed, the metrics it was late for,
    the closed windows it added late figures to (``amended``: their results are sent again with them).

    For an event folded before, ``reemit`` names the windows whose results it sent then: they are sent again as
    they stand (the duplicate rule), nothing else changes.
    """

    #: ``None``: nothing to store (a duplicate, or an event that counts toward no metric).
    state: PartitionWindows | None
    closed: tuple[ClosedWindow, ...] = ()
    late: tuple[str, ...] = ()
    reemit: tuple[str, ...] = ()
    amended: tuple[str, ...] = ()

    @property
    def sent_ids(self) -> tuple[str, ...]:
        """The windows whose results this event sends, those it closed then those it amended: what is remembered
        of it to send them again."""
        return tuple(window_id(w.metric, w.window) for w in self.closed) + self.amended


def is_counted(message: Message) -> bool:
    """Whether ``message`` counts toward any metric."""
    return any(fold_.add(fold_.initialize(), message) for fold_ in FOLDS.values())


def moves_clock(message: Message) -> bool:
    """Whether ``message`` may change a partition's windows: an event that counts, or a :class:`ClockTick`."""
    return isinstance(message, ClockTick) or is_counted(message)


#: How long a partition's owner waits for a tick it wrote to be folded before it writes another (one lost, or
#: behind a backlog).
TICK_RESEND_MS = 5_000
#: How many of the latest ticks a partition's state remembers (:attr:`PartitionWindows.ticks`): a tick is
#: redelivered only if the worker stopped before committing past it, long before this many more were folded.
TICKS_KEPT = 8


def tick_watermark(now_ms: int, *, order_deadline_ms: int, lateness_ms: int, oldest_in_flight: int | None) -> int:
    """Where a tick at ``now_ms`` moves its partition's watermark: to the last window close (a minute boundary plus
    the lateness: every window ends on one) at or before the time before which no outcome can still come to the
    partition, but late. An order placed an order's deadline ago has settled or is being cancelled at its
    deadline; one in flight (``oldest_in_flight``: the oldest placement of those the partition holds) confirms at
    its placement's time. One tick a minute at most, then, for a quiet partition."""
    settled_before = now_ms - order_deadline_ms
    if oldest_in_flight is not None:
        settled_before = min(settled_before, oldest_in_flight)
    return (settled_before - lateness_ms) // MINUTE_MS * MINUTE_MS + lateness_ms


def tick_due(watermark: int | None, to: int) -> bool:
    """Whether a tick to ``to`` would move a partition whose watermark is ``watermark`` (``None``: none yet)."""
    return watermark is None or to > watermark


#: How far an event's time may be ahead of its record's timestamp (when it was written to Kafka) and still count
#: as it says. Further ahead, a clock ran fast (the event time is the clock of whoever accepted the order): one
#: such event would move its partition's watermark that far ahead, close every open window at once and make every
#: event after it late until the real time caught up. It counts at its record's timestamp instead.
MAX_AHEAD_MS = 15 * MINUTE_MS


def event_time(message: Message, record_ms: int | None) -> int:
    """The time ``message`` counts at: its own, unless that is more than :data:`MAX_AHEAD_MS` after ``record_ms``
    (its record's timestamp, the same on every redelivery, so the fold stays deterministic)."""
    t = message.occurred_at
    return record_ms if record_ms is not None and t > record_ms + MAX_AHEAD_MS else t


def fold(
    state: PartitionWindows, message: Message, *, lateness_ms: int, seen: tuple[str, ...] | None = None,
    record_ms: int | None = None, retention_ms: int | None = None,
) -> Folded:
    """Fold one order event into its partition's windows, then close every window the watermark has passed.

    ``seen`` is what the store remembers of this event id: ``None`` if it was never folded, else the ids of the
    windows it closed. A duplicate (a redelivery or a re-emission) changes nothing. ``record_ms`` is the event's
    record timestamp: an event time too far ahead of it counts at it (:func:`event_time`). The late counts of
    windows that ended ``retention_ms`` before the watermark are forgotten (as their closed windows are).
    """
    if isinstance(message, ClockTick):
        return _tick(state, message, lateness_ms=lateness_ms, record_ms=record_ms, retention_ms=retention_ms)
    if not is_counted(message):
        return Folded(state=None)
    if seen is not None:
        return Folded(state=None, reemit=seen)
    if message.event_id == state.last_event_id:
        return Folded(state=None, reemit=state.last_closed)
    t = event_time(message, record_ms)
    watermark = state.watermark
    open_windows = {name: dict(counts) for name, counts in state.open.items()}
    late = dict(state.late)
    late_windows = state.late_windows  # copied only when a late event adds to it
    late_for: list[str] = []
    amended: list[str] = []
    for fold_ in FOLDS.values():
        if not fold_.add(fold_.initialize(), message):
            continue  # this metric does not count this kind of message
        missed = False
        for window in fold_.windows(t):
            name = window_id(fold_.metric, window)
            if name not in open_windows and watermark is not None and window.end + lateness_ms <= watermark:
                missed = True  # closed already: its result is final
                if fold_.keeps_late:
                    late_windows = dict(late_windows)
                    late_windows[name] = dict(late_windows.get(name, fold_.initialize()))
                    fold_.add(late_windows[name], message)
                    amended.append(name)
                continue
            counts = open_windows.setdefault(name, fold_.initialize())
            fold_.add(counts, message)
        if missed:
            late_for.append(fold_.metric)
            late[fold_.metric] = late.get(fold_.metric, 0) + 1
    watermark = t if watermark is None else max(watermark, t)
    closed = _close_passed(open_windows, watermark, lateness_ms, state.partition)
    if closed or late_windows is not state.late_windows:  # forgotten as the closed windows are, when they are
        late_windows = _kept(late_windows, watermark, retention_ms)
    kept_amended = tuple(name for name in amended if name in late_windows)  # not one forgotten at once
    new_state = state.model_copy(update={
        "watermark": watermark, "open": open_windows, "late": late, "late_windows": late_windows,
        "last_event_id": message.event_id,
        "last_closed": tuple(window_id(w.metric, w.window) for w in closed) + kept_amended,
    })
    return Folded(state=new_state, closed=tuple(closed), late=tuple(late_for), amended=kept_amended)


def _close_passed(open_windows: dict[str, Counts], watermark: int, lateness_ms: int,
                  partition: int) -> list[ClosedWindow]:
    """Take the windows ``watermark`` has passed (by more than the lateness) out of ``open_windows``, oldest first."""
    closed = []
    for name in sorted(open_windows, key=lambda n: parse_window_id(n)[1]):
        metric, window = parse_window_id(name)
        if window.end + lateness_ms <= watermark:
            closed.append(ClosedWindow(
                metric=metric, start=window.start, end=window.end, partition=partition,
                counts=open_windows.pop(name),
            ))
    return closed


#: The most windows a partition keeps late amounts for (the latest by their end): a partition's state is one
#: table value under Kafka's 1 MB, and a day of one-minute windows with late confirmations in one currency is about
#: 115 KB of it (a clock behind by more than the lateness would make every window one).
MAX_LATE_WINDOWS = 1_440


def _kept(late_windows: dict[str, Counts], watermark: int, retention_ms: int | None) -> dict[str, Counts]:
    """``late_windows`` without the windows that ended ``retention_ms`` before ``watermark``, and at most the
    :data:`MAX_LATE_WINDOWS` latest."""
    by_end = sorted(late_windows, key=lambda name: parse_window_id(name)[1].end)
    if retention_ms is not None:
        by_end = [name for name in by_end if parse_window_id(name)[1].end >= watermark - retention_ms]
    return {name: late_windows[name] for name in by_end[-MAX_LATE_WINDOWS:]}


def _tick(state: PartitionWindows, tick: ClockTick, *, lateness_ms: int, record_ms: int | None,
          retention_ms: int | None) -> Folded:
    """Move the watermark to the tick's (never back, never past its record's timestamp) and close what it passes.
    A tick that moves nothing changes nothing; one folded before sends again what it closed then."""
    if tick.event_id in state.ticks:
        return Folded(state=None, reemit=state.ticks[tick.event_id])
    to = tick.watermark if record_ms is None else min(tick.watermark, record_ms)
    if state.watermark is not None and to <= state.watermark:
        return Folded(state=None)
    open_windows = {name: dict(counts) for name, counts in state.open.items()}
    closed = _close_passed(open_windows, to, lateness_ms, state.partition)
    closed_ids = tuple(window_id(w.metric, w.window) for w in closed)
    ticks = {**state.ticks, tick.event_id: closed_ids}
    new_state = state.model_copy(update={
        "watermark": to, "open": open_windows, "last_event_id": tick.event_id, "last_closed": closed_ids,
        "late_windows": _kept(state.late_windows, to, retention_ms),
        "ticks": dict(list(ticks.items())[-TICKS_KEPT:]),
    })
    return Folded(state=new_state, closed=tuple(closed))


# --- Reading windows back: one partition's view, and the totals over partitions -----------------------------

class PartitionView(BaseModel):
    """What one source partition holds for a query: its watermark, late counts and windows (open and closed)."""

    partition: int
    watermark: int | None
    late: dict[str, int]
    windows: dict[str, Counts]
    #: What late events would have added to these windows (metrics that keep it); absent from older workers.
    late_windows: dict[str, Counts] = Field(default_factory=dict)


def partition_view(
    state: PartitionWindows, closed: list[ClosedWindow], metric: str, start: int, end: int
) -> PartitionView:
    """The windows of ``metric`` starting in ``[start, end)`` of one partition."""
    windows = dict(state.open)
    windows.update({window_id(w.metric, w.window): w.counts for w in closed})
    return PartitionView(
        partition=state.partition, watermark=state.watermark, late=state.late,
        windows={name: counts for name, counts in windows.items() if in_range(name, metric, start, end)},
        late_windows={name: c for name, c in state.late_windows.items() if in_range(name, metric, start, end)},
    )


def in_range(name: str, metric: str, start: int, end: int) -> bool:
    """Whether window ``name`` is of ``metric`` and starts in ``[start, end)``."""
    window_metric, window = parse_window_id(name)
    return window_metric == metric and start <= window.start < end


@dataclass(frozen=True, slots=True)
class WindowTotal:
    """A window summed over every partition; ``final`` once every partition's watermark has closed it."""

    window: Window
    counts: Counts
    final: bool
    #: What late events would have added to it (metrics that keep it).
    late: Counts = field(default_factory=dict)


def totals(views: list[PartitionView], metric: str, *, lateness_ms: int) -> list[WindowTotal]:
    """Sum each window of ``metric`` over ``views`` (one per partition), oldest first; a window only late events
    came to is there too, with no counts of its own."""
    summed: dict[Window, Counts] = {}
    late: dict[Window, Counts] = {}
    for view in views:
        for into_by_window, windows in ((summed, view.windows), (late, view.late_windows)):
            for name, counts in windows.items():
                window_metric, window = parse_window_id(name)
                if window_metric != metric:
                    continue
                into = into_by_window.setdefault(window, {})
                for key, n in counts.items():
                    _add(into, key, n)
    watermarks = [v.watermark for v in views]
    slowest = None if not watermarks or None in watermarks else min(w for w in watermarks if w is not None)
    return [
        WindowTotal(window, summed.get(window, {}), final=slowest is not None and window.end + lateness_ms <= slowest,
                    late=late.get(window, {}))
        for window in sorted(summed.keys() | late.keys())
    ]
