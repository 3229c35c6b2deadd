"""The warehouse through database failures: the sinks wait out a PostgreSQL outage, and a sink task that fails
anyway is restarted by the workers (streamcart/sink_keeper.py); either way the warehouse catches up (I7).

A module of its own: killing PostgreSQL breaks every open connection to it, such as test_warehouse's.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from streamcart import connectors
from streamcart.settings import Settings
from streamcart.stack import Stack
from tests.integration.support import poll, worker_metric
from tests.integration.test_saga import Shop
from tests.integration.test_warehouse import assert_equal_to_the_api, caught_up, query, sku

#: How long the database stays away once the sinks have records for it. With the Debezium sink's defaults (five
#: flush retries a second apart, connection errors not retried) every task failed within seconds, for good.
OUTAGE_S = 15.0


@pytest.fixture(scope="module")
def shop(stack, settings, codec) -> Shop:
    return Shop(settings, codec)


def test_postgresql_killed_mid_stream_is_waited_for_and_the_warehouse_loses_and_doubles_nothing(
    shop: Shop, stack: Stack, settings: Settings
):
    item = sku()
    shop.product(item, price=100, stock=1000)
    orders = [shop.place_order({item: 1 + i % 2}) for i in range(40)]
    for order in orders[:20]:
        shop.send_later(order)
    shop.flush()
    ids = [o.order_id for o in orders]
    for order_id in ids[:20]:
        shop.settled(order_id)
    poll(lambda: caught_up(settings), timeout_s=60, what="the sinks to write the first orders")

    stack.kill("postgres")
    try:
        for order in orders[20:]:
            shop.send_later(order)
        shop.flush()
        for order_id in ids:  # the saga does not need the warehouse
            shop.settled(order_id)
        lags: dict[str, int | None] = {}

        def every_sink_waits() -> bool:
            lags.update((row.name, row.lag) for row in connectors.status(settings))
            return all((lag or 0) > 0 for lag in lags.values())

        try:
            poll(every_sink_waits, timeout_s=30, what="every sink to have records it cannot write yet")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; lags {lags}") from None
        # The outage itself, watched: no sink task may fail while the database is away.
        ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < ends:
            failed = [(row.name, task.trace) for row in connectors.status(settings) for task in row.tasks
                      if task.state != "RUNNING"]
            assert not failed, f"sink tasks failed while PostgreSQL was away: {failed}"
            time.sleep(1.0)
    finally:
        stack.start("postgres")

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as warehouse:
        assert_equal_to_the_api(shop, warehouse, ids, timeout_s=120)
        lines = query(warehouse, "select count(*), count(distinct (order_id, sku)) from order_lines "
                                 "where order_id = any(%s)", ids)
        assert lines == [(40, 40)]
        # Once each (a row sent twice is one row); the commitments and captures follow the confirmations.
        poll(lambda: query(warehouse, "select count(*) from stock_movements where order_id = any(%s)", ids)
             == [(80,)], timeout_s=60, every_s=0.5, what="80 stock movements (40 reservations, 40 commitments)")
        poll(lambda: query(warehouse, "select event, count(*) from payments where order_id = any(%s) "
                                      "group by event order by event", ids) == [("authorized", 40), ("captured", 40)],
             timeout_s=60, every_s=0.5, what="40 authorizations and 40 captures")


def sink_restarts(settings: Settings, connector: str) -> float:
    """How many times the workers' keepers restarted ``connector``."""
    return worker_metric(settings, "streamcart_sink_restarts_total", connector=connector)


def test_a_sink_task_that_fails_is_restarted_by_the_workers_and_catches_up_once_its_cause_is_gone(
    shop: Shop, stack: Stack, settings: Settings
):
    """The Debezium sink fails a task for good on a database error it does not retry (here: a privilege taken
    away); the workers' keeper restarts it, again and again with backoff, and once the privilege is back the
    waiting rows land."""
    sink = f"{settings.app_id}-warehouse-shipments"
    item = sku()
    shop.product(item, price=100, stock=100)
    poll(lambda: caught_up(settings), timeout_s=60, what="the sinks to have written everything so far")
    before = sink_restarts(settings, sink)
    orders = [shop.place_order({item: 1}) for _ in range(3)]
    ids = [o.order_id for o in orders]
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as warehouse:
        warehouse.execute("revoke insert, update on shipments from current_user")
        try:
            shop.send(*orders)
            for order_id in ids:
                shop.settled(order_id)
            poll(lambda: sink_restarts(settings, sink) > before, timeout_s=60, every_s=0.5,
                 what=f"a worker to restart {sink} after it failed")
        finally:
            warehouse.execute("grant insert, update on shipments to current_user")

        assert_equal_to_the_api(shop, warehouse, ids, timeout_s=120)
        poll(lambda: query(warehouse, "select count(*) from shipments where order_id = any(%s)", ids) == [(3,)],
             timeout_s=60, every_s=0.5, what="a shipment row for each order")
