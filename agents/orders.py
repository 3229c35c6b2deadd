"""The orders flow: the saga's memory, keyed by order_id (adapter around :mod:`streamcart.domain.orders`)."""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import Runtime, consume
from schemas.messages import Message, OrderCommand
from streamcart.domain import orders
from streamcart.errors import StreamcartError

log = logging.getLogger(__name__)


class UnhandledMessage(StreamcartError):
    """A message reached a flow that has no transition for it."""


def register(runtime: Runtime) -> Any:
    """Declare the orders agent on the runtime's app."""
    saga_timeout_ms = int(runtime.settings.saga_timeout_s * 1000)
    table = runtime.tables.orders

    async def handle(message: Message, event: Any) -> None:
        if not isinstance(message, OrderCommand):
            raise UnhandledMessage(f"{type(message).__name__} on the order commands topic")
        decision = orders.decide(table.get(message.order_id), message, saga_timeout_ms=saga_timeout_ms)
        if decision.rejected is not None:
            raise UnhandledMessage(decision.rejected)
        if decision.state is not None:
            table.put(message.order_id, decision.state)
        for out in decision.messages:
            await runtime.send(out, cause=event)

    async def orders_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="orders")

    return runtime.app.agent(runtime.source(runtime.topics.order_commands), name="orders")(orders_agent)
