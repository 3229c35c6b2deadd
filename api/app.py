"""The aiohttp application factory: ``init_app(settings, worker, commands) -> web.Application`` (DESIGN.md §5).

Every worker serves the same API. A request about a key is answered by the worker that owns the key's partition
(another worker forwards it there, body and all: :mod:`api.routing`); a list is gathered from every worker. A
command is answered 202 only once the broker acknowledged it (:mod:`api.commands`); bad input is refused with the
JSON error shape before anything is sent.

The routes live by what they are about: orders and shipments (:mod:`api.orders`), the catalog and stock
(:mod:`api.catalog`), analytics, the live stream and the dashboard; what their handlers share (the app's keys, the
caller, bodies, the owner of a key) is :mod:`api.handling`, lists gathered from every worker :mod:`api.lists`. This
module builds the app, its middlewares, CORS and the health and documentation routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientSession, TCPConnector, ThreadedResolver, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import analytics, catalog, dashboard, orders, stream
from api.commands import CommandPort, reachable
from api.context import WorkerView
from api.errors import error_middleware, expect_handler
from api.handling import (
    ANSWERED_HERE,
    COMMANDS,
    HTTP,
    HTTP_WAITS,
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    SERVED_BY,
    SETTINGS,
    SPEC,
    WORKER,
)
from api.middleware import (
    TokenBuckets,
    header_limit_middleware,
    one_reading_middleware,
    rate_limit_middleware,
    request_id_header,
    request_id_middleware,
)
from api.models import HealthOut, ReadyOut
from api.routing import PEER_PROOF, PeerProof
from api.spec import Route, docs_page, openapi
from streamcart.settings import Settings
from streamcart.telemetry import KAFKA_REACHABLE

#: Connections a worker keeps for the long-polls it forwards to their orders' owners.
WAIT_CONNECTIONS = 500
API_VERSION = "1.0.0"


def init_app(settings: Settings, worker: WorkerView, commands: CommandPort | None = None) -> web.Application:
    buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    proof = PeerProof(settings.jwt_secret.get_secret_value())
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, header_limit_middleware(proof.forwarded),
                     one_reading_middleware, rate_limit_middleware(buckets, proof.forwarded)],
        client_max_size=MAX_BODY_BYTES,
        # Bodies are decoded by json_body, where a coding that fails is a JSON error (api/content_coding.py).
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app[WORKER] = worker
    app[PEER_PROOF] = proof
    if commands is not None:
        app[COMMANDS] = commands
    app.cleanup_ctx.append(_http_session)
    app.on_response_prepare.append(_served_by)
    app.on_response_prepare.append(request_id_header)
    routes = ROUTES + orders.ROUTES + catalog.ROUTES + analytics.ROUTES + stream.ROUTES + dashboard.ROUTES
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, expect_handler=expect_handler)
        if route.tag == "health":  # load balancers' checks may ask with HEAD
            app.router.add_route("HEAD", route.path, route.handler, expect_handler=expect_handler)
    app[SPEC] = openapi(routes, title="streamcart", version=API_VERSION)
    if origins := tuple(o.strip() for o in settings.cors_origins.split(",") if o.strip()):
        # After the request id (every answer has one), before the rate limit (a preflight has no token).
        app.middlewares.insert(1, _cors_preflight(origins))
        app.on_response_prepare.append(_cors(origins))
    for module in (orders, catalog, analytics, stream, dashboard):
        module.setup_routes(app)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    # Waits hold their connections for up to 30 s each: more of them than of quick forwards (aiohttp's 100).
    # Both look workers up with the system's resolver, not aiohttp's default (c-ares, once aiodns is installed for the
    # webhooks): c-ares keeps an answer for its TTL (Docker's DNS gives 600 s), so a worker back at a new address would
    # be called at its old one until then.
    async with ClientSession(connector=TCPConnector(resolver=ThreadedResolver())) as session, ClientSession(
            connector=TCPConnector(limit=WAIT_CONNECTIONS, resolver=ThreadedResolver())) as waits:
        app[HTTP] = session
        app[HTTP_WAITS] = waits
        yield


async def _served_by(request: web.Request, response: web.StreamResponse) -> None:
    """A keyed request answered by its owner (this worker) says so; a forwarded one relays its owner's header."""
    if request.get(ANSWERED_HERE):
        response.headers.setdefault(SERVED_BY, str(request.app[WORKER].index))


#: What a browser page of an allowed origin may send (CORS preflight) and read of an answer.
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Content-Encoding", IDEMPOTENCY_HEADER, "X-Request-Id",
                        "traceparent")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "X-Request-Id", SERVED_BY)
#: How long a browser may keep a preflight's answer.
CORS_MAX_AGE_S = 600


def _allowed(origins: tuple[str, ...], origin: str | None) -> bool:
    return bool(origin) and ("*" in origins or origin in origins)


def _cors_preflight(origins: tuple[str, ...]) -> Any:
    """Answers a browser's preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin:
    204 with the methods the path takes and the headers a page may send. Every ``/v1/`` call carries a token, so a
    browser asks first, without it, before each such call."""

    @web.middleware
    async def preflight(request: web.Request, handler: Any) -> web.StreamResponse:
        asked = request.headers.get("Access-Control-Request-Method")
        refused = request.match_info.http_exception  # no route takes OPTIONS: which methods the path takes
        if (request.method != "OPTIONS" or asked is None or not _allowed(origins, request.headers.get("Origin"))
                or not isinstance(refused, web.HTTPMethodNotAllowed)):  # not a preflight, or no such path (404)
            response: web.StreamResponse = await handler(request)
            return response
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ", ".join(sorted(refused.allowed_methods)),
            "Access-Control-Allow-Headers": ", ".join(CORS_REQUEST_HEADERS),
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        })

    return preflight


def _cors(origins: tuple[str, ...]) -> Any:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if _allowed(origins, origin):
            response.headers["Access-Control-Allow-Origin"] = origin or ""
            response.headers["Access-Control-Expose-Headers"] = ", ".join(CORS_EXPOSED_HEADERS)
            response.headers["Vary"] = "Origin"

    return add_headers


# --- Health, metrics, the spec ----------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once tables are recovered and this worker holds partitions (the stack waits on this), while its API
    reaches Kafka: a worker that cannot send a command takes no order, and its tables stand still."""
    worker = request.app[WORKER]
    kafka = reachable(request.app.get(COMMANDS))
    body = {
        "ready": worker.ready() and kafka,
        "worker": worker.index,
        "kafka": kafka,
        "recovered": worker.recovered(),
        "rebalancing": worker.rebalancing(),
        "assigned": worker.assigned(),
    }
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    KAFKA_REACHABLE.set(1 if reachable(request.app.get(COMMANDS)) else 0)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPEC])


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(request.app[SPEC]), content_type="text/html")


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "liveness", "health", auth=False, responses={200: HealthOut}),
    Route("GET", "/readyz", readyz, "readiness: recovered, assigned and reaching Kafka", "health", auth=False,
          responses={200: ReadyOut, 503: ReadyOut}),
    Route("GET", "/metrics", metrics, "Prometheus metrics", "health", auth=False, responses={200: None},
          content_type="text/plain"),
    Route("GET", "/openapi.json", openapi_json, "this document", "docs", auth=False, in_schema=False),
    Route("GET", "/docs", docs, "the API's documentation page", "docs", auth=False, in_schema=False),
)
