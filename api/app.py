"""The aiohttp application factory: ``init_app(settings, worker) -> web.Application``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import ClientSession, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import analytics, dashboard, stream
from api.auth import Principal, authenticate
from api.context import WorkerView
from api.errors import NotFound, Unavailable, error_middleware
from api.routing import forward
from streamcart.domain.order_state import OrderState
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
    for module in (analytics, stream, dashboard):
        module.setup_routes(app)
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
    app.router.add_get("/v1/stock/{sku}", get_stock)
    app.router.add_get("/v1/products/{sku}", get_product)


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


async def _forward_unless_owner(request: web.Request, table: str, key: str) -> web.Response | None:
    """The owner's answer when another worker owns ``key`` of ``table``; ``None`` when this worker does."""
    worker = request.app[WORKER]
    owner = worker.owner_url(table, key)
    if owner is None:
        raise Unavailable("partitions are being reassigned; retry shortly", headers={"Retry-After": "1"})
    if owner.rstrip("/") != request.app[SETTINGS].worker_url(worker.index):
        return await forward(request, request.app[HTTP], owner, worker.index)
    return None


async def get_order(request: web.Request) -> web.Response:
    principal = _principal(request)
    order_id = request.match_info["order_id"]
    if (forwarded := await _forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    order = request.app[WORKER].order(order_id)
    # Another customer's order is indistinguishable from a missing one.
    if order is None or not principal.may_see_customer(order.customer_id):
        raise NotFound(f"order {order_id} not found")
    return web.json_response(order_json(order))


async def get_stock(request: web.Request) -> web.Response:
    _principal(request)
    sku = request.match_info["sku"]
    if (forwarded := await _forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    stock = request.app[WORKER].stock(sku)
    if stock is None:
        raise NotFound(f"no stock record for {sku}")
    return web.json_response({
        "sku": sku, "on_hand": stock.on_hand, "reserved": stock.reserved, "available": stock.available,
        "adjusted": stock.adjusted, "sold": stock.sold, "restocked": stock.restocked,
    })


async def get_product(request: web.Request) -> web.Response:
    _principal(request)
    sku = request.match_info["sku"]
    if (forwarded := await _forward_unless_owner(request, "catalog", sku)) is not None:
        return forwarded
    product = request.app[WORKER].product(sku)
    if product is None:
        raise NotFound(f"no product {sku}")
    return web.json_response(product.model_dump(include={"sku", "name", "unit_price_cents", "currency", "active"}))


def order_json(order: OrderState) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "status": order.status,
        "lines": [line.model_dump() for line in order.line_views()],
        "total_cents": order.total_cents,
        "currency": order.currency,
        "payment": order.payment.model_dump(include={"status", "amount_cents", "authorization_id", "decline_reason"})
        if order.payment else None,
        "shipment": order.shipment.model_dump() if order.shipment else None,
        "cancel_reason": order.cancel_reason,
        "cancel_detail": order.cancel_detail,
        "placed_at": order.placed_at,
        "deadline": order.deadline,
        "history": [entry.model_dump() for entry in order.history],
    }
