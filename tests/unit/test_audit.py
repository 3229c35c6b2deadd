"""``streamcart audit``'s checks (streamcart/audit.py): a shop where every invariant holds passes, and each way of
breaking one is found, named by its invariant and its order or SKU. (On the real stack:
tests/integration/test_audit.py.)"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from streamcart.audit import (
    DEFAULT_SAMPLE,
    Ahead,
    AuditUnavailable,
    Finding,
    Movements,
    Positions,
    Snapshot,
    Stock,
    _not_quiet,
    audit,
    check,
    revenue_from,
    sampled,
)
from streamcart.dead_letters import ConnectHeader, DeadLetter, DlqHeader, SinkLetter
from streamcart.settings import Settings

NOW = 1_800_000_000_000
DEADLINE = NOW - 60_000


def order(order_id: str, status: str, total: int | None, *, payment: str | None, reason: str | None = None,
          authorization: str | None = None) -> dict:
    return {"order_id": order_id, "customer_id": "c-1", "status": status, "currency": "EUR", "total_cents": total,
            "cancel_reason": reason, "cancel_detail": None, "payment_status": payment,
            "payment_amount_cents": total if payment else None, "authorization_id": authorization,
            "decline_reason": "insufficient_funds" if payment == "declined" else None, "tracking_id": None,
            "shipment_status": None, "carrier": None, "placed_at": DEADLINE - 30_000, "deadline_at": DEADLINE,
            "updated_at": DEADLINE - 29_000}


def api_view(row: dict, lines: list[dict], history: list[str]) -> dict:
    """The API's answer for an order whose warehouse row is ``row``."""
    return {"order_id": row["order_id"], "customer_id": row["customer_id"], "status": row["status"],
            "currency": row["currency"], "total_cents": row["total_cents"], "cancel_reason": row["cancel_reason"],
            "cancel_detail": row["cancel_detail"],
            "payment": None if row["payment_status"] is None else {
                "status": row["payment_status"], "amount_cents": row["payment_amount_cents"],
                "authorization_id": row["authorization_id"], "decline_reason": row["decline_reason"]},
            "shipment": None, "placed_at": row["placed_at"], "deadline": row["deadline_at"],
            "lines": [{"sku": ln["sku"], "quantity": ln["quantity"], "unit_price_cents": ln["price"],
                       "status": ln["status"]} for ln in lines if ln["order_id"] == row["order_id"]],
            "history": [{"event": e, "time": DEADLINE, "event_id": f"{row['order_id']}-{e}"} for e in history]}


def healthy_shop() -> Snapshot:
    """Three orders over two SKUs (A 10 supplied, B 5): one kept its goods (2 A + 1 B, 250 + 100), one was refunded
    after its confirmation (1 A, restocked), one was declined (1 B, released); every invariant holds."""
    orders = [
        order("o-kept", "DELIVERED", 600, payment="captured", authorization="auth-1"),
        order("o-refunded", "CANCELLED", 250, payment="refunded", reason="customer_request", authorization="auth-2"),
        order("o-declined", "CANCELLED", 100, payment="declined", reason="payment_declined"),
    ]
    lines = [
        {"order_id": "o-kept", "sku": "A", "quantity": 2, "price": 250, "status": "committed"},
        {"order_id": "o-kept", "sku": "B", "quantity": 1, "price": 100, "status": "committed"},
        {"order_id": "o-refunded", "sku": "A", "quantity": 1, "price": 250, "status": "restocked"},
        {"order_id": "o-declined", "sku": "B", "quantity": 1, "price": 100, "status": "released"},
    ]
    history = {"o-kept": ["OrderPlaced", "OrderConfirmed", "OrderShipped", "OrderDelivered"],
               "o-refunded": ["OrderPlaced", "OrderConfirmed", "OrderCancelled"],
               "o-declined": ["OrderPlaced", "OrderCancelled"]}
    return Snapshot(
        now_ms=NOW,
        orders=orders,
        lines=[{k: v for k, v in ln.items() if k != "price"} for ln in lines],
        payments=[
            {"order_id": "o-kept", "event": "authorized", "amount_cents": 600},
            {"order_id": "o-kept", "event": "captured", "amount_cents": 600},
            {"order_id": "o-refunded", "event": "authorized", "amount_cents": 250},
            {"order_id": "o-refunded", "event": "captured", "amount_cents": 250},
            {"order_id": "o-refunded", "event": "refunded", "amount_cents": 250},
            {"order_id": "o-declined", "event": "declined", "amount_cents": 100},
        ],
        # Sold 2 + 1 of A (one came back), 1 of B; the declined order's B was reserved and released.
        movements={"A": Movements(committed=3, restocked=1, reserved=0),
                   "B": Movements(committed=1, restocked=0, reserved=0)},
        stock={"A": Stock(on_hand=8, reserved=0, adjusted=10, sold=3, restocked=1),
               "B": Stock(on_hand=4, reserved=0, adjusted=5, sold=1, restocked=0)},
        kept_units={"A": 2, "B": 1},
        ledger=[
            {"idempotency_key": "o-kept", "status": "captured", "amount_cents": 600, "authorization_id": "auth-1"},
            {"idempotency_key": "o-refunded", "status": "refunded", "amount_cents": 250, "authorization_id": "auth-2"},
            {"idempotency_key": "o-declined", "status": "declined", "amount_cents": 100, "authorization_id": "auth-3"},
        ],
        api_orders={o["order_id"]: api_view(o, lines, history[o["order_id"]]) for o in orders},
        warehouse_rows={o["order_id"]: o for o in orders},
        warehouse_lines={o["order_id"]: sorted((ln["sku"], ln["quantity"], ln["price"], ln["status"])
                                               for ln in lines if ln["order_id"] == o["order_id"])
                         for o in orders},
        retention_ms=7 * 86_400_000,
        # Two confirmations (the refunded order's too) in the minute of their event time; one of them came late.
        revenue={(MINUTE, "EUR"): (600, 1, 250, 1)},
        confirmed={(MINUTE, "EUR"): (850, 2)},
        revenue_from=MINUTE,
    )


MINUTE = NOW - NOW % 60_000 - 120_000


def test_a_shop_where_every_invariant_holds_passes_and_says_what_it_checked():
    report = check(healthy_shop())
    assert report.ok, report.findings
    assert report.checked["I1"].startswith("3 orders: 1 confirmed, shipped or delivered, 2 cancelled")
    assert report.checked["I2"] == "2 SKUs"
    assert "against the gateway's ledger (3 of its authorizations)" in report.checked["I4"]
    assert report.checked["I6"] == "1 one-minute windows from 2027-01-15T07:58:00Z, 2 confirmed orders (1 of them late)"
    assert list(report.checked) == ["I1", "I2", "I3", "I4", "I6", "I7", "I8"]


def stuck(s: Snapshot) -> None:
    s.orders.append(order("o-stuck", "PENDING", None, payment="requested"))


def line_left_reserved(s: Snapshot) -> None:
    s.lines[3]["status"] = "reserved"  # the declined order's B


def placed_twice(s: Snapshot) -> None:
    s.api_orders["o-declined"]["history"].insert(1, {"event": "OrderPlaced", "time": 0, "event_id": "again"})


def units_still_reserved(s: Snapshot) -> None:
    s.stock["B"] = Stock(on_hand=4, reserved=1, adjusted=5, sold=1, restocked=0)


def sold_twice(s: Snapshot) -> None:  # a commitment applied twice by the inventory
    s.stock["A"] = Stock(on_hand=6, reserved=0, adjusted=10, sold=4, restocked=0)


def stock_not_conserved(s: Snapshot) -> None:
    s.stock["A"] = Stock(on_hand=9, reserved=0, adjusted=10, sold=3, restocked=1)


def oversold(s: Snapshot) -> None:
    s.stock["B"] = Stock(on_hand=-1, reserved=0, adjusted=0, sold=1, restocked=0)


def confirmed_twice_at_the_gateway(s: Snapshot) -> None:
    assert s.ledger is not None
    s.ledger.append({"idempotency_key": "o-kept", "status": "authorized", "amount_cents": 600,
                     "authorization_id": "auth-9"})


def refund_never_made(s: Snapshot) -> None:
    assert s.ledger is not None
    s.ledger[1]["status"] = "captured"


def captured_for_another_amount(s: Snapshot) -> None:
    s.payments[1]["amount_cents"] = 500


def warehouse_behind_the_api(s: Snapshot) -> None:
    s.warehouse_rows["o-refunded"] = {**s.warehouse_rows["o-refunded"], "payment_status": "captured"}


def unknown_to_the_api(s: Snapshot) -> None:
    s.api_orders["o-kept"] = None


def another_authorization_named(s: Snapshot) -> None:
    assert s.ledger is not None
    s.ledger[0]["authorization_id"] = "auth-7"


def a_void_never_made(s: Snapshot) -> None:  # the void was dead-lettered while the gateway was down
    s.orders[2]["payment_status"] = "void_requested"
    s.api_orders["o-declined"]["payment"]["status"] = "void_requested"  # as the API shows it too


def accepted_and_lost(s: Snapshot) -> None:
    s.unrecorded = {"o-lost": None, "o-unsunk": {"status": "CONFIRMED"}}


BROKEN: dict[str, tuple[Callable[[Snapshot], None], list[Finding]]] = {
    "an order unsettled past its deadline": (stuck, [Finding("I1", "o-stuck", "PENDING 60 s after its deadline")]),
    "a cancelled order's line still reserved": (line_left_reserved, [
        Finding("I1", "o-declined", "CANCELLED, but its line of B is still reserved")]),
    "an order placed twice": (placed_twice, [
        Finding("I1", "o-declined", "its history has {'OrderPlaced': 2, 'OrderConfirmed': 0, 'OrderCancelled': 1}")]),
    "units reserved once quiet": (units_still_reserved, [
        Finding("I2", "B", "1 units reserved with no order in flight"),
        Finding("I2", "B", "the warehouse's movements leave 0 units reserved, the inventory 1"),
    ]),
    "a commitment applied twice": (sold_twice, [
        Finding("I2", "A", "the inventory sold 4 and restocked 0 units, the warehouse's movements 3 and 1"),
        Finding("I3", "A", "orders that kept their goods hold 2 units, but 4 were sold and 0 restocked"),
    ]),
    "stock not conserved": (stock_not_conserved, [
        Finding("I2", "A", "on hand 9, but adjusted 10 - sold 3 + restocked 1 = 8")]),
    "oversold": (oversold, [
        Finding("I2", "B", "available -1 outside [0, on hand -1]"),
        Finding("I3", "B", "1 units kept by orders, only 0 supplied"),
    ]),
    "two authorizations for one order": (confirmed_twice_at_the_gateway, [
        Finding("I4", "o-kept", "DELIVERED with 2 authorizations at the gateway")]),
    "a refund the gateway never made": (refund_never_made, [
        Finding("I4", "o-refunded", "CANCELLED, the gateway holds 250 (captured, auth-2)")]),
    "captured for another amount": (captured_for_another_amount, [
        Finding("I4", "o-kept", "DELIVERED for 600, payment rows {'authorized': 1, 'captured': 1} for [500, 600]")]),
    "a warehouse row behind the API": (warehouse_behind_the_api, [
        Finding("I7", "o-refunded", "warehouse row differs: payment_status 'captured' (API 'refunded')")]),
    "an order the API does not know": (unknown_to_the_api, [
        Finding("I7", "o-kept", "in the warehouse, unknown to the API")]),
    "the order names another authorization than the gateway's": (another_authorization_named, [
        Finding("I4", "o-kept", "names authorization auth-1, the gateway auth-7")]),
    "a void never made": (a_void_never_made, [
        Finding("I4", "o-declined", "CANCELLED with its payment void_requested")]),
    "an accepted order lost, another never sunk": (accepted_and_lost, [
        Finding("I1", "o-lost", "accepted by the API, but neither the warehouse nor the API knows it"),
        Finding("I7", "o-unsunk", "CONFIRMED in the API, not in the warehouse")]),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_way_of_breaking_an_invariant_is_found_and_named(name):
    snapshot = copy.deepcopy(healthy_shop())
    breaking, expected = BROKEN[name]
    breaking(snapshot)
    report = check(snapshot)
    assert not report.ok
    assert sorted(report.findings, key=repr) == sorted(expected, key=repr)


def test_an_unsettled_order_within_its_deadline_and_grace_is_not_stuck():
    snapshot = healthy_shop()
    snapshot.orders.append({**order("o-late", "PENDING", None, payment="requested"), "deadline_at": NOW - 29_000})
    assert check(snapshot, grace_s=30).ok
    assert check(snapshot, grace_s=20).findings == (Finding("I1", "o-late", "PENDING 29 s after its deadline"),)


def test_the_stack_is_quiet_once_the_workers_and_the_sinks_have_consumed_everything():
    offsets = {("workers", "commands.orders", 0): (10, 12), ("workers", "events.orders", 3): (5, 5),
               ("connect-orders", "warehouse.orders", 0): (7, 8), ("connect-lines", "warehouse.lines", 1): (2, 4)}
    behind = Positions(offsets, sinks_healthy=True, workers_group="workers")
    assert behind.behind == {"workers": 2, "warehouse sinks": 3}
    assert _not_quiet(behind) == "workers 2 records behind, warehouse sinks 3 records behind"
    caught_up = Positions({key: (end, end) for key, (_, end) in offsets.items()}, sinks_healthy=True,
                          workers_group="workers")
    assert _not_quiet(caught_up) == ""
    assert "not running" in _not_quiet(Positions(caught_up.offsets, sinks_healthy=False))


def test_an_order_the_workers_forgot_a_retention_after_it_settled_is_no_finding():
    snapshot = healthy_shop()
    snapshot.api_orders["o-kept"] = None
    snapshot.retention_ms = NOW - snapshot.warehouse_rows["o-kept"]["updated_at"] - 1  # settled longer ago
    report = check(snapshot)
    assert report.ok
    # Nothing of it was read from the API: the report does not count it as read or compared.
    assert report.checked["I1"].endswith("; the histories of 2")
    assert report.checked["I7"] == "2 orders; 1 more forgotten by the workers, kept by the warehouse alone"


def test_a_confirmed_or_shipped_order_the_api_does_not_know_is_a_finding_however_old():
    """Only a settled order (CANCELLED or DELIVERED) is ever forgotten: a CONFIRMED or SHIPPED one is kept however old,
    so one the workers no longer hold is lost, and the retention must not excuse it."""
    for status in ("CONFIRMED", "SHIPPED"):
        snapshot = healthy_shop()
        snapshot.warehouse_rows["o-kept"]["status"] = status
        snapshot.api_orders["o-kept"] = None
        snapshot.retention_ms = NOW - snapshot.warehouse_rows["o-kept"]["updated_at"] - 1  # longer ago
        assert Finding("I7", "o-kept", "in the warehouse, unknown to the API") in check(snapshot).findings


def test_without_the_gateways_ledger_money_is_checked_on_the_payment_rows_and_the_report_says_so():
    snapshot = healthy_shop()
    snapshot.ledger = None
    report = check(snapshot)
    assert report.ok and report.checked["I4"].endswith("(the gateway lists no authorizations)")
    snapshot.payments = [p for p in snapshot.payments if p["event"] != "captured" or p["order_id"] != "o-kept"]
    assert [f.subject for f in check(snapshot).findings] == ["o-kept"]


def test_every_order_of_a_narrowed_audit_is_compared_and_an_unnarrowed_one_mixes_the_latest_with_older_ones():
    orders = [{"order_id": f"o-{i}", "updated_at": i} for i in range(1000)]
    assert len(sampled(orders, None, scoped=True)) == 1000
    assert sampled(orders, 3, scoped=False) == ["o-999", "o-998", "o-997"]
    chosen = sampled(orders, None, scoped=False)
    latest = [f"o-{i}" for i in range(999, 999 - DEFAULT_SAMPLE, -1)]
    assert chosen[:DEFAULT_SAMPLE] == latest and len(set(chosen)) == 2 * DEFAULT_SAMPLE


class FakeStack:
    """What the audit loop reads, scripted: positions one after the other, snapshots one after the other."""

    def __init__(self, positions: list[Positions | Exception], snapshots: list[Snapshot]) -> None:
        self.positions, self.snapshots, self.reads = positions, snapshots, 0

    def at(self, _settings: Settings) -> Positions:
        answer = self.positions.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def read(self, _settings: Settings, **_: object) -> Snapshot:
        self.reads += 1
        return self.snapshots.pop(0)


QUIET = Positions({("w", "t", 0): (5, 5)}, sinks_healthy=True, workers_group="w")
LATER = Positions({("w", "t", 0): (6, 6)}, sinks_healthy=True, workers_group="w")
BUSY = Positions({("w", "t", 0): (5, 7)}, sinks_healthy=True, workers_group="w")


def test_the_audit_reads_again_when_a_record_was_written_while_it_read_or_an_order_is_in_flight():
    in_flight = healthy_shop()
    in_flight.orders.append({**order("o-new", "PENDING", None, payment=None), "deadline_at": NOW + 10_000})
    fake = FakeStack([BUSY, QUIET, LATER, LATER, LATER, LATER, LATER],
                     [healthy_shop(), in_flight, healthy_shop()])
    said: list[str] = []
    report = audit(Settings(), wait_s=60, on_wait=said.append, read=fake.read, at=fake.at, pause=lambda _: None)
    assert report.ok and fake.reads == 3
    assert said == ["workers 2 records behind", "records were written while the audit read",
                    "1 orders still within their deadline"]


def test_a_clock_tick_written_while_the_audit_read_changes_nothing_it_read():
    """The analytics clock writes ticks to the order events of an idle stack about once a minute per partition
    (agents/analytics.py): one alone does not make the audit read again, a record anywhere else does."""
    offsets = {("w", "events", 0): (5, 5), ("w", "t", 0): (5, 5)}
    quiet = Positions(offsets, sinks_healthy=True, workers_group="w", ticked_topic="events")
    ticked = Positions({**offsets, ("w", "events", 0): (6, 6)}, sinks_healthy=True, workers_group="w",
                       ticked_topic="events")
    written = Positions({**offsets, ("w", "t", 0): (6, 6)}, sinks_healthy=True, workers_group="w",
                        ticked_topic="events")
    fake = FakeStack([quiet, ticked, ticked, written, written, written], [healthy_shop(), healthy_shop()])
    said: list[str] = []
    assert audit(Settings(), wait_s=60, on_wait=said.append, read=fake.read, at=fake.at, pause=lambda _: None).ok
    assert fake.reads == 1 and said == []
    fake = FakeStack([quiet, written, written, written], [healthy_shop(), healthy_shop()])
    assert audit(Settings(), wait_s=60, on_wait=said.append, read=fake.read, at=fake.at, pause=lambda _: None).ok
    assert fake.reads == 2 and said == ["records were written while the audit read"]


def test_an_order_placed_before_the_audited_while_and_still_in_flight_holds_the_audit_up():
    """Its SKU's stock is the audit's (reserved != 0 while it is in flight), though the order is not."""
    earlier = healthy_shop()
    earlier.earlier_unsettled = [NOW + 5_000, NOW - 3_600_000]  # one in flight; one long stuck (not waited for)
    fake = FakeStack([QUIET, QUIET, QUIET, QUIET], [earlier, healthy_shop()])
    said: list[str] = []
    assert audit(Settings(), wait_s=60, on_wait=said.append, read=fake.read, at=fake.at, pause=lambda _: None).ok
    assert said == ["1 orders still within their deadline"]


def test_a_part_of_the_stack_that_does_not_answer_is_waited_for_then_named():
    fake = FakeStack([AuditUnavailable("the API answered 503 to GET /v1/stock/A"), QUIET, QUIET],
                     [healthy_shop()])
    said: list[str] = []
    assert audit(Settings(), wait_s=60, on_wait=said.append, read=fake.read, at=fake.at, pause=lambda _: None).ok
    assert said == ["the API answered 503 to GET /v1/stock/A"]
    never = FakeStack([BUSY] * 3, [])
    with pytest.raises(AuditUnavailable, match=r"not quiet within 0 s \(workers 2 records behind\)"):
        audit(Settings(), wait_s=0, read=never.read, at=never.at, pause=lambda _: None)


@pytest.mark.parametrize(("revenue", "confirmed", "problem"), [
    ({(MINUTE, "EUR"): (600, 1, 0, 0)}, {(MINUTE, "EUR"): (850, 2)},
     "revenue 600 for 1 orders (and 0 for 0 late), the warehouse's confirmed orders of that minute 850 for 2"),
    ({(MINUTE, "EUR"): (600, 1, 250, 1)}, {(MINUTE, "EUR"): (850, 3)},  # as much money, an order more
     "revenue 600 for 1 orders (and 250 for 1 late), the warehouse's confirmed orders of that minute 850 for 3"),
    ({}, {(MINUTE, "USD"): (100, 1)},
     "revenue 0 for 0 orders (and 0 for 0 late), the warehouse's confirmed orders of that minute 100 for 1"),
    ({(MINUTE, "EUR"): (600, 1, 250, 1), (MINUTE + 60_000, "EUR"): (5, 1, 0, 0)}, {(MINUTE, "EUR"): (850, 2)},
     "revenue 5 for 1 orders (and 0 for 0 late), the warehouse's confirmed orders of that minute 0 for 0"),
])
def test_revenue_that_is_not_the_confirmed_totals_of_its_minute_is_found(revenue, confirmed, problem):
    shop = healthy_shop()
    shop.revenue, shop.confirmed = revenue, confirmed
    [finding] = check(shop).findings
    assert finding.invariant == "I6" and finding.problem == problem
    assert finding.subject.startswith("2027-01-15T07:5") and finding.subject.endswith(("EUR", "USD"))


def test_a_confirmation_timed_by_a_clock_ahead_is_reported_as_such_naming_both_minutes():
    """README: a confirmation timed more than 15 minutes after it was written to Kafka counts (in the analytics) at
    when it was written; the audit reports it as what it is, a clock that ran ahead, not as two minutes whose
    revenue is wrong (the analytics have it in the minute it was written, the warehouse in the one it says)."""
    shop = healthy_shop()
    written, said = MINUTE + 60_000, MINUTE + 60_000 + 20 * 60_000
    shop.revenue = {**shop.revenue, (written, "EUR"): (8900, 1, 0, 0)}
    shop.confirmed = {**shop.confirmed, (said, "EUR"): (8900, 1)}
    shop.ahead = {"o-ahead": Ahead(confirmed_at=said + 35_000, recorded_at=written + 36_000, currency="EUR",
                                   total_cents=8900)}
    [finding] = check(shop).findings
    assert finding.invariant == "I6" and finding.subject == "o-ahead"
    assert "a clock that ran ahead" in finding.problem and "1199 s after it was written to Kafka" in finding.problem
    assert finding.problem.endswith("in the minute of 2027-01-15T07:59:00Z, the warehouse in that of "
                                    "2027-01-15T08:19:00Z")


def test_a_clock_ahead_in_a_minute_with_other_confirmations_leaves_their_comparison_exact():
    shop = healthy_shop()
    written, said = MINUTE, MINUTE + 20 * 60_000
    cents, orders, late_cents, late_orders = shop.revenue[(MINUTE, "EUR")]
    shop.revenue = {**shop.revenue, (MINUTE, "EUR"): (cents + 100, orders + 1, late_cents, late_orders)}
    shop.confirmed = {**shop.confirmed, (said, "EUR"): (100, 1)}
    shop.ahead = {"o-ahead": Ahead(confirmed_at=said, recorded_at=written, currency="EUR", total_cents=100)}
    assert [f.subject for f in check(shop).findings] == ["o-ahead"]
    shop.revenue = {**shop.revenue, (MINUTE, "EUR"): (cents + 99, orders + 1, late_cents, late_orders)}
    assert [f.subject for f in check(shop).findings] == ["o-ahead", "2027-01-15T07:58:00Z EUR"]


def test_revenue_not_read_is_not_checked_and_says_why():
    shop = healthy_shop()
    shop.revenue, shop.revenue_skipped = None, "the analytics flow is off (STREAMCART_ANALYTICS=false)"
    shop.confirmed = {(MINUTE, "EUR"): (1, 1)}
    report = check(shop)
    assert report.ok and report.checked["I6"] == "not checked: the analytics flow is off (STREAMCART_ANALYTICS=false)"


def test_revenue_is_checked_from_a_whole_minute_the_analytics_still_keep():
    settings = Settings(analytics_retention_s=3_600)
    assert NOW % 60_000 == 0  # a minute boundary, so these are whole minutes from it
    assert revenue_from(settings, NOW - 5 * 60_000 + 1, NOW) == NOW - NOW % 60_000 - 4 * 60_000
    assert revenue_from(settings, NOW - 5 * 60_000 - 1, NOW) == NOW - NOW % 60_000 - 5 * 60_000
    # Without --since: an hour of retention, less the 15 minutes a watermark may run ahead and a minute.
    oldest = revenue_from(settings, None, NOW)
    assert oldest % 60_000 == 0 and NOW - 44 * 60_000 - 60_000 < oldest <= NOW - 44 * 60_000


def letter(**headers: str) -> DeadLetter:
    return DeadLetter(0, 7, b"k", b"v", tuple((name, value.encode()) for name, value in headers.items()))


GOOD_LETTER = {DlqHeader.SOURCE_TOPIC: "commerce.commands.orders", DlqHeader.SOURCE_PARTITION: "3",
               DlqHeader.SOURCE_OFFSET: "41", DlqHeader.ERROR_CLASS: "SchemaError", DlqHeader.ERROR_MESSAGE: "",
               DlqHeader.FLOW: "orders", DlqHeader.FAILED_AT: "1"}
GOOD_ROW = {ConnectHeader.TOPIC: "commerce.warehouse.orders", ConnectHeader.PARTITION: "0",
            ConnectHeader.OFFSET: "9", ConnectHeader.CONNECTOR: "warehouse-orders",
            ConnectHeader.EXCEPTION_CLASS: "org.apache.kafka.connect.errors.DataException"}
TOPICS = frozenset({"commerce.commands.orders", "commerce.warehouse.orders"})


def test_dead_letters_that_name_their_source_and_error_pass():
    shop = healthy_shop()
    row = SinkLetter(0, 2, b"k", b"v", tuple((n, v.encode()) for n, v in GOOD_ROW.items()))
    shop.dead_letters, shop.topics = [letter(**GOOD_LETTER), row], TOPICS  # an error without a message is one
    report = check(shop)
    assert report.ok, report.findings
    assert report.checked["I8"] == "1 dead letters, 1 rows the warehouse sinks could not take"


@pytest.mark.parametrize(("change", "problem"), [
    ({DlqHeader.SOURCE_OFFSET: None}, "has no dlq.source.offset"),
    ({DlqHeader.ERROR_CLASS: "", DlqHeader.FLOW: None}, "has no dlq.error.class, dlq.flow"),
    ({DlqHeader.SOURCE_PARTITION: "three"}, "names partition 'three' and offset '41', not numbers"),
    ({DlqHeader.SOURCE_TOPIC: "elsewhere"}, "names 'elsewhere', not one of the stack's topics"),
])
def test_a_dead_letter_that_does_not_say_where_it_came_from_or_why_is_found(change, problem):
    headers = {name: value for name, value in {**GOOD_LETTER, **change}.items() if value is not None}
    shop = healthy_shop()
    shop.dead_letters, shop.topics = [letter(**headers)], TOPICS
    assert check(shop).findings == (Finding("I8", "dead letter 0:7", problem),)


def test_a_warehouse_dead_letter_needs_connects_headers():
    headers = {name: value for name, value in GOOD_ROW.items() if name != ConnectHeader.CONNECTOR}
    shop = healthy_shop()
    shop.dead_letters = [SinkLetter(0, 2, None, None, tuple((n, v.encode()) for n, v in headers.items()))]
    assert check(shop).findings == (
        Finding("I8", "warehouse dead letter 0:2", f"has no {ConnectHeader.CONNECTOR}"),)


def test_revenue_with_no_window_to_compare_is_not_checked_rather_than_ok(capsys):
    """A drill shorter than a minute printed I6 ok over 0 windows: nothing had been compared."""
    from streamcart.cli import _print_audit

    shop = healthy_shop()
    shop.revenue, shop.confirmed = {}, {}
    report = check(shop)
    assert report.ok and report.checked["I6"].startswith("not checked: no confirmation and no revenue window from ")
    _print_audit(report, limit=5)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("I6"))
    assert "not checked (no confirmation and no revenue window from" in line and " ok " not in line
