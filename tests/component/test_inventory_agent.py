"""The inventory agent through faust's test_context: where adjustments are remembered, and SKUs it cannot store."""

import pytest

from agents.app import build_runtime
from schemas.messages import AdjustStock, ReserveStock, UpsertProduct
from streamcart.dead_letters import DlqHeader
from streamcart.domain.inventory import adjustments_key
from streamcart.settings import Settings


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://", sink=sink)


def envelope(event_id: str) -> dict:
    return {"event_id": event_id, "occurred_at": 1_000, "causation_id": event_id, "correlation_id": "A"}


def adjustment(event_id: str, sku: str = "A", delta: int = 10) -> AdjustStock:
    return AdjustStock(**envelope(event_id), sku=sku, delta=delta, reason="delivery")


async def test_adjustments_count_once_and_their_ids_stay_out_of_the_record_every_reservation_writes(
    runtime, codec, sink
):
    product = UpsertProduct(**envelope("p-1"), sku="A", name="Anvil", unit_price_cents=500, currency="EUR")
    reserve = ReserveStock(**envelope("r-1"), sku="A", order_id="o-1", quantity=2, currency="EUR")
    async with runtime.agents["inventory"].test_context() as agent:
        for message in (product, adjustment("d-1"), adjustment("d-2"), adjustment("d-3"), adjustment("d-1"),
                        adjustment("d-3"), reserve):
            await agent.put(codec.encode(message), key=b"A")
    stock = runtime.tables.stock.get("A")
    assert stock is not None and (stock.on_hand, stock.reserved) == (30, 2)
    assert stock.last_adjustment == "d-3" and "d-1" not in stock.model_dump_json()
    memory = runtime.tables.adjustments.get(adjustments_key("A"))
    assert memory is not None and memory.event_ids == ("d-1", "d-2")


async def test_a_sku_that_would_collide_with_another_stock_record_is_dead_lettered_and_stores_nothing(
    runtime, codec, sink
):
    async with runtime.agents["inventory"].test_context() as agent:
        await agent.put(codec.encode(adjustment("d-1", sku="A#adjustments")), key=b"A#adjustments")
        await agent.put(codec.encode(adjustment("d-2", sku="A/o-1")), key=b"A/o-1")
        await agent.put(codec.encode(adjustment("d-3")), key=b"A")
    dead = sink.records(runtime.topics.dlq)
    assert [d.key for d in dead] == [b"A#adjustments", b"A/o-1"]
    assert all(b"cannot key the stock table" in d.headers[DlqHeader.ERROR_MESSAGE] for d in dead)
    assert runtime.tables.stock.get("A#adjustments") is None and runtime.tables.stock.get("A/o-1") is None
    stock = runtime.tables.stock.get("A")
    assert stock is not None and stock.on_hand == 10
