"""The shipping agent through faust's test_context: a cancel request stops a shipment that has not left."""

import pytest

from agents.app import build_runtime
from schemas.messages import (
    OrderCancelRequested,
    OrderConfirmed,
    PricedLine,
    ShipmentCancelled,
    ShipmentCreated,
    UpdateShipment,
)
from streamcart.dead_letters import DlqHeader
from streamcart.domain.shipping import SHIPMENT_CANCELLED
from streamcart.settings import Settings


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://", sink=sink)


def envelope(event_id: str) -> dict:
    return {"event_id": event_id, "occurred_at": 1_000, "causation_id": event_id, "correlation_id": "o-1"}


CONFIRMED = OrderConfirmed(**envelope("c-1"), order_id="o-1", customer_id="c-1", total_cents=500, currency="EUR",
                           lines=(PricedLine(sku="A", quantity=1, unit_price_cents=500),), authorization_id="a-1")
CANCEL_REQUESTED = OrderCancelRequested(**envelope("r-1"), order_id="o-1", customer_id="c-1", reason="customer_request")


async def test_a_cancel_requested_before_dispatch_stops_the_shipment_and_says_so(runtime, codec, sink):
    async with runtime.agents["shipping"].test_context() as agent:
        await agent.put(codec.encode(CONFIRMED), key=b"o-1")
        await agent.put(codec.encode(CANCEL_REQUESTED), key=b"o-1")
    events = sink.messages(runtime.topics.shipping_events)
    assert [type(m) for m in events] == [ShipmentCreated, ShipmentCancelled]
    stored = runtime.tables.shipments.get("o-1")
    assert stored is not None and stored.status == "cancelled"


async def test_a_dispatch_reported_after_a_cancel_stopped_the_shipment_is_dead_lettered_for_a_person(
    runtime, codec, sink
):
    """The API refuses it up front (409); one that raced past that check was answered 202 and the goods may have left
    while the order was refunded: a person must hear of it (the dead-letter alert, `streamcart dlq list`)."""
    dispatched = UpdateShipment(**envelope("u-1"), order_id="o-1", status="dispatched")
    async with runtime.agents["shipping"].test_context() as agent:
        for message in (CONFIRMED, CANCEL_REQUESTED, dispatched):
            await agent.put(codec.encode(message), key=b"o-1")
    assert [type(m) for m in sink.messages(runtime.topics.shipping_events)] == [ShipmentCreated, ShipmentCancelled]
    [letter] = sink.records(runtime.topics.dlq)
    assert letter.headers[DlqHeader.FLOW] == b"shipping"
    assert SHIPMENT_CANCELLED.encode() in letter.headers[DlqHeader.ERROR_MESSAGE]
    assert codec.decode(letter.value) == dispatched
    stored = runtime.tables.shipments.get("o-1")
    assert stored is not None and stored.status == "cancelled" and stored.dispatched is None
