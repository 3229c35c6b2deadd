"""Event-time windows as folds: window arithmetic, out-of-order and late events, duplicates, closing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from domain_builders import make

from schemas.messages import (
    ClockTick,
    Message,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OutcomeWindow,
    PricedLine,
    RevenueWindow,
    SkuUnitsWindow,
    WindowResult,
)
from streamcart.domain import analytics
from streamcart.domain.analytics import MINUTE_MS, PartitionWindows, Window, hopping, tumbling

LATENESS = 10_000
T0 = 1_700_000_040_000  # a minute boundary


def confirmed(order_id: str, at: int, total: int = 1_000, currency: str = "EUR", lines: tuple = (("A", 1),)) -> Message:
    priced = tuple(PricedLine(sku=s, quantity=q, unit_price_cents=total // max(1, sum(x[1] for x in lines)))
                   for s, q in lines)
    return make(OrderConfirmed, at=at, order_id=order_id, customer_id="c-1", lines=priced, total_cents=total,
                currency=currency, authorization_id=f"auth-{order_id}")


def cancelled(order_id: str, at: int, reason: str = "payment_declined") -> Message:
    return make(OrderCancelled, at=at, order_id=order_id, customer_id="c-1", reason=reason)


def closing(order_id: str, at: int) -> Message:
    """An outcome that moves the watermark to ``at`` (it counts only toward the outcomes of its own minute)."""
    return cancelled(order_id, at, "timeout")


def tick(watermark: int, at: int | None = None) -> ClockTick:
    """A clock tick for partition 3 written at ``at`` (its watermark's time plus a 30 s deadline by default)."""
    at = watermark + 30_000 if at is None else at
    return make(ClockTick, at=at, partition=3, slot="clock/3/0", watermark=watermark)


def placed(order_id: str, at: int) -> Message:
    return make(OrderPlaced, at=at, order_id=order_id, customer_id="c-1", lines=(OrderLine(sku="A", quantity=1),),
                currency="EUR", deadline=at + 30_000)


@dataclass
class Partition:
    """One partition's analytics the way the agent runs it: state, the event ids folded, the results emitted."""

    state: PartitionWindows = field(default_factory=lambda: PartitionWindows(partition=3))
    seen: dict[str, tuple[str, ...]] = field(default_factory=dict)
    closed: list[analytics.ClosedWindow] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    reemitted: list[str] = field(default_factory=list)
    #: Every window result sent, first sends and sends again alike.
    sent: list[WindowResult] = field(default_factory=list)

    def apply(self, *messages: Message) -> Partition:
        for message in messages:
            folded = analytics.fold(self.state, message, lateness_ms=LATENESS, seen=self.seen.get(message.event_id))
            if folded.state is not None:
                self.state = folded.state
                self.seen[message.event_id] = folded.sent_ids
            self.closed.extend(folded.closed)
            self.reemitted.extend(folded.reemit)
            self.late.extend(folded.late)
            kept = {analytics.window_id(w.metric, w.window): w for w in self.closed}
            for name in folded.sent_ids if folded.state is not None else folded.reemit:
                self.sent.extend(analytics.window_results(self.state, name, kept.get(name), message.event_id))
        return self

    def results(self, kind: type) -> list:
        return [r for w in self.closed for r in w.results("closing-event") if isinstance(r, kind)]

    def open_counts(self, metric: str, start: int) -> dict[str, int]:
        return next(c for name, c in self.state.open.items() if name.startswith(f"{metric}/{start}/"))


def test_a_tumbling_window_holds_its_start_but_not_its_end():
    assert tumbling(T0, MINUTE_MS) == Window(T0, T0 + MINUTE_MS)
    assert tumbling(T0 + MINUTE_MS - 1, MINUTE_MS) == Window(T0, T0 + MINUTE_MS)
    assert tumbling(T0 + MINUTE_MS, MINUTE_MS) == Window(T0 + MINUTE_MS, T0 + 2 * MINUTE_MS)


def test_a_time_falls_in_five_hopping_windows_of_five_minutes_every_minute():
    windows = hopping(T0 + 30_000, 5 * MINUTE_MS, MINUTE_MS)
    assert [w.start for w in windows] == [T0 - 4 * MINUTE_MS + i * MINUTE_MS for i in range(5)]
    assert all(w.start <= T0 + 30_000 < w.end for w in windows)
    assert all(w.end - w.start == 5 * MINUTE_MS for w in windows)


def test_hopping_windows_on_a_boundary_start_with_the_one_opening_there():
    windows = hopping(T0, 5 * MINUTE_MS, MINUTE_MS)
    assert windows[-1].start == T0
    assert len(windows) == 5


def test_confirmed_orders_add_up_per_minute_and_currency():
    p = Partition().apply(
        confirmed("o-1", T0 + 1_000, 1_500),
        confirmed("o-2", T0 + 59_999, 500),
        confirmed("o-3", T0 + 2_000, 700, "USD"),
    )
    assert p.open_counts("revenue", T0) == {"cents.EUR": 2_000, "orders.EUR": 2, "cents.USD": 700, "orders.USD": 1}


def test_a_window_closes_once_the_watermark_passes_its_end_plus_the_lateness():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 1_500), closing("o-2", T0 + MINUTE_MS + LATENESS - 1))
    assert p.results(RevenueWindow) == []
    p.apply(closing("o-3", T0 + MINUTE_MS + LATENESS))
    [revenue] = p.results(RevenueWindow)
    assert (revenue.window_start, revenue.window_end, revenue.revenue_cents, revenue.orders, revenue.currency) == (
        T0, T0 + MINUTE_MS, 1_500, 1, "EUR"
    )
    assert revenue.source_partition == 3
    assert revenue.key == f"{T0}:EUR/p3"
    assert not any(name.startswith(f"revenue/{T0}/") for name in p.state.open)


def test_an_out_of_order_event_within_the_lateness_is_counted_in_its_window():
    p = Partition().apply(
        confirmed("o-2", T0 + MINUTE_MS + 5_000, 200),  # the next minute first
        confirmed("o-1", T0 + 30_000, 100),  # then an earlier one, 35 s behind the watermark: not late
        closing("o-9", T0 + 2 * MINUTE_MS + LATENESS),
    )
    assert [(r.window_start, r.revenue_cents) for r in p.results(RevenueWindow)] == [
        (T0, 100), (T0 + MINUTE_MS, 200),
    ]
    assert p.late == []


def test_an_event_for_a_closed_window_is_counted_as_late_and_changes_no_result():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 100), closing("o-2", T0 + MINUTE_MS + LATENESS))
    before = p.state.open.copy()
    p.apply(confirmed("o-3", T0 + 2_000, 999))
    assert p.late == ["revenue", "sku-units", "outcomes"]
    assert p.state.late["revenue"] == 1
    assert p.state.late["outcomes"] == 1
    assert [r.revenue_cents for r in p.results(RevenueWindow)] == [100]
    # Its hopping windows that are still open do count it: only the closed ones missed it.
    assert {k: v for k, v in p.state.open.items() if k.startswith("sku-units")} != {
        k: v for k, v in before.items() if k.startswith("sku-units")
    }


def test_an_event_late_for_only_some_hopping_windows_counts_in_the_open_ones_and_is_reported_late():
    # A cancellation counts no units: it moves the watermark past every window ending at T0 + 1 min.
    p = Partition().apply(cancelled("o-0", T0 + MINUTE_MS + LATENESS))
    p.apply(confirmed("o-1", T0 + 10_000, 100, lines=(("A", 2),)))
    assert p.late.count("sku-units") == 1
    open_units = {k: v for k, v in p.state.open.items() if k.startswith("sku-units/")}
    assert len(open_units) == 4  # the window [T0 - 4 min, T0 + 1 min) had closed
    assert all(counts == {"A": 2} for counts in open_units.values())


def test_an_event_that_counts_toward_no_metric_changes_nothing_not_even_the_watermark():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 1_500))
    before = p.state
    # Far enough ahead to close the first minute's windows, were it to move the clock.
    folded = analytics.fold(before, placed("o-2", T0 + MINUTE_MS + LATENESS), lateness_ms=LATENESS)
    assert (folded.state, folded.closed, folded.reemit, folded.late) == (None, (), (), ())
    assert not analytics.is_counted(placed("o-2", T0)) and analytics.is_counted(confirmed("o-3", T0))
    # So an order confirmed afterwards at an earlier time is not late for its window.
    p.apply(placed("o-2", T0 + MINUTE_MS + LATENESS), confirmed("o-3", T0 + 2_000, 500))
    assert p.late == [] and p.closed == []
    assert p.open_counts("revenue", T0) == {"cents.EUR": 2_000, "orders.EUR": 2}


def test_a_duplicate_event_is_not_counted_twice():
    order = confirmed("o-1", T0 + 1_000, 1_500)
    p = Partition().apply(order, order, cancelled("o-2", T0 + 2_000), cancelled("o-2", T0 + 2_000))
    assert p.open_counts("revenue", T0) == {"cents.EUR": 1_500, "orders.EUR": 1}
    assert p.open_counts("outcomes", T0) == {"confirmed": 1, "cancelled.payment_declined": 1}


def test_a_duplicate_arriving_after_its_window_closed_is_neither_counted_nor_late():
    order = confirmed("o-1", T0 + 1_000, 1_500)
    p = Partition().apply(order, closing("o-2", T0 + MINUTE_MS + LATENESS), order)
    assert p.late == []
    assert [r.revenue_cents for r in p.results(RevenueWindow)] == [1_500]


def test_a_duplicate_of_an_event_that_closed_windows_names_them_again_and_changes_nothing():
    closer = closing("o-2", T0 + MINUTE_MS + LATENESS)
    p = Partition().apply(confirmed("o-1", T0 + 1_000), closer)
    state = p.state
    p.apply(closer)
    assert p.state == state
    assert sorted(p.reemitted) == sorted(w for w in p.seen[closer.event_id])
    assert f"revenue/{T0}/{T0 + MINUTE_MS}" in p.reemitted


def test_the_last_event_folded_is_recognised_even_if_it_was_not_marked_seen():
    closer = closing("o-2", T0 + MINUTE_MS + LATENESS)
    p = Partition().apply(confirmed("o-1", T0 + 1_000), closer)
    del p.seen[closer.event_id]  # a crash between storing the state and marking the event
    state = p.state
    p.apply(closer)
    assert p.state == state
    assert f"revenue/{T0}/{T0 + MINUTE_MS}" in p.reemitted


def test_outcomes_count_confirmations_and_cancellations_by_reason():
    p = Partition().apply(
        confirmed("o-1", T0 + 1), cancelled("o-2", T0 + 2, "out_of_stock"), cancelled("o-3", T0 + 3, "timeout"),
        cancelled("o-4", T0 + 4, "out_of_stock"), placed("o-5", T0 + 5), closing("o-9", T0 + MINUTE_MS + LATENESS),
    )
    [outcome] = p.results(OutcomeWindow)
    assert outcome.confirmed == 1
    assert outcome.cancelled_by_reason == {"out_of_stock": 2, "timeout": 1}


def test_units_per_sku_fill_five_hopping_windows_and_close_one_by_one():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 900, lines=(("A", 2), ("B", 1))))
    p.apply(closing("o-9", T0 + MINUTE_MS + LATENESS))
    first = p.results(SkuUnitsWindow)
    oldest = T0 - 4 * MINUTE_MS
    assert [(r.window_start, r.sku, r.units) for r in first] == [(oldest, "A", 2), (oldest, "B", 1)]
    p.apply(closing("o-10", T0 + 5 * MINUTE_MS + LATENESS))
    assert sorted({r.window_start for r in p.results(SkuUnitsWindow)}) == [T0 + i * MINUTE_MS for i in range(-4, 1)]


def test_revenue_over_the_closed_windows_equals_the_confirmed_totals():
    orders = [confirmed(f"o-{i}", T0 + i * 7_919, 100 + i) for i in range(40)]  # ~5 minutes of orders
    # Every adjacent pair swapped: each event is up to 8 s out of order, within the lateness.
    swapped = [orders[i ^ 1] for i in range(len(orders))]
    p = Partition().apply(*swapped, closing("o-end", T0 + 10 * MINUTE_MS))
    assert p.late == []
    assert sum(r.revenue_cents for r in p.results(RevenueWindow)) == sum(100 + i for i in range(40))
    assert sum(r.orders for r in p.results(RevenueWindow)) == 40


def test_results_are_deterministic_so_a_replay_emits_the_same_ids():
    events = [confirmed("o-1", T0 + 1_000), cancelled("o-2", T0 + 2_000), closing("o-9", T0 + 6 * MINUTE_MS)]
    first, second = Partition().apply(*events), Partition().apply(*events)
    ids = [r.event_id for w in first.closed for r in w.results("x")]
    assert ids == [r.event_id for w in second.closed for r in w.results("x")]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("t", [T0, T0 + 1, T0 + MINUTE_MS - 1])
def test_window_ids_round_trip(t):
    window = tumbling(t, MINUTE_MS)
    assert analytics.parse_window_id(analytics.window_id("revenue", window)) == ("revenue", window)


def test_an_event_timed_far_ahead_of_its_record_counts_when_it_was_written_and_holds_nothing_back():
    # A day ahead (a clock that ran fast where the order was accepted): it would close every window at once and
    # make every event after it late. It counts at its record's timestamp instead, so nothing is lost.
    p = Partition()
    fast = analytics.fold(p.state, confirmed("o-fast", T0 + 24 * 3600_000 + 1_000, 700), lateness_ms=LATENESS,
                          record_ms=T0 + 2_000)
    assert fast.state is not None and fast.state.watermark == T0 + 2_000
    assert analytics.fold(p.state, confirmed("o-fast", T0 + 24 * 3600_000 + 1_000, 700), lateness_ms=LATENESS,
                          record_ms=T0 + 2_000) == fast  # the same on a redelivery
    p.state = fast.state
    p.apply(confirmed("o-1", T0 + 3_000, 300), closing("o-9", T0 + MINUTE_MS + LATENESS))
    assert p.late == []
    assert [(r.window_start, r.revenue_cents, r.orders) for r in p.results(RevenueWindow)] == [(T0, 1_000, 2)]


def test_an_event_a_little_ahead_of_its_record_keeps_its_own_time():
    ahead = T0 + analytics.MAX_AHEAD_MS - 1_000
    folded = analytics.fold(PartitionWindows(partition=3), confirmed("o-1", ahead + 1_000), lateness_ms=LATENESS,
                            record_ms=T0)
    assert folded.state is not None and folded.state.watermark == ahead + 1_000
    assert analytics.event_time(confirmed("o-2", T0 + 5), record_ms=None) == T0 + 5


def test_a_units_window_names_its_first_thousand_skus_and_counts_the_rest_together(monkeypatch):
    monkeypatch.setattr(analytics, "MAX_SKUS_PER_WINDOW", 3)
    p = Partition().apply(
        confirmed("o-1", T0 + 1_000, lines=(("A", 1), ("B", 2), ("C", 1))),
        confirmed("o-2", T0 + 2_000, lines=(("D", 4), ("A", 1), ("E", 1))),
    )
    assert p.open_counts("sku-units", T0) == {"A": 2, "B": 2, "C": 1, analytics.OTHER_SKUS: 5}
    # No unit is lost: they sum to what was sold.
    assert sum(p.open_counts("sku-units", T0).values()) == 10


def test_the_units_of_no_one_sku_are_never_ranked_among_the_top():
    from api.analytics import ranked

    top = ranked({"A": 2, analytics.OTHER_SKUS: 50, "B": 3}, 10)
    assert top == [{"sku": "B", "units": 3}, {"sku": "A", "units": 2}]


# --- The clock of a partition gone quiet ---------------------------------------------------------------------

def test_a_tick_closes_the_windows_of_a_partition_no_event_comes_to_any_more():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), cancelled("o-2", T0 + 2_000))
    assert p.closed == []
    # The clock passes the first minute's end plus the lateness: its windows close, with exactly their counts.
    p.apply(tick(T0 + MINUTE_MS + LATENESS))
    assert p.state.watermark == T0 + MINUTE_MS + LATENESS
    assert [(r.window_start, r.revenue_cents, r.orders) for r in p.results(RevenueWindow)] == [(T0, 500, 1)]
    assert [(r.confirmed, r.cancelled_by_reason) for r in p.results(OutcomeWindow)] == [(1, {"payment_declined": 1})]
    # Of the five 5-minute units windows holding T0, only the one ending with the first minute has closed; the
    # last of them closes 4 minutes on.
    assert [(r.window_start, r.units) for r in p.results(SkuUnitsWindow)] == [(T0 - 4 * MINUTE_MS, 1)]
    p.apply(tick(T0 + 5 * MINUTE_MS + LATENESS))
    assert [r.window_start for r in p.results(SkuUnitsWindow)] == [T0 + (i - 4) * MINUTE_MS for i in range(5)]
    assert p.state.open == {}


def test_a_tick_one_millisecond_short_of_a_window_closes_nothing():
    p = Partition().apply(confirmed("o-1", T0 + 1_000), tick(T0 + MINUTE_MS + LATENESS - 1))
    assert p.closed == []
    assert p.state.watermark == T0 + MINUTE_MS + LATENESS - 1


def test_a_tick_gives_a_partition_that_never_saw_an_event_its_first_watermark():
    folded = analytics.fold(PartitionWindows(partition=3), tick(T0), lateness_ms=LATENESS)
    assert folded.state is not None and folded.state.watermark == T0 and folded.closed == ()


def test_a_tick_never_moves_the_clock_back_and_one_that_moves_nothing_changes_nothing():
    state = Partition().apply(confirmed("o-1", T0 + 50_000)).state
    for behind in (tick(T0 + 50_000), tick(T0 + 10_000)):
        assert analytics.fold(state, behind, lateness_ms=LATENESS) == analytics.Folded(state=None)


def test_a_redelivered_tick_sends_again_what_it_closed_and_changes_nothing():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 700))
    first = tick(T0 + MINUTE_MS + LATENESS)
    p.apply(first, confirmed("o-2", T0 + MINUTE_MS + 20_000))  # an event after it: the tick is no longer the last
    state = p.state
    again = analytics.fold(state, first, lateness_ms=LATENESS)
    assert again.state is None and again.closed == ()
    assert set(again.reemit) == {f"sku-units/{T0 - 4 * MINUTE_MS}/{T0 + MINUTE_MS}", f"outcomes/{T0}/{T0 + MINUTE_MS}",
                                 f"revenue/{T0}/{T0 + MINUTE_MS}"}
    assert again.reemit == tuple(analytics.window_id(w.metric, w.window) for w in p.closed)


def test_a_partition_remembers_only_its_latest_ticks():
    p = Partition()
    ticks = [tick(T0 + i * MINUTE_MS) for i in range(analytics.TICKS_KEPT + 2)]
    p.apply(*ticks)
    assert list(p.state.ticks) == [t.event_id for t in ticks[-analytics.TICKS_KEPT:]]
    # One forgotten is folded like a new tick behind the clock: nothing changes.
    assert analytics.fold(p.state, ticks[0], lateness_ms=LATENESS) == analytics.Folded(state=None)


def test_an_event_after_a_tick_that_passed_its_window_is_late_not_folded():
    p = Partition().apply(tick(T0 + MINUTE_MS + LATENESS), confirmed("o-1", T0 + 5_000, 900))
    assert p.late == ["revenue", "sku-units", "outcomes"]  # the units window ending with T0's minute too
    assert not any(name.startswith(f"revenue/{T0}/") for name in p.state.open)


def test_a_tick_moves_the_clock_no_further_than_its_record_was_written():
    folded = analytics.fold(PartitionWindows(partition=3), tick(T0 + 60_000), lateness_ms=LATENESS,
                            record_ms=T0 + 1_000)
    assert folded.state is not None and folded.state.watermark == T0 + 1_000


def test_a_tick_is_due_when_it_would_move_the_partitions_clock():
    assert analytics.tick_due(None, T0)
    assert not analytics.tick_due(T0, T0) and not analytics.tick_due(T0 + 1, T0)
    assert analytics.tick_due(T0, T0 + 1)


def test_a_tick_moves_the_clock_to_the_last_window_close_before_any_outcome_can_still_come():
    def to(now: int, oldest: int | None = None) -> int:
        return analytics.tick_watermark(now, order_deadline_ms=30_000, lateness_ms=LATENESS, oldest_in_flight=oldest)

    # Every outcome before now - 30 s has come: the last window close (a minute boundary + the lateness) before it.
    assert to(T0 + 30_000 + LATENESS) == T0 + LATENESS
    assert to(T0 + 30_000 + LATENESS + 59_999) == T0 + LATENESS
    assert to(T0 + 30_000 + LATENESS + MINUTE_MS) == T0 + MINUTE_MS + LATENESS
    # An order in flight confirms at its placement's time: the clock stays before it.
    assert to(T0 + 5 * MINUTE_MS, oldest=T0 + MINUTE_MS + LATENESS - 1) == T0 + LATENESS
    assert to(T0 + 5 * MINUTE_MS, oldest=T0 + 4 * MINUTE_MS) == T0 + 3 * MINUTE_MS + LATENESS


def test_ticks_on_every_partition_make_the_windows_final():
    partitions = [Partition(state=PartitionWindows(partition=n)) for n in range(3)]
    partitions[0].apply(confirmed("o-1", T0 + 1_000, 400))

    def totals() -> list[analytics.WindowTotal]:
        views = [analytics.partition_view(p.state, p.closed, "revenue", T0, T0 + MINUTE_MS) for p in partitions]
        return analytics.totals(views, "revenue", lateness_ms=LATENESS)

    assert [(t.counts, t.final) for t in totals()] == [({"cents.EUR": 400, "orders.EUR": 1}, False)]
    for n, p in enumerate(partitions):
        p.apply(make(ClockTick, at=T0 + 2 * MINUTE_MS, partition=n, slot=f"clock/{n}",
                     watermark=T0 + MINUTE_MS + LATENESS))
    assert [(t.counts, t.final) for t in totals()] == [({"cents.EUR": 400, "orders.EUR": 1}, True)]


def test_only_outcomes_and_ticks_move_the_clock():
    assert analytics.moves_clock(tick(T0)) and analytics.moves_clock(confirmed("o-1", T0))
    assert not analytics.moves_clock(placed("o-1", T0))
    assert not analytics.is_counted(tick(T0))


# --- What late confirmations would have added (I6: revenue on time + late = every confirmed total) ------------

def test_a_late_confirmation_is_kept_beside_its_closed_revenue_window_and_counted_once():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), closing("o-9", T0 + MINUTE_MS + LATENESS))
    late = confirmed("o-2", T0 + 2_000, 250)
    p.apply(late, late)  # redelivered
    assert p.late == ["revenue", "sku-units", "outcomes"]
    assert p.state.late_windows == {f"revenue/{T0}/{T0 + MINUTE_MS}": {"cents.EUR": 250, "orders.EUR": 1}}
    # The window's result stays what closed it; the late amount is beside it.
    assert [(r.revenue_cents, r.orders) for r in p.results(RevenueWindow)] == [(500, 1)]
    view = analytics.partition_view(p.state, p.closed, "revenue", T0, T0 + MINUTE_MS)
    [total] = analytics.totals([view], "revenue", lateness_ms=LATENESS)
    assert (total.counts, total.late, total.final) == ({"cents.EUR": 500, "orders.EUR": 1},
                                                       {"cents.EUR": 250, "orders.EUR": 1}, True)


def revenue_sent(p: Partition) -> list[tuple[int, int, int, int, int]]:
    """The revenue results ``p`` sent: (window start, on time cents and orders, late cents and orders)."""
    return [(r.window_start, r.revenue_cents, r.orders, r.late_revenue_cents, r.late_orders)
            for r in p.sent if isinstance(r, RevenueWindow)]


def test_a_late_confirmation_sends_its_closed_revenue_window_again_with_the_late_figures():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), closing("o-9", T0 + MINUTE_MS + LATENESS))
    p.apply(confirmed("o-2", T0 + 2_000, 250))
    assert revenue_sent(p) == [(T0, 500, 1, 0, 0), (T0, 500, 1, 250, 1)]
    closed, again = (r for r in p.sent if isinstance(r, RevenueWindow))
    assert again.key == closed.key  # compaction keeps the latest
    assert again.event_id != closed.event_id  # a new content, a new id
    p.apply(confirmed("o-3", T0 + 3_000, 100))  # a second late one: both
    assert revenue_sent(p)[2:] == [(T0, 500, 1, 350, 2)]


def test_a_redelivered_late_confirmation_sends_its_window_again_as_it_stands():
    first = confirmed("o-2", T0 + 2_000, 250)
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), closing("o-9", T0 + MINUTE_MS + LATENESS), first,
                          confirmed("o-3", T0 + 3_000, 100))
    p.apply(first)
    assert revenue_sent(p)[-2:] == [(T0, 500, 1, 350, 2)] * 2  # counted once, and the latest sent again
    by_id: dict[str, set] = {}
    for r in p.sent:  # an id never names two contents
        by_id.setdefault(r.event_id, set()).add(r.model_dump_json(exclude={"causation_id"}))
    assert all(len(contents) == 1 for contents in by_id.values())


def test_a_late_confirmation_stored_but_not_marked_seen_sends_its_window_again_when_redelivered():
    late = confirmed("o-2", T0 + 2_000, 250)
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), closing("o-9", T0 + MINUTE_MS + LATENESS), late)
    del p.seen[late.event_id]  # a crash between storing the state and marking the event (and sending)
    p.apply(late)
    assert p.reemitted == [f"revenue/{T0}/{T0 + MINUTE_MS}"]
    assert revenue_sent(p)[-2:] == [(T0, 500, 1, 250, 1)] * 2


def test_an_on_time_confirmation_sends_no_closed_window_again():
    p = Partition().apply(confirmed("o-1", T0 + 1_000, 500), closing("o-9", T0 + MINUTE_MS + LATENESS))
    before = list(p.sent)
    p.apply(confirmed("o-2", T0 + MINUTE_MS + 20_000, 250))  # in the open next minute
    assert p.sent == before and p.late == []


def test_a_late_confirmation_for_a_window_none_came_to_in_time_is_sent_with_its_late_figures_only():
    p = Partition().apply(closing("o-9", T0 + MINUTE_MS + LATENESS), confirmed("o-2", T0 + 2_000, 250, "USD"))
    assert [(r.currency, r.revenue_cents, r.orders, r.late_revenue_cents, r.late_orders)
            for r in p.sent if isinstance(r, RevenueWindow)] == [("USD", 0, 0, 250, 1)]


def test_a_late_confirmation_for_a_window_past_its_retention_sends_nothing_again():
    retention = 10 * MINUTE_MS
    state = Partition().apply(closing("o-9", T0 + MINUTE_MS + retention + 1)).state
    folded = analytics.fold(state, confirmed("o-2", T0 + 2_000, 250), lateness_ms=LATENESS, retention_ms=retention)
    assert folded.late == ("revenue", "sku-units", "outcomes") and folded.amended == () and folded.sent_ids == ()


def test_a_late_cancellation_adds_to_no_revenue():
    p = Partition().apply(closing("o-9", T0 + MINUTE_MS + LATENESS), cancelled("o-2", T0 + 2_000))
    assert p.late == ["outcomes"] and p.state.late_windows == {}


def test_late_amounts_are_forgotten_with_their_closed_windows():
    retention = 10 * MINUTE_MS
    state = Partition().apply(closing("o-9", T0 + MINUTE_MS + LATENESS), confirmed("o-2", T0 + 2_000, 250)).state
    assert state.late_windows
    kept = analytics.fold(state, closing("o-8", T0 + MINUTE_MS + retention), lateness_ms=LATENESS,
                          retention_ms=retention).state
    assert kept is not None and kept.late_windows == state.late_windows  # its window ended exactly a retention ago
    gone = analytics.fold(state, tick(T0 + MINUTE_MS + retention + 1), lateness_ms=LATENESS,
                          retention_ms=retention).state
    assert gone is not None and gone.late_windows == {}


def test_a_partition_keeps_the_late_amounts_of_its_latest_windows_only(monkeypatch):
    monkeypatch.setattr(analytics, "MAX_LATE_WINDOWS", 2)
    p = Partition().apply(closing("o-9", T0 + 10 * MINUTE_MS))
    p.apply(*(confirmed(f"o-{i}", T0 + i * MINUTE_MS + 1_000, 100 + i) for i in range(4)))
    assert p.state.late_windows == {
        f"revenue/{T0 + i * MINUTE_MS}/{T0 + (i + 1) * MINUTE_MS}": {"cents.EUR": 100 + i, "orders.EUR": 1}
        for i in (2, 3)
    }
