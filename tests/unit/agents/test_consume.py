"""The agent loops acknowledge an event only once it was handled: an agent stopped mid-message leaves that message
for the partition's next owner (faust's own iteration would acknowledge it on the way out and lose it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY

from agents import runtime
from agents.runtime import consume, consume_concurrently
from agents.transport import InProgress, Yielded
from streamcart.telemetry import Telemetry


@dataclass
class Event:
    key: bytes
    offset: int

    @property
    def message(self) -> tuple[str, int]:  # what faust's event carries: the Kafka message, one per offset
        return ("topic", self.offset)


def running() -> Any:
    """A runtime with what the loops use of it: the app's record of the messages being handled, the telemetry."""
    return SimpleNamespace(app=SimpleNamespace(in_progress=InProgress()), telemetry=Telemetry())


def being_handled(rt: Any) -> set[int]:
    return {offset for offset in range(100) if ("topic", offset) in rt.app.in_progress}


@dataclass
class FakeStream:
    """The part of a faust stream the loops use: ``noack()``, ``events()``, ``ack()`` and the channel's topics."""

    pending: list[Event]
    channel: Any = field(default_factory=lambda: SimpleNamespace(topics=("commands.payments",)))
    acked: list[int] = field(default_factory=list)
    acks_enabled: bool = True
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def noack(self) -> FakeStream:
        self.acks_enabled = False
        return self

    async def events(self) -> Any:
        for event in self.pending:
            yield event
        self.drained.set()
        await asyncio.Event().wait()  # a live stream: no more messages for now

    async def ack(self, event: Event) -> bool:
        self.acked.append(event.offset)
        return True


@dataclass
class Handling:
    """Stands in for ``process``: records which events started; event N finishes once ``finish(N)`` is called."""

    started: list[int] = field(default_factory=list)
    gates: dict[int, asyncio.Event] = field(default_factory=dict)

    def gate(self, offset: int) -> asyncio.Event:
        return self.gates.setdefault(offset, asyncio.Event())

    def finish(self, *offsets: int) -> None:
        for offset in offsets:
            self.gate(offset).set()

    async def process(self, _runtime: Any, event: Event, _handler: Any, _flow: str) -> None:
        self.started.append(event.offset)
        await self.gate(event.offset).wait()


@pytest.fixture
def handled(monkeypatch) -> Handling:
    handling = Handling()
    monkeypatch.setattr(runtime, "process", handling.process)
    return handling


async def _until(condition: Any) -> None:
    for _ in range(1_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_consume_acknowledges_handled_events_and_not_the_one_a_stop_interrupts(handled):
    stream = FakeStream([Event(b"k", 0), Event(b"k", 1), Event(b"k", 2)])
    handled.finish(0, 1)
    rt = running()
    agent = asyncio.create_task(consume(rt, stream, None, flow="test"))
    await _until(lambda: handled.started == [0, 1, 2])
    assert being_handled(rt) == {2}  # what a rebalance would wait for

    agent.cancel()  # a stop while offset 2 is being handled
    with pytest.raises(asyncio.CancelledError):
        await agent
    assert stream.acks_enabled is False
    assert stream.acked == [0, 1]
    assert not rt.app.in_progress


async def test_consume_concurrently_runs_keys_at_once_keeps_each_key_in_order_and_acks_only_what_finished(handled):
    stream = FakeStream([Event(b"a", 0), Event(b"b", 1), Event(b"a", 2), Event(b"c", 3)])
    rt = running()
    agent = asyncio.create_task(consume_concurrently(rt, stream, None, flow="test"))
    await _until(stream.drained.is_set)
    await _until(lambda: sorted(handled.started) == [0, 1, 3])
    # Different keys run at once; the second message of key a waits for its first.
    assert 2 not in handled.started
    assert being_handled(rt) == {0, 1, 2, 3}  # taken from the stream: a rebalance waits for all four

    handled.finish(3)
    await _until(lambda: stream.acked == [3])
    await _until(lambda: being_handled(rt) == {0, 1, 2})
    handled.finish(0)
    await _until(lambda: 2 in handled.started)
    assert stream.acked == [3, 0]

    agent.cancel()  # a stop while offsets 1 and 2 are in flight
    with pytest.raises(asyncio.CancelledError):
        await agent
    for _ in range(10):
        await asyncio.sleep(0)
    assert stream.acked == [3, 0]
    assert not rt.app.in_progress


async def test_consume_concurrently_holds_at_most_limit_messages_in_flight(handled):
    stream = FakeStream([Event(f"k{n}".encode(), n) for n in range(5)])
    rt = running()
    agent = asyncio.create_task(consume_concurrently(rt, stream, None, flow="test", limit=2))
    await _until(lambda: handled.started == [0, 1])
    for _ in range(10):
        await asyncio.sleep(0)
    assert handled.started == [0, 1]
    assert being_handled(rt) == {0, 1, 2}  # the third waits for a slot, taken from the stream already
    handled.finish(1)
    await _until(lambda: handled.started == [0, 1, 2])
    agent.cancel()  # while waiting for a slot for the fourth
    with pytest.raises(asyncio.CancelledError):
        await agent
    assert stream.acked == [1]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not rt.app.in_progress


async def test_in_progress_counts_a_message_once_per_agent_and_is_idle_when_every_agent_is_done():
    in_progress = InProgress()
    assert await in_progress.wait_idle(timeout_s=0.01)
    in_progress.begin("m")
    in_progress.begin("m")  # a second agent the same message was delivered to
    in_progress.end("m")
    assert "m" in in_progress and not await in_progress.wait_idle(timeout_s=0.01)
    waiter = asyncio.create_task(in_progress.wait_idle(timeout_s=5))
    await asyncio.sleep(0)
    in_progress.end("m")
    assert await waiter
    assert "m" not in in_progress and len(in_progress) == 0


async def test_a_pause_sleeps_its_delay_or_gives_the_message_back_once_a_rebalance_asks():
    in_progress = InProgress()
    await in_progress.pause(0.01)  # nobody waiting: just a sleep
    sleeper = asyncio.create_task(in_progress.pause(60))
    await asyncio.sleep(0)
    in_progress.ask_to_yield()  # a rebalance begins
    with pytest.raises(Yielded):
        await asyncio.wait_for(sleeper, timeout=1)
    with pytest.raises(Yielded):  # and every pause until it is over
        await in_progress.pause(60)
    in_progress.ask_to_yield()  # a stop begins during the rebalance's wait
    in_progress.ask_to_yield(False)  # the rebalance's wait ends, the stop's goes on
    with pytest.raises(Yielded):
        await in_progress.pause(60)
    in_progress.ask_to_yield(False)
    await in_progress.pause(0.01)


@dataclass
class Retrying(Handling):
    """``process`` for events that wait to try again (``InProgress.pause``) until ``finish``ed; others finish."""

    waiting: set[int] = field(default_factory=set)
    in_progress: InProgress = field(default_factory=InProgress)

    async def process(self, _runtime: Any, event: Event, _handler: Any, _flow: str) -> None:
        self.started.append(event.offset)
        while event.offset in self.waiting and not self.gate(event.offset).is_set():
            await self.in_progress.pause(0.01)


async def test_a_message_given_back_for_a_rebalance_and_the_later_ones_of_its_key_stay_unacknowledged(monkeypatch):
    rt = running()
    retrying = Retrying(waiting={0}, in_progress=rt.app.in_progress)
    monkeypatch.setattr(runtime, "process", retrying.process)
    stream = FakeStream([Event(b"a", 0), Event(b"b", 1), Event(b"a", 2), Event(b"c", 3)])
    agent = asyncio.create_task(consume_concurrently(rt, stream, None, flow="test"))
    await _until(lambda: sorted(stream.acked) == [1, 3])  # other keys go on while key a's first waits
    await _until(lambda: being_handled(rt) == {0, 2})
    assert retrying.started == [0, 1, 3]

    rt.app.in_progress.ask_to_yield()  # a rebalance waits for what is being handled
    assert await rt.app.in_progress.wait_idle(timeout_s=1)
    # Key a's second message was never handled: it would have overtaken the first.
    assert retrying.started == [0, 1, 3]
    assert sorted(stream.acked) == [1, 3]
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent


@pytest.mark.parametrize("loop", [consume, consume_concurrently])
async def test_a_flow_exports_its_dead_letter_count_from_zero_before_its_first_message(handled, loop):
    """Prometheus sees no increase in a series that first appears at 1: the first dead letter would alert no one."""
    flow = f"flow-{uuid4().hex}"
    stream = FakeStream([])
    agent = asyncio.create_task(loop(running(), stream, None, flow=flow))
    await _until(stream.drained.is_set)
    assert REGISTRY.get_sample_value("streamcart_dead_letters_total", {"flow": flow}) == 0.0
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent
