"""Fakes shared by component tests: a recording sink instead of Kafka, an in-memory schema registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from schemas.codec import Codec
from schemas.messages import Message
from schemas.registry import InMemoryRegistry


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@dataclass
class RecordingSink:
    """Records what a flow sends, in order."""

    codec: Codec
    sent: list[Sent] = field(default_factory=list)

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append(Sent(topic, key, value, dict(headers)))

    def messages(self, topic: str) -> list[Message]:
        return [self.codec.decode(s.value) for s in self.sent if s.topic == topic]

    def records(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


@pytest.fixture
def codec() -> Codec:
    codec = Codec(InMemoryRegistry())
    codec.prepare()
    return codec


@pytest.fixture
def sink(codec: Codec) -> RecordingSink:
    return RecordingSink(codec)
