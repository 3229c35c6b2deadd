"""A stand-in for aiokafka's producer, shared by the producer tests of this folder."""

from __future__ import annotations

import asyncio
from typing import Any


class FakeKafkaProducer:
    """aiokafka's producer as faust's uses it: ``send`` returns the record's delivery future; ``flush`` waits for
    every batch. A batch's future is settled before its records' futures, as aiokafka's ``MessageBatch`` does."""

    def __init__(self) -> None:
        self.batches: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        batch, record = loop.create_future(), loop.create_future()
        self.batches.append((batch, record))
        return record

    def deliver(self, index: int) -> None:
        for future in self.batches[index]:
            future.set_result(None)

    def fail(self, index: int, error: BaseException) -> None:
        batch, record = self.batches[index]
        batch.set_exception(error)
        batch.exception()  # consumed, as aiokafka does
        record.set_exception(error)

    async def flush(self) -> None:
        waiting = [batch for batch, _ in self.batches if not batch.done()]
        if waiting:
            await asyncio.wait(waiting)
