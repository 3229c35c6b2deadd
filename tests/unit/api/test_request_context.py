"""A request's log lines carry its request id and the caller's trace id."""

import io
import json
import logging

from aiohttp import web

from api.middleware import request_id_middleware
from streamcart.logs import JsonFormatter
from streamcart.tracing import new_traceparent, trace_id


async def test_a_log_line_written_while_a_request_is_handled_carries_its_request_id_and_trace(aiohttp_client):
    async def handler(request: web.Request) -> web.Response:
        logging.getLogger("api.test").warning("handling")
        return web.Response(status=204)

    app = web.Application(middlewares=[request_id_middleware])
    app.router.add_get("/x", handler)
    out = io.StringIO()
    capture = logging.StreamHandler(out)
    capture.setFormatter(JsonFormatter())
    logging.getLogger("api.test").addHandler(capture)
    try:
        client = await aiohttp_client(app)
        traceparent = new_traceparent()
        response = await client.get("/x", headers={"X-Request-Id": "req-1", "traceparent": traceparent})
    finally:
        logging.getLogger("api.test").removeHandler(capture)
    assert response.status == 204
    (entry,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (entry["message"], entry["request_id"], entry["trace_id"]) == ("handling", "req-1", trace_id(traceparent))
