"""The order routes: place (at most once under an ``Idempotency-Key``, shed under load), read (long-polled with
``?wait=``), cancel, a customer's orders, and a shipment's dispatch and delivery (keyed by its order)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from aiohttp import ClientError, ClientTimeout, web
from pydantic import BaseModel, ValidationError

from api.admission import PlacementGate
from api.auth import Principal
from api.context import WorkerView
from api.errors import ApiError, ClientGone, Conflict, NotFound, OutcomeUnknown, Overloaded, Unavailable
from api.handling import (
    HTTP,
    HTTP_WAITS,
    IDEMPOTENCY_HEADER,
    SETTINGS,
    STORED_WAIT_S,
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
    owner_elsewhere,
    parsed_query,
    stored,
    to_peer,
    unless_restoring,
    unless_stopping,
)
from api.lists import gathered, page_answer
from api.middleware import WAITED
from api.models import (
    Accepted,
    CancelIn,
    CommandAccepted,
    OrderOut,
    OrderPage,
    OrderPageQuery,
    PlaceOrderIn,
    ShipmentStatusIn,
    WaitQuery,
)
from api.routing import PEER_PROOF
from api.spec import Route
from schemas.messages import CancelOrder, OrderLine, PlaceOrder, UpdateShipment
from streamcart.commands import envelope
from streamcart.domain.order_state import OrderState, OrderStatus
from streamcart.domain.orders import cancel_refusal
from streamcart.domain.shipping import update_refusal
from streamcart.ids import derive_id, new_id
from streamcart.telemetry import ORDERS_SHED
from streamcart.tracing import new_traceparent

LONG_POLLS: web.AppKey[LongPolls] = web.AppKey("long_polls")
PLACING: web.AppKey[KeyedRequests] = web.AppKey("placing")
GATE: web.AppKey[PlacementGate] = web.AppKey("placement_gate")
RENDERED: web.AppKey[RenderedOrders] = web.AppKey("rendered")

#: Long-polls one caller (a token's subject) may have open at once on one worker (:class:`LongPolls`).
LONG_POLLS_PER_CALLER = 16


def setup_routes(app: web.Application) -> None:
    """What the order routes keep on each worker: the placements it sent, its admission gate, the answers it
    rendered, the long-polls open."""
    app[PLACING] = KeyedRequests()
    app[GATE] = PlacementGate(app[SETTINGS].admission_max_delay_s)
    app[RENDERED] = RenderedOrders()
    app[LONG_POLLS] = LongPolls(LONG_POLLS_PER_CALLER)


def order_out(order: OrderState) -> OrderOut:
    return OrderOut.model_validate(order_json(order))


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
        "cancel_requested": order.status == OrderStatus.CONFIRMED and order.cancel_request is not None,
        "placed_at": order.placed_at,
        "deadline": order.deadline,
        "history": [
            {"event": entry.event, "time": entry.at, "event_id": entry.event_id, "detail": entry.detail,
             "recorded": entry.recorded_at}
            for entry in order.history
        ],
    }


async def get_order(request: web.Request) -> web.Response:
    principal = caller(request)
    order_id = identifier(request, "order_id")
    query = parsed_query(request, WaitQuery)
    if query.wait == 0:
        return await _read_order(request, principal, order_id)
    return await _long_poll(request, principal, lambda: _wait_for_order(request, principal, order_id, query.wait))


#: How often a long-poll looks whether its client is still connected.
CLIENT_CHECK_S = 0.5
_Waited = TypeVar("_Waited")


async def _long_poll(
    request: web.Request, principal: Principal, wait: Callable[[], Coroutine[Any, Any, _Waited]]
) -> _Waited:
    """Run ``wait()`` as one of the caller's long-polls (:class:`LongPolls`: counted where the request came in, not
    again at an owner it was forwarded to), ended as soon as its client goes away (:func:`_while_connected`)."""
    if request.app[PEER_PROOF].forwarded(request):
        return await _while_connected(request, wait())
    with request.app[LONG_POLLS].held(principal.subject):
        return await _while_connected(request, wait())


async def _while_connected(request: web.Request, wait: Coroutine[Any, Any, _Waited]) -> _Waited:
    """Run a long-poll's ``wait``, ended as soon as its client disconnects: aiohttp does not cancel a handler whose
    client went away (``handler_cancellation`` is off, so that a command's handler always finishes), so an
    abandoned long-poll would keep its caller's share (:class:`LongPolls`) and its forward to the owner for up to
    30 s, and the caller's next long-polls would be refused meanwhile."""
    task = asyncio.ensure_future(wait)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK_S)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise ClientGone("the client closed its connection during the long-poll")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _read_order(request: web.Request, principal: Principal, order_id: str) -> web.Response:
    if (forwarded := await forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    worker = request.app[WORKER]
    # The common read: answered from the rendering of the stored bytes.
    raw = worker.order_raw(order_id)
    await stored(worker, f"order {order_id}")
    rendered = None if raw is None else request.app[RENDERED].answer(raw)
    if rendered is None or not principal.may_see_customer(rendered[0]):
        raise NotFound(f"order {order_id} not found (one accepted a moment ago is readable once the orders flow "
                       "has stored it: ?wait=S waits for it)")
    return web.Response(body=rendered[1], content_type="application/json")


async def _wait_for_order(request: web.Request, principal: Principal, order_id: str, wait_s: float) -> web.Response:
    """The long-poll: the order once it is settled, or as it is after ``wait_s``."""
    if (forwarded := await forward_unless_owner(request, "orders", order_id, session=HTTP_WAITS)) is not None:
        request[WAITED] = True  # its owner's long-poll, maybe
        return forwarded
    worker = request.app[WORKER]
    deadline = asyncio.get_running_loop().time() + wait_s
    order = worker.order(order_id)
    if order is None or order.status not in OrderStatus.SETTLED:
        request[WAITED] = True  # the client's wait: no request latency (api/middleware.py)
        order = await worker.wait_settled(order_id, wait_s)
        # A rebalance that moved the order ends the wait, as does the deadline while this worker's tables are read
        # back: both answer 503 here (the retry goes to the owner).
        if owner_elsewhere(request, "orders", order_id) is not None:
            raise Unavailable("the order moved to another worker in a rebalance; retry", headers={"Retry-After": "1"})
    await stored(worker, f"order {order_id}")
    if order is None or not principal.may_see_customer(order.customer_id):
        # Another customer's order is indistinguishable from a missing one, in time too: a missing order is
        # answered after the whole wait, so is this one (when it exists, or when it settled, is not told).
        request[WAITED] = True
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        raise NotFound(f"order {order_id} not found")
    return web.json_response(order_json(order))


class TooManyWaits(ApiError):
    status, code = 429, "too_many_waits"


class LongPolls:
    """How many long-polls each caller has open on this worker, up to ``limit`` at once: each one holds a
    connection to the order's owner for up to 30 s, and one caller's hundreds would hold every other caller's."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def held(self, caller: str) -> Iterator[None]:
        """One long-poll of ``caller`` while the block runs; 429 + ``Retry-After`` beyond ``limit`` at once."""
        if self._open[caller] >= self.limit:
            raise TooManyWaits(f"{self.limit} long-polls (?wait=) of this caller, or cancels waiting for their order, "
                               "are open on this worker already; wait for one to end, or read without ?wait=",
                               headers={"Retry-After": "1"})
        self._open[caller] += 1
        try:
            yield
        finally:
            self._open[caller] -= 1
            if not self._open[caller]:
                del self._open[caller]


class RenderedOrders:
    """The JSON answers of recently read orders, by their stored bytes: a polled order is decoded and rendered once
    per change (the bytes name the version; the owner's customer id is kept for the access check)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._answers: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()

    def answer(self, raw: bytes) -> tuple[str, bytes]:
        """The order stored as ``raw``: its customer id and its JSON answer."""
        answer = self._answers.get(raw)
        if answer is None:
            order = OrderState.model_validate_json(raw)
            answer = self._answers[raw] = (order.customer_id, json.dumps(order_json(order)).encode())
            if len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer


def _digest(body: PlaceOrderIn) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


async def place_order(request: web.Request) -> web.Response:
    principal = caller(request)
    body = await json_body(request, PlaceOrderIn)
    key = idempotency_key(request)
    commands = command_port(request)
    settings = request.app[SETTINGS]
    if key is None:
        order_id = new_id()
        # While this worker stops, is in a rebalance or reads its tables back, its saga flows handle nothing: the
        # gate has no measure of how far behind they are (it would read as idle), so no new order is taken here.
        unless_restoring(request.app[WORKER])
        _admit(request, principal)
        try:
            await commands.send(_place_order(order_id, new_id(), principal, body))
        except OutcomeUnknown as exc:  # a retry would be a second order if this one was written: say which it is
            raise OutcomeUnknown(f"{exc.message}: order {order_id} may have been placed; read it (Location) before "
                                 f"placing it again, or place with an {IDEMPOTENCY_HEADER}, which makes a retry safe",
                                 details={"order_id": order_id},
                                 headers={**exc.headers, "Location": f"/v1/orders/{order_id}"}) from exc
        return _accepted(order_id, OrderStatus.PENDING)

    # The key names one order for ``idempotency_ttl_s``: the order id is derived from the customer, the key and
    # the TTL period it was first used in, and the request goes to the worker owning that order id.
    ttl = settings.idempotency_ttl_s
    now = time.time()
    period = int(now // ttl)
    order_id = derive_id("order", principal.subject, key, period)
    if (forwarded := await forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    event_id = derive_id("place", principal.subject, key, period, _digest(body))
    placing = request.app[PLACING]
    async with placing.holding(order_id):
        # Used in the previous period, less than a TTL ago: that is still the key's order, stored or still on its
        # way to the orders table (a retry a moment after the boundary must not place a second order).
        previous_id = derive_id("order", principal.subject, key, period - 1)
        previous = await _placement_anywhere(request, previous_id, now)
        if previous is not None and now * 1000 - previous.placed_at < ttl * 1000:
            previous_event = derive_id("place", principal.subject, key, period - 1, _digest(body))
            return _same_or_conflict(previous_id, previous.placed_event_id, previous_event, previous.status)
        unless_stopping(request.app[WORKER])  # (its tables may have closed while this waited)
        known = request.app[WORKER].order(order_id)
        if known is not None:
            await stored(request.app[WORKER], f"order {order_id}")
            return _same_or_conflict(order_id, known.placed_event_id, event_id, known.status)
        if (placed := placing.said(order_id)) is not None:
            return _same_or_conflict(order_id, placed, event_id, OrderStatus.PENDING)
        _admit(request, principal)  # a retry of an order this worker knows of is answered above, whatever the load
        await commands.send(_place_order(order_id, event_id, principal, body))
        placing.sent(order_id, event_id, now)
        return _accepted(order_id, OrderStatus.PENDING)


def _admit(request: web.Request, principal: Principal) -> None:
    """Refuse a new order while this worker's saga flows are more than ``admission_max_delay_s`` behind, or beyond
    the pace learnt from that (api/admission.py): a 503 at once beats an order accepted to be cancelled by its
    deadline. Orders spread over every partition, so this worker's queue stands for the saga's (each worker's flows
    take the same share of the load). One customer's burst does not take the whole pace (the gate's caller share)."""
    refusal = request.app[GATE].refusal(request.app[WORKER].saga_queue_s(), principal.subject)
    if refusal is None:
        return
    ORDERS_SHED.labels("queue" if refusal.behind_s is not None else "pace").inc()
    limit = request.app[SETTINGS].admission_max_delay_s
    retry = {"Retry-After": str(refusal.retry_after_s)}
    if refusal.behind_s is not None:
        # Rounded up to the millisecond: a wait just past the limit must not read as the limit itself.
        behind_s = math.ceil(refusal.behind_s * 1000) / 1000
        raise Overloaded(f"the saga is behind (records wait {behind_s:g} s before the saga's flows handle them, more "
                         f"than {limit:g} s): no new order is taken until it catches up; retry later",
                         details={"queue_s": behind_s, "max_delay_s": limit}, headers=retry)
    rate = request.app[GATE].rate
    if refusal.share:
        raise Overloaded(f"new orders are taken at {rate:.0f}/s on this worker for now, and you had your share of "
                         "this second's (the rest is kept for other customers); retry shortly",
                         details={"pace_per_s": round(rate, 1)}, headers=retry)
    raise Overloaded(f"new orders are taken at {rate:.0f}/s on this worker for now (the pace it learns from how far "
                     "behind the saga is); retry shortly", details={"pace_per_s": round(rate, 1)}, headers=retry)


def _same_or_conflict(order_id: str, placed_event_id: str, event_id: str, status: str) -> web.Response:
    if placed_event_id != event_id:
        raise Conflict(f"this {IDEMPOTENCY_HEADER} was used for a different order request",
                       details={"order_id": order_id})
    return _accepted(order_id, status)


def _accepted(order_id: str, status: str) -> web.Response:
    return json_answer(Accepted(order_id=order_id, status=status), 202, Location=f"/v1/orders/{order_id}")


def _place_order(order_id: str, event_id: str, principal: Principal, body: PlaceOrderIn) -> PlaceOrder:
    return PlaceOrder(
        **envelope(order_id, event_id=event_id),
        order_id=order_id, customer_id=principal.subject,
        lines=tuple(OrderLine(sku=line.sku, quantity=line.quantity) for line in body.lines),
        currency=body.currency, payment_token=body.payment.token,
        webhook_url=str(body.webhook_url) if body.webhook_url is not None else None,
        email=body.email, phone=body.phone,
    )


class Placement(BaseModel):
    """What an idempotency check needs of an order placed under a key: its placement's event id, when, and its
    status; from the orders table, or from the owner's memory of a ``PlaceOrder`` it sent and the table does not
    hold yet (``PENDING``)."""

    placed_event_id: str
    placed_at: int
    status: str


#: How long the owner takes an order it sent a ``PlaceOrder`` for, and its table does not hold yet, for on its way:
#: far beyond the flow's latency under load (a burst settles in tens of seconds); an order that never comes (its
#: command dead-lettered) holds its key no longer than this across a period's boundary.
PLACEMENT_IN_FLIGHT_S = 60.0


async def _placement(request: web.Request, order_id: str, now: float) -> Placement | None:
    """``order_id``'s placement as this worker, its owner, knows it: stored, sent and not stored yet, or being
    sent right now (503: what that request will say is not known yet)."""
    order = request.app[WORKER].order(order_id)
    if order is not None:
        await stored(request.app[WORKER], f"order {order_id}")
        return Placement(placed_event_id=order.placed_event_id, placed_at=order.placed_at, status=order.status)
    placing = request.app[PLACING]
    if (sent := placing.sent_at(order_id, since=now - PLACEMENT_IN_FLIGHT_S)) is not None:
        return Placement(placed_event_id=sent[0], placed_at=int(sent[1] * 1000), status=OrderStatus.PENDING)
    if placing.busy(order_id):
        raise Unavailable("an order under this Idempotency-Key is being placed; retry shortly",
                          headers={"Retry-After": "1"})
    return None


async def _placement_anywhere(request: web.Request, order_id: str, now: float) -> Placement | None:
    """``order_id``'s placement from this worker, or from its owner (asked with the caller's own credentials)."""
    if (owner := owner_elsewhere(request, "orders", order_id)) is None:
        return await _placement(request, order_id, now)
    try:
        path = f"/internal/v1/placements/{order_id}"
        async with request.app[HTTP].get(f"{owner.rstrip('/')}{path}", headers=to_peer(request, f"GET {path}"),
                                         timeout=ClientTimeout(total=STORED_WAIT_S + 5, sock_connect=2)) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise Unavailable(f"the worker owning {order_id} answered {response.status}",
                                  headers={"Retry-After": "1"})
            return Placement.model_validate_json(await response.read())
    except (ClientError, TimeoutError, ValidationError) as exc:
        raise Unavailable(f"the worker owning {order_id} did not answer", headers={"Retry-After": "1"}) from exc


async def internal_placement(request: web.Request) -> web.Response:
    """An order's placement as its owner knows it (:func:`_placement`), for another worker checking an
    ``Idempotency-Key`` across a TTL period's boundary, with the caller's own credentials. Only a worker may ask
    (its proof holds); to anyone else it is 404."""
    if not request.app[PEER_PROOF].forwarded(request):
        raise NotFound("no such route")
    principal = caller(request)
    order_id = identifier(request, "order_id")
    if owner_elsewhere(request, "orders", order_id) is not None:  # moved meanwhile: the asker retries
        raise Unavailable("partitions are being reassigned; retry shortly", headers={"Retry-After": "1"})
    order = request.app[WORKER].order(order_id)
    if order is not None and not principal.may_see_customer(order.customer_id):
        raise NotFound("order not found")
    if (placement := await _placement(request, order_id, time.time())) is None:
        raise NotFound("order not found")
    return json_answer(placement, 200)


#: How long a cancel waits for an order that is not stored yet (one accepted a moment ago) before it answers 404.
CANCEL_WAIT_S = 3.0
#: How far behind the saga's flows may be for a cancel that found no order to answer 404 rather than 503.
CANCEL_BEHIND_S = 1.0


async def cancel_order(request: web.Request) -> web.Response:
    principal = caller(request)
    order_id = identifier(request, "order_id")
    body = await json_body(request, CancelIn) if request.can_read_body else CancelIn()
    if (forwarded := await forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    worker = request.app[WORKER]
    started = asyncio.get_running_loop().time()
    order = worker.order(order_id)
    if order is None:
        # Accepted a moment ago (202) and not stored by the orders flow yet: wait for it rather than answer 404, or
        # the customer's cancel right after placing is lost and the order goes on to be charged. The CancelOrder,
        # sent once the order is stored, lands after its PlaceOrder (same partition).
        # A wait like a long-poll's: counted in the caller's share, and ended if the client goes (nothing is sent yet).
        order = await _long_poll(request, principal, lambda: worker.wait_stored(order_id, CANCEL_WAIT_S))
        if owner_elsewhere(request, "orders", order_id) is not None:
            raise Unavailable("the order moved to another worker in a rebalance; retry", headers={"Retry-After": "1"})
    await stored(worker, f"order {order_id}")
    if order is None or not principal.may_see_customer(order.customer_id):
        # Another customer's order answers as late as a missing one: whether it exists is not told by the time.
        await asyncio.sleep(max(0.0, started + CANCEL_WAIT_S - asyncio.get_running_loop().time()))
        if (behind_s := worker.saga_queue_s()) is not None and behind_s >= CANCEL_BEHIND_S:
            # The orders flow is far enough behind that an order accepted before the wait may still be on its way:
            # a 404 would be final to the client, and the order charged. Told by the load alone, as to everyone.
            raise Unavailable(f"the orders flow is {behind_s:.1f} s behind: an order placed a moment ago may not be "
                              "stored yet; retry", headers={"Retry-After": "1"})
        raise NotFound(f"order {order_id} not found")
    if (refusal := cancel_refusal(order.status)) is not None:
        raise Conflict(refusal, details={"status": order.status})
    # Cancelled already, for good: the orders flow would change nothing for the command. Sent all the same, it could
    # land after the order's retention ran out and it was forgotten, and be dead-lettered as about an unknown order
    # (a false alarm for whoever watches the dead letters). What it asks is done: 202, nothing sent.
    if order.status != OrderStatus.CANCELLED:
        await command_port(request).send(CancelOrder(**envelope(order_id), order_id=order_id,
                                                  requested_by=principal.subject, reason=body.reason))
    return _accepted(order_id, order.status)


async def customer_orders(request: web.Request) -> web.Response:
    principal = caller(request)
    customer_id = identifier(request, "customer_id")
    if not principal.may_see_customer(customer_id):
        raise NotFound(f"customer {customer_id} not found")
    page = parsed_query(request, OrderPageQuery)
    after = _order_cursor(page.cursor)

    def local(worker: WorkerView) -> list[dict[str, Any]]:
        return [order_json(o) for o in worker.orders_of(customer_id, after=after, limit=page.limit)]

    items = await gathered(request, "orders", local, page.limit,
                          sort=lambda o: (-int(o["placed_at"]), str(o["order_id"])))
    next_cursor = f"{items[-1]['placed_at']}.{items[-1]['order_id']}" if len(items) == page.limit else None
    return page_answer(request, OrderPage(items=[OrderOut.model_validate(i) for i in items], next_cursor=next_cursor))


def _order_cursor(raw: str | None) -> tuple[int, str] | None:
    """The sort key ``(-placed_at, order_id)`` after which a page of orders starts."""
    if raw is None:
        return None
    placed_at, _, order_id = raw.partition(".")
    return -int(placed_at), order_id


async def shipment_status(request: web.Request) -> web.Response:
    admin(request)
    order_id = identifier(request, "order_id")
    body = await json_body(request, ShipmentStatusIn)
    if (forwarded := await forward_unless_owner(request, "orders", order_id)) is not None:
        return forwarded
    order = request.app[WORKER].order(order_id)
    await stored(request.app[WORKER], f"order {order_id}")
    if order is None:
        raise NotFound(f"order {order_id} not found")
    if order.shipment is None:
        why = ("was cancelled before it had a shipment" if order.status == OrderStatus.CANCELLED
               else f"has no shipment yet (status {order.status})")
        raise Conflict(f"order {order_id} {why}", details={"status": order.status})
    if (refusal := update_refusal(order.shipment.status)) is not None:
        raise Conflict(refusal, details={"status": order.status, "shipment_status": order.shipment.status})
    command = UpdateShipment(**envelope(order_id), order_id=order_id, status=body.status, carrier=body.carrier)
    await command_port(request).send(command, traceparent=new_traceparent())
    return json_answer(CommandAccepted(event_id=command.event_id), 202, Location=f"/v1/orders/{order_id}")



ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/orders", place_order, "place an order", "orders", body=PlaceOrderIn,
          responses={202: Accepted}, errors=(409, 503),
          headers=((IDEMPOTENCY_HEADER, "the same key and body return the same order"),)),
    Route("GET", "/v1/orders/{order_id}", get_order, "an order; ?wait=S long-polls until it is settled", "orders",
          query=WaitQuery, responses={200: OrderOut}, errors=(404, 503)),
    Route("POST", "/v1/orders/{order_id}/cancel", cancel_order, "ask to cancel an order", "orders",
          body=CancelIn, body_required=False, responses={202: Accepted}, errors=(404, 409, 503)),
    Route("GET", "/internal/v1/placements/{order_id}", internal_placement,
          "an order's placement, stored or on its way (worker to worker)",
          "internal", in_schema=False),
    Route("GET", "/v1/customers/{customer_id}/orders", customer_orders, "a customer's orders, newest first",
          "orders", query=OrderPageQuery, responses={200: OrderPage}, errors=(404, 503)),
    Route("POST", "/v1/shipments/{order_id}/status", shipment_status, "a shipment was dispatched or delivered "
          "(admin)", "shipments", body=ShipmentStatusIn, responses={202: CommandAccepted},
          errors=(403, 404, 409, 503)),
)
