"""The order: the saga's memory, keyed by order_id (DESIGN.md §3 steps 1, 3, 5, 6, 7, 8).

One pure :func:`decide` applies any message the orders flow consumes (its commands and the inventory, payment and
shipping events) to one :class:`OrderState`:

- PENDING collects one answer per line; all reserved → AuthorizePayment for the total of the reserved prices;
  any rejected → CANCELLED(out_of_stock | product_unavailable) and ReleaseStock for every reserved line.
- PaymentAuthorized → CONFIRMED: CommitStock per line, CapturePayment, OrderConfirmed.
  PaymentDeclined → CANCELLED(payment_declined) and ReleaseStock per line.
- ExpireOrder at or after the deadline, or CancelOrder, on a PENDING order → CANCELLED at once, with the same
  compensations. What is still in flight is compensated when it lands: a later StockReserved is released, a later
  PaymentAuthorized is voided. (DESIGN.md says "once the in-flight step settles"; cancelling at once and
  compensating each late answer gives the same end state without a second waiting state.)
- CancelOrder on a CONFIRMED order → OrderCancelRequested: shipping, the one flow that decides whether the goods
  leave, either stops the shipment (ShipmentCancelled → CANCELLED(customer_request) with RefundPayment and
  RestockItems per line) or has dispatched it already (ShipmentDispatched → SHIPPED: the cancel lost the race and
  the money stays). Refunding at once would refund goods a dispatch racing the cancel had just sent. After
  dispatch a CancelOrder is refused (:data:`CANNOT_CANCEL_AFTER_DISPATCH`, see :func:`cancel_refusal`).
- ShipmentDispatched → SHIPPED (OrderShipped), ShipmentDelivered → DELIVERED (OrderDelivered).

Nothing leaves CANCELLED; CONFIRMED only moves on to SHIPPED → DELIVERED or to CANCELLED by refund (I1).

Idempotency: the state keeps the :class:`~streamcart.domain.causes.Cause` of every transition that emitted
messages, and :func:`effects_of` rebuilds those messages from the state. A message already applied (its event id
is in ``applied``) changes nothing and re-emits exactly its first messages. A message that is not a duplicate but
comes too late to matter (a second answer for a line, a cancel of a cancelled order) changes nothing, emits
nothing and is not an error.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.messages import (
    CancelOrder,
    CancelReason,
    ExpireOrder,
    Message,
    OrderCancelled,
    OrderCancelRequested,
    OrderEvent,
    OrderLine,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
    PlaceOrder,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    StockCommitted,
    StockRejected,
    StockRejection,
    StockReleased,
    StockReserved,
    StockRestocked,
)
from streamcart.domain.causes import Cause
from streamcart.domain.decision import Decision
from streamcart.domain.order_effects import effects_of
from streamcart.domain.order_state import (
    CancelRequest,
    HistoryEntry,
    LineOutcome,
    LineStatus,
    LineView,
    OrderState,
    OrderStatus,
    PaymentInfo,
    PaymentStatus,
    ShipmentInfo,
)
from streamcart.domain.shipping import ShipmentStatus
from streamcart.domain.warehouse import iso_utc

__all__ = [
    "CANNOT_CANCEL_AFTER_DISPATCH",
    "HistoryEntry",
    "LineOutcome",
    "LineStatus",
    "LineView",
    "OrderState",
    "OrderStatus",
    "PaymentInfo",
    "PaymentStatus",
    "ShipmentInfo",
    "cancel_refusal",
    "decide",
    "effects_of",
]

#: The history's entry for a CancelOrder refused (it names no message type: nothing is emitted).
CANCEL_REFUSED = "CancelRefused"
#: Why a CancelOrder is refused once the goods have left (the API answers 409 with it).
CANNOT_CANCEL_AFTER_DISPATCH = "cannot cancel after dispatch"


def decide(
    state: OrderState | None, message: Message, *, saga_timeout_ms: int, recorded_at: int | None = None,
    now_ms: int | None = None, retention_ms: int = 0,
) -> Decision[OrderState]:
    """Apply one message to an order (``state`` is ``None`` for an order not seen yet); ``recorded_at`` is when
    ``message`` was written to Kafka, if known (the history's :attr:`HistoryEntry.recorded_at`); ``now_ms`` is the
    time it is handled, and ``retention_ms`` how long a settled order is kept (0: for ever), which together say
    whether a PlaceOrder may be about an order forgotten already (:func:`forgettable_placement`).

    ``rejected`` is set for a message about an order that does not exist, a PlaceOrder that may be about an order
    forgotten already, a message type the orders flow does not handle, and a CancelOrder after dispatch
    (:data:`CANNOT_CANCEL_AFTER_DISPATCH`); nothing is emitted then, and the state is unchanged but for the refused
    cancel, noted in the history (:data:`CANCEL_REFUSED`; a redelivery of it changes nothing).
    """
    if isinstance(message, PlaceOrder):
        if state is None and (why := forgettable_placement(message, now_ms, retention_ms)) is not None:
            return Decision(state=None, rejected=why)
        return _place(state, message, saga_timeout_ms, recorded_at)
    order_id = getattr(message, "order_id", None)
    if not isinstance(message, _HANDLED) or order_id is None:
        return Decision(state=None, rejected=f"orders does not handle {type(message).__name__}")
    if state is None:
        return Decision(state=None, rejected=f"unknown order {order_id}")
    if message.event_id in state.applied:
        return Decision(state=None, messages=effects_of(state, message.event_id))
    if isinstance(message, CancelOrder) and (refusal := cancel_refusal(state.status)) is not None:
        # Refused, and noted in the history: a cancel that raced past the API's check (202) says why it did nothing.
        noted = state.model_copy(update={
            "applied": state.applied | {message.event_id},
            "history": (*state.history, HistoryEntry(event=CANCEL_REFUSED, at=message.occurred_at,
                                                     event_id=message.event_id, detail=refusal,
                                                     recorded_at=recorded_at)),
        })
        return Decision(state=noted, rejected=refusal)
    if isinstance(message, CancelOrder) and state.status == OrderStatus.CONFIRMED and state.cancel_request:
        # Asked already and shipping has not answered yet: ask again, the very same request (a lost answer, a
        # request shipping could not read, are then healed by the customer's second click).
        return Decision(state=None, messages=effects_of(state, state.cancel_request.cause.event_id))
    if (isinstance(message, _ANSWERS) and state.status == OrderStatus.PENDING
            and recorded_at is not None and recorded_at >= state.deadline):
        # An answer written to Kafka at or after the deadline (the flows were down or far behind): the order was
        # not settled by its deadline, so it is expired now, and the answer compensated as a late one (a
        # reservation released, an authorization voided), whatever the ExpireOrder behind it in the queue. A
        # rejection or a decline that late changes nothing but the reason: timeout, as for the others.
        state = _cancel(state, Cause.of(message), CancelReason.TIMEOUT, None)
    updated = _transition(state, message)
    if updated is None:
        return Decision(state=None)
    return _applied(updated, message, recorded_at)


def cancel_refusal(status: str) -> str | None:
    """Why a CancelOrder would be refused now that the order is ``status``, or ``None`` when it would be accepted
    (or be a harmless no-op). The status alone decides, so the API and the CLI ask it of the order they read."""
    if status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        return CANNOT_CANCEL_AFTER_DISPATCH
    return None


# --- Placing ------------------------------------------------------------------------------------------------

def forgettable_placement(cmd: PlaceOrder, now_ms: int | None, retention_ms: int) -> str | None:
    """Why ``cmd``, for an order not stored, must not place it: its order may have been placed, settled and
    forgotten already (``None``: it may place it).

    An order is forgotten the retention after its last step at the earliest, so never sooner than the retention
    after its placement (:func:`streamcart.domain.retention.forget_at`): a PlaceOrder handled earlier than that
    cannot be about a forgotten order, and one handled later may be (a record produced again, offsets reset, a
    dead letter replayed). Placed again, that order would take its stock and its money a second time and
    rewrite its warehouse rows; it is refused instead (dead-lettered, saying so).
    """
    if retention_ms <= 0 or now_ms is None or now_ms < cmd.occurred_at + retention_ms:
        return None
    return (f"PlaceOrder {cmd.order_id} of {iso_utc(cmd.occurred_at)} is older than the order retention "
            f"({retention_ms / 1000:g} s): its order may have been settled and forgotten, and would be placed again")


def _place(
    state: OrderState | None, cmd: PlaceOrder, saga_timeout_ms: int, recorded_at: int | None
) -> Decision[OrderState]:
    if state is not None:
        # Placed before (a redelivery, or a retried request that reused the order id): change nothing and
        # emit exactly what the first placement emitted.
        return Decision(state=None, messages=effects_of(state, state.placed_event_id))
    lines = _merge_lines(cmd.lines)
    placed = OrderState(
        order_id=cmd.order_id,
        customer_id=cmd.customer_id,
        status=OrderStatus.PENDING,
        lines=lines,
        currency=cmd.currency,
        payment_token=cmd.payment_token,
        webhook_url=cmd.webhook_url,
        email=cmd.email,
        phone=cmd.phone,
        placed_at=cmd.occurred_at,
        deadline=cmd.occurred_at + saga_timeout_ms,
        placed_event_id=cmd.event_id,
        outcomes={line.sku: LineOutcome() for line in lines},
    )
    return _applied(placed, cmd, recorded_at)


def _merge_lines(lines: Iterable[OrderLine]) -> tuple[OrderLine, ...]:
    """One line per SKU: inventory keeps one reservation per (order, sku), so repeated SKUs are summed."""
    quantities: dict[str, int] = {}
    for line in lines:
        quantities[line.sku] = quantities.get(line.sku, 0) + line.quantity
    return tuple(OrderLine(sku=sku, quantity=quantity) for sku, quantity in quantities.items())


#: The answers a PENDING order waits for: one written at or after its deadline expires it first (:func:`decide`).
_ANSWERS = (StockReserved, StockRejected, PaymentAuthorized, PaymentDeclined)


# --- Transitions: each returns the new state, or None when the message changes nothing ----------------------

def _transition(order: OrderState, message: Message) -> OrderState | None:
    match message:
        case StockReserved():
            return _on_reserved(order, message)
        case StockRejected():
            return _on_rejected(order, message)
        case PaymentAuthorized():
            return _on_authorized(order, message)
        case PaymentDeclined():
            return _on_declined(order, message)
        case ExpireOrder():
            if order.status != OrderStatus.PENDING or message.occurred_at < order.deadline:
                return None  # settled already, or a timer ran early: the deadline is what counts
            return _cancel(order, Cause.of(message), CancelReason.TIMEOUT, None)
        case CancelOrder():
            return _on_cancel(order, message)
        case StockReleased() | StockCommitted() | StockRestocked():
            return _on_stock_settled(order, message)
        case PaymentCaptured() | PaymentVoided() | PaymentRefunded():
            return _on_payment_settled(order, message)
        case ShipmentCreated() | ShipmentDispatched() | ShipmentDelivered():
            return _on_shipment(order, message)
        case ShipmentCancelled():
            return _on_shipment_cancelled(order, message)
    return None


def _on_reserved(order: OrderState, event: StockReserved) -> OrderState | None:
    if event.sku not in order.outcomes or order.outcome(event.sku).status != LineStatus.PENDING:
        return None  # not a line of this order, or the line has its answer already
    cause = Cause.of(event)
    reserved = LineOutcome(status=LineStatus.RESERVED, unit_price_cents=event.unit_price_cents)
    if order.status == OrderStatus.CANCELLED:
        # The order was cancelled while this reservation was in flight: give it straight back.
        reserved = reserved.model_copy(update={"release": cause})
    order = _with_outcome(order, event.sku, reserved)
    if order.status == OrderStatus.PENDING and all(o.status == LineStatus.RESERVED for o in order.outcomes.values()):
        total = sum(line.quantity * (order.outcome(line.sku).unit_price_cents or 0) for line in order.lines)
        payment = PaymentInfo(status=PaymentStatus.REQUESTED, amount_cents=total, requested=cause)
        order = order.model_copy(update={"total_cents": total, "payment": payment})
    return order


def _on_rejected(order: OrderState, event: StockRejected) -> OrderState | None:
    if event.sku not in order.outcomes or order.outcome(event.sku).status != LineStatus.PENDING:
        return None
    order = _with_outcome(order, event.sku, LineOutcome(status=LineStatus.REJECTED, rejection=event.reason))
    if order.status != OrderStatus.PENDING:
        return order  # already cancelled: the rejection only completes the picture
    reason = event.reason if event.reason == StockRejection.OUT_OF_STOCK else CancelReason.PRODUCT_UNAVAILABLE
    detail = f"{event.sku}: {event.detail or event.reason}"
    if event.reason == StockRejection.OUT_OF_STOCK:
        detail = f"{event.sku}: {event.quantity} requested, {event.available} available"
    return _cancel(order, Cause.of(event), reason, detail)


def _on_authorized(order: OrderState, event: PaymentAuthorized) -> OrderState | None:
    payment = order.payment
    cause = Cause.of(event)
    if payment is not None and payment.status == PaymentStatus.DECLINED and order.status == OrderStatus.CANCELLED:
        # An approval after the decline the order was cancelled on (the payments flow gave up on the gateway, and a
        # worker that lost the partition wrote on with its answer): nothing may stay held, give it back.
        voiding = payment.model_copy(
            update={"status": PaymentStatus.VOID_REQUESTED, "authorization_id": event.authorization_id, "void": cause}
        )
        return order.model_copy(update={"payment": voiding})
    if payment is None or payment.status != PaymentStatus.REQUESTED:
        return None  # nothing was asked, or this authorization is known already
    if order.status == OrderStatus.CANCELLED:
        # Authorized after the order was cancelled (timeout, customer, a late rejection): give the money back.
        voiding = payment.model_copy(
            update={"status": PaymentStatus.VOID_REQUESTED, "authorization_id": event.authorization_id, "void": cause}
        )
        return order.model_copy(update={"payment": voiding})
    authorized = payment.model_copy(
        update={"status": PaymentStatus.AUTHORIZED, "authorization_id": event.authorization_id}
    )
    return order.model_copy(update={"status": OrderStatus.CONFIRMED, "payment": authorized, "confirmed": cause})


def _on_declined(order: OrderState, event: PaymentDeclined) -> OrderState | None:
    payment = order.payment
    if payment is None or payment.status != PaymentStatus.REQUESTED:
        return None
    declined = payment.model_copy(update={"status": PaymentStatus.DECLINED, "decline_reason": event.reason})
    order = order.model_copy(update={"payment": declined})
    if order.status != OrderStatus.PENDING:
        return order
    return _cancel(order, Cause.of(event), CancelReason.PAYMENT_DECLINED, event.reason)


def _on_cancel(order: OrderState, cmd: CancelOrder) -> OrderState | None:
    detail = f"requested by {cmd.requested_by}"
    if order.status == OrderStatus.CONFIRMED:
        return order.model_copy(
            update={"cancel_request": CancelRequest(cause=Cause.of(cmd), reason=cmd.reason, detail=detail)}
        )
    if order.status != OrderStatus.PENDING:
        return None  # cancelled already (dispatched orders were refused before we got here)
    return _cancel(order, Cause.of(cmd), cmd.reason, detail)


def _on_shipment_cancelled(order: OrderState, event: ShipmentCancelled) -> OrderState | None:
    """Shipping stopped the shipment: the requested cancel goes ahead, with the refund and the restock."""
    request = order.cancel_request
    stopped = order.model_copy(update={"shipment": ShipmentInfo(
        tracking_id=event.tracking_id, status=ShipmentStatus.CANCELLED,
        carrier=order.shipment.carrier if order.shipment else None,
    )})
    if order.status != OrderStatus.CONFIRMED or request is None:
        # Stopped because the order was cancelled already: only note it (the API then refuses to move it).
        return stopped if order.shipment is None or order.shipment.status != ShipmentStatus.CANCELLED else None
    return _cancel(stopped, Cause.of(event), request.reason, request.detail)


def _cancel(order: OrderState, cause: Cause, reason: str, detail: str | None) -> OrderState:
    """CANCELLED with its compensations: release what is held, or refund and restock what was confirmed."""
    update: dict[str, object] = {
        "status": OrderStatus.CANCELLED,
        "cancel_reason": reason,
        "cancel_detail": detail,
        "cancelled": cause,
    }
    if order.status == OrderStatus.CONFIRMED and order.payment is not None:
        update["payment"] = order.payment.model_copy(update={"status": PaymentStatus.REFUND_REQUESTED})
    else:
        update["outcomes"] = {
            sku: outcome.model_copy(update={"release": cause}) if outcome.status == LineStatus.RESERVED else outcome
            for sku, outcome in order.outcomes.items()
        }
    return order.model_copy(update=update)


_LINE_STATUS_AFTER: dict[type[Message], str] = {
    StockReleased: LineStatus.RELEASED,
    StockCommitted: LineStatus.COMMITTED,
    StockRestocked: LineStatus.RESTOCKED,
}


def _on_stock_settled(order: OrderState, event: StockReleased | StockCommitted | StockRestocked) -> OrderState:
    if event.sku not in order.outcomes:
        return order  # still worth a line of history
    return _with_outcome(order, event.sku, order.outcome(event.sku).model_copy(
        update={"status": _LINE_STATUS_AFTER[type(event)]}
    ))


_PAYMENT_STATUS_AFTER: dict[type[Message], str] = {
    PaymentCaptured: PaymentStatus.CAPTURED,
    PaymentVoided: PaymentStatus.VOIDED,
    PaymentRefunded: PaymentStatus.REFUNDED,
}


def _on_payment_settled(order: OrderState, event: PaymentCaptured | PaymentVoided | PaymentRefunded) -> OrderState:
    payment = order.payment
    if payment is None:
        return order
    status = _PAYMENT_STATUS_AFTER[type(event)]
    if status == PaymentStatus.CAPTURED and payment.status != PaymentStatus.AUTHORIZED:
        return order  # a capture that lands after the refund was asked for does not hide the refund
    return order.model_copy(update={"payment": payment.model_copy(update={"status": status})})


_SHIPMENT_STATUS_AFTER: dict[type[Message], str] = {
    ShipmentCreated: ShipmentStatus.CREATED,
    ShipmentDispatched: ShipmentStatus.DISPATCHED,
    ShipmentDelivered: ShipmentStatus.DELIVERED,
}
#: A stopped shipment never moves again (shipping refuses to dispatch it).
_SHIPMENT_RANK = {ShipmentStatus.CREATED: 0, ShipmentStatus.DISPATCHED: 1, ShipmentStatus.DELIVERED: 2,
                  ShipmentStatus.CANCELLED: 3}


def _on_shipment(order: OrderState, event: ShipmentCreated | ShipmentDispatched | ShipmentDelivered) -> OrderState:
    carrier = event.carrier if isinstance(event, ShipmentCreated | ShipmentDispatched) else None
    known = order.shipment
    status = _SHIPMENT_STATUS_AFTER[type(event)]
    if known is not None and _SHIPMENT_RANK[known.status] >= _SHIPMENT_RANK[status]:
        return order  # an older shipment event arriving late
    shipment = ShipmentInfo(
        tracking_id=event.tracking_id, status=status, carrier=carrier or (known.carrier if known else None)
    )
    update: dict[str, object] = {"shipment": shipment}
    # Only a confirmed order follows its shipment. A cancelled one does not (I1): a dispatch racing a refund
    # stays visible in the history for a person to sort out, but the order stays CANCELLED.
    cause = Cause.of(event)
    if status == ShipmentStatus.DISPATCHED and order.status == OrderStatus.CONFIRMED:
        update.update(status=OrderStatus.SHIPPED, shipped=cause)
    elif status == ShipmentStatus.DELIVERED and order.status in (OrderStatus.CONFIRMED, OrderStatus.SHIPPED):
        # Delivered implies dispatched: an order that missed the dispatch event is shipped by this one too.
        update.update(status=OrderStatus.DELIVERED, delivered=cause, shipped=order.shipped or cause)
    return order.model_copy(update=update)


def _with_outcome(order: OrderState, sku: str, outcome: LineOutcome) -> OrderState:
    return order.model_copy(update={"outcomes": {**order.outcomes, sku: outcome}})


def _applied(order: OrderState, message: Message, recorded_at: int | None) -> Decision[OrderState]:
    """Record ``message`` as applied, with its history, and emit what it caused."""
    messages = effects_of(order, message.event_id)
    entries = [] if isinstance(message, _COMMANDS) else [_history_entry(message, recorded_at)]
    entries.extend(_history_entry(m, recorded_at) for m in messages if isinstance(m, OrderEvent))
    recorded = order.model_copy(
        update={"applied": order.applied | {message.event_id}, "history": (*order.history, *entries)}
    )
    return Decision(state=recorded, messages=messages)


def _history_entry(message: Message, recorded_at: int | None) -> HistoryEntry:
    detail: str | None = None
    match message:
        case StockRejected():
            detail = f"{message.sku}: {message.reason}"
        case StockReserved() | StockReleased() | StockCommitted() | StockRestocked():
            detail = message.sku
        case PaymentDeclined() | OrderCancelled():
            detail = message.reason
        case ShipmentDispatched() | ShipmentDelivered() | ShipmentCreated() | ShipmentCancelled():
            detail = message.tracking_id
        case OrderCancelRequested():
            detail = message.detail
    return HistoryEntry(event=type(message).__name__, at=message.occurred_at, event_id=message.event_id, detail=detail,
                        recorded_at=recorded_at)


_COMMANDS = (PlaceOrder, CancelOrder, ExpireOrder)
_HANDLED = (
    *_COMMANDS,
    StockReserved, StockRejected, StockReleased, StockCommitted, StockRestocked,
    PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided, PaymentRefunded,
    ShipmentCreated, ShipmentDispatched, ShipmentDelivered, ShipmentCancelled,
)
