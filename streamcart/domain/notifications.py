"""Which notifications follow which order event (DESIGN.md §3 step 9): a pure plan, no delivery.

| event | template | channels (those the customer has) |
|---|---|---|
| OrderConfirmed | ``order_confirmed`` | webhook, email |
| OrderCancelled | ``order_cancelled`` | webhook, email, sms |
| OrderShipped | ``shipment_dispatched`` | webhook, email, sms |

The dispatch notification follows OrderShipped, the orders flow's echo of ShipmentDispatched, because it carries
the customer id that notifications are keyed by (ShipmentDispatched does not). SMS is kept for what a customer may
have to act on at once (a cancellation, a parcel on its way); a confirmation's receipt goes to webhook and email.

Each planned notification has a deterministic ``idempotency_key`` (the event and the channel), which the delivery
adapter passes to the provider. The flow does not rely on providers to deduplicate by it (the local ones do not,
nor does every customer's webhook): it remembers, per order, the key of each notification delivered and how many
attempts it took (:class:`Delivered`, noted by :func:`noted` once a delivery succeeded). A redelivered event (a
duplicate PlaceOrder re-emits the order's events with the same ids, a crash redelivers them) notifies nobody
again: :func:`split` plans only what was not delivered yet, and gives the NotificationSent of the rest again, the
same event (the duplicate rule, DESIGN.md §3). A give-up is dead-lettered and not noted, so its replay delivers
it. :func:`sent` and :func:`failed` build the outcome events with ids derived the same way; like every derived
message they carry the causing event's time (the domain has no clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from schemas.messages import (
    NotificationFailed,
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderEvent,
    OrderShipped,
)
from streamcart.domain.causes import Cause, derived
from streamcart.ids import derive_id


class Channel:
    WEBHOOK = "webhook"
    EMAIL = "email"
    SMS = "sms"


class Template:
    ORDER_CONFIRMED = "order_confirmed"
    ORDER_CANCELLED = "order_cancelled"
    SHIPMENT_DISPATCHED = "shipment_dispatched"


_RULES: dict[type[OrderEvent], tuple[str, tuple[str, ...]]] = {
    OrderConfirmed: (Template.ORDER_CONFIRMED, (Channel.WEBHOOK, Channel.EMAIL)),
    OrderCancelled: (Template.ORDER_CANCELLED, (Channel.WEBHOOK, Channel.EMAIL, Channel.SMS)),
    OrderShipped: (Template.SHIPMENT_DISPATCHED, (Channel.WEBHOOK, Channel.EMAIL, Channel.SMS)),
}

Payload = Mapping[str, str | int | None]


@dataclass(frozen=True, slots=True)
class Contact:
    """Where a customer can be reached; a channel without an address is skipped."""

    webhook_url: str | None = None
    email: str | None = None
    phone: str | None = None

    def address(self, channel: str) -> str | None:
        return {Channel.WEBHOOK: self.webhook_url, Channel.EMAIL: self.email, Channel.SMS: self.phone}.get(channel)


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to deliver on one channel, and everything its outcome event needs."""

    template: str
    channel: str
    address: str
    customer_id: str
    order_id: str
    cause: Cause
    idempotency_key: str
    payload: Payload = field(default_factory=dict)


def plan(event: OrderEvent, contact: Contact, *, only: str | None = None) -> tuple[Notification, ...]:
    """The notifications ``event`` calls for, one per channel the customer can be reached on; none for others.
    ``only`` names the one channel to plan for (a give-up of that channel, replayed)."""
    rule = _RULES.get(type(event))
    if rule is None:
        return ()
    template, channels = rule
    payload = _payload(event)
    return tuple(
        Notification(
            template=template,
            channel=channel,
            address=address,
            customer_id=event.customer_id,
            order_id=event.order_id,
            cause=Cause.of(event),
            idempotency_key=derive_id(event.event_id, "Notification", channel),
            payload=payload,
        )
        for channel in channels
        if (only is None or channel == only) and (address := contact.address(channel))
    )


class Delivered(BaseModel):
    """The notifications of one order delivered so far: the attempts each took, by its ``idempotency_key``."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    attempts: dict[str, int] = Field(default_factory=dict)


def split(
    planned: tuple[Notification, ...], delivered: Delivered | None
) -> tuple[tuple[Notification, ...], tuple[NotificationSent, ...]]:
    """``planned`` as those still to deliver, and the NotificationSent of those ``delivered`` already: the same
    events as the first time (ids and attempts), sent again instead of notifying the customer again."""
    done = {} if delivered is None else delivered.attempts
    return (
        tuple(n for n in planned if n.idempotency_key not in done),
        tuple(sent(n, attempts=done[n.idempotency_key]) for n in planned if n.idempotency_key in done),
    )


def noted(delivered: Delivered | None, notification: Notification, *, attempts: int) -> Delivered:
    """``delivered`` (``None``: nothing yet) with ``notification`` delivered after ``attempts`` tries."""
    before = {} if delivered is None else delivered.attempts
    return Delivered(order_id=notification.order_id, attempts={**before, notification.idempotency_key: attempts})


def sent(notification: Notification, *, attempts: int) -> NotificationSent:
    """The event saying ``notification`` was delivered after ``attempts`` tries."""
    return NotificationSent(
        **derived(notification.cause, notification.order_id, NotificationSent, notification.channel),
        customer_id=notification.customer_id,
        order_id=notification.order_id,
        channel=notification.channel,
        template=notification.template,
        attempts=attempts,
    )


def failed(notification: Notification, *, attempts: int, reason: str) -> NotificationFailed:
    """The event saying delivery of ``notification`` gave up after ``attempts`` tries (it also goes to the DLQ)."""
    return NotificationFailed(
        **derived(notification.cause, notification.order_id, NotificationFailed, notification.channel),
        customer_id=notification.customer_id,
        order_id=notification.order_id,
        channel=notification.channel,
        template=notification.template,
        attempts=attempts,
        reason=reason,
    )


def _payload(event: OrderEvent) -> Payload:
    base: dict[str, str | int | None] = {"order_id": event.order_id}
    match event:
        case OrderConfirmed():
            base.update(total_cents=event.total_cents, currency=event.currency)
        case OrderCancelled():
            base.update(reason=event.reason, detail=event.detail)
        case OrderShipped():
            base.update(tracking_id=event.tracking_id)
    return base
