"""How a worker hands records to Kafka and decodes what it receives: to the producer once per record, decoded once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents.runtime import DecodedRecords, FaustSink, note_sources
from schemas.codec import Codec
from schemas.errors import MalformedMessage
from schemas.messages import OrderLine, PlaceOrder
from schemas.registry import InMemoryRegistry


class FakeProducer:
    """The worker's producer as the sink uses it: ``send`` hands a record to Kafka at once, ``send_after_state``
    once the table writes before it are delivered (agents/state_first.py)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.at_once: list[bytes] = []

    async def send(self, topic: str, key: Any, value: Any, partition: Any, timestamp: Any, headers: Any) -> None:
        self.at_once.append(value)

    async def send_after_state(self, topic: str, key: Any, value: Any, headers: Any) -> None:
        self.sent.append((topic, key, value, headers))


def app_with(producer: FakeProducer) -> Any:
    async def maybe_start_producer() -> FakeProducer:
        return producer

    return SimpleNamespace(maybe_start_producer=maybe_start_producer)


async def test_the_sink_hands_each_record_to_the_producer_keyed_with_its_headers() -> None:
    producer = FakeProducer()
    sink = FaustSink(app_with(producer))
    await sink.send("t", b"k", b"v", [("traceparent", b"00-1")])
    await sink.send("t", b"k2", b"v2", [])
    assert producer.sent == [
        ("t", b"k", b"v", [("traceparent", b"00-1")]),
        ("t", b"k2", b"v2", None),  # no headers at all rather than an empty list
    ]


async def test_a_flow_reading_one_topic_sends_at_once_and_one_reading_several_or_calling_out_after_its_state():
    producer = FakeProducer()
    sink = FaustSink(app_with(producer))

    async def flow(topics: tuple[str, ...], value: bytes, decides_alone: bool = True) -> None:  # a task per agent
        note_sources(SimpleNamespace(channel=SimpleNamespace(topics=topics)), decides_alone=decides_alone)
        await sink.send("t", b"k", value, [])

    await asyncio.create_task(flow(("events.orders",), b"analytics"))
    await asyncio.create_task(flow(("commands.orders", "events.inventory"), b"orders"))
    await asyncio.create_task(flow(("commands.payments",), b"payments", decides_alone=False))  # the gateway decides
    await sink.send("t", b"k", b"timer", [])  # outside any flow: after the state, to be safe
    assert producer.at_once == [b"analytics"]
    assert [value for _, _, value, _ in producer.sent] == [b"orders", b"payments", b"timer"]


def place(order_id: str) -> PlaceOrder:
    return PlaceOrder(
        event_id=f"e-{order_id}", occurred_at=1, causation_id="c", correlation_id=order_id, order_id=order_id,
        customer_id="c-1", lines=(OrderLine(sku="A", quantity=1),), currency="EUR", payment_token="tok_approve",
    )


class CountingCodec(Codec):
    def __init__(self) -> None:
        super().__init__(InMemoryRegistry())
        self.prepare()
        self.decoded = 0

    def decode(self, data: bytes | None) -> Any:
        self.decoded += 1
        return super().decode(data)


def record(value: bytes, offset: int = 7) -> Any:
    return SimpleNamespace(topic="commerce.events.orders", partition=1, offset=offset, value=value)


async def test_the_flows_that_receive_one_record_decode_it_once() -> None:
    codec, decoded = CountingCodec(), DecodedRecords()
    value = codec.encode(place("o-1"))
    first = await decoded.decode(codec, record(value))
    assert await decoded.decode(codec, record(value)) is first
    assert codec.decoded == 1
    # Another record, or other bytes at the same position (a topic made again), is decoded on its own.
    assert (await decoded.decode(codec, record(value, offset=8))).order_id == "o-1"
    other = codec.encode(place("o-2"))
    assert (await decoded.decode(codec, record(other))).order_id == "o-2"
    assert codec.decoded == 3


async def test_an_undecodable_record_fails_for_every_flow_and_the_oldest_records_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec, decoded = CountingCodec(), DecodedRecords()
    for _ in range(2):  # each flow dead-letters it on its own
        with pytest.raises(MalformedMessage):
            await decoded.decode(codec, record(b"junk"))
    monkeypatch.setattr(DecodedRecords, "SIZE", 2)
    value = codec.encode(place("o-1"))
    for offset in (1, 2, 3):
        await decoded.decode(codec, record(value, offset))
    await decoded.decode(codec, record(value, 1))  # forgotten: decoded again
    await decoded.decode(codec, record(value, 3))  # still kept
    assert codec.decoded == 2 + 4
