"""The long-poll's wake-up: a change wakes every waiter of that order at once, and only of that order."""

from __future__ import annotations

import asyncio

from agents.watch import OrderWatch


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
