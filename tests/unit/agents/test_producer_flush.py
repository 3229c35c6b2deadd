"""A flush before a commit waits for every buffered table write, however slow the hand-over (agents/transport.py).

faust's own flush gave up when one write took more than 0.1 s to go out, so an offset commit could pass messages
whose table writes were still buffered.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.transport import ProducerBuffer


class SlowChannel:
    """Hands each write to "Kafka" after ``delay_s`` (far more than faust's 0.1 s patience)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.sent.append(fut.n)


def write(channel: SlowChannel, n: int) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


async def test_flush_returns_only_once_every_buffered_write_was_handed_over():
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    channel = SlowChannel(delay_s=0.25)
    await buffer.start()
    try:
        for n in range(3):
            buffer.put(write(channel, n))
        await buffer.flush()
        assert channel.sent == [0, 1, 2]
        assert buffer.size == 0
    finally:
        await buffer.stop()


async def test_flush_of_an_empty_buffer_returns_at_once():
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    await buffer.start()
    try:
        await asyncio.wait_for(buffer.flush(), timeout=0.05)
    finally:
        await buffer.stop()


async def test_flush_waits_for_the_writes_buffered_before_it_not_for_those_agents_keep_adding():
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    channel = SlowChannel(delay_s=0.05)
    await buffer.start()

    async def keep_writing() -> None:  # faster than the hand-over: the buffer is never empty
        n = 3
        while True:
            buffer.put(write(channel, n))
            n += 1
            await asyncio.sleep(0.02)

    try:
        for n in range(3):
            buffer.put(write(channel, n))
        writer = asyncio.create_task(keep_writing())
        await asyncio.wait_for(buffer.flush(), timeout=5)
        assert channel.sent[:3] == [0, 1, 2]
        assert buffer.size > 0  # later writes are still buffered: the flush did not wait for them
        writer.cancel()
    finally:
        await buffer.stop()
