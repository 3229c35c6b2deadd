"""A worker's Kafka producer is idempotent (``producer_idempotence``, on by default): a produce request sent again
after its answer was lost is written once by the broker, not twice, so a table's changelog holds no second copy of
one of its store's writes between two others (tables/store.py would take it for another worker's record).

aiokafka numbers each partition's batches as its accumulator's drain takes them; the worker's accumulator
(``NodeDrainingAccumulator``) changes only when batches are due, so the numbering stays aiokafka's: checked below on
the record batches as they would go to the broker. The last tests pin what aiokafka does with the answers an
idempotent producer can get, which the worker's handling of failed deliveries (``Deliveries``) relies on.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotLeaderForPartitionError, OutOfOrderSequenceNumber
from aiokafka.producer.message_accumulator import MessageBatch
from aiokafka.producer.sender import SendProduceReqHandler
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.record.default_records import DefaultRecordBatch

from agents.app import create_faust_app
from agents.transport import Deliveries, DeliveryFailed, NodeDrainingAccumulator
from streamcart.settings import Settings

PRODUCER_ID = 4242
A, B = TopicPartition("a", 0), TopicPartition("b", 1)  # both led by broker 0


class _Cluster:
    def leader_for_partition(self, tp: TopicPartition) -> int:
        return 0


async def _kafka_producer(settings: Settings) -> Any:
    """The worker's aiokafka producer as ``settings`` make it (never started)."""
    app = create_faust_app(settings, store="memory://")
    return app.producer._new_producer()


async def test_the_workers_kafka_producer_is_idempotent_by_default() -> None:
    assert Settings().producer_idempotence is True
    producer = await _kafka_producer(Settings())
    try:
        txn_manager = producer._txn_manager
        assert txn_manager is not None and txn_manager.transactional_id is None  # idempotent, no transactions
        assert producer._sender._acks == -1  # acks=all, which idempotence takes
        accumulator = producer._message_accumulator
        assert isinstance(accumulator, NodeDrainingAccumulator)  # still drained a broker at a time
        assert accumulator._txn_manager is txn_manager  # and numbered by the same manager
    finally:
        await producer.stop()


async def test_idempotence_can_be_turned_off() -> None:
    producer = await _kafka_producer(Settings(producer_idempotence=False))
    try:
        assert producer._txn_manager is None and producer._message_accumulator._txn_manager is None
        assert producer._sender._acks == -1  # faust's default either way
        assert isinstance(producer._message_accumulator, NodeDrainingAccumulator)
    finally:
        await producer.stop()


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCART_PRODUCER_IDEMPOTENCE", "false")
    assert Settings().producer_idempotence is False
    monkeypatch.setenv("STREAMCART_PRODUCER_IDEMPOTENCE", "true")
    assert Settings().producer_idempotence is True


def _accumulator() -> tuple[NodeDrainingAccumulator, TransactionManager]:
    txn_manager = TransactionManager(None, 2**31 - 1)
    txn_manager.set_pid_and_epoch(PRODUCER_ID, 0)
    accumulator = NodeDrainingAccumulator(_Cluster(), 16384, 0, 30, txn_manager=txn_manager, linger_ms=60_000)
    return accumulator, txn_manager


async def _add(accumulator: NodeDrainingAccumulator, tp: TopicPartition, count: int) -> None:
    for i in range(count):
        await accumulator.add_message(tp, b"k", b"v%d" % i, timeout=1)


def _make_due(accumulator: NodeDrainingAccumulator, tp: TopicPartition) -> None:
    accumulator._batches[tp][0]._ctime = time.monotonic() - 120  # lingered long enough


def _sent(batch: MessageBatch) -> tuple[int, int, int]:
    """(producer id, base sequence, record count) of ``batch`` as it goes to the broker."""
    sent = DefaultRecordBatch(bytes(batch.get_data_buffer()))
    return sent.producer_id, sent.base_sequence, sent.next_offset - sent.base_offset


async def test_batches_drained_a_broker_at_a_time_are_numbered_per_partition_in_order() -> None:
    accumulator, txn_manager = _accumulator()
    await _add(accumulator, A, 3)
    await _add(accumulator, B, 2)
    _make_due(accumulator, A)  # B is not due itself: it goes along with A (the subclass's drain)

    first, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    assert {tp: _sent(batch) for tp, batch in first[0].items()} == {A: (PRODUCER_ID, 0, 3), B: (PRODUCER_ID, 0, 2)}

    for batch in first[0].values():
        batch.done(0)
    await _add(accumulator, A, 4)
    _make_due(accumulator, A)
    second, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    assert {tp: _sent(batch) for tp, batch in second[0].items()} == {A: (PRODUCER_ID, 3, 4)}
    assert (txn_manager.sequence_number(A), txn_manager.sequence_number(B)) == (7, 2)


async def test_a_batch_sent_again_keeps_its_number_and_goes_before_the_partitions_next_batch() -> None:
    accumulator, _ = _accumulator()
    await _add(accumulator, A, 3)
    _make_due(accumulator, A)
    (first,) = accumulator.drain_by_nodes(ignore_nodes=set())[0][0].values()
    await _add(accumulator, A, 2)  # a later batch of the same partition, due too
    _make_due(accumulator, A)

    # While the first batch's request is on its way (the sender mutes its partition), the next one stays.
    assert accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={A})[0] == {}

    accumulator.reenqueue(first)  # its answer was lost: sent again
    (again,) = accumulator.drain_by_nodes(ignore_nodes=set())[0][0].values()
    assert again is first and _sent(again) == (PRODUCER_ID, 0, 3)  # the same batch, the same number
    again.done(0)
    (second,) = accumulator.drain_by_nodes(ignore_nodes=set())[0][0].values()
    assert _sent(second) == (PRODUCER_ID, 3, 2)


def _answer(tp: TopicPartition, error_code: int) -> Any:
    """A produce response (v5-v7 layout) for one partition."""
    return SimpleNamespace(API_VERSION=5, topics=[(tp.topic, [(tp.partition, error_code, -1, -1, 0)])])


async def test_a_batch_refused_as_out_of_order_fails_its_records_and_stops_the_next_commit() -> None:
    accumulator, txn_manager = _accumulator()
    await _add(accumulator, A, 2)
    record = await accumulator.add_message(A, b"k", b"last", timeout=1)
    _make_due(accumulator, A)
    batches = accumulator.drain_by_nodes(ignore_nodes=set())[0][0]
    deliveries = Deliveries()
    deliveries.watch(record)
    sender = SimpleNamespace(_txn_manager=txn_manager, _retry_backoff=0.1, client=None)
    handler = SendProduceReqHandler(sender, batches)

    handler.handle_response(_answer(A, OutOfOrderSequenceNumber.errno))

    assert handler._to_reenqueue == []  # not tried again: a failure of its records
    assert isinstance(record.exception(), OutOfOrderSequenceNumber)
    await _settle()
    with pytest.raises(DeliveryFailed, match="OutOfOrderSequenceNumber"):
        deliveries.check()  # the worker's next flush raises, and the worker stops (Producer.flush)


async def test_a_retriable_failure_of_an_idempotent_producer_is_tried_again_however_old_the_batch() -> None:
    accumulator, txn_manager = _accumulator()
    await _add(accumulator, A, 1)
    _make_due(accumulator, A)
    batches = accumulator.drain_by_nodes(ignore_nodes=set())[0][0]
    batches[A]._ctime = time.monotonic() - 3600  # far past its time to live (30 s here)
    sender = SimpleNamespace(_txn_manager=txn_manager, _retry_backoff=0.1,
                             client=SimpleNamespace(force_metadata_update=lambda: None))
    handler = SendProduceReqHandler(sender, batches)

    handler.handle_response(_answer(A, NotLeaderForPartitionError.errno))

    assert handler._to_reenqueue == [batches[A]] and not batches[A].future.done()


async def _settle() -> None:
    await asyncio.sleep(0)  # the futures' callbacks run on the next turn of the loop
