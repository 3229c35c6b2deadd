"""A worker's producer sends, once one batch bound for a broker is due, every batch waiting for that broker in the
same produce request (as Java's producer does), not one request per partition whose linger ran out."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.producer.message_accumulator import MessageAccumulator

from agents.app import create_faust_app
from agents.transport import NodeDrainingAccumulator
from streamcart.settings import Settings

#: Long enough that no batch appended by a test is due by itself however slow the machine; the one that is due
#: says it was appended before that (``_ctime``).
LINGER_MS = 60_000
DUE, WAITING, ELSEWHERE = TopicPartition("a", 0), TopicPartition("b", 3), TopicPartition("c", 1)
LEADERLESS = TopicPartition("d", 2)


class _Cluster:
    """Partitions ``a/0`` and ``b/3`` are led by broker 0, ``c/1`` by broker 1; ``d/2`` has no leader known."""

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        return {ELSEWHERE: 1, LEADERLESS: None}.get(tp, 0)


async def _accumulator(kind: type[MessageAccumulator]) -> MessageAccumulator:
    """An accumulator holding one record per partition, of which only ``a/0``'s has lingered long enough."""
    accumulator = kind(_Cluster(), 16384, 0, 30, linger_ms=LINGER_MS)
    for tp in (DUE, WAITING, ELSEWHERE):
        await accumulator.add_message(tp, b"k", b"v", timeout=1)
    accumulator._batches[DUE][0]._ctime = time.monotonic() - 2 * LINGER_MS / 1000  # lingered long enough
    return accumulator


def _drained(nodes: dict[int, dict[TopicPartition, Any]]) -> dict[int, set[TopicPartition]]:
    return {node: set(batches) for node, batches in nodes.items()}


async def test_aiokafka_alone_sends_only_the_partition_whose_linger_ran_out() -> None:
    nodes, _ = (await _accumulator(MessageAccumulator)).drain_by_nodes(ignore_nodes=set())

    assert _drained(nodes) == {0: {DUE}}  # what the subclass changes


async def test_one_due_batch_takes_every_batch_for_its_broker_along() -> None:
    accumulator = await _accumulator(NodeDrainingAccumulator)

    nodes, unknown_leaders = accumulator.drain_by_nodes(ignore_nodes=set())

    assert _drained(nodes) == {0: {DUE, WAITING}}  # broker 1's batch lingers on: nothing of its is due
    assert not unknown_leaders
    assert set(accumulator._batches[ELSEWHERE]) and not accumulator._batches[WAITING]


async def test_nothing_leaves_before_some_batch_is_due() -> None:
    accumulator = await _accumulator(NodeDrainingAccumulator)
    accumulator._batches[DUE][0]._ctime = time.monotonic()

    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())

    assert nodes == {}


async def test_a_partition_with_a_request_in_flight_keeps_its_batch() -> None:
    accumulator = await _accumulator(NodeDrainingAccumulator)

    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={WAITING})

    assert _drained(nodes) == {0: {DUE}}
    assert accumulator._batches[WAITING]


async def test_a_broker_with_a_request_in_flight_gets_nothing_until_it_answered() -> None:
    accumulator = await _accumulator(NodeDrainingAccumulator)

    assert accumulator.drain_by_nodes(ignore_nodes={0})[0] == {}
    assert _drained(accumulator.drain_by_nodes(ignore_nodes=set())[0]) == {0: {DUE, WAITING}}


async def test_a_partition_whose_leader_is_unknown_waits_for_the_metadata() -> None:
    accumulator = await _accumulator(NodeDrainingAccumulator)
    await accumulator.add_message(LEADERLESS, b"k", b"v", timeout=1)

    nodes, unknown_leaders = accumulator.drain_by_nodes(ignore_nodes=set())

    assert _drained(nodes) == {0: {DUE, WAITING}}
    assert unknown_leaders  # the sender refreshes the metadata, and the batch goes once its leader is known
    assert accumulator._batches[LEADERLESS]


async def test_the_workers_kafka_producer_drains_by_broker() -> None:
    app = create_faust_app(Settings(), store="memory://")
    producer = app.producer._new_producer()
    try:
        assert isinstance(producer._message_accumulator, NodeDrainingAccumulator)
    finally:
        await producer.stop()
