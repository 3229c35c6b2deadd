"""A rebalance or a stop waits for the messages agents are handling, and for nothing else (agents/transport.py).

faust's own wait also waited for messages it had dropped from one agent's queue at the suspension, which are
never acknowledged: seen blocking a rebalance for minutes.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents.transport import Consumer, InProgress, Yielded


class Dropped:
    """A message faust tracked and then dropped from a queue: never to be acknowledged."""


def consumer(in_progress: InProgress) -> Any:
    state: Any = SimpleNamespace(
        app=SimpleNamespace(in_progress=in_progress, agents=SimpleNamespace(human_tracebacks=lambda: "")),
        should_stop=False,
        diag=SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None),
        _unacked_messages={Dropped()},
        commits=[],
    )

    async def commit() -> None:
        state.commits.append("commit")

    async def commit_and_end_transactions() -> None:
        state.commits.append("final")

    state.commit, state.commit_and_end_transactions = commit, commit_and_end_transactions
    return state


async def test_a_message_no_agent_is_handling_does_not_hold_the_wait_and_is_forgotten():
    state = consumer(InProgress())
    await asyncio.wait_for(Consumer.wait_empty(state), timeout=1)
    assert not state._unacked_messages
    assert state.commits == ["final"]


async def test_the_wait_lasts_while_an_agent_handles_a_message_and_commits_once_it_is_done():
    in_progress = InProgress()
    in_progress.begin("handled")
    state = consumer(in_progress)
    waiting = asyncio.create_task(Consumer.wait_empty(state))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert "final" not in state.commits

    in_progress.end("handled")
    await asyncio.wait_for(waiting, timeout=2)
    assert state.commits[-1] == "final"


async def test_a_handler_waiting_to_try_again_gives_its_message_back_and_the_wait_ends():
    in_progress = InProgress()

    pausing = asyncio.Event()

    async def handler_retrying_forever() -> None:
        with in_progress.handling("retrying"):
            while True:
                pausing.set()
                await in_progress.pause(0.05)

    retrying = asyncio.create_task(handler_retrying_forever())
    await asyncio.wait_for(pausing.wait(), timeout=2)  # it holds its message, waiting to try again
    state = consumer(in_progress)
    await asyncio.wait_for(Consumer.wait_empty(state), timeout=2)
    with pytest.raises(Yielded):
        await retrying
    assert state.commits == ["final"]
    await asyncio.wait_for(in_progress.pause(0.01), timeout=1)  # the wait is over: a pause is a sleep again
