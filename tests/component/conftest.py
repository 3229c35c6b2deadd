"""Fakes shared by component tests: a recording sink instead of Kafka, an in-memory schema registry; and the API served
as a worker serves it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agents.runtime import Runtime
from api.errors import JsonErrorsRunner
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


#: The wall clock as the flows read it here: a minute after the epoch, where these tests' messages are dated.
CLOCK_MS = 60_000


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Stands the flows' clock (:meth:`Runtime.now_ms`) at :data:`CLOCK_MS`; call the fixture to move it."""
    def stand(ms: int) -> None:
        monkeypatch.setattr(Runtime, "now_ms", lambda self: ms)

    stand(CLOCK_MS)
    return stand


@pytest.fixture
def codec() -> Codec:
    codec = Codec(InMemoryRegistry())
    codec.prepare()
    return codec


@pytest.fixture
def sink(codec: Codec) -> RecordingSink:
    return RecordingSink(codec)


class WorkerLikeServer(TestServer):
    """aiohttp's test server, run as a worker runs the API (agents/worker.py): through :class:`JsonErrorsRunner`, and
    without cancelling a handler whose client went away (aiohttp's test server cancels it, a worker's does not)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return JsonErrorsRunner(self.app, **kwargs)


@pytest.fixture
async def aiohttp_server() -> Any:
    """pytest-aiohttp's server fixture, serving with :class:`WorkerLikeServer`."""
    servers: list[WorkerLikeServer] = []

    async def serve(app: web.Application, **kwargs: Any) -> WorkerLikeServer:
        server = WorkerLikeServer(app, **kwargs)
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client fixture; an app is served by :class:`WorkerLikeServer`."""

    async def client(app: Any, **kwargs: Any) -> Any:
        return await aiohttp_client(WorkerLikeServer(app) if isinstance(app, web.Application) else app, **kwargs)

    return client
