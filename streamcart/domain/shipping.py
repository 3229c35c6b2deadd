"""Shipments, keyed by order_id (DESIGN.md §3 step 6).

OrderConfirmed → a shipment with a tracking id derived from the order id → ShipmentCreated. UpdateShipment moves
it to dispatched (ShipmentDispatched) and then delivered (ShipmentDelivered). A delivery reported before any
dispatch says the goods left too: it dispatches and delivers at once (a carrier's scan can overtake the warehouse's,
and an admin's two updates sent back to back must not depend on the first being applied). Only a shipment that
exists and was not stopped can move: anything else is refused with a reason. A duplicate (the same
message again, or the same status update again with a new event id) changes nothing and re-emits the first event.

Shipping decides whether a confirmed order's cancel wins: it is the one flow that sees both the dispatch and the
cancel, one message at a time per order. OrderCancelRequested on a shipment that has not left stops it
(ShipmentCancelled, on which the orders flow refunds and restocks) and a later dispatch is refused; on a dispatched
shipment it changes nothing, and the ShipmentDispatched already sent ships the order instead. OrderCancelled stops
a shipment the same way (an order cancelled before this rule existed).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.messages import (
    Message,
    OrderCancelled,
    OrderCancelRequested,
    OrderConfirmed,
    OrderEvent,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    UpdateShipment,
)
from schemas.messages import ShipmentStatus as Requested
from streamcart.domain.causes import Cause, caused, derived
from streamcart.domain.decision import Decision
from streamcart.ids import derive_id

#: The carrier a new shipment is booked with unless the caller names another.
DEFAULT_CARRIER = "streamcart-post"

UNKNOWN_SHIPMENT = "no shipment for this order (it is not confirmed, or was forgotten a retention after it settled)"
SHIPMENT_CANCELLED = "the order was cancelled; its shipment must not leave"


class ShipmentStatus:
    CREATED = "created"
    DISPATCHED = Requested.DISPATCHED
    DELIVERED = Requested.DELIVERED
    CANCELLED = "cancelled"


class ShipmentState(BaseModel):
    """One order's shipment; the ``Cause`` fields name the message behind each emitted event."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    customer_id: str
    tracking_id: str
    #: The carrier booked at creation (what ShipmentCreated says; kept so a re-emission says the same).
    carrier: str
    status: str
    #: ``None`` for a shipment stopped before its order's confirmation reached shipping (it never left, nor will).
    created: Cause | None
    #: The carrier an admin named when dispatching, if any.
    dispatch_carrier: str | None = None
    dispatched: Cause | None = None
    delivered: Cause | None = None
    cancelled: Cause | None = None


def tracking_id(order_id: str) -> str:
    """The tracking id of an order's shipment: the same on every worker and every redelivery."""
    return "trk_" + derive_id(order_id, "tracking").replace("-", "")[:20]


def decide(
    state: ShipmentState | None, message: Message, *, carrier: str = DEFAULT_CARRIER
) -> Decision[ShipmentState]:
    """Apply an order event or an UpdateShipment to an order's shipment (``None``: no shipment yet).

    Order events other than OrderConfirmed, OrderCancelRequested and OrderCancelled are not about shipping and are
    ignored.
    """
    match message:
        case OrderConfirmed():
            if state is not None:  # created before (re-emit that), or stopped before it could be: nothing
                cause = state.created.event_id if state.created is not None else message.event_id
                return Decision(state=None, messages=effects_of(state, cause))
            return _emitting(_create(message, carrier), message)
        case OrderCancelRequested() | OrderCancelled():
            return _stop(state, message)
        case OrderEvent():
            return Decision(state=None)
        case UpdateShipment():
            return _update(state, message)
    return Decision(state=None, rejected=f"shipping does not handle {type(message).__name__}")


def effects_of(shipment: ShipmentState, cause_id: str) -> tuple[Message, ...]:
    """The events the message ``cause_id`` made this shipment emit."""
    out: list[Message] = []
    ids = {"order_id": shipment.order_id, "tracking_id": shipment.tracking_id}
    if caused(shipment.created, cause_id):
        out.append(ShipmentCreated(**derived(shipment.created, shipment.order_id, ShipmentCreated), **ids,
                                   carrier=shipment.carrier))
    if caused(shipment.dispatched, cause_id):
        out.append(ShipmentDispatched(**derived(shipment.dispatched, shipment.order_id, ShipmentDispatched), **ids,
                                      carrier=shipment.dispatch_carrier))
    if caused(shipment.delivered, cause_id):
        out.append(ShipmentDelivered(**derived(shipment.delivered, shipment.order_id, ShipmentDelivered), **ids))
    if caused(shipment.cancelled, cause_id):
        out.append(ShipmentCancelled(**derived(shipment.cancelled, shipment.order_id, ShipmentCancelled), **ids))
    return tuple(out)


def _stop(state: ShipmentState | None, cancel: OrderCancelRequested | OrderCancelled) -> Decision[ShipmentState]:
    """Stop a shipment that has not left; one that has left, or was stopped already, changes nothing."""
    if state is None:
        if isinstance(cancel, OrderCancelled):
            return Decision(state=None)  # cancelled before it was confirmed: there never was a shipment
        # Confirmed orders always have one by now, unless their OrderConfirmed was dead-lettered: stop the shipment
        # it would have made, so that a confirmation replayed later creates nothing, and answer the cancel.
        never_made = ShipmentState(
            order_id=cancel.order_id, customer_id=cancel.customer_id, tracking_id=tracking_id(cancel.order_id),
            carrier=DEFAULT_CARRIER, status=ShipmentStatus.CANCELLED, created=None, cancelled=Cause.of(cancel),
        )
        return _emitting(never_made, cancel)
    if state.cancelled is not None:
        return Decision(state=None, messages=effects_of(state, cancel.event_id))  # a redelivery re-emits
    if state.status != ShipmentStatus.CREATED:
        return Decision(state=None)  # the goods left: the dispatch the orders flow gets ships the order
    return _emitting(state.model_copy(update={"status": ShipmentStatus.CANCELLED, "cancelled": Cause.of(cancel)}),
                     cancel)


def _create(confirmed: OrderConfirmed, carrier: str) -> ShipmentState:
    return ShipmentState(
        order_id=confirmed.order_id,
        customer_id=confirmed.customer_id,
        tracking_id=tracking_id(confirmed.order_id),
        carrier=carrier,
        status=ShipmentStatus.CREATED,
        created=Cause.of(confirmed),
    )


def update_refusal(status: str) -> str | None:
    """Why a shipment that is ``status`` cannot be dispatched or delivered, or ``None`` when it can (or is there
    already: a repeat changes nothing).

    The API checks this on the order's view of its shipment before it sends an UpdateShipment, so that an update
    this flow would refuse is answered 409 rather than accepted and dropped. A stopped shipment is stopped for good,
    so the order's view, one event behind the flow at most, cannot be wrong about it.
    """
    if status == ShipmentStatus.CANCELLED:
        return SHIPMENT_CANCELLED  # only a shipment that had not left is stopped: nothing was applied to it
    return None


def _update(state: ShipmentState | None, cmd: UpdateShipment) -> Decision[ShipmentState]:
    if state is None:
        return Decision(state=None, rejected=UNKNOWN_SHIPMENT)
    if cmd.status not in (ShipmentStatus.DISPATCHED, ShipmentStatus.DELIVERED):
        return Decision(state=None, rejected=f"unknown shipment status {cmd.status!r} (dispatched | delivered)")
    if (refusal := update_refusal(state.status)) is not None:
        return Decision(state=None, rejected=refusal)
    done = state.dispatched if cmd.status == ShipmentStatus.DISPATCHED else state.delivered
    if done is not None:
        return Decision(state=None, messages=effects_of(state, done.event_id))  # applied before
    cause = Cause.of(cmd)
    if cmd.status == ShipmentStatus.DISPATCHED:
        dispatched = state.model_copy(
            update={"status": ShipmentStatus.DISPATCHED, "dispatched": cause, "dispatch_carrier": cmd.carrier}
        )
        return _emitting(dispatched, cmd)
    update: dict[str, object] = {"status": ShipmentStatus.DELIVERED, "delivered": cause}
    if state.dispatched is None:  # delivered implies it left: dispatched by the same update
        update.update(dispatched=cause, dispatch_carrier=cmd.carrier)
    return _emitting(state.model_copy(update=update), cmd)


def _emitting(shipment: ShipmentState, cause: Message) -> Decision[ShipmentState]:
    return Decision(state=shipment, messages=effects_of(shipment, cause.event_id))
