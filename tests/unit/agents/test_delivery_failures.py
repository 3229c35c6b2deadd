"""A record Kafka refuses stops every later offset commit (agents/transport.py, ``Deliveries``).

Every commit flushes the worker's producer first. A record that failed was an effect (a table write, an event, a
fact row) of a message that would otherwise count as processed, so that flush, and every one after it, raises.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from kafka_fakes import FakeKafkaProducer

from agents.app import create_faust_app
from agents.transport import Deliveries, DeliveryFailed, Producer
from streamcart.settings import Settings


def producer_with(kafka: FakeKafkaProducer) -> Producer:
    producer = create_faust_app(Settings(), store="memory://").producer
    assert isinstance(producer, Producer)
    producer._producer = kafka
    return producer


async def test_a_flush_returns_once_every_record_was_delivered() -> None:
    kafka = FakeKafkaProducer()
    producer = producer_with(kafka)
    await producer.send("t", b"k", b"v", None, None, None)
    await producer.send("t", b"k", b"v2", None, None, None)
    flushing = asyncio.ensure_future(producer.flush())
    await asyncio.sleep(0)
    assert not flushing.done()  # still waiting for Kafka
    kafka.deliver(0)
    kafka.deliver(1)
    await asyncio.wait_for(flushing, timeout=1)


async def test_a_record_that_fails_while_a_flush_waits_makes_that_flush_raise_and_every_later_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = FakeKafkaProducer()
    producer = producer_with(kafka)
    await producer.send("t", b"k", b"v", None, None, None)
    await producer.send("warehouse", b"k", b"row", None, None, None)
    flushing = asyncio.ensure_future(producer.flush())
    await asyncio.sleep(0)
    kafka.deliver(0)
    with caplog.at_level(logging.CRITICAL, logger="agents.transport"):
        kafka.fail(1, MessageSizeTooLargeError())
        with pytest.raises(DeliveryFailed, match="MessageSizeTooLargeError"):
            await flushing
    assert "no offset will be committed from now on" in caplog.text

    assert producer.crash_reason is not None  # the worker crashes, even when the flush was a stop's
    assert isinstance(producer.crash_reason, DeliveryFailed)

    await producer.send("t", b"k", b"v3", None, None, None)  # later records are delivered...
    kafka.deliver(2)
    await producer.send("t", b"k", b"v4", None, None, None)
    kafka.fail(3, MessageSizeTooLargeError())
    await asyncio.sleep(0)  # its report arrives on the loop's next turn
    with pytest.raises(DeliveryFailed, match="2 record"):  # ...but nothing may be committed past the lost ones
        await producer.flush()


def test_deliveries_keep_the_first_failure_and_ignore_successes_and_cancellations() -> None:
    loop = asyncio.new_event_loop()
    try:
        deliveries = Deliveries()
        outcomes = [loop.create_future() for _ in range(4)]
        for future in outcomes:
            deliveries.watch(future)
        outcomes[0].set_result(None)
        outcomes[1].cancel()
        deliveries.check()  # the callbacks have not run yet, and nothing failed anyway
        loop.run_until_complete(asyncio.sleep(0))
        deliveries.check()
        first, second = TimeoutError("first"), MessageSizeTooLargeError()
        outcomes[2].set_exception(first)
        outcomes[3].set_exception(second)
        loop.run_until_complete(asyncio.sleep(0))
        assert deliveries.failure is first
        with pytest.raises(DeliveryFailed) as raised:
            deliveries.check()
        assert raised.value.__cause__ is first
    finally:
        loop.close()
