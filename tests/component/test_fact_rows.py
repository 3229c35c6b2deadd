"""The orders flow sends each payment, shipping and stock event's warehouse fact row, stamped with the record's time."""

import json

import pytest

from agents.app import build_runtime
from schemas.messages import OrderLine, PlaceOrder, StockReserved
from streamcart.domain.warehouse import iso_utc
from streamcart.settings import Settings


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://", sink=sink)


#: When the order was placed: its reservation's records below are written within its deadline (one written after
#: it would expire the order, DESIGN.md §3.8).
PLACED_AT = 1_764_080_920_000


def message(kind, event_id, **fields):
    return kind(event_id=event_id, occurred_at=PLACED_AT, causation_id=event_id, correlation_id="o-1", **fields)


def placed_and_reserved() -> tuple[PlaceOrder, StockReserved]:
    """Order o-1 of two units of A, and the reservation of them."""
    place = message(PlaceOrder, "e-1", order_id="o-1", customer_id="c-1", lines=(OrderLine(sku="A", quantity=2),),
                    currency="EUR", payment_token="tok_approve")
    reserved = message(StockReserved, "r-1", order_id="o-1", sku="A", quantity=2, unit_price_cents=250,
                       currency="EUR")
    return place, reserved


async def test_a_stock_event_gets_its_movement_row_stamped_with_its_records_time_even_when_redelivered(
    runtime, codec, sink
):
    place, reserved = placed_and_reserved()
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place), key=b"o-1")
        await agent.put(codec.encode(reserved), key=b"o-1", timestamp=1_764_080_927.123)
        await agent.put(codec.encode(reserved), key=b"o-1", timestamp=1_764_080_927.123)  # the same record again

    rows = sink.records(runtime.topics.warehouse["stock_movements"])
    assert len(rows) == 2  # the redelivery rewrites the same row
    for record in rows:
        key, row = json.loads(record.key)["payload"], json.loads(record.value)["payload"]
        assert key == {"order_id": "o-1", "sku": "A", "movement": "reserved"}
        assert (row["quantity"], row["unit_price_cents"], row["event_id"]) == (2, 250, "r-1")
        assert row["recorded_at"] == iso_utc(1_764_080_927_123) == "2025-11-25T14:28:47.123Z"
    assert rows[0].value == rows[1].value
    order = runtime.tables.orders.get("o-1")
    assert order is not None and len(order.history) == 2  # placed, then the one reservation: applied once


async def test_the_same_event_sent_again_as_another_record_keeps_the_first_records_time(runtime, codec, sink):
    """A flow re-sending an event after a crash, or a dead letter replayed, writes a new record with a new time:
    the row keeps the time the order's history has for that event, when it really happened."""
    place, reserved = placed_and_reserved()
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place), key=b"o-1")
        await agent.put(codec.encode(reserved), key=b"o-1", timestamp=1_764_080_927.123)
        await agent.put(codec.encode(reserved), key=b"o-1", timestamp=1_764_084_527.999)  # an hour later

    rows = sink.records(runtime.topics.warehouse["stock_movements"])
    assert [json.loads(r.value)["payload"]["recorded_at"] for r in rows] == [iso_utc(1_764_080_927_123)] * 2
