"""Order deadlines (DESIGN.md §3 step 8): which orders a timer tick must expire.

Timers only *emit* ExpireOrder commands; the orders flow decides what expiry means when it applies one. A command
is named by its order and deadline and timed at the deadline, so a tick that runs twice (or on two workers during a
rebalance) emits identical commands, and the second copy changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas.messages import ExpireOrder
from streamcart.domain.order_state import OrderState, OrderStatus
from streamcart.ids import derive_id


def due(orders: Iterable[OrderState], now_ms: int) -> list[ExpireOrder]:
    """An ExpireOrder for every PENDING order whose deadline is at or before ``now_ms``, oldest deadline first."""
    expired = sorted(
        (order for order in orders if order.status == OrderStatus.PENDING and order.deadline <= now_ms),
        key=lambda order: (order.deadline, order.order_id),
    )
    return [expire(order) for order in expired]


def expire(order: OrderState) -> ExpireOrder:
    """The command that expires ``order`` at its deadline; the same every time it is built."""
    return ExpireOrder(
        event_id=derive_id(order.order_id, "ExpireOrder", order.deadline),
        occurred_at=order.deadline,
        causation_id=order.placed_event_id,
        correlation_id=order.order_id,
        order_id=order.order_id,
        deadline=order.deadline,
    )
