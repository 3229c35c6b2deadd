"""The orders agent driven through faust's test_context: raw bytes in, table state and sent records out."""

import time

import pytest

from agents.app import build_runtime
from agents.view import FaustWorkerView
from schemas.messages import OrderLine, OrderPlaced, PlaceOrder, ReserveStock
from streamcart.dead_letters import FLOWS, DlqHeader
from streamcart.settings import Settings
from streamcart.telemetry import QueueDelay


@pytest.fixture
def runtime(codec, sink, tmp_path):
    settings = Settings(home=tmp_path, partitions=4)
    return build_runtime(settings, codec, store="memory://", sink=sink)


def place(order_id: str = "o-1", event_id: str = "e-1") -> PlaceOrder:
    return PlaceOrder(
        event_id=event_id, occurred_at=1_000, causation_id=event_id, correlation_id=order_id, order_id=order_id,
        customer_id="c-1", lines=(OrderLine(sku="A", quantity=2),), currency="EUR", payment_token="tok_approve",
    )


async def test_a_place_order_is_stored_and_its_events_are_sent(runtime, codec, sink):
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1")
    order = runtime.tables.orders.get("o-1")
    assert order is not None and order.status == "PENDING"
    assert [type(m) for m in sink.messages(runtime.topics.order_events)] == [OrderPlaced]
    assert [type(m) for m in sink.messages(runtime.topics.inventory_commands)] == [ReserveStock]
    assert all(s.headers["traceparent"].startswith(b"00-") for s in sink.sent)


async def test_a_redelivered_place_order_is_applied_once_and_re_emits_the_same_ids(runtime, codec, sink):
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1")
        await agent.put(codec.encode(place()), key=b"o-1")
    order = runtime.tables.orders.get("o-1")
    assert order is not None and len(order.history) == 1
    placed = sink.messages(runtime.topics.order_events)
    assert len(placed) == 2 and placed[0].event_id == placed[1].event_id


async def test_how_long_records_waited_for_a_saga_flow_is_what_the_api_judges_load_by(runtime, codec):
    now = [time.time()]
    runtime.telemetry.saga_queue = QueueDelay(window_s=1.0, clock=lambda: now[0], monotonic=lambda: now[0])
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place("o-1", "e-1")), key=b"o-1", timestamp=now[0] - 7.0)
        await agent.put(codec.encode(place("o-2", "e-2")), key=b"o-2", timestamp=now[0] - 4.0)
    now[0] += 1.0  # the window they were handled in is over
    assert FaustWorkerView(runtime, 0).saga_queue_s() == pytest.approx(4.0, abs=0.01)


async def test_undecodable_values_go_to_the_dlq_and_the_next_message_is_processed(runtime, codec, sink):
    unknown_schema_id = b"\x00\x00\x00\x7f\xff" + codec.encode(place())[5:]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(b"definitely not avro", key=b"bad-1")
        await agent.put(unknown_schema_id, key=b"bad-2")
        await agent.put(codec.encode(place("o-2", "e-2")), key=b"o-2")
    dead = sink.records(runtime.topics.dlq)
    assert [d.key for d in dead] == [b"bad-1", b"bad-2"]
    assert [d.headers[DlqHeader.ERROR_CLASS] for d in dead] == [b"MalformedMessage", b"UnknownSchemaError"]
    assert all(DlqHeader.SOURCE_OFFSET in d.headers and DlqHeader.SOURCE_TOPIC in d.headers for d in dead)
    assert dead[0].value == b"definitely not avro"
    assert runtime.tables.orders.get("o-2") is not None


async def test_a_message_of_another_flow_on_the_order_topic_is_dead_lettered(runtime, codec, sink):
    stray = ReserveStock(
        event_id="x", occurred_at=1, causation_id="x", correlation_id="x", sku="A", order_id="o-1", quantity=1,
        currency="EUR",
    )
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(stray), key=b"A")
    dead = sink.records(runtime.topics.dlq)
    assert [d.headers[DlqHeader.ERROR_CLASS] for d in dead] == [b"FlowError"]


@pytest.mark.parametrize("key", [b"o-2", None, b""], ids=["another-order", "no-key", "empty"])
async def test_a_message_keyed_otherwise_than_by_its_order_is_dead_lettered_and_changes_nothing(
    runtime, codec, sink, key
):
    """Its state would be stored in another order's partition, where nothing about its own order looks (found by
    fuzzing the topics)."""
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place("o-1", "e-1")), key=key)
        await agent.put(codec.encode(place("o-3", "e-3")), key=b"o-3")
    assert runtime.tables.orders.get("o-1") is None and runtime.tables.orders.get("o-3") is not None
    (dead,) = sink.records(runtime.topics.dlq)
    assert dead.headers[DlqHeader.ERROR_CLASS] == b"FlowError"
    assert b"PlaceOrder about order_id 'o-1' came with" in dead.headers[DlqHeader.ERROR_MESSAGE]
    assert [type(m) for m in sink.messages(runtime.topics.order_events)] == [OrderPlaced]  # o-3's alone


async def test_a_message_on_a_topic_that_is_not_its_own_is_dead_lettered_and_changes_nothing(
    runtime, codec, sink, monkeypatch
):
    """A ShipmentDelivered on the payment events had delivered an order never dispatched, an UpsertProduct on the
    inventory commands frozen its product (found by fuzzing)."""
    t = runtime.topics
    async with runtime.agents["orders"].test_context() as agent:
        monkeypatch.setattr(agent, "_get_strtopic", lambda channel: t.inventory_events)
        await agent.put(codec.encode(place("o-1", "e-1")), key=b"o-1")
        monkeypatch.setattr(agent, "_get_strtopic", lambda channel: t.order_commands)
        await agent.put(codec.encode(place("o-2", "e-2")), key=b"o-2")
    assert runtime.tables.orders.get("o-1") is None and runtime.tables.orders.get("o-2") is not None
    (dead,) = sink.records(t.dlq)
    assert dead.headers[DlqHeader.SOURCE_TOPIC] == t.inventory_events.encode()
    assert dead.headers[DlqHeader.ERROR_MESSAGE] == (
        f"PlaceOrder belongs on {t.order_commands}, not on {t.inventory_events}".encode())


async def test_a_record_replayed_for_another_flow_is_left_to_that_flow(runtime, codec, sink, monkeypatch):
    # (A test context's records come from no topic: as if from one the notifications flow reads too.)
    monkeypatch.setattr(runtime, "flows_reading", lambda topic: frozenset({"orders", "notifications"}))
    replayed = [(DlqHeader.REPLAY_FLOW, b"notifications.webhook"), (DlqHeader.REPLAY_OF, b"0:4")]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1", headers=replayed)
    assert runtime.tables.orders.get("o-1") is None
    assert sink.sent == []


@pytest.mark.parametrize("replay_for", [b"payments", b"nobody", b"\xff\xff", b""])
async def test_a_record_replayed_for_no_flow_reading_its_topic_is_dead_lettered_not_dropped(
    runtime, codec, sink, monkeypatch, replay_for
):
    """Every flow left it to another, and it was gone: not handled, not dead-lettered (found by fuzzing)."""
    monkeypatch.setattr(runtime, "flows_reading", lambda topic: frozenset({"orders", "notifications"}))
    replayed = [(DlqHeader.REPLAY_FLOW, replay_for), (DlqHeader.REPLAY_OF, b"0:4")]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1", headers=replayed)
        await agent.put(codec.encode(place("o-2", "e-2")), key=b"o-2")  # and the next one is handled
    assert runtime.tables.orders.get("o-1") is None
    (dead,) = sink.records(runtime.topics.dlq)
    assert dead.key == b"o-1" and dead.headers[DlqHeader.ERROR_CLASS] == b"FlowError"
    assert b"no flow reading" in dead.headers[DlqHeader.ERROR_MESSAGE]
    assert runtime.tables.orders.get("o-2") is not None


def test_the_flows_reading_a_topic_are_the_agents_consuming_it(runtime):
    t = runtime.topics
    assert runtime.flows_reading(t.order_events) == {"analytics", "notifications", "shipping"}
    assert runtime.flows_reading(t.inventory_events) == {"orders"}
    assert runtime.flows_reading(t.payment_commands) == {"payments"}
    assert runtime.flows_reading(t.catalog_commands) == {"inventory"}
    assert runtime.flows_reading("commerce.nothing") == frozenset()


def test_every_flow_a_dead_letter_can_be_replayed_for_is_an_agent(runtime):
    assert set(runtime.agents) >= FLOWS
    assert set(runtime.agents) - FLOWS == {"retention", "timeouts"}  # timers: they consume no record


async def test_a_record_replayed_for_this_flow_is_handled_like_any_other(runtime, codec, sink):
    replayed = [(DlqHeader.REPLAY_FLOW, b"orders"), (DlqHeader.REPLAY_OF, b"0:4")]
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1", headers=replayed)
    order = runtime.tables.orders.get("o-1")
    assert order is not None and order.status == "PENDING"
    assert [type(m) for m in sink.messages(runtime.topics.order_events)] == [OrderPlaced]


class FlakySink:
    """A sink whose first ``failures`` sends raise, as a stopping producer or a rebalance might."""

    def __init__(self, inner, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def send(self, topic, key, value, headers):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("producer is stopping")
        await self.inner.send(topic, key, value, headers)


async def test_a_failure_that_is_not_the_messages_fault_is_retried_instead_of_dead_lettered(
    codec, sink, tmp_path, monkeypatch
):
    import agents.runtime as rt

    monkeypatch.setattr(rt, "HANDLER_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    runtime = build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://",
                            sink=FlakySink(sink, failures=2))
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1")
    assert sink.records(runtime.topics.dlq) == []
    assert [type(m) for m in sink.messages(runtime.topics.order_events)] == [OrderPlaced]
    order = runtime.tables.orders.get("o-1")
    assert order is not None and len(order.history) == 1


async def test_a_failure_that_persists_is_dead_lettered_after_the_retries(codec, sink, tmp_path, monkeypatch):
    import agents.runtime as rt

    monkeypatch.setattr(rt, "HANDLER_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    runtime = build_runtime(Settings(home=tmp_path, partitions=4), codec, store="memory://",
                            sink=FlakySink(sink, failures=4))
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place()), key=b"o-1")
    (dead,) = sink.records(runtime.topics.dlq)
    assert dead.headers[DlqHeader.ERROR_CLASS] == b"RuntimeError"


async def test_a_cancel_that_raced_past_the_apis_check_is_refused_and_the_order_says_why(runtime, codec, sink):
    """The API answered 202 (the order was CONFIRMED when it looked); the dispatch reached the orders flow first.
    Nothing is cancelled or refunded, nothing is dead-lettered, and the order's history says why."""
    from schemas.messages import (
        CancelOrder,
        PaymentAuthorized,
        ShipmentCreated,
        ShipmentDispatched,
        StockReserved,
    )
    from streamcart.domain.orders import CANCEL_REFUSED, CANNOT_CANCEL_AFTER_DISPATCH
    from tests.unit.domain.domain_builders import make

    saga = [
        place(),
        make(StockReserved, order_id="o-1", sku="A", quantity=2, unit_price_cents=500, currency="EUR"),
        make(PaymentAuthorized, order_id="o-1", amount_cents=1_000, currency="EUR", authorization_id="auth-1"),
        make(ShipmentCreated, order_id="o-1", tracking_id="trk-1", carrier="post"),
        make(ShipmentDispatched, order_id="o-1", tracking_id="trk-1"),
    ]
    late = make(CancelOrder, order_id="o-1", requested_by="c-1", event_id="late-click")
    async with runtime.agents["orders"].test_context() as agent:
        for message in saga:  # each written within the order's deadline (placed at 1 s: until 31 s)
            await agent.put(codec.encode(message), key=b"o-1", timestamp=2.0)
        saga_topics = (runtime.topics.order_events, runtime.topics.inventory_commands,
                       runtime.topics.payment_commands, runtime.topics.shipping_commands)
        before = [len(sink.messages(topic)) for topic in saga_topics]
        await agent.put(codec.encode(late), key=b"o-1")
        await agent.put(codec.encode(late), key=b"o-1")  # redelivered
    order = runtime.tables.orders.get("o-1")
    assert order is not None and order.status == "SHIPPED"
    refusals = [h for h in order.history if h.event == CANCEL_REFUSED]
    assert [(h.detail, h.event_id) for h in refusals] == [(CANNOT_CANCEL_AFTER_DISPATCH, "late-click")]
    assert not sink.records(runtime.topics.dlq)
    assert [len(sink.messages(topic)) for topic in saga_topics] == before  # no refund, restock or cancellation
