"""A worker writes only while it is surely a member of its group (agents.transport.Lease): one paused past its
session wakes to handlers that would write into partitions another worker owns by then."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from agents import runtime
from agents.runtime import consume
from agents.transport import InProgress, Lease, Yielded
from tests.unit.agents.test_consume import Event, FakeStream, _until, running


def test_a_lease_holds_until_it_watches_a_coordinator_then_for_a_share_of_the_session_after_the_last_heartbeat():
    lease = Lease(session_timeout_s=10.0)
    lease.renewed_at -= 3_600
    assert lease.valid()  # no consumer (a test's agents): never held up
    lease.watch(Coordinator())
    assert lease.valid()
    lease.renewed_at -= 6.9
    assert lease.valid()
    lease.renewed_at -= 0.2  # 7.1 s: the broker may drop the member before a write sent now reaches it
    assert not lease.valid()
    lease.renew()
    assert lease.valid()


class Coordinator:
    """What the lease wraps of aiokafka's GroupCoordinator: heartbeats answered after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.answers: list[bool] = []
        self.delay_s = delay_s
        self.resets = 0

    async def _do_heartbeat(self) -> bool:
        await asyncio.sleep(self.delay_s)
        return self.answers.pop(0)

    def reset_generation(self) -> None:
        self.resets += 1


async def test_a_heartbeat_taken_renews_the_lease_from_when_it_was_sent_and_a_failed_one_does_not():
    lease, coordinator = Lease(session_timeout_s=10.0), Coordinator()
    lease.watch(coordinator)
    coordinator.answers = [False, True]
    lease.renewed_at -= 60
    assert await coordinator._do_heartbeat() is False
    assert not lease.valid()
    assert await coordinator._do_heartbeat() is True
    assert lease.valid()
    # An answer read long after it was sent (it waited in the socket through a pause): the member may be gone.
    late = Coordinator(delay_s=0.3)
    lease = Lease(session_timeout_s=0.3)  # valid for 0.21 s
    lease.watch(late)
    late.answers = [True]
    assert await late._do_heartbeat() is True
    assert not lease.valid()


async def test_the_coordinator_saying_this_worker_is_no_member_ends_the_lease_and_older_answers_do_not_renew_it():
    """Seen live: a worker paused while a heartbeat was in flight woke to a stale "still a member", and a moment
    later to "unknown member id"; between the two its handlers wrote. The reset ends the lease at once."""
    lease, coordinator = Lease(session_timeout_s=10.0), Coordinator(delay_s=0.05)
    lease.watch(coordinator)
    coordinator.answers = [True, True]
    in_flight = asyncio.create_task(coordinator._do_heartbeat())  # sent before the reset, answered after it
    await asyncio.sleep(0.01)
    coordinator.reset_generation()  # an unknown member id (aiokafka resets the generation)
    assert coordinator.resets == 1 and not lease.valid()
    assert await in_flight is True
    assert not lease.valid()  # a "still a member" sent before the reset vouches for nothing
    assert await coordinator._do_heartbeat() is True  # one sent after it (the worker joined again)
    assert lease.valid()


def test_aiokafka_heartbeats_through_the_attributes_the_lease_wraps():
    """The lease renews only if aiokafka's heartbeat routine calls ``self._do_heartbeat()``, and ends only if its
    resets go through ``self.reset_generation()``: were either renamed, every flow would wait for good, or never, so
    this pins them."""
    routine = inspect.getsource(GroupCoordinator._heartbeat_routine)
    assert "await self._do_heartbeat()" in routine
    assert "self.reset_generation()" in inspect.getsource(GroupCoordinator._do_heartbeat)


async def test_a_handler_waits_for_the_lease_and_gives_its_message_back_when_a_rebalance_begins_first():
    lease, in_progress = Lease(session_timeout_s=10.0), InProgress()
    lease.watch(Coordinator())
    await asyncio.wait_for(lease.held(in_progress), 1)  # valid: at once
    lease.renewed_at -= 60
    waiting = asyncio.create_task(lease.held(in_progress))
    await asyncio.sleep(0.25)
    assert not waiting.done()
    lease.renew()  # the next heartbeat: still a member
    await asyncio.wait_for(waiting, 1)
    lease.renewed_at -= 60
    waiting = asyncio.create_task(lease.held(in_progress))
    await asyncio.sleep(0.05)
    in_progress.ask_to_yield()  # the rebalance the lost session brings
    with pytest.raises(Yielded):
        await asyncio.wait_for(waiting, 1)


async def test_consume_leaves_a_message_given_back_unacknowledged_and_goes_on(monkeypatch):
    async def process(_runtime: Any, event: Event, _handler: Any, _flow: str) -> None:
        if event.offset == 1:
            raise Yielded  # not surely a member, and a rebalance began

    monkeypatch.setattr(runtime, "process", process)
    stream = FakeStream([Event(b"k", 0), Event(b"k", 1), Event(b"j", 2)])
    rt = running()
    agent = asyncio.create_task(consume(rt, stream, None, flow="test"))
    await _until(stream.drained.is_set)
    await _until(lambda: stream.acked == [0, 2])
    assert not rt.app.in_progress
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent
