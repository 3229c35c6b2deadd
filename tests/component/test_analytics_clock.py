"""The analytics clock through faust's test_context: a partition no order event comes to gets ticks, which close
its windows; the other flows reading the order events leave a tick alone."""

import pytest

from agents.analytics import Clock, clock_tick, in_flight, slot
from agents.app import build_runtime
from schemas.messages import OrderConfirmed, OutcomeWindow, PricedLine, RevenueWindow, SkuUnitsWindow
from streamcart.domain.analytics import MINUTE_MS, TICK_RESEND_MS
from streamcart.partitioning import partition_for
from streamcart.settings import Settings

T0 = 1_700_000_040_000  # a minute boundary
DEADLINE_MS = 30_000


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=4, saga_timeout_s=DEADLINE_MS / 1000), codec,
                         store="memory://", sink=sink)


def confirmed(order_id: str, at: int) -> OrderConfirmed:
    return OrderConfirmed(event_id=f"c-{order_id}", occurred_at=at, causation_id="x", correlation_id=order_id,
                          order_id=order_id, customer_id="c-1", total_cents=500, currency="EUR",
                          lines=(PricedLine(sku="A", quantity=1, unit_price_cents=500),), authorization_id="a-1")


@pytest.mark.parametrize("partitions", [1, 4, 8, 16])
def test_a_ticks_key_lands_on_its_partition(partitions):
    assert [partition_for(slot(p, partitions), partitions) for p in range(partitions)] == list(range(partitions))


async def test_ticks_are_written_to_quiet_partitions_one_at_a_time(runtime, codec, sink):
    clock = runtime.agents["analytics"].clock  # the flow notes each partition's watermark on it
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    now_ms = T0 + 10 * MINUTE_MS + 5_000
    to = T0 + 9 * MINUTE_MS + lateness  # the last window close before now - the deadline (T0 + 9:35)
    assert await clock.tick([0, 2], now_ms, now=100.0) == [0, 2]
    ticks = sink.messages(runtime.topics.order_events)
    assert [(t.partition, t.watermark, t.occurred_at) for t in ticks] == [(0, to, now_ms), (2, to, now_ms)]
    assert [partition_for(r.key.decode(), 4) for r in sink.records(runtime.topics.order_events)] == [0, 2]
    # Not folded yet: none again until a while later, then again (a tick lost on its way is written again).
    assert await clock.tick([0, 2], now_ms + 1_000, now=101.0) == []
    assert await clock.tick([0, 2], now_ms + TICK_RESEND_MS, now=100.0 + TICK_RESEND_MS / 1000) == [0, 2]

    # Folded, the partition's clock is where the tick put it: none is due until the next window close.
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(ticks[0]), key=ticks[0].key.encode(), partition=0)
    assert runtime.tables.analytics.windows(0).watermark == to
    later = 100.0 + 2 * TICK_RESEND_MS / 1000
    next_close = to + MINUTE_MS + DEADLINE_MS
    assert await clock.tick([0], next_close - 1, now=later) == []
    assert await clock.tick([0], next_close, now=later) == [0]


async def test_no_tick_passes_an_order_in_flight_or_comes_while_the_saga_is_behind(runtime, codec, sink):
    clock = Clock(runtime)
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    now_ms = T0 + 10 * MINUTE_MS
    placed = T0 + 2 * MINUTE_MS + 7_000  # the oldest order still in flight on partition 1
    asked = []

    def in_flight() -> dict[int, int]:
        asked.append(True)
        return {1: placed}

    ticked = await clock.tick([0, 1, 2], now_ms, now=100.0, in_flight=in_flight, behind=lambda p: p == 2)
    assert ticked == [0, 1] and len(asked) == 2  # asked again for each: the flow may have placed one since
    assert [t.watermark for t in sink.messages(runtime.topics.order_events)] == [
        T0 + 9 * MINUTE_MS + lateness, T0 + MINUTE_MS + lateness]


async def test_the_clock_asks_nothing_of_a_partition_the_flow_keeps_moving(runtime, codec, sink):
    clock = Clock(runtime)
    now_ms = T0 + 10 * MINUTE_MS
    clock.note(0, now_ms - 1_000)  # an event of a second ago
    assert await clock.tick([0], now_ms, now=100.0, in_flight=lambda: pytest.fail("asked")) == []


async def test_a_tick_closes_a_quiet_partitions_windows_and_sends_their_results(runtime, codec, sink):
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    tick = clock_tick(1, 4, T0 + MINUTE_MS + lateness + DEADLINE_MS, T0 + MINUTE_MS + lateness)
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(confirmed("o-1", T0 + 1_000)), key=b"o-1", partition=1)
        assert sink.messages(runtime.topics.analytics_revenue) == []
        await agent.put(codec.encode(tick), key=tick.slot.encode(), partition=1)
        await agent.put(codec.encode(tick), key=tick.slot.encode(), partition=1)  # redelivered
    revenue = sink.messages(runtime.topics.analytics_revenue)
    assert [(r.window_start, r.revenue_cents, r.orders, r.source_partition) for r in revenue] == [
        (T0, 500, 1, 1), (T0, 500, 1, 1),  # sent again, with the same ids: consumers keep one
    ]
    assert revenue[0].event_id == revenue[1].event_id
    assert [o.confirmed for o in sink.messages(runtime.topics.analytics_outcomes)] == [1, 1]
    assert [u.window_start for u in sink.messages(runtime.topics.analytics_sku_units)] == [T0 - 4 * MINUTE_MS] * 2
    assert all(isinstance(m, RevenueWindow | OutcomeWindow | SkuUnitsWindow) for m in sink.messages(
        runtime.topics.analytics_revenue) + sink.messages(runtime.topics.analytics_outcomes))


async def test_the_flows_acting_on_orders_leave_a_tick_alone(runtime, codec, sink):
    tick = clock_tick(3, 4, T0, T0 - DEADLINE_MS)
    for flow in ("shipping", "notifications"):
        async with runtime.agents[flow].test_context() as agent:
            await agent.put(codec.encode(tick), key=tick.slot.encode(), partition=3)
    assert sink.sent == []  # nothing emitted, nothing dead-lettered


def test_the_orders_in_flight_are_the_deadlines_tables_by_partition(runtime):
    placed = {"o-a": T0, "o-b": T0 + 5_000, "o-c": T0 + 9_000}
    for order_id, at in placed.items():  # as the orders flow keeps them (its store, without a changelog here)
        runtime.tables.deadlines.table.data[order_id] = at + DEADLINE_MS
    expected: dict[int, int] = {}
    for order_id, at in placed.items():
        p = partition_for(order_id, 4)
        expected[p] = min(expected.get(p, at), at)
    assert in_flight(runtime) == expected


async def test_a_confirmation_stored_but_not_marked_seen_before_a_crash_is_never_counted_twice(runtime, codec, sink):
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    late = confirmed("o-late", T0 + 1_000)  # for a window closed already: its amount is kept beside it
    first_tick = clock_tick(1, 4, T0 + 3 * MINUTE_MS, T0 + MINUTE_MS + lateness)
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(first_tick), key=first_tick.slot.encode(), partition=1)
        await agent.put(codec.encode(late), key=b"o-late", partition=1)
        # The worker died after storing the state and before marking the event seen; its redelivery comes first.
        del runtime.tables.analytics.table.data[f"p1/seen/{late.event_id}"]
        await agent.put(codec.encode(late), key=b"o-late", partition=1)
        later = clock_tick(1, 4, T0 + 4 * MINUTE_MS, T0 + 2 * MINUTE_MS + lateness)  # no longer the last event
        await agent.put(codec.encode(later), key=later.slot.encode(), partition=1)
        await agent.put(codec.encode(late), key=b"o-late", partition=1)  # sent again by its flow, after a crash
    state = runtime.tables.analytics.windows(1)
    assert state.late_windows == {f"revenue/{T0}/{T0 + MINUTE_MS}": {"cents.EUR": 500, "orders.EUR": 1}}


async def test_late_confirmations_send_their_closed_revenue_window_again_and_a_redelivery_sends_it_too(
        runtime, codec, sink):
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    tick = clock_tick(1, 4, T0 + MINUTE_MS + lateness + DEADLINE_MS, T0 + MINUTE_MS + lateness)
    first, second = confirmed("o-late-1", T0 + 2_000), confirmed("o-late-2", T0 + 3_000)
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(confirmed("o-1", T0 + 1_000)), key=b"o-1", partition=1)
        await agent.put(codec.encode(tick), key=tick.slot.encode(), partition=1)  # closes T0's minute
        await agent.put(codec.encode(first), key=b"o-late-1", partition=1)
        # The worker died after storing the state, before marking the event seen and sending: it comes again.
        del runtime.tables.analytics.table.data[f"p1/seen/{first.event_id}"]
        await agent.put(codec.encode(first), key=b"o-late-1", partition=1)
        await agent.put(codec.encode(second), key=b"o-late-2", partition=1)
        await agent.put(codec.encode(first), key=b"o-late-1", partition=1)  # sent again by its flow
    revenue = sink.messages(runtime.topics.analytics_revenue)
    assert [(r.revenue_cents, r.orders, r.late_revenue_cents, r.late_orders) for r in revenue] == [
        (500, 1, 0, 0), (500, 1, 500, 1), (500, 1, 500, 1), (500, 1, 1_000, 2), (500, 1, 1_000, 2)]
    assert len({r.key for r in sink.records(runtime.topics.analytics_revenue)}) == 1  # compaction keeps the last
    ids = [r.event_id for r in revenue]
    assert ids[1] == ids[2] and ids[3] == ids[4] and len(set(ids)) == 3  # one id, one content
    assert [(o.window_start, o.confirmed) for o in sink.messages(runtime.topics.analytics_outcomes)] == [(T0, 1)]


async def test_a_quiet_partition_at_its_last_window_close_asks_nothing_until_the_next(runtime):
    clock = Clock(runtime)
    lateness = int(runtime.settings.analytics_lateness_s * 1000)
    now_ms = T0 + 10 * MINUTE_MS + 20_000
    clock.note(0, T0 + 9 * MINUTE_MS + lateness)  # where the last tick put it (now - deadline is 20 s past it)
    assert await clock.tick([0], now_ms, now=100.0, in_flight=lambda: pytest.fail("asked")) == []


def test_the_saga_is_behind_on_a_partition_until_every_record_of_it_is_handled():
    from types import SimpleNamespace

    from faust.types import TP

    from agents.analytics import saga_behind
    from streamcart.topics import Topics

    topics = Topics("commerce.")
    saga = (topics.order_commands, topics.inventory_events, topics.payment_events, topics.shipping_events,
            topics.order_events)
    ends = {TP(topic, 3): 10 for topic in saga}
    committed: dict = {TP(topic, 3): 10 for topic in saga}

    def highwater(tp):
        if tp not in ends:
            raise AssertionError("Partition is not assigned")
        return ends[tp]

    runtime = SimpleNamespace(topics=topics, app=SimpleNamespace(consumer=SimpleNamespace(
        highwater=highwater, _committed_offset=committed)))
    assert not saga_behind(runtime, 3)  # type: ignore[arg-type]
    committed[TP(topics.payment_events, 3)] = 9  # one record not handled yet
    assert saga_behind(runtime, 3)  # type: ignore[arg-type]
    committed[TP(topics.payment_events, 3)] = 10
    ends[TP(topics.shipping_events, 3)] = None  # not fetched yet: not known
    assert saga_behind(runtime, 3)  # type: ignore[arg-type]
    assert saga_behind(runtime, 2)  # type: ignore[arg-type]  # not this worker's
    ends[TP(topics.shipping_events, 3)] = 0
    committed.pop(TP(topics.shipping_events, 3))  # nothing ever written there, nothing committed
    assert not saga_behind(runtime, 3)  # type: ignore[arg-type]
