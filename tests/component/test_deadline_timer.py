"""The deadline timer never expires an order while an answer written before its deadline may still wait for the
orders flow (found by a live hunt: after a worker's partitions moved under load, the new owner's timer expired
orders whose PaymentAuthorized had been written 20 s before their deadline, and the orders flow handled the fresh
ExpireOrder before those older answers, which it then voided or released as late ones)."""

import inspect
from types import SimpleNamespace

import pytest
from faust.types import TP

from agents import timeouts
from agents.app import build_runtime
from agents.runtime import HandledUpTo
from agents.timeouts import LANDING_GRACE_MS, answered_until
from schemas.messages import ExpireOrder, OrderLine, PlaceOrder
from streamcart.partitioning import partition_for
from streamcart.settings import Settings
from streamcart.topics import Topics

PARTITIONS = 4
TIMEOUT_MS = 30_000


@pytest.fixture
def runtime(codec, sink, tmp_path):
    return build_runtime(Settings(home=tmp_path, partitions=PARTITIONS, saga_timeout_s=TIMEOUT_MS / 1000), codec,
                         store="memory://", sink=sink)


def place(order_id: str, at: int) -> PlaceOrder:
    return PlaceOrder(
        event_id=f"p-{order_id}", occurred_at=at, causation_id="x", correlation_id=order_id, order_id=order_id,
        customer_id="c-1", lines=(OrderLine(sku="A", quantity=1),), currency="EUR", payment_token="tok_approve",
    )


class Consumer:
    """What the timer asks of faust's consumer: each partition's end and committed offset."""

    def __init__(self) -> None:
        self.ends: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int] = {}

    def highwater(self, tp: TP) -> int | None:
        if tp not in self.ends:
            raise AssertionError("Partition is not assigned")
        return self.ends[tp]


async def placed(runtime, codec, order_id: str, at: int) -> int:
    """Place ``order_id`` through the orders flow at ``at``; its partition."""
    partition = partition_for(order_id, PARTITIONS)
    async with runtime.agents["orders"].test_context() as agent:
        await agent.put(codec.encode(place(order_id, at)), key=order_id.encode(), partition=partition)
    return partition


def owning(runtime, monkeypatch, actives: set[TP]) -> Consumer:
    """The worker holds ``actives``; the returned consumer says where each partition ends and is committed."""
    consumer = Consumer()
    monkeypatch.setattr(runtime.app, "_consumer", consumer, raising=False)
    monkeypatch.setattr(type(runtime.app), "consumer", property(lambda app: app._consumer))
    monkeypatch.setattr(runtime.app.assignor, "assigned_actives", lambda: actives)
    return consumer


def expiries(runtime, sink) -> list[ExpireOrder]:
    return [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, ExpireOrder)]


def test_answered_until_is_the_newest_answer_handled_where_one_may_still_wait():
    topics = Topics("commerce.")
    handled = HandledUpTo()
    consumer = Consumer()
    runtime = SimpleNamespace(topics=topics, orders_handled=handled, app=SimpleNamespace(consumer=consumer))
    inventory, payments = TP(topics.inventory_events, 3), TP(topics.payment_events, 3)

    # Nothing fetched nor handled yet (just assigned, or still recovering): nothing is known, no order may expire.
    assert answered_until(runtime, 3) == float("-inf")  # type: ignore[arg-type]
    # Every answer up to the end of both topics handled and committed: no limit.
    consumer.ends.update({inventory: 10, payments: 7})
    consumer._committed_offset.update({inventory: 10, payments: 7})
    assert answered_until(runtime, 3) == float("inf")  # type: ignore[arg-type]
    # A payment answer not handled yet: only as far as the newest one the flow handled there.
    consumer.ends[payments] = 8
    assert answered_until(runtime, 3) == float("-inf")  # type: ignore[arg-type]
    handled.note(topics.payment_events, 3, 40_000)
    handled.note(topics.payment_events, 3, 39_000)  # an older timestamp changes nothing
    assert answered_until(runtime, 3) == 40_000  # type: ignore[arg-type]
    # Both behind: the lesser.
    consumer.ends[inventory] = 11
    handled.note(topics.inventory_events, 3, 35_000)
    assert answered_until(runtime, 3) == 35_000  # type: ignore[arg-type]
    # Another partition's notes say nothing about this one.
    handled.note(topics.inventory_events, 2, 99_000)
    assert answered_until(runtime, 3) == 35_000  # type: ignore[arg-type]


async def test_no_order_expires_while_an_answer_written_before_its_deadline_may_wait(runtime, codec, sink,
                                                                                      monkeypatch):
    order_id = "o-late"
    placed_at = 1_000
    partition = await placed(runtime, codec, order_id, placed_at)
    order = runtime.tables.orders.get(order_id)
    assert order is not None and order.status == "PENDING" and order.deadline == placed_at + TIMEOUT_MS

    t = runtime.topics
    inventory, payments = TP(t.inventory_events, partition), TP(t.payment_events, partition)
    consumer = owning(runtime, monkeypatch, {TP(t.order_commands, partition), inventory, payments})
    consumer.ends.update({inventory: 4, payments: 3})
    consumer._committed_offset.update({inventory: 4, payments: 2})  # one payment answer not handled yet
    tick = inspect.unwrap(runtime.agents["timeouts"])  # one run of the timer (wall clock: far past the deadline)

    await tick()
    assert expiries(runtime, sink) == []  # the waiting answer may be this order's PaymentAuthorized, written in time
    runtime.orders_handled.note(t.payment_events, partition, order.deadline - 1)
    await tick()
    assert expiries(runtime, sink) == []  # handled up to just before the deadline: one written in time may still follow
    runtime.orders_handled.note(t.payment_events, partition, order.deadline)
    await tick()
    assert [(m.order_id, m.deadline) for m in expiries(runtime, sink)] == [(order_id, order.deadline)]


async def test_an_order_with_nothing_left_to_answer_it_expires_at_once(runtime, codec, sink, monkeypatch):
    partition = await placed(runtime, codec, "o-quiet", 1_000)
    t = runtime.topics
    consumer = owning(runtime, monkeypatch, {TP(t.order_commands, partition)})
    consumer.ends.update({TP(t.inventory_events, partition): 0, TP(t.payment_events, partition): 5})
    consumer._committed_offset.update({TP(t.payment_events, partition): 5})
    await inspect.unwrap(runtime.agents["timeouts"])()
    assert [m.order_id for m in expiries(runtime, sink)] == ["o-quiet"]


async def test_an_order_expires_only_once_an_answer_stamped_before_its_deadline_has_had_time_to_land(
        runtime, codec, sink, monkeypatch):
    """Both answer topics look handled to their end, but an answer stamped just before the deadline may still be on
    its way (in a produce request, or past the worker's last fetch): the timer gives it LANDING_GRACE_MS."""
    partition = await placed(runtime, codec, "o-landing", 1_000)
    deadline = 1_000 + TIMEOUT_MS
    t = runtime.topics
    consumer = owning(runtime, monkeypatch, {TP(t.order_commands, partition)})
    consumer.ends.update({TP(t.inventory_events, partition): 0, TP(t.payment_events, partition): 0})
    tick = inspect.unwrap(runtime.agents["timeouts"])

    monkeypatch.setattr(timeouts.time, "time", lambda: (deadline + LANDING_GRACE_MS - 1) / 1000)
    await tick()
    assert expiries(runtime, sink) == []
    monkeypatch.setattr(timeouts.time, "time", lambda: (deadline + LANDING_GRACE_MS) / 1000)
    await tick()
    assert [m.order_id for m in expiries(runtime, sink)] == ["o-landing"]


async def test_the_orders_flow_notes_each_record_it_handled_and_a_rebalance_forgets_the_notes(runtime, codec,
                                                                                              monkeypatch):
    """Without the notes every expiry waits while anything is uncommitted (nearly always, under load); with notes
    from before a partition moved away and back, an answer handled then would count for its records to come."""
    noted: list[tuple[int, int | None]] = []
    monkeypatch.setattr(runtime.orders_handled, "note",
                        lambda topic, partition, written_ms: noted.append((partition, written_ms)))
    partition = await placed(runtime, codec, "o-noted", 1_000)
    assert [p for p, _written in noted] == [partition] and noted[0][1] is not None

    handled = HandledUpTo()
    handled.note("commerce.events.payments", 3, 40_000)
    handled.forget()
    assert handled.newest("commerce.events.payments", 3) is None
    assert runtime.orders_handled.forget in runtime.app.rebalance_ended
