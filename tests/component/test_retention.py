"""Forgetting a settled order through the agents (faust's test_context, in-memory tables): what goes and what stays."""

import pytest

from agents.app import build_runtime
from schemas.messages import (
    AdjustStock,
    CancelOrder,
    DropOrder,
    ForgetReservation,
    IndexOrder,
    OrderCancelled,
    OrderLine,
    PlaceOrder,
    ReleaseStock,
    ReserveStock,
    StockRejected,
    UpsertProduct,
)
from streamcart.domain import retention
from streamcart.domain.inventory import reservation_key
from streamcart.partitioning import partition_for
from streamcart.settings import Settings

PARTITIONS = 4
DAY_S = 24 * 3600


@pytest.fixture
def runtime(codec, sink, tmp_path):
    settings = Settings(home=tmp_path, partitions=PARTITIONS, order_retention_s=DAY_S)
    return build_runtime(settings, codec, store="memory://", sink=sink)


def envelope(event_id: str, order_id: str = "o-1", at: int = 1_000) -> dict:
    return {"event_id": event_id, "occurred_at": at, "causation_id": event_id, "correlation_id": order_id}


def place(order_id: str = "o-1") -> PlaceOrder:
    return PlaceOrder(**envelope(f"place-{order_id}", order_id), order_id=order_id, customer_id="c-1",
                      lines=(OrderLine(sku="A", quantity=2),), currency="EUR", payment_token="tok_approve")


def rejected(order_id: str = "o-1") -> StockRejected:
    return StockRejected(**envelope(f"rej-{order_id}", order_id, at=2_000), order_id=order_id, sku="A", quantity=2,
                         reason="out_of_stock", available=0)


def due(runtime, now_ms: int) -> list[tuple[str, int]]:
    return runtime.tables.retention.due(range(PARTITIONS), now_ms, limit=100,
                                        partition_of=lambda o: partition_for(o, PARTITIONS))


async def cancelled_and_counted(runtime, codec, sink, order_id: str = "o-1") -> None:
    """``order_id`` placed and cancelled (out of stock), and its OrderCancelled folded by the analytics flow."""
    async with runtime.agents["orders"].test_context() as agent:
        for message in (place(order_id), rejected(order_id)):
            await agent.put(codec.encode(message), key=order_id.encode())
    outcome = [m for m in sink.messages(runtime.topics.order_events)
               if isinstance(m, OrderCancelled) and m.order_id == order_id]
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(outcome[0]), key=order_id.encode())


async def test_a_settled_order_is_indexed_at_its_time_and_forgotten_with_what_its_partition_kept(
    runtime, codec, sink
):
    await cancelled_and_counted(runtime, codec, sink)
    order = runtime.tables.orders.get("o-1")
    at = retention.forget_at(order, DAY_S * 1000)
    # The time its last step was written to Kafka, plus the retention.
    assert at == max(step.recorded_at for step in order.history) + DAY_S * 1000
    assert due(runtime, at - 1) == [] and due(runtime, at) == [("o-1", at)]
    cancelled_id = next(m.event_id for m in sink.messages(runtime.topics.order_events) if isinstance(m, OrderCancelled))
    partition = 0  # where test_context delivers
    assert runtime.tables.analytics.seen(partition, cancelled_id) is not None

    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")  # redelivered: the same again
    # First everything but the order (here: its analytics mark); its index entry waits a retention more, should the
    # DropOrder never be applied ...
    assert runtime.tables.orders.get("o-1") is not None
    assert runtime.tables.analytics.seen(partition, cancelled_id) is None
    fallback = at + DAY_S * 1000
    assert due(runtime, fallback - 1) == [] and due(runtime, fallback) == [("o-1", fallback)]
    drops = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)]
    assert len(drops) == 2 and drops[0] == drops[1] and drops[0].skus == ("A",)
    assert not [m for m in sink.messages(runtime.topics.inventory_commands) if isinstance(m, ForgetReservation)]
    # ... then inventory is asked to forget the reservations, and the order goes, on the DropOrder it sent itself
    # (once those deletes were in their changelogs).
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(drops[0]), key=b"o-1")
    assert runtime.tables.orders.get("o-1") is None
    assert due(runtime, 10**13) == []
    assert forgotten_reservations(runtime, sink) == [("A", "o-1")]
    # Redelivered once the order is gone, it asks inventory again (a crash may have kept them from leaving), the
    # very same commands.
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(drops[1]), key=b"o-1")
    assert forgotten_reservations(runtime, sink) == [("A", "o-1")] * 2
    ids = [m.event_id for m in sink.messages(runtime.topics.inventory_commands) if isinstance(m, ForgetReservation)]
    assert ids[0] == ids[1]


async def test_what_comes_back_between_the_two_steps_is_forgotten_before_the_order_goes(runtime, codec, sink):
    await cancelled_and_counted(runtime, codec, sink)
    at = retention.forget_at(runtime.tables.orders.get("o-1"), DAY_S * 1000)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")
    first = next(m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder))
    # The OrderCancelled delivered to analytics again in between (after another order's): its mark is back.
    outcome = next(m for m in sink.messages(runtime.topics.order_events) if isinstance(m, OrderCancelled))
    await cancelled_and_counted(runtime, codec, sink, "o-2")
    async with runtime.agents["analytics"].test_context() as agent:
        await agent.put(codec.encode(outcome), key=b"o-1")
    assert runtime.tables.analytics.seen(0, outcome.event_id) is not None
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(first), key=b"o-1")
    # The first step again, and another DropOrder: the order stays until that one.
    assert runtime.tables.orders.get("o-1") is not None
    assert runtime.tables.analytics.seen(0, outcome.event_id) is None
    second = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)][-1]
    assert second.event_id != first.event_id and second.causation_id == first.event_id
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(second), key=b"o-1")
    assert runtime.tables.orders.get("o-1") is None


def forgotten_reservations(runtime, sink) -> list[tuple[str, str]]:
    return [(m.sku, m.order_id) for m in sink.messages(runtime.topics.inventory_commands)
            if isinstance(m, ForgetReservation)]


async def test_a_forget_command_before_the_orders_time_keeps_it_and_its_index_entry(runtime, codec, sink):
    await cancelled_and_counted(runtime, codec, sink)
    at = retention.forget_at(runtime.tables.orders.get("o-1"), DAY_S * 1000)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at - 1)), key=b"o-1")
    assert runtime.tables.orders.get("o-1") is not None
    assert due(runtime, at) == [("o-1", at)]
    assert not [m for m in sink.messages(runtime.topics.inventory_commands) if isinstance(m, ForgetReservation)]


async def test_a_pending_order_is_not_in_the_index_and_a_forget_command_for_it_changes_nothing(runtime, codec, sink):
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place("o-2")), key=b"o-2")
        await agent.put(codec.encode(retention.forget_command("o-2", 10**13)), key=b"o-2")
    assert due(runtime, 10**13) == []
    assert runtime.tables.orders.get("o-2") is not None


async def test_the_index_answers_only_for_the_partitions_asked_oldest_first_up_to_the_limit(runtime, codec, sink):
    order_ids = [f"o-{n}" for n in range(12)]
    for order_id in order_ids:
        await cancelled_and_counted(runtime, codec, sink, order_id)
    found = due(runtime, 10**13)
    assert sorted(o for o, _ in found) == sorted(order_ids)
    one = partition_for("o-3", PARTITIONS)
    mine = runtime.tables.retention.due({one}, 10**13, limit=100, partition_of=lambda o: partition_for(o, PARTITIONS))
    assert {o for o, _ in mine} == {o for o in order_ids if partition_for(o, PARTITIONS) == one}
    assert len(runtime.tables.retention.due(range(PARTITIONS), 10**13, limit=5,
                                            partition_of=lambda o: partition_for(o, PARTITIONS))) == 5


async def test_inventory_forgets_a_released_reservation_and_its_counters_stop_carrying_it(runtime, codec, sink):
    product = UpsertProduct(**envelope("p-1", "A"), sku="A", name="Anvil", unit_price_cents=500, currency="EUR")
    reserve = ReserveStock(**envelope("r-1"), sku="A", order_id="o-1", quantity=2, currency="EUR")
    release = ReleaseStock(**envelope("x-1"), sku="A", order_id="o-1", reason="payment_declined")
    forget = ForgetReservation(**envelope("f-1"), sku="A", order_id="o-1")
    adjust = AdjustStock(**envelope("d-1", "A"), sku="A", delta=5, reason="delivery")
    async with runtime.agents["inventory"].test_context() as agent:
        for message in (product, adjust, reserve, release, forget, forget):
            await agent.put(codec.encode(message), key=b"A")
    stock = runtime.tables.stock.get("A")
    assert stock is not None and (stock.on_hand, stock.reserved, stock.last_reservation) == (5, 0, None)
    assert runtime.tables.reservations.get(reservation_key("A", "o-1")) is None


async def test_the_index_reads_each_partitions_rocksdb_store_in_time_order_and_stops_before_fausts_own_keys(
    codec, sink, tmp_path
):
    settings = Settings(home=tmp_path, partitions=PARTITIONS, order_retention_s=DAY_S)
    runtime = build_runtime(settings, codec, store="rocksdb://", sink=sink)
    order_ids = [f"o-{n}" for n in range(6)]
    for order_id in order_ids:
        await cancelled_and_counted(runtime, codec, sink, order_id)
    store = runtime.tables.retention.table.data
    store._db_for_partition(0).put(b"__faust\x00offset__", b"7")  # what faust keeps beside the entries
    found = runtime.tables.retention.due({0}, 10**13, limit=100, partition_of=lambda o: partition_for(o, PARTITIONS))
    assert sorted(o for o, _ in found) == order_ids  # test_context writes every key in partition 0
    assert [at for _, at in found] == sorted(at for _, at in found)
    assert runtime.tables.retention.due({0}, 0, limit=100, partition_of=lambda o: 0) == []


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_the_customer_index_pages_a_customers_orders_newest_first_in_each_partition(codec, sink, tmp_path, store):
    settings = Settings(home=tmp_path, partitions=PARTITIONS, order_retention_s=DAY_S)
    runtime = build_runtime(settings, codec, store=store, sink=sink)
    async with runtime.agents["orders"].test_context() as agent:
        for n in range(7):
            order = place(f"o-{n}").model_copy(update={"occurred_at": 1_000 + n // 2})  # two share each time
            await agent.put(codec.encode(order), key=order.order_id.encode())
        other = place("x-1").model_copy(update={"customer_id": "c-10"})  # "c-1" is a prefix of its id
        await agent.put(codec.encode(other), key=b"x-1")
        await agent.put(codec.encode(place("o-0")), key=b"o-0")  # redelivered: filed once
    index = runtime.tables.customer_orders

    def page(after, limit):
        # test_context delivers every message in partition 0
        return index.page("c-1", [0], after=after, limit=limit, partition_of=lambda order_id: 0, load=str)

    everything = page(None, 100)
    assert [order_id for _, order_id in everything] == ["o-6", "o-4", "o-5", "o-2", "o-3", "o-0", "o-1"]
    first, second = page(None, 3), page(page(None, 3)[-1][0], 3)
    assert first + second == everything[:6]
    assert page(everything[-1][0], 3) == []
    assert [o for _, o in index.page("c-10", [0], after=None, limit=5, partition_of=lambda o: 0, load=str)] == ["x-1"]
    assert index.page("c-1", [1], after=None, limit=5, partition_of=lambda o: 0, load=str) == []
    # Entries whose order cannot be read (a table still being rebuilt) take no place on the page.
    unreadable = {"o-6", "o-5"}
    readable = index.page("c-1", [0], after=None, limit=3, partition_of=lambda o: 0,
                          load=lambda o: None if o in unreadable else o)
    assert [o for _, o in readable] == ["o-4", "o-2", "o-3"]


async def test_a_forgotten_order_leaves_its_customers_list_and_reindexing_files_it_again(runtime, codec, sink):
    await cancelled_and_counted(runtime, codec, sink)
    listed = listed_for_c1(runtime)
    assert [o for _, o in listed] == ["o-1"]
    at = retention.forget_at(runtime.tables.orders.get("o-1"), DAY_S * 1000)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")
    assert listed_for_c1(runtime) == []
    # What an order stored before the indexes existed looks like; IndexOrder files it (twice changes nothing).
    index = IndexOrder(**envelope("i-1"), order_id="o-1")
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(index), key=b"o-1")
        await agent.put(codec.encode(index), key=b"o-1")
    assert listed_for_c1(runtime) == listed
    assert ("o-1", at) in due(runtime, at)


async def test_an_order_touched_between_the_two_steps_stays_listed_until_it_is_forgotten_for_good(runtime, codec, sink):
    await cancelled_and_counted(runtime, codec, sink)
    at = retention.forget_at(runtime.tables.orders.get("o-1"), DAY_S * 1000)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")
        # A late cancel of the cancelled order: it changes nothing, but the order is stored again, and listed.
        await agent.put(codec.encode(CancelOrder(**envelope("late-1"), order_id="o-1", requested_by="c-1")),
                        key=b"o-1")
    assert [o for _, o in listed_for_c1(runtime)] == ["o-1"]
    first = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)][-1]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(first), key=b"o-1")  # finds the entry back: the first step again
    assert runtime.tables.orders.get("o-1") is not None and listed_for_c1(runtime) == []
    second = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)][-1]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(second), key=b"o-1")
    assert runtime.tables.orders.get("o-1") is None and listed_for_c1(runtime) == []


def listed_for_c1(runtime) -> list:
    return runtime.tables.customer_orders.page("c-1", [0], after=None, limit=5, partition_of=lambda o: 0, load=str)


async def test_messages_about_a_forgotten_order_bring_nothing_back(runtime, codec, sink, clock):
    """Found live: a forgotten order's PlaceOrder produced again placed it again (its stock taken, its payment asked
    for, its warehouse rows rewritten); an event about it produced again rewrote its fact row's time."""
    await cancelled_and_counted(runtime, codec, sink)
    order = runtime.tables.orders.get("o-1")
    at = retention.forget_at(order, DAY_S * 1000)
    clock(at)  # its time has come: it is forgotten
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(retention.forget_command("o-1", at)), key=b"o-1")
    drop = next(m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder))
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(drop), key=b"o-1")
    assert runtime.tables.orders.get("o-1") is None
    sent_before = len(sink.sent)

    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1")
        await agent.put(codec.encode(rejected()), key=b"o-1")

    assert runtime.tables.orders.get("o-1") is None
    letters = sink.sent[sent_before:]
    assert [s.topic for s in letters] == [runtime.topics.dlq] * 2  # dead-lettered, and nothing else sent
    reasons = [s.headers["dlq.error.message"].decode() for s in letters]
    assert "older than the order retention" in reasons[0] and reasons[1] == "unknown order o-1"


async def test_a_placement_handled_within_the_retention_of_its_time_is_placed(runtime, codec, sink, clock):
    command = place("o-9")
    clock(command.occurred_at + DAY_S * 1000 - 1)  # (a day's backlog, just under the retention)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(command), key=b"o-9")
    stored = runtime.tables.orders.get("o-9")
    assert stored is not None and stored.placed_event_id == command.event_id
    assert not sink.records(runtime.topics.dlq)
