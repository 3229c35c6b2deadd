"""The catalog and stock routes, keyed by SKU: products, a SKU's stock, and stock adjustments (applied once under
an ``Idempotency-Key``, checked against the adjustments still on their way)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from api.context import WorkerView
from api.errors import Conflict, NotFound
from api.handling import (
    IDEMPOTENCY_HEADER,
    WORKER,
    KeyedRequests,
    admin,
    caller,
    command_port,
    forward_unless_owner,
    idempotency_key,
    identifier,
    json_answer,
    json_body,
    parsed_query,
    stored,
    unless_stopping,
    valid_key,
)
from api.lists import gathered, page_answer
from api.models import AdjustmentIn, AdjustmentOut, ProductIn, ProductOut, ProductPage, ProductPageQuery, StockOut
from api.spec import Route
from schemas.messages import AdjustStock, UpsertProduct
from streamcart.commands import envelope
from streamcart.domain import inventory

ADJUSTING: web.AppKey[KeyedRequests] = web.AppKey("adjusting")
PENDING: web.AppKey[PendingAdjustments] = web.AppKey("pending_adjustments")


def setup_routes(app: web.Application) -> None:
    """What the stock routes keep on each worker: the adjustments it sent under a key, and those not counted yet."""
    app[ADJUSTING] = KeyedRequests()
    app[PENDING] = PendingAdjustments()


async def get_product(request: web.Request) -> web.Response:
    caller(request)
    sku = identifier(request, "sku")
    if (forwarded := await forward_unless_owner(request, "catalog", sku)) is not None:
        return forwarded
    product = request.app[WORKER].product(sku)
    await stored(request.app[WORKER], f"product {sku}")
    if product is None:
        raise NotFound(f"no product {sku}")
    return json_answer(ProductOut.model_validate(product.model_dump()))


async def list_products(request: web.Request) -> web.Response:
    caller(request)
    page = parsed_query(request, ProductPageQuery)
    after = page.cursor

    def local(worker: WorkerView) -> list[dict[str, Any]]:
        return [ProductOut.model_validate(p.model_dump()).model_dump()
                for p in worker.products(after=after, limit=page.limit)]

    items = await gathered(request, "products", local, page.limit, sort=lambda p: p["sku"])
    next_cursor = items[-1]["sku"] if len(items) == page.limit else None
    page_items = [ProductOut.model_validate(i) for i in items]
    return page_answer(request, ProductPage(items=page_items, next_cursor=next_cursor))


async def put_product(request: web.Request) -> web.Response:
    admin(request)
    sku = identifier(request, "sku", naming=True)
    body = await json_body(request, ProductIn)
    command = UpsertProduct(**envelope(sku), sku=sku, **body.model_dump())
    await command_port(request).send(command)
    return json_answer(ProductOut(sku=sku, **body.model_dump()), 202, Location=f"/v1/products/{sku}")


async def get_stock(request: web.Request) -> web.Response:
    admin(request)
    sku = identifier(request, "sku")
    if (forwarded := await forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    stock = request.app[WORKER].stock(sku)
    await stored(request.app[WORKER], f"the stock of {sku}")
    if stock is None:
        raise NotFound(f"no stock record for {sku}")
    return json_answer(_stock_now(stock))


def _stock_now(stock: inventory.StockState) -> StockOut:
    return _stock_out(stock.sku, stock.on_hand, stock.reserved, stock.adjusted, stock.sold, stock.restocked)


def _stock_out(sku: str, on_hand: int, reserved: int, adjusted: int, sold: int, restocked: int) -> StockOut:
    return StockOut(sku=sku, on_hand=on_hand, reserved=reserved, available=on_hand - reserved, adjusted=adjusted,
                    sold=sold, restocked=restocked)


async def adjust_stock(request: web.Request) -> web.Response:
    """With an ``Idempotency-Key`` the adjustment's event id is derived from the SKU and the key: a repeat is applied
    once however often it is sent (the inventory drops an event id among the SKU's last 1,000 adjustments), one
    already applied is answered 200 with the stock as it is, sending nothing, one the inventory refused is answered
    its refusal (409), sending nothing, and a request under a key used for another delta or reason is refused with
    409."""
    admin(request)
    sku = identifier(request, "sku", naming=True)
    body = await json_body(request, AdjustmentIn)
    key = idempotency_key(request)
    if (forwarded := await forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    if key is None:
        return await _adjust(request, sku, body, None)
    event_id = inventory.adjustment_id(sku, key)
    said = inventory.adjustment_body(body.delta, body.reason)
    adjusting = request.app[ADJUSTING]
    async with adjusting.holding(event_id):
        worker = request.app[WORKER]
        unless_stopping(worker)  # (its tables may have closed while this waited for the key)
        stock = worker.stock(sku)
        if (outcome := worker.adjustment_outcome(sku, event_id)) is not None:
            await stored(worker, f"the stock of {sku}")
            _same_adjustment(sku, key, outcome.body, said)
            _not_refused(sku, key, outcome)
            if stock is not None:  # (counted: so it is)
                return json_answer(_stock_now(stock), 200, Location=f"/v1/stock/{sku}")
        now = time.time()
        # Sent a moment ago and not decided yet: in flight.
        _same_adjustment(sku, key, adjusting.said(event_id, since=now - ADJUSTMENT_IN_FLIGHT_S), said)
        response = await _adjust(request, sku, body, event_id)
        adjusting.sent(event_id, said, now)
        return response


#: How long the owner takes an adjustment it sent, and the inventory did not decide yet, for in flight: within it, the
#: same key with another body is a 409; after it, the key's first adjustment was lost (or decided and forgotten).
ADJUSTMENT_IN_FLIGHT_S = 60.0


def _not_refused(sku: str, key: str, outcome: inventory.AdjustmentOutcome) -> None:
    """Answer an adjustment the inventory refused with its reason (409): the key's first body is the one that counts,
    so a retry of it is refused too (a new key sends the adjustment again)."""
    if outcome.refused is not None:
        raise Conflict(f"the adjustment of {sku} sent under {key!r} was refused: {outcome.refused}",
                       details={"sku": sku, "key": key, "reason": outcome.refused})


def _same_adjustment(sku: str, key: str, first: str | None, said: str) -> None:
    """Refuse a request whose body differs from the first one sent under its key (``first`` unknown: let it be)."""
    if first is not None and first != said:
        raise Conflict(f"this {IDEMPOTENCY_HEADER} was used for a different adjustment of {sku} (the first body sent "
                       "under a key is the one that counts)", details={"sku": sku, "key": key})


class PendingAdjustments:
    """The owner's adjustments sent and not counted by the SKU's stock yet, and one lock per SKU.

    An adjustment is checked against the stock as it will be once those are counted (they reach the inventory in
    the order they were sent: one partition per SKU), not as the table says now: two write-offs of 5 with 8
    available were both answered 202, and the inventory refused the second where nobody saw it. Kept in the order
    sent: once one is decided (counted, or refused: the inventory notes its refusals), it and every one sent before
    it are done; any is forgotten after :data:`ADJUSTMENT_IN_FLIGHT_S` (decided and forgotten meanwhile, or lost).
    """

    def __init__(self) -> None:
        self._sent: dict[str, dict[str, tuple[int, float]]] = {}  # sku -> event id -> (delta, when sent), in order
        self.locks = KeyedRequests()

    def outstanding(self, sku: str, decided: Any, now: float) -> dict[str, int]:
        """``sku``'s adjustments sent and not decided yet, event id -> delta, in the order sent
        (``decided(event_id)``: whether the stock counts it or the inventory refused it)."""
        sent = self._sent.get(sku, {})
        ids = list(sent)
        done = next((i for i in range(len(ids) - 1, -1, -1) if decided(ids[i])), -1)
        for event_id in ids[:done + 1]:
            del sent[event_id]
        for event_id, (_, at) in list(sent.items()):
            if at < now - ADJUSTMENT_IN_FLIGHT_S:
                del sent[event_id]
        if not sent:
            self._sent.pop(sku, None)
        return {event_id: delta for event_id, (delta, _) in sent.items()}

    def add(self, sku: str, event_id: str, delta: int, now: float) -> None:
        sent = self._sent.setdefault(sku, {})
        if event_id not in sent:  # a retry keeps its place in the order sent
            sent[event_id] = (delta, now)
        stale = now - ADJUSTMENT_IN_FLIGHT_S
        for other in [k for k, v in self._sent.items() if all(at < stale for _, at in v.values())]:
            del self._sent[other]  # SKUs not adjusted for a while (or whose partition moved away)


async def _adjust(request: web.Request, sku: str, body: AdjustmentIn, event_id: str | None) -> web.Response:
    """Send the adjustment (``event_id``: derived from its key, or a fresh one) and answer 202 with the stock it
    should leave, or 409 if it would take stock promised to orders, counting the adjustments sent before it that
    the stock does not count yet."""
    worker, pending = request.app[WORKER], request.app[PENDING]
    async with pending.locks.holding(sku):  # the check and the send, one adjustment of the SKU at a time
        unless_stopping(worker)  # (its tables may have closed while this waited for the SKU)
        now = time.time()
        stock = worker.stock(sku)
        on_hand, reserved = (stock.on_hand, stock.reserved) if stock is not None else (0, 0)
        outstanding = pending.outstanding(sku, lambda e: worker.adjustment_outcome(sku, e) is not None, now)
        await stored(worker, f"the stock of {sku}")  # checked and answered as Kafka holds it
        sent = sum(outstanding.values())
        # A retry of one in flight was checked when it was first sent, against what came before it; sent again
        # (the inventory counts it once), it is not checked against what was sent after it.
        retry = event_id is not None and event_id in outstanding
        if not retry and on_hand + sent - reserved + body.delta < 0:
            raise Conflict(f"adjusting {sku} by {body.delta} would leave {on_hand + sent - reserved + body.delta} "
                           "available", details={"on_hand": on_hand, "reserved": reserved,
                                                 "available": on_hand - reserved, "sent_not_counted": sent,
                                                 "available_once_counted": on_hand + sent - reserved})
        command = AdjustStock(**envelope(sku, event_id=event_id), sku=sku, delta=body.delta, reason=body.reason)
        await command_port(request).send(command)
        pending.add(sku, command.event_id, body.delta, now)
    change = sent if retry else sent + body.delta
    expected = _stock_out(sku, on_hand + change, reserved, (stock.adjusted if stock else 0) + change,
                          stock.sold if stock else 0, stock.restocked if stock else 0)
    return json_answer(expected, 202, Location=f"/v1/stock/{sku}")


async def get_adjustment(request: web.Request) -> web.Response:
    """The adjustment sent under ``key`` (an ``Idempotency-Key``) once the SKU's stock counts it (200), or its refusal
    by the inventory (409, with the reason); 404 before either (or when it is older than the SKU's last 1,000
    adjustments, or 100 refusals)."""
    admin(request)
    sku = identifier(request, "sku")
    key = request.match_info["key"]
    if not valid_key(key):
        raise NotFound(f"no such key: {key[:80]!r}")
    if (forwarded := await forward_unless_owner(request, "stock", sku)) is not None:
        return forwarded
    worker = request.app[WORKER]
    event_id = inventory.adjustment_id(sku, key)
    stock = worker.stock(sku)
    outcome = worker.adjustment_outcome(sku, event_id)
    await stored(worker, f"the stock of {sku}")
    if outcome is not None:
        _not_refused(sku, key, outcome)
    if stock is None or outcome is None:
        raise NotFound(f"the stock of {sku} does not count an adjustment sent under {key!r}, nor was it refused "
                       "(not decided yet, or more than 1,000 adjustments or 100 refusals ago)")
    return json_answer(AdjustmentOut(sku=sku, key=key, event_id=event_id, stock=_stock_now(stock)))



ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/products", list_products, "the catalog, by sku", "catalog", query=ProductPageQuery,
          responses={200: ProductPage}, errors=(503,)),
    Route("GET", "/v1/products/{sku}", get_product, "one product", "catalog", responses={200: ProductOut},
          errors=(404, 503)),
    Route("PUT", "/v1/products/{sku}", put_product, "create or change a product (admin)", "catalog",
          body=ProductIn, responses={202: ProductOut}, errors=(403, 503)),
    Route("GET", "/v1/stock/{sku}", get_stock, "a SKU's stock (admin)", "stock", responses={200: StockOut},
          errors=(403, 404, 503)),
    Route("POST", "/v1/stock/{sku}/adjustments", adjust_stock, "change what is on hand (admin)", "stock",
          body=AdjustmentIn, responses={202: StockOut, 200: StockOut}, errors=(403, 409, 503),
          headers=((IDEMPOTENCY_HEADER, "the same key is one adjustment of the SKU, applied once; 200 with the "
                                        "stock when it already was, 409 when the inventory refused it (the "
                                        "reason) and for a key used with another body"),)),
    Route("GET", "/v1/stock/{sku}/adjustments/{key}", get_adjustment, "what became of the adjustment sent under "
          "this Idempotency-Key: 200 once the stock counts it, 409 with the reason if the inventory refused it, 404 "
          "before either (admin)", "stock", responses={200: AdjustmentOut}, errors=(403, 404, 409, 503)),
)
