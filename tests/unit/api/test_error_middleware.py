"""A client that goes away while its body is read is no server error: one INFO line and a 499 (nginx's "client
closed request") in the metrics, never an ERROR with a traceback or a 500. (When the handler is already waiting,
aiohttp cancels it instead: nothing is logged or counted then.)"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from aiohttp import web

from api.errors import ClientGone, error_middleware, read_body


async def test_a_body_cut_short_is_the_client_gone():
    async def cut_short() -> bytes:
        raise ConnectionResetError("Connection lost")  # what aiohttp's payload raises once the connection is lost

    with pytest.raises(ClientGone):
        await read_body(SimpleNamespace(read=cut_short))  # type: ignore[arg-type]


async def test_the_client_gone_is_a_499_logged_once_at_info(aiohttp_client, caplog):
    async def handler(request: web.Request) -> web.Response:
        raise ClientGone("the client closed the connection before its request's body was read")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/orders", handler)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="api.errors"):
        response = await client.post("/v1/orders", data=b"{}")
    assert response.status == 499
    assert (await response.json())["error"]["code"] == "client_closed_request"
    assert [r.levelno for r in caplog.records if r.name == "api.errors"] == [logging.INFO]


async def test_any_other_connection_error_of_a_handler_is_still_the_servers(aiohttp_client, caplog):
    async def handler(request: web.Request) -> web.Response:
        raise ConnectionResetError("a peer worker hung up")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    response = await client.get("/x")
    assert response.status == 500
    assert [r.levelno for r in caplog.records if r.name == "api.errors"] == [logging.ERROR]
