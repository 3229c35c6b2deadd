"""faust's changelog queue (what table recovery reads) takes only records fetched since faust last emptied it, and the
fetch loop reads the changelogs again from the last offset the recovery took (agents.transport.ChangelogQueue).

Seen on the real stack before: a worker's recovery cut by a rebalance left 135 of one partition's 330 orders out of
its store, and every standby copy missed records (tests/integration/test_store_check.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from agents.transport import ChangelogQueue, FlowControl, changelog_positions

ORDERS_0 = TP("streamcart-orders-changelog", 0)
ORDERS_1 = TP("streamcart-orders-changelog", 1)
STOCK_0 = TP("streamcart-stock-changelog", 0)


def record(offset: int, tp: TP = ORDERS_0) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def changelog_queue(*, active: set[TP] = frozenset({ORDERS_0}), standby: set[TP] = frozenset(),
                    maxsize: int = 10) -> ChangelogQueue:
    recovery = SimpleNamespace(active_tps=set(active), standby_tps=set(standby))
    flow_control = FlowControl()
    flow_control.resume()  # the flow runs (faust starts it suspended)
    manager = SimpleNamespace(app=SimpleNamespace(flow_control=flow_control), recovery=recovery)
    queue = ChangelogQueue(manager, maxsize=maxsize)
    queue.taking = manager.app.flow_control.clears  # as the fetch loop does once it has sought the changelogs
    return queue


def offsets(queue: ChangelogQueue) -> list[int]:
    return [event.message.offset for event in queue._queue]  # type: ignore[attr-defined]


def test_it_takes_records_of_the_partitions_the_recovery_reads() -> None:
    queue = changelog_queue(active={ORDERS_0}, standby={STOCK_0})
    queue.put_nowait(record(3))
    queue.force_put_nowait(record(4))
    queue.put_nowait(record(7, STOCK_0))
    assert offsets(queue) == [3, 4, 7]


def test_after_a_clear_it_takes_nothing_until_the_changelogs_are_read_again() -> None:
    queue = changelog_queue()
    queue.put_nowait(record(3))
    flow_control: FlowControl = queue._flow_control  # type: ignore[assignment]
    flow_control.resume()  # faust resuming the flow empties the queue
    queue.put_nowait(record(4))  # fetched before the clear, delivered after it
    queue.force_put_nowait(record(5))
    assert offsets(queue) == []
    queue.taking = flow_control.clears  # the fetch loop sought the changelogs back to where the recovery stands
    queue.put_nowait(record(4))
    assert offsets(queue) == [4]


def test_a_delivery_that_got_room_just_before_a_clear_does_not_land_after_it() -> None:
    async def scenario() -> list[int]:
        queue = changelog_queue(maxsize=1)
        queue.put_nowait(record(3))
        # The fetch loop delivering record 4 waits for room, as faust's conductor does with a full queue.
        delivery = asyncio.ensure_future(queue.put(record(4)))
        await asyncio.sleep(0)
        assert not delivery.done()
        queue.get_nowait()  # the recovery takes record 3, which wakes the delivery...
        queue._flow_control.clear()  # ...but a rebalance empties the queue before it runs
        await asyncio.wait_for(delivery, timeout=1)
        queue.put_nowait(record(5))  # the fetch loop goes on with the next record
        return offsets(queue)

    # Taken, record 4 would leave the records below it, lost with the queue, out of the table for good: the recovery
    # applies only offsets above the last it took, however often the partition is read again.
    assert asyncio.run(scenario()) == []


def test_a_record_of_a_partition_the_recovery_does_not_read_is_dropped() -> None:
    # faust would apply it to whatever table the record it took before belonged to.
    queue = changelog_queue(active={ORDERS_0})
    queue.put_nowait(record(9, ORDERS_1))
    assert offsets(queue) == []


def test_the_changelogs_are_read_again_from_the_last_offset_the_recovery_took() -> None:
    unknown = TP("streamcart-payments-changelog", 2)
    recovery = SimpleNamespace(
        active_tps={ORDERS_0, ORDERS_1, unknown}, active_offsets={ORDERS_0: 329, ORDERS_1: -1, unknown: None},
        standby_tps={STOCK_0}, standby_offsets={STOCK_0: 95},
    )
    assert changelog_positions(recovery, {ORDERS_0, ORDERS_1, unknown, STOCK_0}) == \
        {ORDERS_0: 329, ORDERS_1: 0, STOCK_0: 95}
    # Partitions no longer assigned are left to the rebalance that took them.
    assert changelog_positions(recovery, {STOCK_0}) == {STOCK_0: 95}
