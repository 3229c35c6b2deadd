"""The recovery never seeks a changelog partition whose offset it has not looked up (agents/transport.py,
``Recovery``): faust's did, when a rebalance replaced the partitions it reads while the generation before was still
recovering, and the worker crashed."""

from __future__ import annotations

from collections import Counter

import pytest
from faust.tables.recovery import RebalanceAgain
from faust.types import TP

from agents.app import create_faust_app
from agents.transport import Recovery
from streamcart.settings import Settings

KNOWN, NEW = TP("streamcart-orders-changelog", 0), TP("streamcart-orders-changelog", 1)


class Consumer:
    """What the recovery asks of the consumer to seek: the partitions' first offsets, and the seek."""

    def __init__(self, earliest: dict[TP, int]) -> None:
        self.earliest = earliest
        self.sought: list[dict[TP, int]] = []

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in tps}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        assert all(isinstance(offset, int) and offset >= 0 for offset in offsets.values()), offsets  # aiokafka's
        self.sought.append(offsets)


def recovery() -> Recovery:
    found = create_faust_app(Settings(), store="memory://").tables.recovery
    assert isinstance(found, Recovery)
    return found


async def test_a_partition_a_new_rebalance_gave_makes_the_recovery_start_over_instead_of_seeking_it() -> None:
    it, consumer = recovery(), Consumer({KNOWN: 0, NEW: 0})
    offsets: Counter[TP] = Counter({KNOWN: 41})
    offsets[NEW] = None  # type: ignore[assignment]  # faust's mark of an offset not looked up yet
    it.signal_recovery_start.set()  # the new generation's rebalance
    with pytest.raises(RebalanceAgain):
        await it._seek_offsets(consumer, {KNOWN, NEW}, offsets, "standby")
    assert consumer.sought == []


async def test_outside_a_rebalance_a_partition_without_an_offset_has_it_looked_up_before_the_seek() -> None:
    it, consumer = recovery(), Consumer({KNOWN: 0, NEW: 7})  # NEW's changelog compacted up to 7
    offsets: Counter[TP] = Counter({KNOWN: 41})
    offsets[NEW] = None  # type: ignore[assignment]
    await it._seek_offsets(consumer, {KNOWN, NEW}, offsets, "standby")
    assert consumer.sought == [{KNOWN: 41, NEW: 6}]  # faust's own arithmetic: the first offset less one
