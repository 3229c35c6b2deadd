"""GET /dashboard, the live page (static files served from the package, no build step), and one order's timeline.

GET /v1/orders/{order_id}/timeline answers on the worker that owns the order (forwarded there like every keyed
read): the order's history (event times) with, for each step, the wall-clock time the orders flow applied it on
that worker and the stage latencies between steps. The wall-clock times are the worker's memory of recent
orders (:class:`streamcart.telemetry.Telemetry`); for steps it no longer remembers (after a restart, say), the time
the message that made the step was written to Kafka, which the order's history keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from api import gather, handling
from api.auth import authenticate
from api.errors import NotFound
from api.models import TimelineOut
from api.routing import forward
from api.spec import Route
from streamcart.telemetry import Telemetry

STATIC = Path(__file__).parent / "static"


def setup_routes(app: web.Application) -> None:
    gather.setup(app, app[handling.SETTINGS])
    # A route per file rather than add_static: any other name is then an unknown route, the JSON 404 every
    # unknown path gets (add_static finds a file missing only after every middleware ran, and answers it empty).
    for path in STATIC.iterdir():
        if path.is_file():
            app.router.add_get(f"/dashboard/static/{path.name}", _static_file(path))


def _static_file(path: Path) -> Any:
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return serve


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-cache"})


async def timeline(request: web.Request) -> web.Response:
    secret = request.app[handling.SETTINGS].jwt_secret.get_secret_value()
    principal = authenticate(request.headers.get("Authorization"), secret)
    order_id = handling.identifier(request, "order_id")
    worker = request.app[handling.WORKER]
    if (owner := handling.owner_elsewhere(request, "orders", order_id)) is not None:
        return await forward(request, request.app[gather.PEERS], owner, worker.index)
    order = worker.order(order_id)
    await handling.stored(worker, f"order {order_id}")
    if order is None or not principal.may_see_customer(order.customer_id):
        raise NotFound(f"order {order_id} not found")
    telemetry = getattr(worker, "telemetry", None)
    steps_seen = telemetry.timeline(order_id) if isinstance(telemetry, Telemetry) else []
    recorded = {step.event_id: step.recorded_at for step in steps_seen}
    steps: list[dict[str, Any]] = []
    previous: int | None = None
    for entry in order.history:
        at = recorded.get(entry.event_id, entry.recorded_at)
        steps.append({
            "event": entry.event, "event_id": entry.event_id, "at": entry.at, "detail": entry.detail,
            "recorded_at": at,
            "since_placed_ms": None if at is None else at - order.placed_at,
            "stage_ms": None if at is None or previous is None else at - previous,
        })
        previous = at if at is not None else previous
    return web.json_response({
        "order_id": order.order_id, "status": order.status, "customer_id": order.customer_id,
        "total_cents": order.total_cents, "currency": order.currency, "cancel_reason": order.cancel_reason,
        "placed_at": order.placed_at, "steps": steps,
    })


ROUTES: tuple[Route, ...] = (
    Route("GET", "/dashboard", page, "the live dashboard (an HTML page; it asks for an admin token)", "live",
          auth=False, responses={200: None}, content_type="text/html"),
    Route("GET", "/v1/orders/{order_id}/timeline", timeline, "an order's steps with when each was applied (or, "
          "after a restart, recorded in Kafka) and the stage latencies", "orders", responses={200: TimelineOut},
          errors=(404, 503)),
)
