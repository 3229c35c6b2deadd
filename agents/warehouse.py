"""The warehouse projections: rows for Kafka Connect's JDBC sinks (adapter around
:mod:`streamcart.domain.warehouse`).

Two sources feed the ``warehouse.*`` topics:

- the orders flow, after it stores an order, sends that order's changed ``orders``/``order_lines`` rows
  (:func:`send_order_rows`): the rows are the stored state the API answers from, never a second reading of the
  events that could disagree with it (invariant I7);
- this module's agent turns every payment, shipping and inventory event into its fact row.

Both send through the worker's producer, which faust flushes before it commits the source offset: a crash before
the flush redelivers the source message, and the rows go again with the same keys (an upsert of the same row).
"""

from __future__ import annotations

from typing import Any

from agents.runtime import Runtime, consume
from schemas.messages import Message
from streamcart.domain import warehouse
from streamcart.domain.order_state import OrderState


async def send_rows(runtime: Runtime, rows: list[warehouse.Row], *, cause: Any) -> None:
    """Send each row to its table's topic, keyed by its primary key."""
    for table, row in rows:
        key, value = table.record(row)
        await runtime.send_record(runtime.topics.warehouse[table.name], key, value, cause=cause)


async def send_order_rows(runtime: Runtime, before: OrderState | None, after: OrderState, *, cause: Any) -> None:
    """Send the rows of ``after`` that differ from ``before``'s (all of them when ``before`` is ``None``)."""
    await send_rows(runtime, warehouse.order_changes(before, after), cause=cause)


def register(runtime: Runtime) -> Any:
    """Declare the warehouse agent (payment, shipping and inventory events → fact rows) on the runtime's app."""
    t = runtime.topics

    async def handle(message: Message, event: Any) -> None:
        written_s = event.message.timestamp  # seconds (faust); None if the record has none
        recorded_at = None if written_s is None else round(written_s * 1000)
        await send_rows(runtime, warehouse.event_rows(message, recorded_at), cause=event)

    async def warehouse_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="warehouse")

    source = runtime.source(t.inventory_events, t.payment_events, t.shipping_events)
    return runtime.app.agent(source, name="warehouse")(warehouse_agent)
