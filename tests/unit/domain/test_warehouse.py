"""The warehouse rows: projections of the order state the API shows, and one fact row per saga event."""

import json
from functools import partial

import pytest
from domain_builders import PLACED_AT, TIMEOUT_MS, make, place, run

from schemas.messages import (
    CancelOrder,
    OrderConfirmed,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    ShipmentCreated,
    ShipmentDispatched,
    StockCommitted,
    StockRejected,
    StockReserved,
    StockRestocked,
)
from streamcart.domain import orders
from streamcart.domain.order_state import OrderState
from streamcart.domain.warehouse import (
    ORDER_LINES,
    ORDERS,
    PAYMENTS,
    SHIPMENTS,
    STOCK_MOVEMENTS,
    TABLES,
    ZONED_TIMESTAMP,
    event_rows,
    iso_utc,
    line_rows,
    order_changes,
    order_row,
)

decide = partial(orders.decide, saga_timeout_ms=TIMEOUT_MS)


def reserved(sku: str, qty: int, price: int, at: int = 2_000) -> StockReserved:
    return make(StockReserved, order_id="o-1", sku=sku, quantity=qty, unit_price_cents=price, currency="EUR", at=at)


def confirmed_order() -> OrderState:
    """o-1: 2 x A at 1250 and 1 x B at 399, authorized as auth-1 at t=3000 and captured."""
    state, _ = run(
        decide, None, place(), reserved("A", 2, 1250), reserved("B", 1, 399),
        make(PaymentAuthorized, order_id="o-1", amount_cents=2899, currency="EUR", authorization_id="auth-1",
             at=3_000),
        make(PaymentCaptured, order_id="o-1", amount_cents=2899, currency="EUR", authorization_id="auth-1",
             at=3_100),
    )
    return state


def test_an_orders_row_is_the_order_as_the_api_shows_it():
    row = order_row(confirmed_order())
    assert row["status"] == "CONFIRMED"
    assert (row["total_cents"], row["currency"], row["line_count"], row["units"]) == (2899, "EUR", 2, 3)
    assert (row["payment_status"], row["payment_amount_cents"], row["authorization_id"]) == ("captured", 2899, "auth-1")
    assert (row["placed_at"], row["confirmed_at"], row["deadline_at"]) == (PLACED_AT, 3_000, PLACED_AT + TIMEOUT_MS)
    assert row["cancelled_at"] is None and row["cancel_reason"] is None and row["tracking_id"] is None
    assert row["updated_at"] == 3_100


def test_order_lines_carry_the_reserved_price_and_their_total():
    lines = {row["sku"]: row for row in line_rows(confirmed_order())}
    assert (lines["A"]["quantity"], lines["A"]["unit_price_cents"], lines["A"]["line_total_cents"]) == (2, 1250, 2500)
    assert lines["B"]["line_total_cents"] == 399
    pending, _ = run(decide, None, place())
    assert {row["unit_price_cents"] for row in line_rows(pending)} == {None}


def test_a_cancelled_order_keeps_its_reason_and_time():
    state, _ = run(decide, None, place(), reserved("A", 2, 1250), reserved("B", 1, 399),
                   make(PaymentDeclined, order_id="o-1", amount_cents=2899, currency="EUR", reason="insufficient_funds",
                        at=3_000))
    row = order_row(state)
    assert (row["status"], row["cancel_reason"], row["cancelled_at"]) == ("CANCELLED", "payment_declined", 3_000)
    assert (row["payment_status"], row["decline_reason"]) == ("declined", "insufficient_funds")


def test_a_new_state_sends_only_the_rows_that_changed():
    placed, _ = run(decide, None, place())
    one_reserved, _ = run(decide, placed, reserved("A", 2, 1250))
    changes = order_changes(placed, one_reserved)
    assert [(table.name, row.get("sku")) for table, row in changes] == [("orders", None), ("order_lines", "A")]


def test_the_first_state_and_a_redelivery_send_every_row():
    state = confirmed_order()
    assert [table.name for table, _ in order_changes(None, state)] == ["orders", "order_lines", "order_lines"]
    assert order_changes(state, state) == []


def test_a_record_key_is_a_struct_naming_the_primary_key():
    key, _value = ORDER_LINES.record(line_rows(confirmed_order())[0])
    document = json.loads(key)
    assert document["payload"] == {"order_id": "o-1", "sku": "A"}
    assert [f["field"] for f in document["schema"]["fields"]] == ["order_id", "sku"]
    assert document["schema"]["type"] == "struct"


def test_times_travel_as_zoned_timestamps_in_utc():
    _key, value = ORDERS.record(order_row(confirmed_order()))
    document = json.loads(value)
    placed = next(f for f in document["schema"]["fields"] if f["field"] == "placed_at")
    assert (placed["type"], placed["name"]) == ("string", ZONED_TIMESTAMP)
    assert document["payload"]["placed_at"] == "1970-01-01T00:00:01.000Z"
    assert iso_utc(1_764_080_927_123) == "2025-11-25T14:28:47.123Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999Z"
    # Whole numbers: a float of seconds loses the millisecond in the 23rd century.
    assert [iso_utc(ms) for ms in (10_413_792_000_001, 253_402_300_799_999)] == [
        "2300-01-01T00:00:00.001Z", "9999-12-31T23:59:59.999Z"]
    money = next(f for f in document["schema"]["fields"] if f["field"] == "total_cents")
    assert money["type"] == "int64"


def test_a_record_is_compact_utf8_json_as_the_json_module_writes_it():
    row = {**order_row(confirmed_order()), "customer_id": "Zoë ☃ \"quoted\" \\ \n"}
    _key, value = ORDERS.record(row)
    document = json.loads(value)
    assert document["payload"]["customer_id"] == row["customer_id"]
    assert value == b'{"schema":' + json.dumps(document["schema"], separators=(",", ":"), ensure_ascii=False).encode() \
        + b',"payload":' + json.dumps(document["payload"], separators=(",", ":"), ensure_ascii=False).encode() + b"}"


def test_the_same_row_always_gives_the_same_bytes():
    row = order_row(confirmed_order())
    assert ORDERS.record(row) == ORDERS.record(dict(reversed(list(row.items()))))


def test_a_row_missing_a_column_or_nulling_a_required_one_is_refused():
    row = order_row(confirmed_order())
    with pytest.raises(ValueError, match="missing"):
        ORDERS.record({k: v for k, v in row.items() if k != "status"})
    with pytest.raises(ValueError, match="may not be NULL"):
        ORDERS.record({**row, "status": None})


def test_stock_movements_say_how_on_hand_and_reserved_moved():
    movements = [
        event_rows(reserved("A", 2, 1250))[0],
        event_rows(make(StockCommitted, order_id="o-1", sku="A", quantity=2))[0],
        event_rows(make(StockRestocked, order_id="o-1", sku="A", quantity=2))[0],
    ]
    assert {table for table, _ in movements} == {STOCK_MOVEMENTS}
    rows = [row for _, row in movements]
    assert [row["movement"] for row in rows] == ["reserved", "committed", "restocked"]
    assert sum(row["reserved_delta"] for row in rows) == 0
    assert sum(row["on_hand_delta"] for row in rows) == 0
    assert rows[0]["unit_price_cents"] == 1250


def test_a_rejection_is_a_movement_of_nothing_with_its_reason():
    table, row = event_rows(make(StockRejected, order_id="o-1", sku="A", quantity=5, reason="out_of_stock",
                                 available=1))[0]
    assert (table, row["movement"], row["reason"]) == (STOCK_MOVEMENTS, "rejected", "out_of_stock")
    assert (row["on_hand_delta"], row["reserved_delta"]) == (0, 0)


def test_payment_and_shipment_events_are_one_row_per_order_and_kind():
    (table, row), = event_rows(make(PaymentDeclined, order_id="o-1", amount_cents=10, currency="EUR", reason="nope"))
    assert (table, row["order_id"], row["event"], row["reason"]) == (PAYMENTS, "o-1", "declined", "nope")
    (table, row), = event_rows(make(ShipmentCreated, order_id="o-1", tracking_id="T-1", carrier="post"))
    assert (table, row["event"], row["carrier"]) == (SHIPMENTS, "created", "post")
    (table, row), = event_rows(make(ShipmentDispatched, order_id="o-1", tracking_id="T-1"))
    assert (row["event"], row["carrier"]) == ("dispatched", None)
    (table, row), = event_rows(make(ShipmentDispatched, order_id="o-1", tracking_id="T-1", carrier="dhl"))
    assert (row["event"], row["carrier"]) == ("dispatched", "dhl")


def test_a_fact_row_says_when_its_event_was_written_as_well_as_its_event_time():
    (_table, row), = event_rows(reserved("A", 2, 1250, at=2_000), recorded_at=2_345)
    assert (row["occurred_at"], row["recorded_at"]) == (2_000, 2_345)


def test_a_redelivered_event_gives_the_same_record():
    event = reserved("A", 2, 1250)
    assert [t.record(r) for t, r in event_rows(event)] == [t.record(r) for t, r in event_rows(event)]


def test_order_events_and_commands_have_no_fact_rows():
    assert event_rows(make(CancelOrder, order_id="o-1", requested_by="c-1")) == []
    assert event_rows(make(OrderConfirmed, order_id="o-1", customer_id="c", lines=(), total_cents=0,
                           currency="EUR", authorization_id="a")) == []


def test_every_row_of_every_table_encodes():
    state, _ = run(decide, None, place(), reserved("A", 2, 1250), reserved("B", 1, 399))
    for table, row in order_changes(None, state):
        assert table in TABLES
        table.record(row)
