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
import subprocess
import time
from collections.abc import Callable
from typing import Any

import faust
from confluent_kafka import Consumer, TopicPartition

from schemas.codec import Codec
from schemas.messages import (
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentAuthorized,
    PaymentDeclined,
    StockReserved,
)
from streamcart.ids import new_id
from streamcart.partitioning import partition_for
from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.stack.layout import java_executable
from streamcart.topics import Topics, changelog_topic
from tests.integration.support import http_json, read_topic
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


# --- what the API answers is in the changelog already ----------------------------------------------------------------

def _throttle_workers_producers(settings: Settings, bytes_per_s: int | None) -> None:
    """Give the workers' Kafka client a produce quota (``None``: take it away), with Kafka's own tool: Kafka then
    holds back the acknowledgement of what they write, changelog records included, by seconds. The API's commands go
    through another client, and are not held."""
    config = ["--add-config", f"producer_byte_rate={bytes_per_s}"] if bytes_per_s else ["--delete-config",
                                                                                          "producer_byte_rate"]
    command = [str(java_executable()), "-cp", f"{Stack(settings).artifacts.kafka_libs}/*", "kafka.admin.ConfigCommand",
               "--bootstrap-server", settings.bootstrap_servers, "--alter", *config,
               "--entity-type", "clients", "--entity-name", f"faust-{faust.__version__}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _stored_histories(settings: Settings, order_id: str) -> list[int]:
    """How many history entries each state of the order in the orders changelog has, reading its partition to the
    end as it is now."""
    topic = changelog_topic(settings.app_id, "orders")
    tp = TopicPartition(topic, partition_for(order_id, settings.partitions))
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"test-reader-{new_id()}",
                         "enable.auto.commit": False})
    try:
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([TopicPartition(topic, tp.partition, max(low, high - 5_000))])
        found: list[int] = []
        position = max(low, high - 5_000)
        deadline = time.monotonic() + 30
        while position < high:
            assert time.monotonic() < deadline, f"{topic}[{tp.partition}] not read to {high} in 30 s"
            for msg in consumer.consume(num_messages=500, timeout=1):
                if msg.error() is None:
                    position = msg.offset() + 1
                    if msg.value() is not None and (state := json.loads(msg.value()))["order_id"] == order_id:
                        found.append(len(state["history"]))
        return found
    finally:
        consumer.close()


def test_the_api_answers_an_order_only_as_its_changelog_holds_it(shop: Shop, settings: Settings):  # noqa: F811
    """Read from the worker's table the moment it was written, an order answered CONFIRMED could be PENDING again on
    the worker that rebuilt it from the changelog after a crash (and time out there): every state answered must be
    in the changelog already. Kafka holds the workers' writes back here, so without that wait the API answered
    states whose changelog records were still seconds away."""
    item = sku()
    shop.product(item, price=300, stock=10)
    order = shop.place_order({item: 1})
    answered: list[tuple[int, list[int]]] = []  # (history entries answered, those in the changelog just after)
    _throttle_workers_producers(settings, 1024)
    try:
        shop.send(order)
        deadline = time.monotonic() + 90
        status = None
        while status not in ("CONFIRMED", "CANCELLED") and time.monotonic() < deadline:
            code, body = http_json(f"{settings.worker_url(0)}/v1/orders/{order.order_id}", shop.token)
            if code == 200:
                answered.append((len(body["history"]), _stored_histories(settings, order.order_id)))
                status = body["status"]
            else:
                assert code in (404, 503), body  # not stored by the orders flow yet; not in Kafka yet
                time.sleep(0.2)
    finally:
        _throttle_workers_producers(settings, None)
    # Settled either way: Kafka's hold may outlast the order's deadline, and a timeout is as good an outcome here.
    assert status in ("CONFIRMED", "CANCELLED"), answered
    for entries, stored in answered:
        assert stored and max(stored) >= entries, f"answered {entries} history entries, the changelog had {stored}"
    assert len({entries for entries, _ in answered}) >= 2  # it was read as the saga went, not only at its end
