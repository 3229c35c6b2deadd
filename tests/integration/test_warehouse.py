"""The warehouse on the real stack: Connect's JDBC sinks keep PostgreSQL equal to the API's view (invariant I7)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from streamcart import connectors
from streamcart.audit import ORDER_COLUMNS, TIME_COLUMNS, positions
from streamcart.commands import read_sink_letters, sink_letter_sources
from streamcart.domain.warehouse import ORDERS, SHIPMENTS
from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.stack.admin import backlogs, depths
from streamcart.topics import Topics
from tests.integration.support import headers_of, poll, produce, producer, read_topic
from tests.integration.test_saga import Shop


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def sku() -> str:
    return f"WH-{new_id()[:8]}"


def query(conn: psycopg.Connection, sql: str, *params: Any) -> list[tuple]:
    try:
        return conn.execute(sql, params).fetchall()
    except psycopg.errors.UndefinedTable:  # the sink creates its table with the first row
        return []


def order_row(conn: psycopg.Connection, order_id: str) -> dict | None:
    select = ", ".join(
        f"(extract(epoch from {c}) * 1000)::bigint" if c in TIME_COLUMNS else c for c in ORDER_COLUMNS
    )
    rows = query(conn, f"select {select} from orders where order_id = %s", order_id)
    return dict(zip(ORDER_COLUMNS, rows[0], strict=True)) if rows else None


def line_rows(conn: psycopg.Connection, order_id: str) -> list[tuple]:
    return query(conn, "select sku, quantity, unit_price_cents, status from order_lines where order_id = %s "
                       "order by sku", order_id)


def differences(shop: Shop, conn: psycopg.Connection, order_id: str) -> list[str]:
    """How the warehouse rows of ``order_id`` differ from the API's view of it (empty once equal: I7)."""
    api = shop.order(order_id)
    if api is None:
        return [f"{order_id}: the API does not know it"]
    expected = {column: value(api) for column, value in ORDER_COLUMNS.items()}
    row = order_row(conn, order_id)
    problems = [] if row == expected else [f"{order_id}: orders row {row} != API {expected}"]
    api_lines = sorted((ln["sku"], ln["quantity"], ln["unit_price_cents"], ln["status"]) for ln in api["lines"])
    if (rows := line_rows(conn, order_id)) != api_lines:
        problems.append(f"{order_id}: lines {rows} != API {api_lines}")
    return problems


def caught_up(settings: Settings) -> bool:
    """Every sink RUNNING with every task RUNNING, and nothing left to write."""
    rows = connectors.status(settings)
    return all(row.healthy and row.lag == 0 for row in rows)


def assert_equal_to_the_api(shop: Shop, conn: psycopg.Connection, order_ids: list[str], timeout_s: float = 60) -> None:
    # Caught up, and equal: no older state landed after the latest one (which would stay). The API's view may still
    # move meanwhile (a capture, a commitment, a shipment follow the outcome): equal once caught up again.
    poll(lambda: caught_up(shop.settings) and not [p for o in order_ids for p in differences(shop, conn, o)],
         timeout_s=timeout_s, every_s=0.5,
         what=f"the sinks to catch up with the warehouse equal to the API for {len(order_ids)} orders")


def test_the_sinks_are_registered_and_running_and_applying_again_changes_nothing(stack, settings):
    poll(lambda: all(row.healthy for row in connectors.status(settings)), timeout_s=60, what="every sink RUNNING")
    assert set(connectors.apply(settings).values()) == {"unchanged"}


def test_orders_of_every_outcome_land_in_the_warehouse_as_the_api_shows_them(shop: Shop, warehouse):
    item, scarce, inactive = sku(), sku(), sku()
    shop.product(item, price=1250, stock=20)
    shop.product(scarce, price=399, stock=1)
    shop.product(inactive, price=100, stock=5, active=False)
    confirmed = shop.place({item: 2, scarce: 1})
    declined = shop.place({item: 1}, token="tok_decline")
    out_of_stock = shop.place({item: 1, scarce: 5})
    unavailable = shop.place({inactive: 1})
    refunded, shipped, delivered = shop.place({item: 1}), shop.place({item: 3}), shop.place({item: 1})
    for order in (refunded, shipped, delivered):
        shop.confirmed(order.order_id)
    shop.cancel(refunded.order_id)
    for order in (shipped, delivered):
        poll(lambda o=order: (shop.order(o.order_id) or {}).get("shipment"), what="shipment created")
        shop.ship(order.order_id, "dispatched")
    shop.ship(delivered.order_id, "delivered")
    assert shop.settled(delivered.order_id, statuses={"DELIVERED"})
    assert shop.settled(shipped.order_id, statuses={"SHIPPED"})
    assert shop.settled(refunded.order_id, statuses={"CANCELLED"})
    orders = [confirmed, declined, out_of_stock, unavailable, refunded, shipped, delivered]
    for order in orders:
        shop.settled(order.order_id)

    assert_equal_to_the_api(shop, warehouse, [o.order_id for o in orders])

    statuses = dict(query(warehouse, "select order_id, status from orders where order_id = any(%s)",
                          [o.order_id for o in orders]))
    assert statuses[out_of_stock.order_id] == "CANCELLED" and statuses[delivered.order_id] == "DELIVERED"
    # The fact rows of the steps that follow an order's outcome (a capture, a release, a refund) may still be on
    # their way: each is waited for.
    def events(table: str, order_id: str) -> list[str]:
        return sorted(e for (e,) in query(warehouse, f"select event from {table} where order_id = %s", order_id))

    poll(lambda: events("payments", refunded.order_id) == ["authorized", "captured", "refunded"],
         what="the refunded order's payment rows")

    def settled_movements() -> list[tuple] | None:
        rows = query(warehouse, "select movement, sum(on_hand_delta), sum(reserved_delta) from stock_movements "
                                "where order_id = %s group by movement order by movement", out_of_stock.order_id)
        return rows if {m for m, *_ in rows} == {"rejected", "reserved", "released"} else None

    movements = poll(settled_movements, what="the out-of-stock order's stock movements")
    assert sum(r for *_, r in movements) == 0  # what was reserved was given back
    poll(lambda: events("shipments", delivered.order_id) == ["created", "delivered", "dispatched"],
         what="the delivered order's shipment rows")
    poll(lambda: events("shipments", refunded.order_id) == ["cancelled", "created"],  # stopped before it left
         what="the refunded order's shipment rows")


def test_columns_are_typed_money_in_integer_cents_and_times_with_time_zone(shop: Shop, warehouse):
    poll(lambda: query(warehouse, "select 1 from order_lines limit 1"), what="an order line in the warehouse")
    types = dict(query(warehouse, "select table_name || '.' || column_name, data_type from information_schema.columns "
                                  "where table_schema = 'public'"))
    assert types["orders.total_cents"] == "bigint"
    assert types["orders.placed_at"] == "timestamp with time zone"
    assert types["order_lines.unit_price_cents"] == "bigint"
    assert types["stock_movements.occurred_at"] == "timestamp with time zone"
    keys = query(warehouse, "select kcu.column_name from information_schema.table_constraints tc "
                            "join information_schema.key_column_usage kcu using (constraint_name, table_name) "
                            "where tc.table_name = 'order_lines' and tc.constraint_type = 'PRIMARY KEY' "
                            "order by kcu.ordinal_position")
    assert [k for (k,) in keys] == ["order_id", "sku"]


def test_a_redelivered_event_rewrites_its_rows_instead_of_adding_any(shop: Shop, warehouse, settings):
    item = sku()
    shop.product(item, price=500, stock=5)
    order = shop.place({item: 2})
    shop.settled(order.order_id)
    assert_equal_to_the_api(shop, warehouse, [order.order_id])
    counts = "select (select count(*) from payments where order_id = %s), " \
             "(select count(*) from stock_movements where order_id = %s), " \
             "(select count(*) from order_lines where order_id = %s)"
    # Authorized and captured, reserved and committed, one line: the capture and the commitment follow the
    # confirmation, so they may still be on their way.
    before = [(2, 2, 1)]
    poll(lambda: query(warehouse, counts, *[order.order_id] * 3) == before, timeout_s=60, every_s=0.5,
         what="the order's payment, stock and line rows")
    t = Topics.from_settings(settings)
    authorized = read_topic(settings, t.payment_events, until=lambda records: any(
        r.key() == order.order_id.encode() and shop.codec.decode(r.value()).__class__.__name__ == "PaymentAuthorized"
        for r in records))
    record = next(r for r in authorized if r.key() == order.order_id.encode()
                  and type(shop.codec.decode(r.value())).__name__ == "PaymentAuthorized")
    sent_before = count_records(settings, t.warehouse["payments"], order.order_id)

    produce(producer(settings), t.payment_events, record.key(), record.value())  # the very same event again

    # The orders flow sends the event's fact row again, and all of the order's rows: the same rows, rewritten.
    poll(lambda: count_records(settings, t.warehouse["payments"], order.order_id) > sent_before,
         what="the redelivered payment's row to be sent again")
    assert_equal_to_the_api(shop, warehouse, [order.order_id])
    assert query(warehouse, counts, *[order.order_id] * 3) == before


def count_records(settings: Settings, topic: str, order_id: str) -> int:
    """Records of a warehouse topic, up to its end now, whose key names ``order_id``."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"test-{new_id()}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in ends.items()])
        left = {p: high for p, (low, high) in ends.items() if high > low}
        found = 0
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                if msg.error() is not None:
                    continue
                found += json.loads(msg.key())["payload"]["order_id"] == order_id
                if msg.offset() + 1 >= left.get(msg.partition(), 0):
                    left.pop(msg.partition(), None)
        assert not left, f"{topic}: could not read to the end of partitions {sorted(left)}"
        return found
    finally:
        consumer.close()


def test_a_record_the_sink_cannot_write_goes_to_its_dead_letter_topic_and_the_sink_keeps_running(
    shop: Shop, warehouse, settings, stack: Stack
):
    t = Topics.from_settings(settings)
    item = sku()
    shop.product(item, price=250, stock=3)
    order = shop.place_order({item: 1})
    # Under the order's own key, so its real rows follow the poison on the same partition: Connect commits a
    # skipped record's offset only with a later record of its partition.
    poison_key = ORDERS.record_key({"order_id": order.order_id})
    produce(producer(settings), t.warehouse["orders"], poison_key, b"{not json")

    dead = read_topic(settings, t.warehouse_dlq, until=lambda records: any(r.key() == poison_key for r in records))
    headers = headers_of(next(r for r in dead if r.key() == poison_key))
    assert headers["__connect.errors.topic"] == t.warehouse["orders"].encode()
    assert headers["__connect.errors.connector.name"] == f"{settings.app_id}-warehouse-orders".encode()
    assert "__connect.errors.exception.class.name" in headers
    # As `streamcart dlq list --warehouse` and `status` read it.
    (letter,) = [letter for letter in read_sink_letters(settings) if letter.key == poison_key]
    assert letter.flow == f"warehouse:{settings.app_id}-warehouse-orders" and letter.order_id == order.order_id
    assert (letter.source_topic, letter.error_class) == (t.warehouse["orders"], "DataException")
    assert "caused by JsonParseException" in letter.error and letter.error.endswith("(in value_converter)")
    depth = depths(settings, [t.warehouse_dlq], since_ms=int(time.time() * 1000) - 600_000)[t.warehouse_dlq]
    assert depth.records >= depth.recent >= 1
    (kafka,) = [row for row in stack.status() if row.name == "kafka"]
    assert kafka.dead_letters is not None and set(kafka.dead_letters) == {t.dlq, t.warehouse_dlq}
    assert kafka.dead_letters[t.warehouse_dlq].recent >= 1

    shop.send(order)
    shop.settled(order.order_id)
    assert_equal_to_the_api(shop, warehouse, [order.order_id])  # the sink kept going past the poison record


def test_a_sink_whose_last_row_on_a_partition_was_dead_lettered_counts_as_caught_up(shop: Shop, settings):
    # Connect commits a sink's offset on a partition only with a row the sink wrote: with nothing after the poison,
    # the committed offset stays before it. `connectors status` and the audit count that sink caught up all the same.
    t = Topics.from_settings(settings)
    topic, sink = t.warehouse["shipments"], f"{settings.app_id}-warehouse-shipments"
    item = sku()
    shop.product(item, price=300, stock=1)
    order = shop.place_order({item: 1})
    shop.send(order)
    shop.settled(order.order_id)
    key = SHIPMENTS.record_key({"order_id": order.order_id, "event": "created"})
    rows = read_topic(settings, topic, until=lambda records: any(r.key() == key for r in records))
    partition = next(r.partition() for r in rows if r.key() == key)
    where = (f"connect-{sink}", topic, partition)

    def written() -> bool:  # the sink wrote every row of that partition, the order's shipment among them
        position, end = connectors.sink_positions(settings)[where]
        return position == end

    poll(written, timeout_s=60, what="the shipments sink to write the order's shipment")
    _, offset = produce(producer(settings), topic, key, b"{not json")  # its key: the same partition
    read_topic(settings, t.warehouse_dlq, until=lambda records: any(r.key() == key for r in records))
    assert (*where, offset) in sink_letter_sources(settings)
    poll(written, timeout_s=30, what="the shipments sink to count as past the poison")
    assert {row.name: row.lag for row in connectors.status(settings)}[sink] == 0
    assert "warehouse sinks" not in positions(settings).behind
    # Kafka's own view: the sink's committed offset is still the poison's.
    assert backlogs(settings, {where[0]: [topic]})[where] == (offset, offset + 1)


def test_connect_killed_mid_stream_and_a_sink_restarted_lose_and_double_nothing(
    shop: Shop, warehouse, stack: Stack, settings
):
    item = sku()
    shop.product(item, price=100, stock=1000)
    orders = [shop.place_order({item: 1 + i % 3}) for i in range(60)]
    for order in orders[:30]:
        shop.send_later(order)
    shop.flush()
    stack.kill("connect")
    for order in orders[30:]:
        shop.send_later(order)
    shop.flush()
    stack.start("connect")
    connectors.restart(settings, f"{settings.app_id}-warehouse-order-lines")
    ids = [o.order_id for o in orders]
    for order_id in ids:
        shop.settled(order_id, timeout_s=60)

    assert_equal_to_the_api(shop, warehouse, ids, timeout_s=120)
    lines = query(warehouse, "select count(*), count(distinct (order_id, sku)) from order_lines "
                             "where order_id = any(%s)", ids)
    assert lines == [(60, 60)]
    # Reserved and committed, once each (the primary key makes a row sent twice one row). A confirmed order's stock
    # is committed after its confirmation, so the last commitments may still be on their way to the warehouse.
    movements = "select order_id, movement from stock_movements where order_id = any(%s)"
    try:
        poll(lambda: len(query(warehouse, movements, ids)) == 120, timeout_s=60, every_s=0.5,
             what="120 stock movements (60 reservations, 60 commitments)")
    except AssertionError as timeout:  # say where the missing ones are: the saga, the topic, the sink or its DLQ
        expected = {(o, m) for o in ids for m in ("reserved", "committed")}
        missing = sorted(expected - set(query(warehouse, movements, ids)))
        first = missing[0][0] if missing else None
        raise AssertionError(
            f"{timeout}: {len(missing)} missing, e.g. {missing[:4]}; stock {shop.stock(item)}; sinks "
            f"{[(r.name, r.state, [t.state for t in r.tasks], r.lag) for r in connectors.status(settings)]}; "
            f"records of {first}: {count_records(settings, shop.topics.warehouse['stock_movements'], first)} in the "
            f"movements topic, {count_records(settings, shop.topics.warehouse_dlq, first)} in the warehouse DLQ"
        ) from None
