"""The notifications agent through faust's test_context, with hand-written providers: what was delivered is noted in
the ``notified`` table, a redelivered event notifies nobody again, and the notes go with the order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agents import notifications as notifications_flow
from agents.app import build_runtime
from schemas.messages import (
    DropOrder,
    NotificationFailed,
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    PlaceOrder,
    PricedLine,
    StockRejected,
)
from streamcart.dead_letters import DlqHeader
from streamcart.domain import retention
from streamcart.domain.notifications import Channel, Notification
from streamcart.notify.delivery import DeliveryRefused
from streamcart.settings import Settings

DAY_S = 24 * 3600


class Provider:
    """Records the idempotency key of each notification it delivers; while ``down``, refuses (a give-up at once)."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.down = False
        self.forced: list[bool] = []  # per attempt: whether it was to be made even to a channel given up on

    async def deliver(self, notification: Notification, *, even_if_failing: bool = False) -> None:
        self.forced.append(even_if_failing)
        if self.down:
            raise DeliveryRefused(f"{notification.channel} provider down")
        self.delivered.append(notification.idempotency_key)


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Provider]:
    made = {channel: Provider() for channel in (Channel.WEBHOOK, Channel.EMAIL, Channel.SMS)}
    monkeypatch.setattr(notifications_flow, "default_providers", lambda outbox, allow_private: made)
    return made


@pytest.fixture
def runtime(codec, sink, tmp_path, providers):
    settings = Settings(home=tmp_path, partitions=4, order_retention_s=DAY_S)
    return build_runtime(settings, codec, store="memory://", sink=sink)


def envelope(event_id: str, at: int = 1_000) -> dict[str, Any]:
    return {"event_id": event_id, "occurred_at": at, "causation_id": event_id, "correlation_id": "o-1"}


PLACE = PlaceOrder(**envelope("place-1"), order_id="o-1", customer_id="c-1", lines=(OrderLine(sku="A", quantity=1),),
                   currency="EUR", payment_token="tok_approve", webhook_url="https://shop.example/hook",
                   email="ann@example.com")
CONFIRMED = OrderConfirmed(**envelope("confirmed-1", 2_000), order_id="o-1", customer_id="c-1",
                           lines=(PricedLine(sku="A", quantity=1, unit_price_cents=500),), total_cents=500,
                           currency="EUR", authorization_id="auth-1")


async def orders_flow(runtime, codec, *messages) -> None:
    async with runtime.agents["orders"].test_context() as agent:
        for message in messages:
            await agent.put(codec.encode(message), key=b"o-1")


async def notify(runtime, codec, sink, event, *, outcomes: int, headers=None) -> None:
    """Hand ``event`` to the notifications agent, and wait until the flow has reported ``outcomes`` in all."""
    async with runtime.agents["notifications"].test_context() as agent:
        await agent.put(codec.encode(event), key=b"o-1", headers=headers)
        await until(lambda: len(sink.messages(runtime.topics.notification_events)) >= outcomes)
    assert len(sink.messages(runtime.topics.notification_events)) == outcomes


async def until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the flow did not get there")


def delivered(providers: dict[str, Provider]) -> dict[str, int]:
    return {channel: len(p.delivered) for channel, p in providers.items() if p.delivered}


async def test_the_same_order_confirmed_twice_notifies_the_customer_once(runtime, codec, sink, providers):
    await orders_flow(runtime, codec, PLACE)
    await notify(runtime, codec, sink, CONFIRMED, outcomes=2)
    await notify(runtime, codec, sink, CONFIRMED, outcomes=4)  # a duplicate PlaceOrder re-emitted it, same id
    assert delivered(providers) == {Channel.WEBHOOK: 1, Channel.EMAIL: 1}
    notes = runtime.tables.notified.get("o-1")
    assert notes is not None and set(notes.attempts) == {*providers[Channel.WEBHOOK].delivered,
                                                         *providers[Channel.EMAIL].delivered}
    # The redelivery reported what the first delivery did, as the same events (the duplicate rule).
    first, again = (sink.messages(runtime.topics.notification_events)[i:i + 2] for i in (0, 2))
    assert all(isinstance(m, NotificationSent) for m in first + again)
    assert sorted(m.event_id for m in first) == sorted(m.event_id for m in again)
    assert sorted(first, key=lambda m: m.event_id) == sorted(again, key=lambda m: m.event_id)


async def test_a_replayed_give_up_is_delivered_though_the_events_other_notifications_were(
    runtime, codec, sink, providers
):
    await orders_flow(runtime, codec, PLACE)
    providers[Channel.EMAIL].down = True
    await notify(runtime, codec, sink, CONFIRMED, outcomes=2)
    assert delivered(providers) == {Channel.WEBHOOK: 1}
    (letter,) = sink.records(runtime.topics.dlq)
    assert letter.headers[DlqHeader.FLOW] == b"notifications.email"
    assert [type(m) for m in sink.messages(runtime.topics.notification_events)] == [NotificationSent,
                                                                                     NotificationFailed]
    assert sink.messages(runtime.topics.notification_events)[1].attempts == 0  # refused: none made

    # The email's give-up, replayed for it once the provider is back: delivered, the webhook left alone.
    providers[Channel.EMAIL].down = False
    replay = [(DlqHeader.REPLAY_FLOW, b"notifications.email"), (DlqHeader.REPLAY_OF, b"0:0")]
    await notify(runtime, codec, sink, CONFIRMED, outcomes=3, headers=replay)
    assert delivered(providers) == {Channel.WEBHOOK: 1, Channel.EMAIL: 1}
    assert sink.messages(runtime.topics.notification_events)[-1].channel == Channel.EMAIL
    # Its first attempt is made even where this worker still gives the channel up at once (operators replay once
    # the cause is gone); the event's first delivery was not.
    assert providers[Channel.EMAIL].forced == [False, True]
    # Replayed once more, or the event redelivered whole: nobody is notified again.
    await notify(runtime, codec, sink, CONFIRMED, outcomes=4, headers=replay)
    await notify(runtime, codec, sink, CONFIRMED, outcomes=6)
    assert delivered(providers) == {Channel.WEBHOOK: 1, Channel.EMAIL: 1}
    assert len(sink.records(runtime.topics.dlq)) == 1


async def test_a_forgotten_orders_notes_are_deleted_with_it_even_when_they_come_back_between_the_steps(
    runtime, codec, sink, providers
):
    rejected = StockRejected(**envelope("rejected-1", 2_000), order_id="o-1", sku="A", quantity=1,
                             reason="out_of_stock", available=0)
    await orders_flow(runtime, codec, PLACE, rejected)
    cancelled = next(m for m in sink.messages(runtime.topics.order_events) if isinstance(m, OrderCancelled))
    await notify(runtime, codec, sink, cancelled, outcomes=2)
    assert runtime.tables.notified.get("o-1") is not None

    at = retention.forget_at(runtime.tables.orders.get("o-1"), DAY_S * 1000)
    await orders_flow(runtime, codec, retention.forget_command("o-1", at))
    assert runtime.tables.notified.get("o-1") is None  # the first step
    # The OrderCancelled delivered again before the second step: the order is still there, and so are notes again.
    await notify(runtime, codec, sink, cancelled, outcomes=4)
    assert runtime.tables.notified.get("o-1") is not None
    first = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)][-1]
    await orders_flow(runtime, codec, first)
    # They count as something come back: the first step again, and the order stays until another DropOrder.
    assert runtime.tables.notified.get("o-1") is None and runtime.tables.orders.get("o-1") is not None
    second = [m for m in sink.messages(runtime.topics.order_commands) if isinstance(m, DropOrder)][-1]
    assert second.event_id != first.event_id
    await orders_flow(runtime, codec, second)
    assert runtime.tables.orders.get("o-1") is None and runtime.tables.notified.get("o-1") is None
