"""A flow's records leave only after the table writes made before them are in their changelogs
(agents/state_first.py): a worker killed in between must not leave the effects of a state its restart never finds."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from kafka_fakes import FakeKafkaProducer

from agents.app import create_faust_app
from agents.state_first import HeldForever, Record, StateFirst
from agents.transport import Producer
from streamcart.settings import Settings


class Kafka:
    """The Kafka client as StateFirst hands records to it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, record: Record, context: contextvars.Context) -> None:
        self.sent.append(record[2])


def record(value: bytes) -> Record:
    return ("events", b"o-1", value, None)


def write() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def settle() -> None:
    """Let callbacks and the releaser run (each step is one turn of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_record_goes_at_once_when_every_write_before_it_was_delivered() -> None:
    kafka = Kafka()
    first = StateFirst(kafka.send)
    await first.send(record(b"a"))
    stored = write()
    first.note_write(stored)
    stored.set_result(None)
    await settle()
    await first.send(record(b"b"))
    assert kafka.sent == [b"a", b"b"]


async def test_a_record_waits_for_the_write_before_it_without_holding_up_the_flow() -> None:
    kafka = Kafka()
    first = StateFirst(kafka.send)
    stored = write()
    first.note_write(stored)
    await asyncio.wait_for(first.send(record(b"confirmed")), timeout=1)  # the flow goes on at once
    await settle()
    assert kafka.sent == [] and first.held == 1
    stored.set_result(None)
    await settle()
    assert kafka.sent == [b"confirmed"] and first.held == 0
    await first.close()


async def write_a_write_b() -> tuple[Kafka, StateFirst, asyncio.Future[Any], asyncio.Future[Any]]:
    """A flow that wrote its state and sent "a", then wrote again and sent "b"."""
    kafka = Kafka()
    first = StateFirst(kafka.send)
    one, two = write(), write()
    first.note_write(one)
    await first.send(record(b"a"))
    first.note_write(two)
    await first.send(record(b"b"))
    return kafka, first, one, two


async def test_records_leave_in_the_order_sent_each_once_every_earlier_write_was_delivered() -> None:
    kafka, first, one, two = await write_a_write_b()
    two.set_result(None)  # acknowledgements come in any order: "b" still waits for the first write
    await settle()
    assert kafka.sent == []
    one.set_result(None)
    await settle()
    assert kafka.sent == [b"a", b"b"]
    await first.close()


async def test_a_record_before_a_write_does_not_wait_for_it() -> None:
    kafka, first, one, _ = await write_a_write_b()
    one.set_result(None)
    await settle()
    assert kafka.sent == [b"a"]  # "b" waits for the second write, "a" did not
    await first.close()


async def a_held_record_drained() -> tuple[Kafka, StateFirst, asyncio.Future[Any], asyncio.Future[None]]:
    """A flow that wrote its state and sent "a", and a commit's drain waiting for it."""
    kafka = Kafka()
    first = StateFirst(kafka.send)
    stored = write()
    first.note_write(stored)
    await first.send(record(b"a"))
    draining = asyncio.ensure_future(first.drain())
    await settle()
    assert not draining.done()
    return kafka, first, stored, draining


async def test_a_drain_waits_for_the_records_held_when_it_began_and_not_for_later_ones() -> None:
    kafka, first, one, draining = await a_held_record_drained()
    first.note_write(write())  # never delivered
    await first.send(record(b"later"))
    one.set_result(None)
    await asyncio.wait_for(draining, timeout=1)
    assert kafka.sent == [b"a"]
    await first.close()


async def test_a_write_that_fails_holds_everything_after_it_and_every_drain_raises() -> None:
    kafka, first, stored, draining = await a_held_record_drained()
    stored.set_exception(RuntimeError("MessageSizeTooLarge"))
    with pytest.raises(HeldForever, match="MessageSizeTooLarge"):
        await asyncio.wait_for(draining, timeout=1)
    await first.send(record(b"b"))  # the flow is not told: the commit that would pass its message crashes the worker
    await settle()
    assert kafka.sent == []
    with pytest.raises(HeldForever):
        await first.drain()
    await first.close()


async def test_a_client_that_refuses_a_held_record_stops_the_release_and_every_drain_raises() -> None:
    async def refuse(record: Record, context: contextvars.Context) -> None:
        raise RuntimeError("producer stopped")

    first = StateFirst(refuse)
    stored = write()
    first.note_write(stored)
    await first.send(record(b"a"))
    stored.set_result(None)
    with pytest.raises(HeldForever, match="producer stopped"):
        await asyncio.wait_for(first.drain(), timeout=1)


async def test_a_record_refused_on_the_way_out_at_once_is_treated_the_same_as_a_held_one() -> None:
    async def refuse(record: Record, context: contextvars.Context) -> None:
        raise RuntimeError("MessageSizeTooLarge")

    first = StateFirst(refuse)
    await first.send(record(b"a"))  # nothing held: it went at once, and the flow is not told either way
    with pytest.raises(HeldForever, match="MessageSizeTooLarge"):
        await asyncio.wait_for(first.drain(), timeout=1)


async def test_a_drain_waits_for_a_record_the_client_is_still_taking_at_once() -> None:
    taken = asyncio.Event()

    async def slow(record: Record, context: contextvars.Context) -> None:
        await taken.wait()  # as aiokafka waits for a topic's metadata, or for room in a full batch

    first = StateFirst(slow)
    sending = asyncio.ensure_future(first.send(record(b"a")))
    await settle()
    draining = asyncio.ensure_future(first.drain())
    await settle()
    assert not draining.done()
    taken.set()
    await asyncio.wait_for(asyncio.gather(sending, draining), timeout=1)


async def test_a_send_cancelled_on_its_way_out_or_waiting_for_room_leaves_no_drain_waiting() -> None:
    never = asyncio.Event()

    async def stuck(record: Record, context: contextvars.Context) -> None:
        await never.wait()

    first = StateFirst(stuck)
    sending = asyncio.ensure_future(first.send(record(b"at once")))  # a stop cancels the flow mid-send
    await settle()
    sending.cancel()
    await asyncio.wait_for(first.drain(), timeout=1)

    kafka = Kafka()
    first = StateFirst(kafka.send, limit=1)
    stored = write()
    first.note_write(stored)
    await first.send(record(b"a"))
    waiting = asyncio.ensure_future(first.send(record(b"b")))  # no room: it waits before it is taken
    await settle()
    waiting.cancel()
    stored.set_result(None)
    await asyncio.wait_for(first.drain(), timeout=1)
    assert kafka.sent == [b"a"]
    await first.close()


async def test_a_send_after_the_producer_stopped_raises() -> None:
    first = StateFirst(Kafka().send)
    await first.close()
    with pytest.raises(HeldForever, match="stopped"):
        await first.send(record(b"late"))


async def test_a_flow_that_sends_more_than_the_limit_waits_until_records_leave() -> None:
    kafka = Kafka()
    first = StateFirst(kafka.send, limit=2)
    stored = write()
    first.note_write(stored)
    await first.send(record(b"a"))
    await first.send(record(b"b"))
    third = asyncio.ensure_future(first.send(record(b"c")))
    await settle()
    assert not third.done()
    stored.set_result(None)
    await asyncio.wait_for(third, timeout=1)
    await settle()
    assert kafka.sent == [b"a", b"b", b"c"]
    await first.close()


async def test_the_workers_producer_sends_a_flows_record_only_once_the_table_write_before_it_is_in_kafka() -> None:
    producer = create_faust_app(Settings(), store="memory://").producer
    assert isinstance(producer, Producer)
    kafka = FakeKafkaProducer()
    producer._producer = kafka
    changelog = write()
    producer.buffer.put(changelog)  # as a table write does (faust's send_soon)
    await producer.send_after_state("events", b"o-1", b"OrderConfirmed", None)
    await settle()
    assert kafka.batches == []
    changelog.set_result(None)  # faust resolves it once Kafka acknowledged the changelog record
    await settle()
    assert len(kafka.batches) == 1
    await producer.state_first.close()


MESSAGE: contextvars.ContextVar[str] = contextvars.ContextVar("message", default="none")


async def test_a_held_record_is_handed_over_in_the_context_of_the_flow_that_sent_it() -> None:
    seen: list[tuple[bytes, str]] = []

    async def send(record: Record, context: contextvars.Context) -> None:
        seen.append((record[2], context.run(MESSAGE.get)))  # where its delivery is reported: the log fields

    first = StateFirst(send)
    stored = write()
    first.note_write(stored)

    async def flow(message: str) -> None:
        MESSAGE.set(message)
        await first.send(record(message.encode()))

    await asyncio.create_task(flow("o-1"))
    await asyncio.create_task(flow("o-2"))
    stored.set_result(None)
    await settle()
    assert seen == [(b"o-1", "o-1"), (b"o-2", "o-2")]
    await first.close()


# --- what the API reads: answered only once the writes before the read are in their changelogs ---------------------

async def test_a_reader_waits_for_the_writes_noted_before_its_mark_and_not_for_later_ones() -> None:
    first = StateFirst(Kafka().send)
    a, b = write(), write()
    first.note_write(a)
    first.note_write(b)
    mark = first.written()
    later = write()
    first.note_write(later)
    reader = asyncio.ensure_future(first.stored(mark))
    b.set_result(None)  # delivered out of order: a is still missing
    await settle()
    assert not reader.done() and not first.is_stored(mark)
    a.set_result(None)
    await settle()
    assert reader.done() and reader.result() is None  # the later write is still undelivered
    assert first.is_stored(mark) and not first.is_stored(first.written())


async def test_a_reader_with_nothing_outstanding_is_answered_at_once() -> None:
    first = StateFirst(Kafka().send)
    delivered = write()
    first.note_write(delivered)
    delivered.set_result(None)
    await settle()
    await asyncio.wait_for(first.stored(first.written()), timeout=0.01)


async def test_a_reader_of_a_write_that_failed_is_told_it_never_will_be_stored() -> None:
    first = StateFirst(Kafka().send)
    failed = write()
    first.note_write(failed)
    reader = asyncio.ensure_future(first.stored(first.written()))
    await settle()
    failed.set_exception(RuntimeError("changelog refused"))
    await settle()
    with pytest.raises(HeldForever):
        reader.result()


async def test_a_reader_waiting_when_the_producer_stops_is_told_at_once() -> None:
    first = StateFirst(Kafka().send)
    delivered, undelivered = write(), write()
    first.note_write(delivered)
    delivered.set_result(None)
    stored_mark = first.written()
    first.note_write(undelivered)
    reader = asyncio.ensure_future(first.stored(first.written()))
    await settle()
    assert not reader.done()
    await first.close()
    await settle()
    with pytest.raises(HeldForever, match="producer stopped"):
        reader.result()
    await asyncio.wait_for(first.stored(stored_mark), timeout=0.01)  # what was delivered still reads as stored


async def test_the_workers_view_says_whether_what_was_read_is_stored_within_the_wait() -> None:
    from agents.runtime import Runtime
    from agents.view import FaustWorkerView
    from tables import declare_tables

    settings = Settings()
    app = create_faust_app(settings, store="memory://")
    view = FaustWorkerView(Runtime(settings=settings, app=app, codec=None, tables=declare_tables(app, 8)), 0)
    changelog = write()
    app.producer.buffer.put(changelog)  # as a table write does (faust's send_soon)
    mark = view.write_mark()
    assert mark == 1
    assert await view.stored(0, timeout_s=0.01)  # nothing was written before mark 0
    assert not await view.stored(mark, timeout_s=0.01)
    waiting = asyncio.ensure_future(view.stored(mark, timeout_s=5))
    await settle()
    changelog.set_result(None)
    assert await asyncio.wait_for(waiting, 1)
    await app.producer.state_first.close()
