"""Forgetting settled orders: the workers' tables keep an order for a retention after its last step, not for ever.

Without it every order ever placed stays in the orders, payments, shipments and stock tables (and their
changelogs, which a crashed worker reads back in full), and a customer's order list scans them all. The warehouse
is where orders are kept for good; the tables are the saga's working memory.

An order may be forgotten once it is settled for good and nothing about it is still in flight (:func:`quiet`):
CANCELLED or DELIVERED, every line released, rejected, restocked or committed, and its payment declined, voided,
refunded or captured. Its time comes :attr:`retention_ms` after its last step (:func:`forget_at`); a later step
(a late answer compensated) moves it.

Timers only *emit* :class:`~schemas.messages.ForgetOrder` commands, named by the order and its forget time, so a
tick that runs twice changes nothing; the orders flow decides with :func:`forget` when it applies one, and what it
forgets is the order's own state plus, through :class:`~schemas.messages.ForgetReservation` commands, its
reservations in inventory. A redelivered ForgetOrder finds the order still there (it is deleted last) and does it
all again, or finds it gone and does nothing.

A forgotten order is unknown again: the API answers 404 for it, and a message about it is dead-lettered. Keep
the retention well beyond anything that can still arrive for an order: its Idempotency-Key's life (the settings
insist on that), a consumer's backlog, the analytics windows' lateness.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.messages import ForgetOrder, ForgetReservation, Message, OrderEvent
from streamcart.domain.analytics import is_counted
from streamcart.domain.order_effects import effects_of
from streamcart.domain.order_state import LineStatus, OrderState, OrderStatus, PaymentStatus
from streamcart.ids import derive_id

#: Where an order can never move on from (SHIPPED may still be delivered, CONFIRMED cancelled and refunded).
FINAL = frozenset({OrderStatus.CANCELLED, OrderStatus.DELIVERED})

#: A line's stock is settled: nothing held for it, nothing asked of inventory that has not been answered.
_LINE_SETTLED = frozenset({LineStatus.REJECTED, LineStatus.RELEASED, LineStatus.RESTOCKED, LineStatus.COMMITTED})

#: A payment's money is settled: no gateway call is owed for it.
_PAYMENT_SETTLED = frozenset({PaymentStatus.DECLINED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED,
                              PaymentStatus.CAPTURED})


def forget_at(order: OrderState, retention_ms: int) -> int | None:
    """When ``order`` may be forgotten: ``retention_ms`` after its last step once it is final; ``None`` while it is
    not, or when orders are kept for ever (``retention_ms`` 0)."""
    if retention_ms <= 0 or order.status not in FINAL:
        return None
    last = max((entry.recorded_at or entry.at for entry in order.history), default=order.placed_at)
    return max(last, order.placed_at) + retention_ms


def quiet(order: OrderState) -> bool:
    """Whether nothing about ``order`` is still in flight: final, every line's stock and its payment settled."""
    if order.status not in FINAL or order.cancel_request is not None:
        return False
    if any(order.outcome(line.sku).status not in _LINE_SETTLED for line in order.lines):
        return False
    return order.payment is None or order.payment.status in _PAYMENT_SETTLED


def forget_command(order_id: str, at: int) -> ForgetOrder:
    """The command that forgets ``order_id`` at ``at``; the same every time it is built."""
    event_id = derive_id(order_id, "ForgetOrder", at)
    return ForgetOrder(event_id=event_id, occurred_at=at, causation_id=event_id, correlation_id=order_id,
                       order_id=order_id, forget_at=at)


@dataclass(frozen=True)
class Forgetting:
    """What forgetting one order takes beyond deleting its own records.

    ``messages`` ask inventory to forget the order's reservations; ``counted_event_ids`` are the order's events
    that the analytics flow folded and remembers having seen (in the order's own partition).
    """

    messages: tuple[Message, ...]
    counted_event_ids: tuple[str, ...]


def forget(order: OrderState | None, command: ForgetOrder, retention_ms: int) -> Forgetting | None:
    """Whether ``command`` forgets ``order``, and what that takes; ``None`` keeps it: already forgotten, not
    final, something still in flight, its time moved past the command's (a later step), or retention is off."""
    if order is None:
        return None
    at = forget_at(order, retention_ms)
    if at is None or at > command.forget_at or not quiet(order):
        return None
    releases = tuple(
        ForgetReservation(event_id=derive_id(command.event_id, "ForgetReservation", sku), occurred_at=command.forget_at,
                          causation_id=command.event_id, correlation_id=order.order_id, sku=sku,
                          order_id=order.order_id)
        for sku in dict.fromkeys(line.sku for line in order.lines)
    )
    return Forgetting(messages=releases, counted_event_ids=_counted_events(order))


def _counted_events(order: OrderState) -> tuple[str, ...]:
    """The ids of the order's events that count toward analytics, rebuilt from the causes the order kept."""
    causes = [order.placed_event_id] + [
        cause.event_id for cause in (order.confirmed, order.cancelled, order.shipped, order.delivered)
        if cause is not None
    ]
    ids: dict[str, None] = {}
    for cause_id in causes:
        for message in effects_of(order, cause_id):
            if isinstance(message, OrderEvent) and is_counted(message):
                ids[message.event_id] = None
    return tuple(ids)
