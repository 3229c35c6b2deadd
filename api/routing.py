"""Answering a keyed request on the worker that owns the key: forward it there with method, headers and body.

faust's own router drops bodies and hashes the JSON-serialised key (notes/faust.md), so this one asks the
assignor for the owner of the key's partition and replays the whole request, one hop at most.
"""

from __future__ import annotations

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from api.errors import Unavailable
from streamcart.tracing import call_span

FORWARDED_HEADER = "X-Streamcart-Forwarded-By"
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
RETRY_AFTER_S = "1"
#: Longer than the longest long-poll a client may ask for, so a forwarded ``?wait=`` still works.
FORWARD_TIMEOUT_S = 35.0


async def forward(request: web.Request, session: ClientSession, owner_url: str, self_index: int) -> web.Response:
    """Replay ``request`` on the worker at ``owner_url`` and relay its answer."""
    if FORWARDED_HEADER in request.headers:
        # Already forwarded once and still not the owner: ownership is moving. Say so rather than loop.
        raise Unavailable("partition ownership is changing; retry shortly", headers={"Retry-After": RETRY_AFTER_S})
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers[FORWARDED_HEADER] = str(self_index)
    body = await request.read()
    url = owner_url.rstrip("/") + request.rel_url.path_qs
    try:
        with call_span(f"forward {request.method}") as traceparent:  # the owner answers in this request's trace
            if traceparent:
                headers["traceparent"] = traceparent
            async with session.request(
                request.method, url, headers=headers, data=body,
                timeout=ClientTimeout(total=FORWARD_TIMEOUT_S, sock_connect=2),
            ) as upstream:
                payload = await upstream.read()
                relay = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=relay)
    except (ClientError, TimeoutError) as exc:
        raise Unavailable(
            f"the worker owning this key did not answer ({type(exc).__name__})",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from exc
