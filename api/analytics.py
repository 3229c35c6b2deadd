"""GET /v1/analytics/revenue, /top-skus and /outcomes: event-time windows gathered across the workers.

Each worker holds the windows of the partitions it owns (agents/analytics.py); the worker that gets the request
asks every worker for theirs (``/v1/internal/analytics/{metric}``) and sums each window over the partitions. A
window is ``final`` once every partition's watermark has passed its end plus the allowed lateness; until then
it is the current, still growing, count. ``late_events`` counts, per metric, the events that came after their
window had closed (not in any window; reported so nothing is dropped silently); a revenue window also says what
its late confirmations would have added (``late_revenue_cents``, ``late_orders``).

``from`` and ``to`` (epoch milliseconds or ISO 8601) select the windows starting in ``[from, to)``; the default
is the last hour, to no end. Admin only.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from aiohttp import web

from api import gather, handling
from api.auth import Principal, authenticate
from api.errors import ApiError, Forbidden, Unavailable
from api.models import OutcomesOut, RevenueOut, TopSkusOut, TopSkusQuery, WindowRangeQuery
from api.spec import Route
from streamcart.domain import analytics
from streamcart.domain.analytics import PartitionView, WindowTotal

DEFAULT_SPAN_MS = 60 * 60 * 1000
NO_END = 2**62


class AnalyticsSource(Protocol):
    """What this module needs of the worker view (agents/view.py)."""

    def analytics(self, metric: str, start: int, end: int) -> list[PartitionView]: ...


#: Numbers that are epoch seconds of 2001-2286 (as milliseconds they would be days of January 1970).
SECONDS_LIKE = (10**9, 10**10)


class BadQuery(ApiError):
    status, code = 400, "bad_query"


def setup_routes(app: web.Application) -> None:
    gather.setup(app, app[handling.SETTINGS])


def require_admin(request: web.Request) -> Principal:
    secret = request.app[handling.SETTINGS].jwt_secret.get_secret_value()
    principal = authenticate(request.headers.get("Authorization"), secret)
    if not principal.is_admin:
        raise Forbidden("analytics are for admins")
    return principal


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(value: int | datetime | None, default: int) -> int:
    """Epoch milliseconds as given, or of an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)  # no overflow at the ends of the calendar


def time_range(query: WindowRangeQuery) -> tuple[int, int]:
    """``[from, to)`` in epoch milliseconds: the last hour, to no end, by default. An empty range has no windows.

    A number of epoch *seconds* of these decades (``from=1796206269``) would be read as a time in January 1970 and
    answer every window, or none: it is refused, saying so."""
    for name, value in (("from", query.from_), ("to", query.to)):
        if isinstance(value, int) and SECONDS_LIKE[0] <= value < SECONDS_LIKE[1]:
            as_seconds = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
            raise BadQuery(f"{name}={value} looks like epoch seconds ({as_seconds}); this API takes epoch "
                           "milliseconds or an ISO 8601 time")
    return epoch_ms(query.from_, int(time.time() * 1000) - DEFAULT_SPAN_MS), epoch_ms(query.to, NO_END)


async def gathered(request: web.Request, metric: str, start: int, end: int) -> tuple[list[WindowTotal], dict[str, Any]]:
    """Every window of ``metric`` in ``[start, end)`` summed over all partitions, and what the answer covers."""
    settings = request.app[handling.SETTINGS]
    answers = await gather.from_every_worker(
        request.app, settings, f"/v1/internal/analytics/{metric}?from={start}&to={end}"
    )
    parts = gather.by_partition(answers, settings.partitions)
    views = [PartitionView.model_validate(part) for part in parts.values()]
    lateness_ms = int(settings.analytics_lateness_s * 1000)
    late = sum(v.late.get(metric, 0) for v in views)
    watermarks = [v.watermark for v in views if v.watermark is not None]
    meta = {
        "from": start, "to": None if end == NO_END else end, "late_events": late,
        "allowed_lateness_ms": lateness_ms, "watermark": min(watermarks) if len(watermarks) == len(views) else None,
    }
    return analytics.totals(views, metric, lateness_ms=lateness_ms), meta


def _window(total: WindowTotal) -> dict[str, Any]:
    return {"window_start": total.window.start, "window_end": total.window.end, "final": total.final}


async def revenue(request: web.Request) -> web.Response:
    """Revenue and confirmed orders per 1-minute window, by currency."""
    require_admin(request)
    start, end = time_range(handling.parsed_query(request, WindowRangeQuery))
    totals, meta = await gathered(request, analytics.REVENUE.metric, start, end)
    return web.json_response({**meta, "windows": revenue_windows(totals)})


def revenue_windows(totals: list[WindowTotal]) -> list[dict[str, Any]]:
    """One row per revenue window and currency, on time and late (a currency only late confirmations came to
    has a row too)."""
    windows = []
    for total in totals:
        for currency in sorted({k.split(".", 1)[1] for k in (*total.counts, *total.late) if k.startswith("orders.")}):
            windows.append({
                **_window(total), "currency": currency,
                "revenue_cents": total.counts.get(f"cents.{currency}", 0),
                "orders": total.counts.get(f"orders.{currency}", 0),
                "late_revenue_cents": total.late.get(f"cents.{currency}", 0),
                "late_orders": total.late.get(f"orders.{currency}", 0),
            })
    return windows


async def top_skus(request: web.Request) -> web.Response:
    """Units sold per SKU per 5-minute window hopping every minute, the ``limit`` (default 10) best first."""
    require_admin(request)
    query = handling.parsed_query(request, TopSkusQuery)
    start, end = time_range(query)
    limit = query.limit
    totals, meta = await gathered(request, analytics.SKU_UNITS.metric, start, end)
    windows = [{**_window(t), "skus": ranked(t.counts, limit)} for t in totals]
    return web.json_response({**meta, "windows": windows})


def ranked(units: dict[str, int], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` SKUs with the most units, best first (ties by SKU); not the units of the SKUs beyond a
    window's first thousand (:data:`~streamcart.domain.analytics.OTHER_SKUS`), which are no one SKU's."""
    best = sorted(((sku, n) for sku, n in units.items() if sku != analytics.OTHER_SKUS),
                  key=lambda item: (-item[1], item[0]))[:limit]
    return [{"sku": sku, "units": n} for sku, n in best]


async def outcomes(request: web.Request) -> web.Response:
    """Confirmed orders and cancellations by reason per 1-minute window."""
    require_admin(request)
    start, end = time_range(handling.parsed_query(request, WindowRangeQuery))
    totals, meta = await gathered(request, analytics.OUTCOMES.metric, start, end)
    windows = []
    for total in totals:
        cancelled = analytics.cancelled_by_reason(total.counts)
        windows.append({
            **_window(total), "confirmed": total.counts.get(analytics.CONFIRMED, 0),
            "cancelled": sum(cancelled.values()), "cancelled_by_reason": cancelled,
        })
    return web.json_response({**meta, "windows": windows})


async def local_windows(request: web.Request) -> web.Response:
    """This worker's part: the windows of the partitions it owns (what :func:`gathered` asks every worker)."""
    require_admin(request)
    metric = request.match_info["metric"]
    if metric not in analytics.FOLDS:
        raise BadQuery(f"unknown metric {metric!r}", details={"metrics": sorted(analytics.FOLDS)})
    start, end = time_range(handling.parsed_query(request, WindowRangeQuery))
    worker = request.app[handling.WORKER]
    handling.unless_stopping(worker)
    if worker.rebalancing() or not worker.recovered():
        # Its partitions are assigned before their table is read back from the changelog: an answer now could be an
        # older state (smaller counts, a window reported final going back). No answer makes the gathered read
        # incomplete: a 503, never a silently smaller total.
        raise Unavailable("this worker's analytics are being restored after a rebalance; retry shortly",
                          headers={"Retry-After": "1"})
    source = cast(AnalyticsSource, worker)
    views = source.analytics(metric, start, end)
    await handling.stored(worker, "the analytics")
    partitions = [v.model_dump() for v in views]
    return web.json_response({"worker": request.app[handling.WORKER].index, "partitions": partitions})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/analytics/revenue", revenue, "revenue and confirmed orders per 1-minute event-time window "
          "(admin)", "analytics", query=WindowRangeQuery, responses={200: RevenueOut}, errors=(400, 403, 503)),
    Route("GET", "/v1/analytics/top-skus", top_skus, "units per SKU per 5-minute window hopping every minute "
          "(admin)", "analytics", query=TopSkusQuery, responses={200: TopSkusOut}, errors=(400, 403, 503)),
    Route("GET", "/v1/analytics/outcomes", outcomes, "confirmed and cancelled orders (by reason) per 1-minute "
          "window (admin)", "analytics", query=WindowRangeQuery, responses={200: OutcomesOut},
          errors=(400, 403, 503)),
    Route("GET", "/v1/internal/analytics/{metric}", local_windows, "this worker's windows (worker to worker)",
          "internal", in_schema=False),
)
