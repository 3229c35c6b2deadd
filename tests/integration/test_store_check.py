"""Every worker's local table stores hold exactly what their changelogs hold up to the offsets they note, read by
``streamcart check-stores`` on the real stack (streamcart/store_check.py), after the starts most likely to leave a
hole: a worker SIGKILLed in the middle of a flow of orders and started again, and workers started from empty stores
one after the other, the later ones joining once the first has begun reading every changelog. A store behind the
offset it notes is one a worker answers and decides from while it misses records: faust's recovery lost the records
waiting in its changelog queue whenever it emptied the queue (agents.transport.ChangelogQueue).

The join cuts into the first worker's recovery only when that outlasts the others' start, a few seconds: on this
stack's few thousand orders it may end first. README "Crash safety" gives the demo-stack start that reproduced the
hole before the fix (3,000 more orders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.stack import Stack
from tests.integration.support import poll
from tests.integration.test_saga import Shop
from tests.integration.test_saga_failures import settle_all


def check_stores(settings: Settings) -> list[dict]:
    """``streamcart check-stores --stop-workers --json``: every store's report (the workers are running again)."""
    done = subprocess.run([sys.executable, "-m", "streamcart.cli", "check-stores", "--stop-workers", "--json"],
                          env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.stdout, done.stderr
    reports: list[dict] = json.loads(done.stdout)
    assert done.returncode == 0, [r for r in reports if not r["exact"]]
    assert {r["worker"] for r in reports} == set(range(settings.workers))
    assert {"orders", "stock", "payments", "shipments"} <= {r["table"] for r in reports}
    return reports


def place_orders(shop: Shop, count: int, kill_between: Callable[[], object] | None = None) -> list[str]:
    """Place ``count`` one-line orders of a new product, calling ``kill_between`` halfway; their ids."""
    item = f"SC-{new_id()[:8]}"
    shop.product(item, price=100, stock=10_000)
    orders = [shop.place_order({item: 1}) for _ in range(count)]
    for order in orders[:count // 2]:
        shop.send_later(order)
    shop.flush()
    if kill_between is not None:
        kill_between()
    for order in orders[count // 2:]:
        shop.send_later(order)
    shop.flush()
    return [order.order_id for order in orders]


def test_after_a_kill_and_a_restart_every_store_holds_exactly_its_changelog(stack: Stack, settings: Settings, codec):
    shop = Shop(settings, codec)
    try:
        order_ids = place_orders(shop, 80, kill_between=lambda: stack.kill("worker-1"))
    finally:
        stack.start("worker-1")  # waits until it is ready again
    settle_all(shop, order_ids, timeout_s=180)

    reports = check_stores(settings)
    # The orders of this test are in them: the stores were read where they have records.
    assert sum(r["keys"] for r in reports if r["table"] == "orders") >= len(order_ids)
    assert all(stack.is_running(f"worker-{i}") for i in range(settings.workers))  # started again after the check


def test_workers_started_one_after_the_other_from_empty_stores_rebuild_them_exactly(stack: Stack, settings: Settings,
                                                                                    codec):
    shop = Shop(settings, codec)
    settle_all(shop, place_orders(shop, 40), timeout_s=180)  # records in every changelog to read back
    workers = [f"worker-{i}" for i in range(settings.workers)]
    first, later = workers[-1], workers[:-1]
    for name in workers:
        stack.stop(name)
    for marker in Path(settings.home).glob("data/worker-*/v1/tables/FORMAT"):
        marker.unlink()  # the stores of an unknown format: each worker rebuilds them from the changelogs
    log = stack.log_path(first)
    seen = log.stat().st_size if log.exists() else 0
    try:
        stack.start(first, wait=False)

        def reading_changelogs() -> bool:
            with log.open("rb") as lines:
                lines.seek(seen)
                return b"Restoring state from changelog topics" in lines.read()

        # The group formed with the first worker alone, which takes every partition and reads its changelogs
        # from the start; the others' joins begin a rebalance while it reads them.
        poll(reading_changelogs, timeout_s=120, every_s=0.1, what=f"{first} reading its changelogs")
    finally:
        for name in later:
            stack.start(name, wait=False)
        for name in workers:
            stack.wait_ready(name)

    reports = check_stores(settings)
    assert sum(r["keys"] for r in reports if r["table"] == "orders") >= 40
