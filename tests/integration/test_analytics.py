"""Analytics by event time on the real stack (DESIGN.md §3.10): known orders at known event times give exactly
the expected windows, in the API and on the ``analytics.*`` topics; revenue over windows equals the confirmed
totals (I6); an event for a closed window is counted as late and changes no result; the windows of a stack no
order comes to any more close by the clock.

The orders are timed a few minutes ahead of now, so their windows hold nothing from other tests, and their
revenue is in the test currency XTS (ISO 4217's code for testing) on SKUs of their own. Closing the windows means
moving event time past them on *every* partition (each keeps its own watermark): one order per partition, timed
after the last window's end plus the allowed lateness. Orders other tests place later are then late for their
own windows, which no other test looks at.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from api.auth import issue_token
from schemas.messages import (
    AdjustStock,
    OrderLine,
    OutcomeWindow,
    PlaceOrder,
    RevenueWindow,
    SkuUnitsWindow,
    UpsertProduct,
)
from streamcart.audit import audit
from streamcart.commands import envelope
from streamcart.domain.analytics import MINUTE_MS
from streamcart.ids import new_id
from streamcart.partitioning import partition_for
from tests.integration.support import http_json, poll, read_topic
from tests.integration.test_saga import Shop

CURRENCY = "XTS"


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


@pytest.fixture(scope="module")
def started_ms(shop: Shop) -> int:
    """When this module's first test began."""
    return int(time.time() * 1000)


def _order(shop: Shop, at: int, lines: dict[str, int], token: str = "tok_approve", order_id: str | None = None):
    order_id = order_id or f"o-{new_id()}"
    return PlaceOrder(
        **envelope(order_id, now_ms=at), order_id=order_id, customer_id="c-analytics",
        lines=tuple(OrderLine(sku=s, quantity=q) for s, q in lines.items()), currency=CURRENCY, payment_token=token,
    )


def _product(shop: Shop, sku: str, price: int, stock: int) -> None:
    shop.send(
        UpsertProduct(**envelope(sku), sku=sku, name=sku, unit_price_cents=price, currency=CURRENCY),
        AdjustStock(**envelope(sku), sku=sku, delta=stock, reason="initial"),
    )
    poll(lambda: (shop.get(f"/v1/stock/{sku}") or {}).get("on_hand") == stock, what=f"stock of {sku}")


def _one_order_id_per_partition(partitions: int) -> list[str]:
    found: dict[int, str] = {}
    while len(found) < partitions:
        order_id = f"o-advance-{new_id()}"
        found.setdefault(partition_for(order_id, partitions), order_id)
    return [found[p] for p in range(partitions)]


def test_the_windows_of_a_stack_gone_quiet_close_by_the_clock(shop: Shop, settings, codec, started_ms):
    """With no order event after an order's, on its partition or any other, its windows still become final and
    go to the topics: each worker ticks the clock of its partitions (agents/analytics.py). First in this module:
    the test below moves every partition's clock minutes ahead."""
    lateness = int(settings.analytics_lateness_s * 1000)
    deadline = int(settings.saga_timeout_s * 1000)
    sku = f"AN-Q-{new_id()[:8]}"
    _product(shop, sku, price=321, stock=10)
    # Timed in the last second of the first window that ends 2 s from now or later: not late (no partition's clock
    # is past now), nowhere near its deadline, and its window closes within a minute or two.
    now = int(time.time() * 1000) + 2_000
    end = now - now % MINUTE_MS + MINUTE_MS
    quiet = _order(shop, end - 1_000, {sku: 3})
    shop.send(quiet)
    assert shop.settled(quiet.order_id)["status"] == "CONFIRMED"
    window = f"from={end - MINUTE_MS}&to={end}"

    def revenue() -> dict | None:
        body = shop.get(f"/v1/analytics/revenue?{window}")
        return body and next((w for w in body["windows"] if w["currency"] == CURRENCY), None)

    first = poll(revenue, what="the quiet order's revenue window")
    assert (first["revenue_cents"], first["orders"]) == (963, 1)
    final = poll(lambda: (w := revenue()) and w["final"] and w, timeout_s=180, every_s=0.5,
                 what="the quiet order's window to be final")
    assert (final["window_start"], final["window_end"], final["revenue_cents"], final["orders"]) == (
        end - MINUTE_MS, end, 963, 1)
    # Closed by the clock, and not before every outcome of the window had come (an order's deadline after it).
    assert time.time() * 1000 >= end + lateness + deadline

    def ours(records: list) -> dict:  # the latest per key, as compaction keeps it
        return {x.key(): (r.window_start, r.revenue_cents, r.orders) for x in records
                if isinstance(r := codec.decode(x.value()), RevenueWindow) and r.currency == CURRENCY
                and r.window_end == end}

    records = read_topic(settings, shop.topics.analytics_revenue, until=lambda rs: bool(ours(rs)))
    assert list(ours(records).values()) == [(end - MINUTE_MS, 963, 1)]


def test_known_orders_give_exactly_the_expected_windows(shop: Shop, settings, codec):
    now = int(time.time() * 1000)
    base = now - now % MINUTE_MS + 2 * MINUTE_MS  # a minute boundary 1-2 minutes ahead
    a, b = f"AN-{new_id()[:8]}", f"AN-{new_id()[:8]}"
    _product(shop, a, price=250, stock=50)
    _product(shop, b, price=1_000, stock=50)

    orders = [
        _order(shop, base + 5_000, {a: 2}),  # 500, window 0
        _order(shop, base + 20_000, {b: 1}),  # 1000, window 0
        _order(shop, base + 30_000, {a: 1}, token="tok_decline"),  # cancelled: payment_declined, window 0
        _order(shop, base + 61_000, {a: 1, b: 1}),  # 1250, window 1
        # Before base + 60 s + the 30 s lateness: an event at that time would close window 0 on its partition, and a
        # window-0 order sharing that partition would be late by the time it confirms.
        _order(shop, base + 75_000, {a: 500}),  # cancelled: out_of_stock, window 1
    ]
    shop.send(*orders)
    settled = {o.order_id: shop.settled(o.order_id) for o in orders}
    assert [settled[o.order_id]["status"] for o in orders] == ["CONFIRMED", "CONFIRMED", "CANCELLED", "CONFIRMED",
                                                               "CANCELLED"]
    confirmed_total = sum(o["total_cents"] for o in settled.values() if o["status"] == "CONFIRMED")
    assert confirmed_total == 2_750

    w0, w1 = (base, base + MINUTE_MS), (base + MINUTE_MS, base + 2 * MINUTE_MS)
    expected_revenue = {w0: (1_500, 2), w1: (1_250, 1)}
    window_range = f"from={base}&to={base + 2 * MINUTE_MS}"

    def revenue_now() -> dict:
        body = shop.get(f"/v1/analytics/revenue?{window_range}", worker=1)
        return body and {(w["window_start"], w["window_end"]): w for w in body["windows"] if w["currency"] == CURRENCY}

    # The current windows are there before they close.
    seen: list = []

    def current_revenue() -> dict | None:
        r = revenue_now()
        seen[:] = [r and {k: (v["revenue_cents"], v["orders"]) for k, v in r.items()}]
        return r if seen[0] == expected_revenue else None

    try:
        current = poll(current_revenue, timeout_s=90, what="the current revenue windows")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: expected {expected_revenue}, last saw {seen[0] if seen else None}") from None
    assert not any(w["final"] for w in current.values())

    # Move event time past every window these orders fall in (the 5-minute ones too), on every partition.
    closing_time = base + 7 * MINUTE_MS + int(settings.analytics_lateness_s * 1000) + 1_000
    shop.send(*(
        _order(shop, closing_time, {f"AN-NONE-{new_id()[:6]}": 1}, order_id=order_id)
        for order_id in _one_order_id_per_partition(settings.partitions)
    ))

    final = poll(lambda: (r := revenue_now()) and all(w["final"] for w in r.values()) and r,
                 timeout_s=90, what="the revenue windows to be final")
    assert {k: (v["revenue_cents"], v["orders"]) for k, v in final.items()} == expected_revenue
    # I6: revenue summed over the windows equals the confirmed totals.
    assert sum(v["revenue_cents"] for v in final.values()) == confirmed_total

    outcomes = shop.get(f"/v1/analytics/outcomes?{window_range}")
    assert outcomes is not None
    assert [(w["window_start"], w["confirmed"], w["cancelled_by_reason"], w["final"]) for w in outcomes["windows"]] == [
        (w0[0], 2, {"payment_declined": 1}, True), (w1[0], 1, {"out_of_stock": 1}, True),
    ]

    expected_units = {start: {} for start in range(base - 4 * MINUTE_MS, base + 2 * MINUTE_MS, MINUTE_MS)}
    for start in expected_units:
        if start <= base < start + 5 * MINUTE_MS:  # orders at base + 5 s and base + 20 s
            expected_units[start] = {a: 2, b: 1}
        if start <= base + 61_000 < start + 5 * MINUTE_MS:
            expected_units[start] = {s: expected_units[start].get(s, 0) + 1 for s in (a, b)}
    top = shop.get(f"/v1/analytics/top-skus?from={base - 4 * MINUTE_MS}&to={base + 2 * MINUTE_MS}&limit=1000")
    assert top is not None
    got_units = {w["window_start"]: {s["sku"]: s["units"] for s in w["skus"] if s["sku"] in (a, b)}
                 for w in top["windows"]}
    assert got_units == expected_units

    # The closed windows were emitted to the analytics topics: partial results per source partition whose sums
    # are exactly the windows above.
    def summed(records: list, kind: type, key, value) -> dict:
        totals: dict = defaultdict(int)
        latest = {}
        for record in records:
            result = codec.decode(record.value())
            if isinstance(result, kind) and key(result) is not None:
                latest[record.key()] = result  # compaction keeps the latest per key; so does this
        for result in latest.values():
            totals[key(result)] += value(result)
        return dict(totals)

    def revenue_results(records: list) -> dict:
        return summed(records, RevenueWindow,  # these windows only: the test above has one of its own
                      lambda r: (r.window_start, r.window_end) if r.currency == CURRENCY and
                      (r.window_start, r.window_end) in (w0, w1) else None,
                      lambda r: r.revenue_cents)

    records = read_topic(settings, shop.topics.analytics_revenue,
                         until=lambda rs: revenue_results(rs) == {w0: 1_500, w1: 1_250})
    assert revenue_results(records) == {w0: 1_500, w1: 1_250}
    assert all(codec.decode(r.value()).source_partition is not None for r in records)

    def units_results(records: list) -> dict:
        return summed(records, SkuUnitsWindow,
                      lambda r: (r.window_start, r.sku) if r.sku in (a, b) else None, lambda r: r.units)

    want_units = {(start, s): n for start, units in expected_units.items() for s, n in units.items()}
    read_topic(settings, shop.topics.analytics_sku_units, until=lambda rs: units_results(rs) == want_units)

    def outcome_results(records: list) -> dict:
        return summed(records, OutcomeWindow,
                      lambda r: r.window_start if r.window_start in (w0[0], w1[0]) else None, lambda r: r.confirmed)

    read_topic(settings, shop.topics.analytics_outcomes, until=lambda rs: outcome_results(rs) == {w0[0]: 2, w1[0]: 1})

    # An order timed inside the first window, placed now that the window is closed: late, counted, not folded.
    late_before = shop.get(f"/v1/analytics/revenue?{window_range}")["late_events"]
    late = _order(shop, base + 10_000, {a: 1})
    shop.send(late)
    assert shop.settled(late.order_id)["status"] == "CONFIRMED"
    after = poll(lambda: (r := shop.get(f"/v1/analytics/revenue?{window_range}")) and
                 r["late_events"] > late_before and r, what="the late event to be reported")
    assert after["late_events"] == late_before + 1
    assert {(w["window_start"], w["window_end"]): (w["revenue_cents"], w["orders"]) for w in after["windows"]
            if w["currency"] == CURRENCY} == expected_revenue


def test_analytics_need_an_admin_and_a_valid_range(shop: Shop, settings):
    customer = issue_token(settings.jwt_secret.get_secret_value(), "c-1", ["customer"])
    assert http_json(f"{settings.worker_url(0)}/v1/analytics/revenue", customer)[0] == 403
    assert http_json(f"{settings.worker_url(0)}/v1/analytics/revenue")[0] == 401
    status, body = http_json(f"{settings.worker_url(0)}/v1/analytics/outcomes?from=yesterday", shop.token)
    assert (status, body["error"]["code"]) == (422, "invalid") and "from" in str(body["error"]["details"])
    # An empty range is a question with no windows in its answer, not an error.
    status, body = http_json(f"{settings.worker_url(0)}/v1/analytics/top-skus?from=10&to=5", shop.token)
    assert (status, body["windows"]) == (200, [])


def test_the_audit_finds_every_confirmed_total_in_its_revenue_window_on_time_or_late(shop: Shop, settings,
                                                                                      started_ms):
    """I6 on the real stack, over the windows of this module's orders (the late one included): the analytics'
    revenue on time plus late equals the warehouse's confirmed orders, minute by minute."""
    report = audit(settings, since_ms=started_ms, wait_s=180)
    assert report.ok, report.findings
    assert report.checked["I6"].endswith("(1 of them late)"), report.checked["I6"]
