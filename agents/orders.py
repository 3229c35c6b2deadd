"""The orders flow: the saga's memory, keyed by order_id (adapter around :mod:`streamcart.domain.orders`).

It consumes the order commands and every event the saga's other flows send back about an order (all keyed by
order_id and co-partitioned with the orders table), and keeps the ``deadlines`` table of still-pending orders
and the ``retention`` index of settled ones that the timers scan. A ForgetOrder from the retention timer forgets
a settled order with everything kept about it in its partition, the order itself last, on the DropOrder it sends
itself (:mod:`streamcart.domain.retention`).
"""

from __future__ import annotations

import logging
from typing import Any

from agents import warehouse
from agents.runtime import FlowError, Runtime, consume, record_time_ms, refused
from schemas.messages import DropOrder, ForgetOrder, IndexOrder, Message
from streamcart.domain import orders, retention
from streamcart.domain.order_state import OrderState, OrderStatus

log = logging.getLogger(__name__)

#: Refusals the API reports to the caller before sending anything; one that races past it is logged, and noted in
#: the order's history by the decider (``CancelRefused``).
REFUSALS = {orders.CANNOT_CANCEL_AFTER_DISPATCH}


def register(runtime: Runtime) -> Any:
    """Declare the orders agent on the runtime's app."""
    saga_timeout_ms = int(runtime.settings.saga_timeout_s * 1000)
    retention_ms = int(runtime.settings.order_retention_s * 1000)
    tables = runtime.tables
    t = runtime.topics

    async def forget(command: ForgetOrder, event: Any) -> None:
        order_id = command.order_id
        order = tables.orders.get(order_id)
        forgetting = retention.forget(order, tables.payments.get(order_id), command, retention_ms)
        if forgetting is None or order is None:
            # Kept, and looked at again later; an entry whose order is gone already (a second entry, left by a
            # change of the retention setting) goes.
            after = None if order is None else retention.kept_until(order, command, retention_ms)
            tables.retention.track(order_id, command.forget_at, after)
            return
        clear(order, command, forgetting, event)
        # Sent once those deletes are in their changelogs (agents/state_first.py): a crash before leaves the order
        # there, and the ForgetOrder, delivered again, does it all again.
        await runtime.emit((forgetting.drop,), cause=event)

    def clear(order: OrderState, command: ForgetOrder | DropOrder, forgetting: retention.Forgetting,
              event: Any) -> None:
        """The first step: everything the partition keeps about the order but the order itself."""
        order_id = order.order_id
        partition = int(event.message.partition)
        for event_id in forgetting.counted_event_ids:
            tables.analytics.forget_seen(partition, event_id)
        tables.payments.delete(order_id)
        tables.shipments.delete(order_id)
        tables.notified.delete(order_id)
        tables.customer_orders.remove(order.customer_id, order.placed_at, order_id)
        tables.retention.track(order_id, retention.forget_at(order, retention_ms), None)
        tables.retention.track(order_id, command.forget_at, forgetting.fallback_at)

    def leftovers(order: OrderState, forgetting: retention.Forgetting, event: Any) -> bool:
        """Whether something the first step deleted is back (a replayed or redelivered message in between)."""
        partition = int(event.message.partition)
        return (tables.payments.get(order.order_id) is not None or tables.shipments.get(order.order_id) is not None
                or tables.notified.get_raw(order.order_id) is not None
                or tables.customer_orders.has(order.customer_id, order.placed_at, order.order_id)
                or any(tables.analytics.seen(partition, e) is not None for e in forgetting.counted_event_ids))

    async def drop(command: DropOrder, event: Any) -> None:
        order_id = command.order_id
        order = tables.orders.get(order_id)
        forgetting = None
        if order is not None:
            forgetting = retention.forget(order, None, command, retention_ms)
            if forgetting is None:  # a message in between changed it: kept after all, and indexed again
                tables.retention.track(order_id, None, retention.kept_until(order, command, retention_ms))
                tables.customer_orders.add(order.customer_id, order.placed_at, order_id)
                return
            if leftovers(order, forgetting, event):  # the first step again, then another DropOrder
                clear(order, command, forgetting, event)
                await runtime.emit((forgetting.drop,), cause=event)
                return
        # Inventory forgets the reservations first (again, if the order is gone already: a crash may have kept
        # them from leaving the first time); this command is committed only once they are in Kafka.
        await runtime.emit(retention.reservation_forgets(command), cause=event)
        if forgetting is not None:  # the order is there, and goes now
            tables.retention.track(order_id, forgetting.fallback_at, None)
            tables.retention.track(order_id, command.forget_at, None)
            tables.orders.delete(order_id)
            runtime.telemetry.order_forgotten()

    def index(order_id: str) -> None:
        """File a stored order in the indexes beside it (one stored before they existed); changes nothing else."""
        if (order := tables.orders.get(order_id)) is not None:
            tables.customer_orders.add(order.customer_id, order.placed_at, order_id)
            tables.retention.track(order_id, None, retention.forget_at(order, retention_ms))

    async def handle(message: Message, event: Any) -> None:
        if isinstance(message, ForgetOrder):
            await forget(message, event)
            return
        if isinstance(message, DropOrder):
            await drop(message, event)
            return
        if isinstance(message, IndexOrder):
            index(message.order_id)
            return
        order_id = getattr(message, "order_id", None)
        stored = tables.orders.get(order_id) if order_id is not None else None
        # First the warehouse's fact row of a payment, shipping or stock event, whatever the order makes of it
        # (none for an unknown order: such an event is dead-lettered below, and changes nothing, the warehouse's
        # rows of a forgotten order included).
        if stored is not None:
            await warehouse.send_event_rows(runtime, message, event, stored)
        if order_id is None:
            raise FlowError(f"{type(message).__name__} has no order_id")
        decision = orders.decide(stored, message, saga_timeout_ms=saga_timeout_ms,
                                 recorded_at=record_time_ms(event), now_ms=runtime.now_ms(),
                                 retention_ms=retention_ms)
        if refused(decision.rejected, message, REFUSALS) and decision.state is None:
            return  # (a refused cancel is noted in the order's history: stored below)
        # A message that changes nothing (a redelivery) stores the order again: a worker killed after writing
        # its local store but before the changelog record left would otherwise keep a changelog that is
        # behind for good, and a failover would rebuild the old state from it.
        order = decision.state if decision.state is not None else stored
        if order is not None:
            tables.orders.put(order_id, order)
            # The deadline index follows the order (it writes only when it differs): after a crash between the
            # two writes, the message is processed again and this puts the index right.
            tables.deadlines.track(order_id, order.deadline if order.status == OrderStatus.PENDING else None)
            tables.retention.track(order_id, None if stored is None else retention.forget_at(stored, retention_ms),
                                   retention.forget_at(order, retention_ms))
            # Filed if missing: placed now, a redelivery (a crash before this write), or a settled order whose
            # forgetting took its entry and stopped halfway (only a settled order is ever forgotten).
            if stored is None or decision.state is None or order.status in retention.FINAL:
                tables.customer_orders.add(order.customer_id, order.placed_at, order_id)
            # The warehouse rows follow the stored order; a message that changed nothing sends them all again.
            changed_from = stored if decision.state is not None else None
            await warehouse.send_order_rows(runtime, changed_from, order, cause=event)
            if decision.state is not None:
                runtime.order_watch.changed(order_id)
        await runtime.emit(decision.messages, cause=event)
        if decision.state is not None:
            runtime.telemetry.order_step(
                order_id, message, decision.state.placed_at, _outcome(stored, decision.state), decision.messages,
                cancelled_after_confirmation=_cancelled_after_confirmation(stored, decision.state),
            )

    async def handle_and_note(message: Message, event: Any) -> None:
        await handle(message, event)
        # Handled: the deadline timer may now expire the orders this record could have answered in time.
        runtime.orders_handled.note(str(event.message.topic), int(event.message.partition), record_time_ms(event))

    async def orders_agent(stream: Any) -> None:
        await consume(runtime, stream, handle_and_note, flow="orders")

    source = runtime.source(t.order_commands, t.inventory_events, t.payment_events, t.shipping_events)
    return runtime.app.agent(source, name="orders")(orders_agent)


def _outcome(before: OrderState | None, after: OrderState) -> str | None:
    """``"confirmed"`` or ``"cancelled:<reason>"`` when this step gave the order its outcome, else ``None``: the
    saga's outcome is the step out of PENDING (a confirmed order cancelled later has had its outcome)."""
    if before is not None and (before.status == after.status or before.status != OrderStatus.PENDING):
        return None
    if after.status == OrderStatus.CONFIRMED:
        return "confirmed"
    if after.status == OrderStatus.CANCELLED:
        return f"cancelled:{after.cancel_reason}"
    return None


def _cancelled_after_confirmation(before: OrderState | None, after: OrderState) -> bool:
    """Whether this step cancelled a confirmed order (the customer's cancel: refunded and restocked)."""
    return before is not None and before.status == OrderStatus.CONFIRMED and after.status == OrderStatus.CANCELLED
