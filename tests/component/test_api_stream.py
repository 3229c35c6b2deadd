"""The live stream's own limits: it ends when the token it was opened with expires (the browser reconnects and
must bring a new one), and a worker serves a bounded number at once."""

from __future__ import annotations

import asyncio
import time

import pytest

import api.auth as auth
import api.stream as live
from api.app import init_app
from api.auth import issue_token
from tests.component.test_api_orders import SECRET, SETTINGS, FakeWorker


@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(init_app(SETTINGS, FakeWorker()))


async def test_a_stream_ends_when_its_token_expires_and_the_token_opens_no_other(client, monkeypatch):
    monkeypatch.setattr(auth, "LEEWAY_S", 0)
    token = issue_token(SECRET, "ops", ["admin"], ttl_s=2)
    opened = time.time()
    response = await client.get("/v1/stream", params={"token": token})
    assert response.status == 200
    body = await asyncio.wait_for(response.content.read(), timeout=15)  # to its end: the server closed it
    assert body.startswith(b"retry: ") and body.endswith(b'event: expired\ndata: {"reason": "token expired"}\n\n')
    assert time.time() - opened >= 1  # it ran until the expiry, not shorter (expiry: opened + 2 s, whole seconds)
    again = await client.get("/v1/stream", params={"token": token})
    assert again.status == 401
    assert (await again.json())["error"]["message"] == "token expired"


async def test_a_worker_serving_its_most_streams_answers_the_next_with_503(client, monkeypatch):
    monkeypatch.setattr(live, "MAX_STREAMS", 1)
    token = issue_token(SECRET, "ops", ["admin"])
    first = await client.get("/v1/stream", params={"token": token})
    assert first.status == 200
    await first.content.readuntil(b"\n\n")  # the stream is open and subscribed
    second = await client.get("/v1/stream", params={"token": token})
    assert second.status == 503
    assert (await second.json())["error"]["code"] == "unavailable" and second.headers["Retry-After"] == "5"
    first.close()


async def test_the_stream_carries_its_request_id_like_every_other_response(client):
    response = await client.get("/v1/stream", params={"token": issue_token(SECRET, "ops", ["admin"])},
                                headers={"X-Request-Id": "req-stream-1"})
    assert response.status == 200 and response.headers["X-Request-Id"] == "req-stream-1"
    response.close()
