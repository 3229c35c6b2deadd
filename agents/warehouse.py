"""The warehouse projections: rows for Kafka Connect's JDBC sinks (adapter around
:mod:`streamcart.domain.warehouse`).

The orders flow feeds every ``warehouse.*`` topic, from what it handles anyway:

- after it stores an order, that order's changed ``orders``/``order_lines`` rows (:func:`send_order_rows`): the rows
  are the stored state the API answers from, never a second reading of the events that could disagree with it
  (invariant I7);
- for every payment, shipping and inventory event it receives, that event's fact row (:func:`send_event_rows`).
  The orders flow consumes those three topics whole; a flow of its own that received each such event only to turn
  it into its row cost every worker seven more handlings per order.

Both go through the worker's producer, which faust flushes before it commits the source offset: a crash before
the flush redelivers the source message, and the rows go again with the same keys (an upsert of the same row).
"""

from __future__ import annotations

from typing import Any

from agents.runtime import Runtime, record_time_ms
from schemas.messages import Message
from streamcart.domain import warehouse
from streamcart.domain.order_state import OrderState


async def send_order_rows(runtime: Runtime, before: OrderState | None, after: OrderState, *, cause: Any) -> None:
    """Send the rows of ``after`` that differ from ``before``'s (all of them when ``before`` is ``None``)."""
    await runtime.send_rows(warehouse.order_changes(before, after), cause=cause)


async def send_event_rows(runtime: Runtime, message: Message, event: Any, order: OrderState) -> None:
    """Send the fact row of a payment, shipping or stock event about ``order`` (nothing for other messages), stamped
    with the time its record was written to Kafka: the first time, as ``order``'s history keeps it, when the order
    applied the event and it comes again as another record (a flow re-sending it after a crash, a dead letter
    replayed), else this record's."""
    rows = warehouse.event_rows(message, first_recorded(order, message) or record_time_ms(event))
    if rows:
        await runtime.send_rows(rows, cause=event)


def first_recorded(order: OrderState, message: Message) -> int | None:
    """When ``order``'s history says the event ``message`` was recorded (``None``: not in it, or not kept)."""
    event_id = message.event_id
    return next((entry.recorded_at for entry in order.history if entry.event_id == event_id), None)

