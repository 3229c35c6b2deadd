"""What the saga remembers about one order (:class:`OrderState`) and the statuses it moves through.

The orders flow (:mod:`streamcart.domain.orders`) decides; this module is only the data, shared with the table
declarations and the API, which shows ``line_views()``, ``total_cents``, ``payment``, ``shipment``,
``cancel_reason`` and ``history``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.messages import OrderLine
from streamcart.domain.causes import Cause


class OrderStatus:
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"

    #: An outcome has been reached (I1): the order will never be PENDING again.
    SETTLED = frozenset({CONFIRMED, SHIPPED, DELIVERED, CANCELLED})


class LineStatus:
    """Where one line's stock is, as far as the order has heard from inventory."""

    PENDING = "pending"
    RESERVED = "reserved"
    REJECTED = "rejected"
    RELEASED = "released"
    COMMITTED = "committed"
    RESTOCKED = "restocked"


class PaymentStatus:
    """The order's view of its payment (the payments flow keeps the authoritative record)."""

    REQUESTED = "requested"
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    CAPTURED = "captured"
    VOID_REQUESTED = "void_requested"
    VOIDED = "voided"
    REFUND_REQUESTED = "refund_requested"
    REFUNDED = "refunded"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class HistoryEntry(_Model):
    """One thing that happened to the order, with its event time; ``detail`` says which line or why.

    ``recorded_at`` is when the message the orders flow applied for this step was written to Kafka (its record's
    timestamp, ms; the same for a redelivery): derived events carry their cause's event time, so the steps that
    follow from a placement share its time, and this says when each step came.
    """

    event: str
    at: int
    event_id: str
    detail: str | None = None
    recorded_at: int | None = None


class LineOutcome(_Model):
    """What inventory answered for one line, and whether the order asked for it back."""

    status: str = LineStatus.PENDING
    unit_price_cents: int | None = None
    rejection: str | None = None
    #: The message that made the order send ReleaseStock for this line (its cancellation, or a late reservation).
    release: Cause | None = None


class PaymentInfo(_Model):
    """The order's payment: what was asked for (and when), and what the payments flow answered."""

    status: str
    amount_cents: int
    requested: Cause
    authorization_id: str | None = None
    decline_reason: str | None = None
    #: A late authorization of a cancelled order, which the order asked to void.
    void: Cause | None = None


class ShipmentInfo(_Model):
    """The order's shipment as the shipping events told it (status: created, dispatched, delivered)."""

    tracking_id: str
    status: str
    carrier: str | None = None


class CancelRequest(_Model):
    """A confirmed order's cancel, asked of shipping: it goes ahead once the shipment is stopped."""

    cause: Cause
    reason: str
    detail: str | None = None


class LineView(_Model):
    """A line as the API shows it: the price is the catalog price it was reserved at (``None`` until then)."""

    sku: str
    quantity: int
    unit_price_cents: int | None
    status: str


class OrderState(_Model):
    """Everything the saga remembers about one order.

    The fields after ``applied`` are filled in as the saga goes; the ``Cause`` fields name the message that made
    each emitting transition, which is all :func:`effects_of` needs to emit its messages again.
    """

    order_id: str
    customer_id: str
    status: str
    lines: tuple[OrderLine, ...]
    currency: str
    payment_token: str
    webhook_url: str | None = None
    email: str | None = None
    phone: str | None = None
    placed_at: int
    deadline: int
    placed_event_id: str
    history: tuple[HistoryEntry, ...] = ()
    applied: frozenset[str] = frozenset()
    outcomes: dict[str, LineOutcome] = {}
    total_cents: int | None = None
    payment: PaymentInfo | None = None
    shipment: ShipmentInfo | None = None
    cancel_reason: str | None = None
    cancel_detail: str | None = None
    confirmed: Cause | None = None
    cancelled: Cause | None = None
    #: A cancel of the CONFIRMED order waiting for shipping's answer (the goods may be leaving meanwhile).
    cancel_request: CancelRequest | None = None
    shipped: Cause | None = None
    delivered: Cause | None = None

    @property
    def settled(self) -> bool:
        """Whether the order has reached its outcome (CONFIRMED or later, or CANCELLED)."""
        return self.status in OrderStatus.SETTLED

    def outcome(self, sku: str) -> LineOutcome:
        """What is known about the line for ``sku``."""
        return self.outcomes.get(sku, LineOutcome())

    def line_views(self) -> tuple[LineView, ...]:
        """The lines with their reserved unit prices and stock status, in order."""
        return tuple(
            LineView(
                sku=line.sku,
                quantity=line.quantity,
                unit_price_cents=self.outcome(line.sku).unit_price_cents,
                status=self.outcome(line.sku).status,
            )
            for line in self.lines
        )
