"""Settled orders are forgotten by the workers' tables once their retention runs out, and kept by the warehouse.

The workers are restarted keeping settled orders (and Idempotency-Keys) for :data:`RETENTION_S` seconds instead
of a week, and restarted as they were after this module."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamcart.ids import new_id
from streamcart.partitioning import partition_for
from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.topics import changelog_topic
from tests.integration.support import headers_of, http_json, poll, read_topic, worker_metric
from tests.integration.test_saga import Shop

RETENTION_S = 15.0


@pytest.fixture(scope="module")
def brief(stack: Stack, settings: Settings) -> Iterator[Stack]:
    """The stack with its workers keeping settled orders :data:`RETENTION_S` for this module."""
    brief = Stack(settings.model_copy(update={"order_retention_s": RETENTION_S, "idempotency_ttl_s": RETENTION_S}),
                  echo=print)
    workers = [name for name in stack.names if name.startswith("worker")]
    try:
        for name in workers:
            brief.restart(name)
        yield brief
    finally:
        for name in workers:
            stack.restart(name)


@pytest.fixture(scope="module")
def shop(brief: Stack, settings: Settings, codec: Any) -> Shop:
    return Shop(settings, codec)


def forgotten_by(settings: Settings, worker: int) -> float:
    """``streamcart_orders_forgotten_total`` of one worker (since its start)."""
    with urllib.request.urlopen(f"{settings.worker_url(worker)}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "streamcart_orders_forgotten_total")


def latest(records: list[Any]) -> dict[bytes, bytes | None]:
    """Each key's latest value in a changelog (``None``: deleted)."""
    return {msg.key(): msg.value() for msg in records}


def tombstoned(records: list[Any], *keys: str) -> bool:
    """Whether each of ``keys`` has been deleted (its latest record in the changelog is a tombstone)."""
    values = latest(records)
    return all(key.encode() in values and values[key.encode()] is None for key in keys)


def indexed(records: list[Any], order_id: str) -> dict[bytes, bytes | None]:
    """The retention index's entries for ``order_id`` (keys ``{time}/{order_id}``), latest value each."""
    return {k: v for k, v in latest(records).items() if k.endswith(f"/{order_id}".encode())}


def test_settled_orders_are_forgotten_by_the_tables_and_kept_by_the_warehouse_while_a_live_one_stays(
    shop: Shop, settings: Settings
):
    item = f"RT-{new_id()[:8]}"
    shop.product(item, price=300, stock=5)
    forgotten_before = worker_metric(settings, "streamcart_orders_forgotten_total")
    # CONFIRMED first: it may still be shipped or cancelled, so it must outlive the two settled after it.
    live = shop.place({item: 1})
    shop.confirmed(live.order_id)
    delivered = shop.place({item: 2})
    declined = shop.place({item: 1}, token="tok_decline")
    shop.confirmed(delivered.order_id)
    poll(lambda: (shop.order(delivered.order_id) or {}).get("shipment"), what="the shipment")
    shop.ship(delivered.order_id, "dispatched")
    shop.ship(delivered.order_id, "delivered")
    shop.settled(delivered.order_id, statuses={"DELIVERED"})
    assert shop.settled(declined.order_id)["cancel_reason"] == "payment_declined"

    # Gone from the API once the retention has run out after each one's last step (and nothing is left in flight).
    orders = [delivered.order_id, declined.order_id]
    for order_id in orders:
        poll(lambda o=order_id: http_json(f"{settings.worker_url(0)}/v1/orders/{o}", shop.token)[0] == 404,
             timeout_s=RETENTION_S + 45, every_s=0.5, what=f"order {order_id} to be forgotten")
    assert worker_metric(settings, "streamcart_orders_forgotten_total") >= forgotten_before + 2

    # Deleted from every table that kept them, in their changelogs too (so a recovering worker forgets them).
    for table, keys in {
        "orders": orders,
        "payments": orders,
        "shipments": [delivered.order_id],
        "stock": [f"{item}/{order_id}" for order_id in orders],  # their reservations
    }.items():
        read_topic(settings, changelog_topic(settings.app_id, table), until=lambda r, k=keys: tombstoned(r, *k))
    index = read_topic(settings, changelog_topic(settings.app_id, "retention"),
                       until=lambda r: all(indexed(r, o) and all(v is None for v in indexed(r, o).values())
                                           for o in orders))
    # The live order was never in the index, and is still there.
    assert indexed(index, live.order_id) == {}
    assert (shop.order(live.order_id) or {}).get("status") == "CONFIRMED"

    # The stock is as the orders left it: sales of 1 (live) and 2, the declined line released.
    stock = shop.quiet_stock(item)
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (2, 0, 2)
    # The warehouse still has the forgotten orders, as they ended.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        rows = poll(lambda: len(found := conn.execute(
            "select order_id, status from orders where order_id = any(%s)", (orders,)).fetchall()) == 2 and found,
            what="both orders in the warehouse")
    assert dict(rows) == {delivered.order_id: "DELIVERED", declined.order_id: "CANCELLED"}

    # Its PlaceOrder produced again (offsets reset, a record copied back) is older than the retention: it may be
    # about a forgotten order, as it is here, and is dead-lettered; nothing comes back, the stock stays as it was.
    shop.send(delivered)

    def refused(records: list[Any]) -> bool:
        return any(r.key() == delivered.order_id.encode() and b"older than the order retention"
                   in headers_of(r).get("dlq.error.message", b"") for r in records)

    read_topic(settings, shop.topics.dlq, until=refused)
    assert http_json(f"{settings.worker_url(0)}/v1/orders/{delivered.order_id}", shop.token)[0] == 404
    stock = shop.quiet_stock(item)
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (2, 0, 2)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        (status,) = conn.execute("select status from orders where order_id = %s", (delivered.order_id,)).fetchone()
    assert status == "DELIVERED"


def test_a_worker_killed_while_it_forgets_orders_leaves_nothing_behind(shop: Shop, brief: Stack, settings: Settings):
    item = f"RT-{new_id()[:8]}"
    shop.product(item, price=100, stock=1_000)
    # Declined orders, placed over ~10 s so that their retention runs out over ~10 s too: worker-0 is killed while
    # it forgets its share, in either step (a ForgetOrder's deletes and sends, or a DropOrder).
    orders = []
    for _ in range(20):
        for _ in range(15):
            order = shop.place_order({item: 1}, token="tok_decline")
            shop.send_later(order)
            orders.append(order.order_id)
        shop.flush()
        time.sleep(0.5)  # spreads the orders over time (load shaping; nothing waits on it)
    for order_id in orders:
        shop.settled(order_id, timeout_s=60)
    poll(lambda: forgotten_by(settings, 0) >= 20, timeout_s=RETENTION_S + 60, every_s=0.1,
         what="worker-0 to have forgotten some orders")
    owned = set(http_json(f"{settings.worker_url(0)}/readyz")[1]["assigned"])
    at_kill = forgotten_by(settings, 0)
    brief.kill("worker-0")
    share = sum(1 for order_id in orders if partition_for(order_id, settings.partitions) in owned)
    print(f"worker-0 killed after forgetting {at_kill:.0f} of its {share} orders")
    assert at_kill < share, "the kill came after worker-0 had forgotten its share: it interrupted nothing"
    brief.start("worker-0")

    for order_id in orders:
        poll(lambda o=order_id: http_json(f"{settings.worker_url(0)}/v1/orders/{o}", shop.token)[0] == 404,
             timeout_s=RETENTION_S + 60, every_s=0.5, what=f"order {order_id} to be forgotten")
    for table, keys in {
        "orders": orders,
        "payments": orders,
        "stock": [f"{item}/{order_id}" for order_id in orders],
    }.items():
        read_topic(settings, changelog_topic(settings.app_id, table), until=lambda r, k=keys: tombstoned(r, *k),
                   timeout_s=60)
    read_topic(settings, changelog_topic(settings.app_id, "retention"),
               until=lambda r: all(indexed(r, o) and all(v is None for v in indexed(r, o).values()) for o in orders),
               timeout_s=60)
    stock = shop.quiet_stock(item)
    assert (stock["on_hand"], stock["reserved"]) == (1_000, 0)
