"""The inventory agent through faust's test_context: where adjustments are remembered, and SKUs it cannot store."""

import logging

import pytest

from agents.app import build_runtime
from agents.view import FaustWorkerView
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


async def test_a_write_off_of_stock_orders_hold_is_refused_noted_for_the_api_and_logged_as_a_warning(
    runtime, codec, sink, caplog
):
    """The API answered it 202 (the reservation was still queued ahead of it): its key's lookup must say refused,
    and a redelivery after a delivery must not write the stock off after all."""
    product = UpsertProduct(**envelope("p-1"), sku="A", name="Anvil", unit_price_cents=500, currency="EUR")
    reserve = ReserveStock(**envelope("r-1"), sku="A", order_id="o-1", quantity=2, currency="EUR")
    write_off = adjustment("wo", delta=-10)
    caplog.set_level(logging.INFO, logger="agents.runtime")
    async with runtime.agents["inventory"].test_context() as agent:
        for message in (product, adjustment("d-1"), reserve, write_off, adjustment("d-2", delta=5), write_off):
            await agent.put(codec.encode(message), key=b"A")
    stock = runtime.tables.stock.get("A")
    assert stock is not None and (stock.on_hand, stock.reserved) == (15, 2)
    reason = "adjusting A by -10 would leave -2 available (on hand 10, reserved 2)"
    outcome = FaustWorkerView(runtime, 0).adjustment_outcome("A", "wo")
    assert outcome is not None and outcome.refused == reason
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and reason in r.getMessage()]
    assert len(warned) == 2  # the command, and its redelivery
    assert sink.records(runtime.topics.dlq) == []


async def test_a_sku_that_would_collide_with_another_stock_record_is_dead_lettered_and_stores_nothing(
    runtime, codec, sink
):
    # An adjustment (a command anyone may write) names a SKU the API's paths would take, or does not decode; an
    # internal command is checked by the flow.
    odd = AdjustStock.model_construct(**envelope("d-1"), sku="A#adjustments", delta=10, reason="delivery")
    internal = ReserveStock(**envelope("r-2"), sku="A/o-1", order_id="o-1", quantity=1, currency="EUR")
    async with runtime.agents["inventory"].test_context() as agent:
        await agent.put(codec.encode(odd), key=b"A#adjustments")
        await agent.put(codec.encode(internal), key=b"A/o-1")
        await agent.put(codec.encode(adjustment("d-3")), key=b"A")
    dead = sink.records(runtime.topics.dlq)
    assert [d.key for d in dead] == [b"A#adjustments", b"A/o-1"]
    assert b"not a valid AdjustStock: sku: String should match pattern" in dead[0].headers[DlqHeader.ERROR_MESSAGE]
    assert b"cannot key the stock table" in dead[1].headers[DlqHeader.ERROR_MESSAGE]
    assert runtime.tables.stock.get("A#adjustments") is None and runtime.tables.stock.get("A/o-1") is None
    stock = runtime.tables.stock.get("A")
    assert stock is not None and stock.on_hand == 10


def product(event_id: str, price: int, at: int, active: bool = True) -> UpsertProduct:
    return UpsertProduct(**{**envelope(event_id), "occurred_at": at}, sku="A", name="Anvil", unit_price_cents=price,
                         currency="EUR", active=active)


async def test_upserts_apply_in_the_order_of_their_partition_not_of_their_senders_clocks(runtime, codec, sink):
    """An admin's laptop ten minutes fast sent the first; the API's later price and withdrawal still apply, and a
    reservation is priced and refused by them. A replayed dead letter older than the product is kept out."""
    async with runtime.agents["inventory"].test_context() as agent:
        await agent.put(codec.encode(product("p-laptop", 1_000, at=600_000)), key=b"A")
        await agent.put(codec.encode(product("p-api", 2_500, at=1_000)), key=b"A")
        assert runtime.tables.catalog.get("A").unit_price_cents == 2_500
        await agent.put(codec.encode(product("p-off", 2_500, at=1_001, active=False)), key=b"A")
        await agent.put(codec.encode(product("p-old", 900, at=500)), key=b"A", headers={DlqHeader.REPLAY_OF: b"0:7"})
        # A dead letter first read at offset 1 (before the withdrawal), replayed with a clock far ahead: its place
        # in the log, not its clock, keeps it out.
        await agent.put(codec.encode(product("p-fast", 700, at=9_000_000)), key=b"A",
                        headers={DlqHeader.REPLAY_OF: b"0:8", DlqHeader.REPLAY_POSITION: b"1"})
    stored = runtime.tables.catalog.get("A")
    assert stored is not None and (stored.unit_price_cents, stored.active, stored.updated.event_id) == (
        2_500, False, "p-off")


async def test_a_page_of_the_catalog_reads_a_range_of_each_partition_not_every_product(
    runtime, codec, sink, monkeypatch
):
    skus = [f"SKU-{n:03d}" for n in range(60)]
    async with runtime.agents["inventory"].test_context() as agent:
        for sku in skus:
            upsert = UpsertProduct(**{**envelope(f"p-{sku}"), "correlation_id": sku}, sku=sku, name=sku,
                                   unit_price_cents=100, currency="EUR")
            await agent.put(codec.encode(upsert), key=sku.encode())
    view = FaustWorkerView(runtime, 0)
    monkeypatch.setattr(view, "assigned", lambda: [0, 1, 2, 3])
    catalog = runtime.tables.catalog
    decoded = []
    monkeypatch.setattr(catalog, "get", lambda sku, get=catalog.get: decoded.append(sku) or get(sku))

    pages, after = [], None
    while page := view.products(after=after, limit=7):
        pages.append([product.sku for product in page])
        after = page[-1].sku
    assert [sku for page in pages for sku in page] == skus
    assert all(len(page) == 7 for page in pages[:-1])
    assert len(decoded) <= len(pages) * 7 * 4  # at most a page from each partition per page, never the catalog
    decoded.clear()
    assert [p.sku for p in view.products(after="SKU-041", limit=3)] == ["SKU-042", "SKU-043", "SKU-044"]
    assert len(decoded) <= 3 * 4
