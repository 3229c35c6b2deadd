"""What every request goes through: a request id, a trace, metrics by route and status, a rate limit per token."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from api.auth import credential
from api.errors import MAX_HEADERS, REQUEST_ID_HEADER, ApiError, request_id
from streamcart.logs import log_context
from streamcart.tracing import span

log = logging.getLogger(__name__)


REQUESTS = Counter("streamcart_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "streamcart_http_request_seconds", "HTTP request latency (not of the requests that wait by design: the live "
    "stream, a long-poll's ?wait=S)", ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


REQUEST_ID = web.RequestKey("streamcart.request_id", str)


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """The request id on a response its handler sends itself (the live stream: prepared before the middleware
    sees it)."""
    if (rid := request.get(REQUEST_ID)) is not None:
        response.headers.setdefault(REQUEST_ID_HEADER, rid)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Echo a sane ``X-Request-Id`` or mint one; it is on every response and in the logs. The request is handled
    as a span of the caller's trace (its ``traceparent``, or a new trace), which the commands it sends continue."""
    rid = request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
    started = time.perf_counter()
    route = _route_label(request)
    with span(request.headers.get("traceparent"), f"{request.method} {route}", "server"), log_context(request_id=rid):
        response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    REQUESTS.labels(route, request.method, str(response.status)).inc()
    if not _waits_by_design(request, route):
        LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    return response


#: Set on a request by a handler that waited for the client's sake (a long-poll that waited for its order).
WAITED = web.RequestKey("streamcart.waited", bool)


def _waits_by_design(request: web.Request, route: str) -> bool:
    """Whether the request's time is the client's wait, not the server's work: the live stream (a session of
    minutes), a long-poll that did wait (``?wait=S``, up to 30 s; the handler says so, not the query)."""
    return route == "/v1/stream" or bool(request.get(WAITED))


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class TokenBuckets:
    """One token bucket per bearer token: ``rate`` requests per second with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, max_tokens: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tokens = max_tokens
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def take(self, token: str, now: float) -> float:
        """Take one request from ``token``'s bucket: 0 when allowed, else seconds until one would be."""
        key = hashlib.blake2b(token.encode(errors="surrogateescape"), digest_size=16).digest()
        level, at = self._buckets.pop(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - at) * self.rate)
        if level >= 1:
            self._buckets[key] = (level - 1, now)
            wait = 0.0
        else:
            self._buckets[key] = (level, now)
            wait = (1 - level) / self.rate
        while len(self._buckets) > self.max_tokens:
            self._buckets.popitem(last=False)
        return wait


def header_limit_middleware(forwarded: Callable[[web.Request], bool]) -> Any:
    """At most :data:`~api.errors.MAX_HEADERS` header lines in a client's request: the server's parser takes a few
    more (:class:`~api.errors.JsonErrorsRunner`) for what a worker ``forwarded`` adds to them."""

    @web.middleware
    async def header_limit(request: web.Request, handler: Any) -> web.StreamResponse:
        if len(request.raw_headers) > MAX_HEADERS and not forwarded(request):
            raise ApiError(f"the request has {len(request.raw_headers)} header lines; at most {MAX_HEADERS} are read")
        response: web.StreamResponse = await handler(request)
        return response

    return header_limit


#: Headers a request carries once at most. Two could be read two ways: aiohttp's ``headers.get`` takes the first,
#: a proxy may take the last or join them ("x-1, x-2"); and an idempotency key or a credential meant one way must not
#: be taken the other (as with a JSON body's key named twice, api/handling.py).
SINGLE_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type", "Content-Encoding")


@web.middleware
async def one_reading_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse (400) a request whose headers or query could be read two ways: a header of :data:`SINGLE_HEADERS` or a
    query parameter given twice, or a credential both in ``Authorization`` and in ``?token=``."""
    for name in SINGLE_HEADERS:
        if (count := len(request.headers.getall(name, ()))) > 1:
            raise ApiError(f"the request has {count} {name} headers: which one was meant?")
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            raise ApiError(f"the query gives {name[:80]!r} more than once: which one was meant?")
    if "Authorization" in request.headers and "token" in request.query:
        raise ApiError("the request has a token in both its Authorization header and its ?token=: send one")
    response: web.StreamResponse = await handler(request)
    return response


def rate_limit_middleware(buckets: TokenBuckets, forwarded: Callable[[web.Request], bool]) -> Any:
    """Take every request with a token from its bucket, but one ``forwarded`` by another worker: it was counted
    where it came in. A token is one bucket however its header is written, and one sent as ``?token=`` (the live
    stream's, for EventSource) is the same token."""

    @web.middleware
    async def rate_limit(request: web.Request, handler: Any) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if not authorization and (token := request.query.get("token")):
            authorization = f"Bearer {token}"
        if authorization and not forwarded(request):
            wait = buckets.take(credential(authorization), time.monotonic())
            if wait > 0:
                raise RateLimited("too many requests for this token", headers={"Retry-After": str(math.ceil(wait))})
        response: web.StreamResponse = await handler(request)
        return response

    return rate_limit
