"""What a partition may commit: only the acknowledged run that starts exactly at its committed position.

faust's own rule let one unprocessed record through (committed ``c``, acknowledged ``c + 1`` → commit ``c + 2``)
and committed anything while the position was unknown after a rebalance; both lost records on the real stack.
"""

from __future__ import annotations

from agents.transport import committable_offset


def commit(acked: list[int], committed: int | None) -> tuple[int | None, list[int], set[int]]:
    index = set(acked)
    offset = committable_offset(acked, index, committed)
    return offset, acked, index


def test_the_run_from_the_committed_position_is_committed_and_removed():
    assert commit([12, 10, 11, 14], committed=10) == (13, [14], {14})


def test_an_unprocessed_record_at_the_committed_position_holds_everything_back():
    assert commit([11, 12], committed=10) == (None, [11, 12], {11, 12})  # faust would have committed 13


def test_nothing_committed_means_the_partition_starts_at_zero():
    assert commit([0, 1, 2], committed=None) == (3, [], set())
    # Right after a rebalance the position is unknown: late acknowledgements commit nothing.
    assert commit([216], committed=None) == (None, [216], {216})


def test_acknowledgements_below_the_committed_position_are_forgotten():
    assert commit([205, 210, 214, 215], committed=214) == (216, [], set())
    assert commit([205, 210], committed=214) == (None, [], set())


def test_records_are_delivered_in_offset_order_and_a_jump_fetches_the_missing_ones_again():
    from faust.types import TP

    from agents.transport import Consumer

    tp = TP("commands", 1)
    consumer = Consumer.__new__(Consumer)
    consumer._next_offset = {tp: 212}
    consumer._refetch = refetch = {}
    assert consumer._deliverable(tp, 211) is False and refetch == {}  # delivered before: a duplicate
    assert consumer._deliverable(tp, 220) is False  # 212-219 never delivered: fetch them again
    assert consumer._deliverable(tp, 221) is False
    assert refetch == {tp: 212}  # once
    assert consumer._deliverable(tp, 212) is True and refetch == {}
    assert consumer._deliverable(TP("commands", 2), 5) is True  # a partition not sought yet: as it comes
