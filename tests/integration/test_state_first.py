"""On the real stack, what the orders, inventory and payments flows announce reaches Kafka only after the changelog
record of the state that decided it (agents/state_first.py).

The first two read several topics, so a restart may deliver their messages in another order and decide them anew;
payments decides on the gateway's answer, which may differ when a message comes again. Either way an event already
out whose state a restart would not find could be contradicted. Record timestamps are taken when the
worker hands a record to its Kafka client, so an event whose timestamp is older than the changelog record of its
state went out first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from schemas.codec import Codec
from schemas.messages import (
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentAuthorized,
    PaymentDeclined,
    StockReserved,
)
from streamcart.settings import Settings
from streamcart.topics import Topics, changelog_topic
from tests.integration.support import read_topic
from tests.integration.test_saga import Shop, shop, sku  # noqa: F401 (fixture)

#: The order status each orders event announces.
ANNOUNCES = {OrderPlaced: "PENDING", OrderConfirmed: "CONFIRMED", OrderCancelled: "CANCELLED"}


def earliest(records: list[Any], key_of: Callable[[bytes, dict], tuple[str, str] | None]) -> dict[tuple[str, str], int]:
    """The timestamp of the first changelog record of each (key, status) ``key_of`` picks out."""
    first: dict[tuple[str, str], int] = {}
    for msg in records:
        if msg.value() is None:
            continue
        picked = key_of(msg.key(), json.loads(msg.value()))
        if picked is not None:
            first[picked] = min(first.get(picked, msg.timestamp()[1]), msg.timestamp()[1])
    return first


def test_every_order_event_stock_reservation_and_authorization_leaves_after_the_state_that_decided_it(
    shop: Shop, settings: Settings, codec: Codec  # noqa: F811
):
    items = [sku() for _ in range(4)]
    for item in items:
        shop.product(item, price=300, stock=1_000)
    orders = [
        shop.place_order({items[i % 4]: 1, items[(i + 1) % 4]: 2}, token="tok_decline" if i % 5 == 0 else "tok_approve")
        for i in range(40)
    ]
    shop.send(*orders)  # at once: the flows handle them back to back, their writes and sends interleaved
    for order in orders:
        shop.settled(order.order_id, timeout_s=60)
    ours = {order.order_id for order in orders}
    topics = Topics.from_settings(settings)

    def announced(records: list[Any]) -> list[tuple[Any, int]]:  # (other tests leave poison in these topics)
        return [(codec.decode(msg.value()), msg.timestamp()[1]) for msg in records if msg.key().decode() in ours]

    events = announced(read_topic(settings, topics.order_events, until=lambda records: {
        e.order_id for e, _ in announced(records) if isinstance(e, OrderConfirmed | OrderCancelled)} == ours))
    states = earliest(
        read_topic(settings, changelog_topic(settings.app_id, "orders"), until=lambda records: {
            json.loads(m.value())["order_id"] for m in records
            if m.value() is not None and json.loads(m.value())["status"] in {"CONFIRMED", "CANCELLED"}} >= ours),
        lambda key, state: (state["order_id"], state["status"]) if state["order_id"] in ours else None,
    )
    compared = 0
    for event, at in events:
        if type(event) in ANNOUNCES:
            stored_at = states[(event.order_id, ANNOUNCES[type(event)])]
            assert stored_at <= at, f"{event!r} left {stored_at - at} ms before its state"
            compared += 1
    assert compared >= 2 * len(orders)  # placed, then confirmed or cancelled

    def reservations_announced(records: list[Any]) -> list[tuple[Any, int]]:
        return [(event, at) for event, at in announced(records) if isinstance(event, StockReserved)]

    reserved = reservations_announced(read_topic(
        settings, topics.inventory_events, until=lambda records: len(reservations_announced(records)) >= 2 * len(orders)
    ))

    def reservation(key: bytes, value: dict) -> tuple[str, str] | None:
        return (key.decode(), "reserved") if b"/" in key and value.get("status") == "reserved" else None

    needed = {(f"{event.sku}/{event.order_id}", "reserved") for event, _ in reserved}
    reservations = earliest(read_topic(settings, changelog_topic(settings.app_id, "stock"), until=lambda records: (
        needed <= earliest(records, reservation).keys())), reservation)
    for event, at in reserved:
        stored_at = reservations[(f"{event.sku}/{event.order_id}", "reserved")]
        assert stored_at <= at, f"{event!r} left {stored_at - at} ms before its state"

    def authorizations_announced(records: list[Any]) -> list[tuple[Any, int]]:
        return [(e, at) for e, at in announced(records) if isinstance(e, PaymentAuthorized | PaymentDeclined)]

    authorized = authorizations_announced(read_topic(
        settings, topics.payment_events, until=lambda records: len(authorizations_announced(records)) >= len(orders)
    ))

    def authorization(key: bytes, value: dict) -> tuple[str, str] | None:
        return (key.decode(), "authorization") if value.get("authorization") is not None else None

    payments = earliest(read_topic(settings, changelog_topic(settings.app_id, "payments"), until=lambda records: (
        {(e.order_id, "authorization") for e, _ in authorized} <= earliest(records, authorization).keys())),
        authorization)
    assert {type(event) for event, _ in authorized} == {PaymentAuthorized, PaymentDeclined}
    for event, at in authorized:
        stored_at = payments[(event.order_id, "authorization")]
        assert stored_at <= at, f"{event!r} left {stored_at - at} ms before its state"
