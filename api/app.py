"""The aiohttp application factory: ``init_app(settings, worker) -> web.Application``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import ClientSession, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import Principal, authenticate
from api.context import WorkerView
from api.errors import NotFound, Unavailable, error_middleware
from api.routing import forward
from streamcart.domain.orders import OrderState
from streamcart.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
WORKER = web.AppKey("worker", WorkerView)
HTTP = web.AppKey("http", ClientSession)

MAX_BODY_BYTES = 64 * 1024


def init_app(settings: Settings, worker: WorkerView) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[WORKER] = worker
    app.cleanup_ctx.append(_http_session)
    setup_routes(app)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    async with ClientSession() as session:
        app[HTTP] = session
        yield


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/orders/{order_id}", get_order)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once tables are recovered and this worker holds partitions (the stack waits on this)."""
    worker = request.app[WORKER]
    body = {
        "ready": worker.ready(),
        "worker": worker.index,
        "recovered": worker.recovered(),
        "rebalancing": worker.rebalancing(),
        "assigned": worker.assigned(),
    }
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _principal(request: web.Request) -> Principal:
    secret = request.app[SETTINGS].jwt_secret.get_secret_value()
    return authenticate(request.headers.get("Authorization"), secret)


async def get_order(request: web.Request) -> web.Response:
    principal = _principal(request)
    order_id = request.match_info["order_id"]
    worker = request.app[WORKER]
    owner = worker.owner_url("orders", order_id)
    if owner is None:
        raise Unavailable("partitions are being reassigned; retry shortly", headers={"Retry-After": "1"})
    if owner.rstrip("/") != request.app[SETTINGS].worker_url(worker.index):
        return await forward(request, request.app[HTTP], owner, worker.index)
    order = worker.order(order_id)
    # Another customer's order is indistinguishable from a missing one.
    if order is None or not principal.may_see_customer(order.customer_id):
        raise NotFound(f"order {order_id} not found")
    return web.json_response(order_json(order))


def order_json(order: OrderState) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "status": order.status,
        "lines": [line.model_dump() for line in order.lines],
        "currency": order.currency,
        "placed_at": order.placed_at,
        "deadline": order.deadline,
        "history": [entry.model_dump() for entry in order.history],
    }
