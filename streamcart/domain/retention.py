"""Forgetting settled orders: the workers' tables keep an order for a retention after its last step, not for ever.

Without it every order ever placed stays in the orders, payments, shipments and stock tables (and their
changelogs, which a crashed worker reads back in full), and a customer's order list scans them all. The warehouse
is where orders are kept for good; the tables are the saga's working memory.

An order may be forgotten once it is settled for good and nothing about it is still owed (:func:`quiet`): DELIVERED
with every line committed and the payment captured, or CANCELLED with every line rejected, released or restocked
and the payment declined, voided or refunded, both in the order's view and in the payments flow's record (which
alone knows of a void by key still owed for an authorization the gateway never answered). Its time comes
the retention after its last step (:func:`forget_at`); a later step (a late answer compensated) moves it.

Timers only *emit* :class:`~schemas.messages.ForgetOrder` commands, named by the order and its time, so a tick
that runs twice changes nothing. The orders flow decides with :func:`forget` when it applies one, in two steps,
because a crashed worker rebuilds each table from its own changelog and nothing orders one changelog's writes
against another's. First it deletes the order's payment, shipment, analytics marks and notes of the notifications
delivered, moves its index entry a retention later (a fallback, should the second step never come) and sends itself a
:class:`~schemas.messages.DropOrder`, which leaves only once those deletes are in Kafka (agents/state_first.py).
The DropOrder first checks that nothing deleted came back in between (else it takes the first step again), then
asks inventory to forget the order's reservations (:func:`reservation_forgets`; again when the order is gone
already, since a crash may have kept them from leaving), deletes the index entries and, last, the order. A crash
before the DropOrder is out delivers the ForgetOrder again, which finds the order and does it all again.

A forgotten order is unknown again: the API answers 404 for it, and a message about it is dead-lettered, its own
PlaceOrder too once older than the retention (:func:`streamcart.domain.orders.forgettable_placement`). Keep
the retention well beyond anything that can still arrive for an order: its Idempotency-Key's life (the settings
insist on that), a consumer's backlog, the analytics windows' lateness, a dead-lettered message's replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.messages import DropOrder, ForgetOrder, ForgetReservation, OrderEvent
from streamcart.domain import payments
from streamcart.domain.analytics import is_counted
from streamcart.domain.order_effects import effects_of
from streamcart.domain.order_state import LineStatus, OrderState, OrderStatus, PaymentStatus
from streamcart.ids import derive_id

#: Where an order can never move on from (SHIPPED may still be delivered, CONFIRMED cancelled and refunded).
FINAL = frozenset({OrderStatus.CANCELLED, OrderStatus.DELIVERED})

#: Per final status, where each line's stock and the payment (the order's view, then the payments flow's record)
#: must be for nothing to be owed: a cancelled order that was confirmed still owes its restock while a line is
#: committed, and its refund while the payment is captured.
_SETTLED = {
    OrderStatus.DELIVERED: (frozenset({LineStatus.COMMITTED}), frozenset({PaymentStatus.CAPTURED}),
                            frozenset({payments.PaymentStatus.CAPTURED})),
    OrderStatus.CANCELLED: (frozenset({LineStatus.REJECTED, LineStatus.RELEASED, LineStatus.RESTOCKED}),
                            frozenset({PaymentStatus.DECLINED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED}),
                            frozenset({payments.PaymentStatus.DECLINED, payments.PaymentStatus.VOIDED,
                                       payments.PaymentStatus.REFUNDED})),
}


def forget_at(order: OrderState, retention_ms: int) -> int | None:
    """When ``order`` may be forgotten: ``retention_ms`` after its last step once it is final; ``None`` while it is
    not, or when orders are kept for ever (``retention_ms`` 0)."""
    if retention_ms <= 0 or order.status not in FINAL:
        return None
    last = max((entry.recorded_at or entry.at for entry in order.history), default=order.placed_at)
    return max(last, order.placed_at) + retention_ms


def quiet(order: OrderState, payment: payments.PaymentState | None) -> bool:
    """Whether nothing about ``order`` is still owed: it is final, and every line's stock and its payment (as the
    order saw it, and ``payment``, the payments flow's record, if any) are where that final status leaves them."""
    settled = _SETTLED.get(order.status)
    if settled is None:
        return False
    lines, seen, recorded = settled
    if any(order.outcome(line.sku).status not in lines for line in order.lines):
        return False
    if order.payment is not None and order.payment.status not in seen:
        return False
    return payment is None or payment.status in recorded


def forget_command(order_id: str, at: int) -> ForgetOrder:
    """The command that forgets ``order_id`` at ``at``; the same every time it is built."""
    event_id = derive_id(order_id, "ForgetOrder", at)
    return ForgetOrder(event_id=event_id, occurred_at=at, causation_id=event_id, correlation_id=order_id,
                       order_id=order_id, forget_at=at)


@dataclass(frozen=True)
class Forgetting:
    """What forgetting one order takes in its partition.

    Delete its payment, shipment, notes of the notifications delivered and the analytics marks of
    ``counted_event_ids`` (the order's events that the analytics flow folded and remembers having seen), keep its
    index entry at ``fallback_at`` (should ``drop`` never be applied: a worker of an older version dead-letters
    it), then send ``drop``.
    """

    counted_event_ids: tuple[str, ...]
    fallback_at: int
    drop: DropOrder


def forget(
    order: OrderState | None, payment: payments.PaymentState | None, command: ForgetOrder | DropOrder,
    retention_ms: int,
) -> Forgetting | None:
    """Whether ``command`` forgets ``order`` (``payment``: the payments flow's record of it), and what that takes;
    ``None`` keeps it: already forgotten, not final, something still owed, its time moved past the command's (a
    later step), or retention is off. A DropOrder asks the same again of the order alone (its payment is gone)."""
    if order is None:
        return None
    at = forget_at(order, retention_ms)
    if at is None or at > command.forget_at or not quiet(order, payment):
        return None
    cause = command.event_id
    drop = DropOrder(event_id=derive_id(cause, "DropOrder"), occurred_at=command.forget_at, causation_id=cause,
                     correlation_id=order.order_id, order_id=order.order_id, forget_at=command.forget_at,
                     skus=tuple(dict.fromkeys(line.sku for line in order.lines)))
    return Forgetting(counted_event_ids=_counted_events(order), fallback_at=command.forget_at + retention_ms,
                      drop=drop)


def reservation_forgets(drop: DropOrder) -> tuple[ForgetReservation, ...]:
    """What ``drop`` asks of inventory: forget the order's reservation of each SKU (the same ids every time)."""
    return tuple(
        ForgetReservation(event_id=derive_id(drop.causation_id, "ForgetReservation", sku), occurred_at=drop.forget_at,
                          causation_id=drop.event_id, correlation_id=drop.order_id, sku=sku, order_id=drop.order_id)
        for sku in drop.skus
    )


def kept_until(order: OrderState, command: ForgetOrder | DropOrder, retention_ms: int) -> int | None:
    """Where the index keeps an order that ``command`` did not forget: at its own time if that moved past the
    command's (a later step, a longer retention), else (something still in flight) a retention after the command,
    so an order that stays unsettled does not sit at the front of the index; ``None``: not to be forgotten at all.
    """
    at = forget_at(order, retention_ms)
    if at is None:
        return None
    return at if at > command.forget_at else command.forget_at + retention_ms


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
