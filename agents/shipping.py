"""The shipping flow, keyed by order_id (adapter around :mod:`streamcart.domain.shipping`)."""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import FlowError, Runtime, consume, refused
from schemas.messages import ClockTick, Message
from streamcart.domain import shipping

log = logging.getLogger(__name__)

#: Refusals of an UpdateShipment the API checks before sending, logged as a warning should one race past it. Not
#: :data:`~streamcart.domain.shipping.SHIPMENT_CANCELLED`: a dispatch or delivery reported as a customer's cancel
#: stopped the shipment was answered 202 for what did not happen, and the goods may have left while the order was
#: refunded, so it is dead-lettered with that reason, for a person to sort out (the dead-letter alert fires, and
#: ``streamcart dlq list`` names the order), not left in a log.
REFUSALS = {shipping.UNKNOWN_SHIPMENT}


def register(runtime: Runtime) -> Any:
    """Declare the shipping agent (order events and shipment updates) on the runtime's app."""
    tables = runtime.tables
    t = runtime.topics

    async def handle(message: Message, event: Any) -> None:
        if isinstance(message, ClockTick):
            return  # the analytics flow's clock (agents/analytics.py)
        order_id = getattr(message, "order_id", None)
        if order_id is None:
            raise FlowError(f"{type(message).__name__} has no order_id")
        stored = tables.shipments.get(order_id)
        decision = shipping.decide(stored, message)
        if refused(decision.rejected, message, REFUSALS, level=logging.WARNING):
            return
        shipment = decision.state if decision.state is not None else stored
        if shipment is not None:  # a redelivery stores it again (see agents/orders.py for why)
            tables.shipments.put(order_id, shipment)
        await runtime.emit(decision.messages, cause=event)

    async def shipping_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="shipping")

    return runtime.app.agent(runtime.source(t.order_events, t.shipping_commands), name="shipping")(shipping_agent)
