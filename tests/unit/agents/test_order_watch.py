"""The long-poll's wake-up: a change wakes every waiter of that order at once, and only of that order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from agents.runtime import Runtime
from agents.view import FaustWorkerView
from agents.watch import OrderWatch
from tests.component.test_api_orders import an_order


async def test_a_change_wakes_the_waiters_of_that_order_and_no_other():
    watch = OrderWatch()
    mine = asyncio.create_task(watch.next_change("o-1", 5))
    also_mine = asyncio.create_task(watch.next_change("o-1", 5))
    other = asyncio.create_task(watch.next_change("o-2", 0.2))
    await asyncio.sleep(0)
    watch.changed("o-1")
    assert await mine is True and await also_mine is True
    assert await other is False
    assert len(watch) == 0  # nobody is left registered


async def test_a_wait_that_times_out_leaves_nothing_behind():
    watch = OrderWatch()
    assert await watch.next_change("o-1", 0.01) is False
    assert len(watch) == 0


async def test_a_rebalance_wakes_every_waiter_and_counts():
    watch = OrderWatch()
    waiters = [asyncio.create_task(watch.next_change(order_id, 5)) for order_id in ("o-1", "o-2", "o-2")]
    await asyncio.sleep(0)
    watch.rebalanced()
    assert [await w for w in waiters] == [True, True, True]
    assert watch.rebalances == 1
    assert len(watch) == 0


async def test_a_long_poll_stops_waiting_at_a_rebalance_with_what_the_table_says_then():
    """Its order may be another worker's now, whose flow never wakes this one: the API checks who owns it."""
    watch = OrderWatch()
    orders = {"o-1": an_order()}
    runtime = SimpleNamespace(order_watch=watch, tables=SimpleNamespace(orders=SimpleNamespace(get=orders.get)))
    view = FaustWorkerView(cast(Runtime, runtime), 0)
    waiting = asyncio.create_task(view.wait_settled("o-1", 30))
    await asyncio.sleep(0)
    watch.changed("o-1")  # a step that does not settle it: it waits on
    await asyncio.sleep(0)
    assert not waiting.done()
    watch.rebalanced()
    assert await asyncio.wait_for(waiting, 5) == orders["o-1"]
