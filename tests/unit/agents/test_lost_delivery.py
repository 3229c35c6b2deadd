"""A record lost between the fetch loop and the agents is delivered again, and never counts as processed.

Seen on the real stack (tests/integration/test_rebalance.py): right after a rebalance a PlaceOrder was skipped
while the records around it were handled. Nothing committed past it, but its order stayed unknown, and its
partition committed nothing, until the next rebalance four minutes later.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from agents import transport
from agents.transport import Consumer, Event, FlowControl, InProgress, Stream

TP0 = TP("commerce.commands.orders", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Message:
    """What the transport reads of a faust message: its partition and offset."""

    tp: TP
    offset: int


def message(offset: int, tp: TP = TP0) -> Message:
    return Message(tp, offset)


def consumer(*, committed: int, acked: list[int], next_offset: int, queued: list[int] = ()) -> Any:
    """A consumer with a partition committed at ``committed``, ``acked`` acknowledged above it, and the fetch loop's
    position at ``next_offset``; ``queued`` are in the queue of the one agent consuming the partition."""
    queue = SimpleNamespace(_queue=[SimpleNamespace(message=message(o)) for o in queued])
    state: Any = Consumer.__new__(Consumer)
    state.app = SimpleNamespace(in_progress=InProgress(), topics=SimpleNamespace(
        _tp_index={TP0: [SimpleNamespace(queue=queue)]}))
    state._committed_offset = defaultdict(lambda: None, {TP0: committed})
    state._acked = defaultdict(list, {TP0: list(acked)})
    state._acked_index = defaultdict(set, {TP0: set(acked)})
    state._next_offset = {TP0: next_offset}
    state._refetch, state._holes, state._seeks = {}, {}, 0
    return state


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(transport, "time", SimpleNamespace(monotonic=clock))  # the transport's clock only
    return clock


def commit_after(state: Any, clock: Clock, seconds: float) -> int | None:
    clock.now += seconds
    return state._new_offset(TP0)


def test_a_delivered_record_nobody_holds_is_delivered_again_once_the_hole_outlasts_the_grace(clock: Clock):
    state = consumer(committed=163, acked=[164, 165, 166], next_offset=178)
    assert state._new_offset(TP0) is None  # 164-166 handled, 163 not: nothing commits
    assert commit_after(state, clock, transport.HOLE_GRACE_S - 1) is None
    assert state._refetch == {} and state._next_offset[TP0] == 178  # not yet: it may still be on its way
    assert commit_after(state, clock, 1) is None
    assert state._refetch == {TP0: 163} and state._next_offset[TP0] == 163  # fetched again from the hole
    assert state._seeks == 1  # a delivery under way cannot move the position past it again

    state._refetch.clear()  # the fetch loop sought
    state._next_offset[TP0] = 178  # ... and delivered up to where it was, 163 included, which is lost again
    assert commit_after(state, clock, transport.HOLE_GRACE_S * 2 - 1) is None
    assert state._refetch == {}  # a second try waits twice as long
    assert commit_after(state, clock, 1) is None
    assert state._refetch == {TP0: 163}

    state._acked[TP0].append(163)  # handled this time
    assert commit_after(state, clock, 0.2) == 167
    assert state._holes == {}


def test_a_record_an_agent_is_handling_or_still_has_queued_is_not_delivered_again(clock: Clock):
    handled = consumer(committed=50, acked=[51], next_offset=60)
    handled.app.in_progress.begin(message(50))  # e.g. a payment waiting on a slow gateway while 51 was quick
    queued = consumer(committed=50, acked=[51], next_offset=60, queued=[50])
    for state in (handled, queued):
        state._new_offset(TP0)
        assert commit_after(state, clock, transport.HOLE_GRACE_S * 10) is None
        assert state._refetch == {} and state._next_offset[TP0] == 60


def test_a_record_not_delivered_yet_is_waited_for(clock: Clock):
    state = consumer(committed=50, acked=[51, 52], next_offset=50)  # acknowledged before a seek back to 50
    state._new_offset(TP0)
    assert commit_after(state, clock, transport.HOLE_GRACE_S * 10) is None
    assert state._refetch == {}


def test_the_clock_starts_again_when_the_position_moves(clock: Clock):
    state = consumer(committed=10, acked=[12], next_offset=20)
    state._new_offset(TP0)
    clock.now += transport.HOLE_GRACE_S - 1
    state._acked[TP0].extend([10])
    assert state._new_offset(TP0) == 11  # 10 was handled late; now 11 is missing
    state._committed_offset[TP0] = 11
    assert commit_after(state, clock, 2) is None
    assert state._refetch == {}  # 11 has been missing for 2 s only
    assert commit_after(state, clock, transport.HOLE_GRACE_S) is None
    assert state._refetch == {TP0: 11}


def test_a_partition_revoked_and_not_sought_yet_has_no_hole(clock: Clock):
    state = consumer(committed=0, acked=[216], next_offset=300)
    state._committed_offset[TP0] = None  # right after a rebalance: position unknown, nothing delivered from it
    del state._next_offset[TP0]
    state._new_offset(TP0)
    assert commit_after(state, clock, transport.HOLE_GRACE_S * 10) is None
    assert state._refetch == {} and state._holes == {}


def test_a_lost_first_record_of_a_partition_is_delivered_again(clock: Clock):
    state = consumer(committed=0, acked=[1, 2], next_offset=3)
    state._committed_offset[TP0] = None  # faust keeps a committed 0 as None
    state._new_offset(TP0)
    assert commit_after(state, clock, transport.HOLE_GRACE_S) is None
    assert state._refetch == {TP0: 0} and state._next_offset[TP0] == 0


def test_the_same_offset_queued_on_another_partition_does_not_hold_the_hole(clock: Clock):
    state = consumer(committed=50, acked=[51], next_offset=60)
    other = TP("commerce.commands.orders", 5)
    channel = next(iter(state.app.topics._tp_index[TP0]))
    channel.queue._queue.append(SimpleNamespace(message=message(50, tp=other)))
    state.app.in_progress.begin(message(50, tp=other))
    state._new_offset(TP0)
    assert commit_after(state, clock, transport.HOLE_GRACE_S) is None
    assert state._refetch == {TP0: 50}


async def test_an_event_faust_skips_is_not_acknowledged_and_one_an_agent_handled_is():
    """faust's stream acknowledges an event it drops around a rebalance (``event.ack()``); agents go through
    ``Stream.ack``. Only theirs counts."""
    acks: list[int] = []
    consumer = SimpleNamespace(ack=lambda m: acks.append(m.offset) or True)
    app = SimpleNamespace(consumer=consumer)
    sensors = SimpleNamespace(on_stream_event_out=lambda *a: None, on_message_out=lambda *a: None)
    msg = SimpleNamespace(tp=TP0, offset=7, acked=False, refcount=1)
    msg.ack = lambda c: (setattr(msg, "refcount", msg.refcount - 1) or msg.refcount == 0) and c.ack(msg)
    event = Event.__new__(Event)
    event.app, event.message = app, msg

    assert event.ack() is False and acks == [] and msg.refcount == 1  # skipped by faust: nothing happens

    stream = Stream.__new__(Stream)
    stream._on_stream_event_out, stream._on_message_out = sensors.on_stream_event_out, sensors.on_message_out
    assert await stream.ack(event) is True
    assert acks == [7] and msg.refcount == 0
    await asyncio.sleep(0)


async def test_flow_control_counts_every_time_it_empties_the_agents_queues():
    """faust empties the queues when a rebalance begins and again when it resumes the flow, after the fetch loop
    has started delivering: the fetch loop seeks back after each (FlowControl.clears)."""
    flow_control = FlowControl()
    queue: FlowControlQueue[int] = FlowControlQueue(maxsize=10, flow_control=flow_control, clear_on_resume=True)
    flow_control.resume()
    assert flow_control.clears == 1
    queue.put_nowait(163)  # delivered between the seek and the resume
    flow_control.resume()
    assert queue.empty() and flow_control.clears == 2
    flow_control.suspend()
    flow_control.clear()  # a rebalance begins
    assert flow_control.clears == 3
