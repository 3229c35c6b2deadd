"""The error middleware: a client that went away is no server error (no ERROR line, no 5xx in the metrics)."""

from __future__ import annotations

import logging

from aiohttp import web

from api.errors import CLIENT_CLOSED, error_middleware


async def test_a_client_gone_while_its_body_was_read_is_a_499_logged_at_info(aiohttp_client, caplog):
    async def handler(request: web.Request) -> web.Response:
        raise ConnectionResetError("Connection lost")  # what reading the body of a closed connection raises

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/orders", handler)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="api.errors"):
        response = await client.post("/v1/orders", data=b"{}")
    assert response.status == CLIENT_CLOSED == 499
    assert (await response.json())["error"]["code"] == "client_closed_request"
    assert [r.levelno for r in caplog.records if r.name == "api.errors"] == [logging.INFO]
