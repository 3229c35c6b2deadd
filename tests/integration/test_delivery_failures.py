"""A record Kafka refuses stops the worker before it commits past the message that sent it (agents/transport.py,
``Deliveries``), and once the cause is fixed and the worker restarted, nothing is lost.

Before, such a record was only logged and the next offset commit went past its message: the order's warehouse row
(or a table write, or an event) was gone for good. Kafka refuses a record for real here: the warehouse ``orders``
topic is made to accept no batch over :data:`REFUSED_OVER` bytes, and only this test's order has a row that big.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.topics import Topics
from tests.integration.support import poll, produce, wait_until_worker_0_owns_every_partition
from tests.integration.test_saga import Shop, sku
from tests.integration.test_warehouse import differences, shop  # noqa: F401 (fixtures)

#: The warehouse ``orders`` topic's limit during the test. Other orders' rows still go through, so whatever the
#: earlier tests left in flight does not trip it: the producer batches at most 16 KB of small records
#: (``producer_max_batch_size``), and a record bigger than that goes alone.
REFUSED_OVER = 32_768


def set_max_message_bytes(settings: Settings, topic: str, limit: int | None) -> None:
    """Set (or, with ``None``, remove) the topic's ``max.message.bytes``, and wait until the broker reports it."""
    operation = AlterConfigOpType.SET if limit is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", str(limit) if limit is not None else None,
                        incremental_operation=operation)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

    def applied() -> bool:
        (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        value = described.result(timeout=30)["max.message.bytes"]
        # A limit removed leaves the broker's own, whatever it is.
        return value.value == str(limit) if limit is not None else value.source != ConfigSource.DYNAMIC_TOPIC_CONFIG

    poll(applied, timeout_s=30, every_s=0.2, what=f"the broker to report {topic}'s max.message.bytes")


def committed_offset(settings: Settings, topic: str, partition: int) -> int:
    """The workers' group's committed offset on the partition (-1001 when nothing was committed)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.app_id})
    try:
        (found,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return int(found.offset)
    finally:
        consumer.close()


def test_a_record_kafka_refuses_stops_the_worker_before_its_message_is_committed_and_nothing_is_lost(
    shop: Shop, stack: Stack, settings: Settings, warehouse: psycopg.Connection  # noqa: F811
):
    topics = Topics.from_settings(settings)
    item = sku()
    shop.product(item, price=700, stock=5)
    # Its customer id makes its warehouse row the only one Kafka refuses.
    order = shop.place_order({item: 2}).model_copy(update={"customer_id": "c-" + "x" * 2 * REFUSED_OVER})
    log_start = stack.log_path("worker-0").stat().st_size
    try:
        # One worker holds every partition, so exactly one worker meets the refused record.
        stack.stop("worker-1")
        wait_until_worker_0_owns_every_partition(settings)
        set_max_message_bytes(settings, topics.warehouse["orders"], REFUSED_OVER)
        partition, offset = produce(shop.producer, topics.order_commands, order.key.encode(),
                                    shop.codec.encode(order))
        # The PlaceOrder's handling sends the order's warehouse row: Kafka refuses it, and the worker stops.
        poll(lambda: not stack.is_running("worker-0"), timeout_s=60, what="worker-0 to stop")
        with stack.log_path("worker-0").open("rb") as log_file:
            log = log_file.read()[log_start:].decode(errors="replace")
        refusals = [line for line in log.splitlines() if "Kafka did not take a record" in line]
        assert refusals and order.order_id in refusals[0]  # the refused record was this order's, not another's
        assert "MessageSizeTooLargeError" in refusals[0]
        assert committed_offset(settings, topics.order_commands, partition) <= offset  # not committed past it
    finally:
        set_max_message_bytes(settings, topics.warehouse["orders"], None)
        for worker in ("worker-0", "worker-1"):
            if not stack.is_running(worker):
                stack.start(worker)

    # The restarted worker handles the PlaceOrder again: the order settles and its row reaches the warehouse.
    # Confirmed, as a rule; on a loaded machine the two restarts can outlast the test stack's 15 s deadline, and then
    # it is cancelled by it with its stock released and its authorization voided. Either way each effect once.
    settled = shop.settled(order.order_id, timeout_s=120)
    poll(lambda: not differences(shop, warehouse, order.order_id), timeout_s=60, every_s=0.5,
         what="the order's warehouse rows to equal the API's view")
    stock = shop.quiet_stock(item)
    if settled["status"] == "CONFIRMED":
        assert (stock["on_hand"], stock["sold"]) == (3, 2)  # sold once, though the order was handled twice
        auth = poll(lambda: shop.gateway_ledger().get(order.order_id), what="the authorization")
        assert auth["amount_cents"] == 2 * 700
    else:
        assert (settled["status"], settled["cancel_reason"]) == ("CANCELLED", "timeout"), settled
        assert (stock["on_hand"], stock["sold"]) == (5, 0)  # reserved once at most, released
        auth = shop.gateway_ledger().get(order.order_id)
        assert auth is None or poll(lambda: shop.gateway_ledger()[order.order_id]["status"] in ("voided", "declined"),
                                    what="the late authorization voided")
