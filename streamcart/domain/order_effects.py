"""The messages each order transition emits, rebuilt from the order's state.

Every emitting transition records its :class:`~streamcart.domain.causes.Cause` in the state; :func:`effects_of`
turns the state and one cause back into the messages, named by ``derive_id(cause, "Kind", sku)``. The first
application and every redelivery go through this one function, so they emit identical messages by construction.
"""

from __future__ import annotations

from schemas.messages import (
    AuthorizePayment,
    CapturePayment,
    CommitStock,
    Message,
    OrderCancelled,
    OrderCancelRequested,
    OrderConfirmed,
    OrderDelivered,
    OrderPlaced,
    OrderShipped,
    PricedLine,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    RestockItems,
    VoidPayment,
)
from streamcart.domain.causes import Cause, caused, derived
from streamcart.domain.order_state import OrderState, PaymentInfo


def effects_of(order: OrderState, cause_id: str) -> tuple[Message, ...]:
    """Every message the message ``cause_id`` made this order emit, in the order they were first emitted."""
    out: list[Message] = []
    payment = order.payment
    if cause_id == order.placed_event_id:
        out.extend(_placement(order))
    if payment is not None and caused(payment.requested, cause_id):
        out.append(_authorize(order, payment.requested, payment))
    if caused(order.confirmed, cause_id) and payment is not None:
        out.extend(_confirmation(order, order.confirmed, payment))
    out.extend(_releases(order, cause_id))
    request = order.cancel_request
    if request is not None and caused(request.cause, cause_id):
        out.append(OrderCancelRequested(
            **derived(request.cause, order.order_id, OrderCancelRequested),
            order_id=order.order_id, customer_id=order.customer_id, reason=request.reason, detail=request.detail,
        ))
    if caused(order.cancelled, cause_id):
        out.extend(_cancellation(order, order.cancelled))
    if payment is not None and caused(payment.void, cause_id):
        out.append(_void(order, payment.void, payment))
    if caused(order.shipped, cause_id):
        out.append(OrderShipped(
            **derived(order.shipped, order.order_id, OrderShipped),
            order_id=order.order_id, customer_id=order.customer_id, tracking_id=_tracking(order),
        ))
    if caused(order.delivered, cause_id):
        out.append(OrderDelivered(
            **derived(order.delivered, order.order_id, OrderDelivered),
            order_id=order.order_id, customer_id=order.customer_id, tracking_id=_tracking(order),
        ))
    return tuple(out)


def _placement(order: OrderState) -> list[Message]:
    cause = Cause(event_id=order.placed_event_id, at=order.placed_at)
    placed = OrderPlaced(
        **derived(cause, order.order_id, OrderPlaced),
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=order.lines,
        currency=order.currency,
        deadline=order.deadline,
    )
    reservations = [
        ReserveStock(
            **derived(cause, order.order_id, ReserveStock, line.sku),
            sku=line.sku,
            order_id=order.order_id,
            quantity=line.quantity,
            currency=order.currency,
        )
        for line in order.lines
    ]
    return [placed, *reservations]


def _authorize(order: OrderState, cause: Cause, payment: PaymentInfo) -> AuthorizePayment:
    return AuthorizePayment(
        **derived(cause, order.order_id, AuthorizePayment),
        order_id=order.order_id,
        customer_id=order.customer_id,
        amount_cents=payment.amount_cents,
        currency=order.currency,
        payment_token=order.payment_token,
    )


def _confirmation(order: OrderState, cause: Cause, payment: PaymentInfo) -> list[Message]:
    authorization_id, total = payment.authorization_id or "", payment.amount_cents
    commits: list[Message] = [
        CommitStock(**derived(cause, order.order_id, CommitStock, line.sku), sku=line.sku, order_id=order.order_id)
        for line in order.lines
    ]
    capture = CapturePayment(
        **derived(cause, order.order_id, CapturePayment),
        order_id=order.order_id,
        authorization_id=authorization_id,
        amount_cents=total,
        currency=order.currency,
    )
    confirmed = OrderConfirmed(
        **derived(cause, order.order_id, OrderConfirmed),
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=tuple(
            PricedLine(sku=line.sku, quantity=line.quantity, unit_price_cents=price)
            for line in order.lines
            if (price := order.outcome(line.sku).unit_price_cents) is not None
        ),
        total_cents=total,
        currency=order.currency,
        authorization_id=authorization_id,
    )
    return [*commits, capture, confirmed]


def _releases(order: OrderState, cause_id: str) -> list[Message]:
    return [
        ReleaseStock(
            **derived(release, order.order_id, ReleaseStock, line.sku),
            sku=line.sku,
            order_id=order.order_id,
            reason=order.cancel_reason or "",
        )
        for line in order.lines
        if caused(release := order.outcome(line.sku).release, cause_id)
    ]


def _cancellation(order: OrderState, cause: Cause) -> list[Message]:
    reason = order.cancel_reason or ""
    out: list[Message] = []
    if order.confirmed is not None and order.payment is not None:
        # Cancelled after confirmation (and before dispatch): the money goes back and the goods go back on hand.
        out.append(RefundPayment(
            **derived(cause, order.order_id, RefundPayment),
            order_id=order.order_id,
            authorization_id=order.payment.authorization_id,
            amount_cents=order.payment.amount_cents,
            currency=order.currency,
            reason=reason,
        ))
        out.extend(
            RestockItems(
                **derived(cause, order.order_id, RestockItems, line.sku), sku=line.sku, order_id=order.order_id
            )
            for line in order.lines
        )
    out.append(OrderCancelled(
        **derived(cause, order.order_id, OrderCancelled),
        order_id=order.order_id, customer_id=order.customer_id, reason=reason, detail=order.cancel_detail,
    ))
    return out


def _void(order: OrderState, cause: Cause, payment: PaymentInfo) -> VoidPayment:
    return VoidPayment(
        **derived(cause, order.order_id, VoidPayment),
        order_id=order.order_id,
        authorization_id=payment.authorization_id,
        reason=f"authorized after the order was cancelled ({order.cancel_reason})",
    )


def _tracking(order: OrderState) -> str:
    return order.shipment.tracking_id if order.shipment is not None else ""
