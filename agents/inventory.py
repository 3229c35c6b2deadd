"""The inventory flow: catalog and stock, keyed by sku (adapter around :mod:`streamcart.domain.inventory`)."""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import FlowError, Runtime, consume, header, refused
from schemas.messages import AdjustStock, ForgetReservation, InventoryCommand, Message, UpsertProduct
from streamcart.dead_letters import DlqHeader
from streamcart.domain import catalog, inventory
from streamcart.text import is_digits

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> Any:
    """Declare the inventory agent (catalog upserts and every stock command) on the runtime's app."""
    tables = runtime.tables
    t = runtime.topics

    async def handle(message: Message, event: Any) -> None:
        if isinstance(message, UpsertProduct):
            position, unplaced = _position(event)
            decision = catalog.decide(tables.catalog.get(message.sku), message, position, replayed=unplaced)
            refused(decision.rejected, message)
            if decision.state is not None:
                tables.catalog.put(message.sku, decision.state)
            await runtime.emit(decision.messages, cause=event)
            return
        if not isinstance(message, InventoryCommand):
            raise FlowError(f"{type(message).__name__} on an inventory topic")
        if not inventory.keyable(message.sku):
            raise FlowError(f"SKU {message.sku!r} cannot key the stock table (no '/' or '#')")
        if isinstance(message, ForgetReservation):
            forget(message)
            return
        change, writes = inventory.records(
            tables.stock.get(message.sku), tables.reservations.get, message, product=tables.catalog.get(message.sku),
            remembered=tables.adjustments.get,
        )
        # An adjustment that would take stock promised to orders is refused (the API checks first, but cannot see
        # the reservations queued ahead of it): an admin was answered 202 for what did not happen, so it is a
        # warning, and the refusal is noted in the SKU's adjustment memory (written below) for the API to answer.
        adjustment_refusal = {change.rejected} if isinstance(message, AdjustStock) and change.rejected else set()
        if refused(change.rejected, message, adjustment_refusal, level=logging.WARNING) and not writes:
            return
        for key, record in writes:
            match record:
                case inventory.StockState():
                    tables.stock.put(key, record)
                case inventory.Reservation():
                    tables.reservations.put(key, record)
                case inventory.AdjustmentMemory():
                    tables.adjustments.put(key, record)
                case _:
                    raise FlowError(f"no table for a {type(record).__name__} record")
        await runtime.emit(change.messages, cause=event)

    def forget(message: ForgetReservation) -> None:
        key = inventory.reservation_key(message.sku, message.order_id)
        forgotten = inventory.forget(tables.stock.get(message.sku), tables.reservations.get(key), message)
        if refused(forgotten.refused, message):
            return
        if forgotten.stock is not None:
            tables.stock.put(message.sku, forgotten.stock)
        if forgotten.delete:
            tables.reservations.delete(key)

    async def inventory_agent(stream: Any) -> None:
        await consume(runtime, stream, handle, flow="inventory")

    source = runtime.source(t.catalog_commands, t.inventory_commands)
    return runtime.app.agent(source, name="inventory")(inventory_agent)


def _position(event: Any) -> tuple[int | None, bool]:
    """Where an upsert is in its partition of the catalog commands topic, and whether that position is not known
    (a replayed dead letter without the offset its message first had: placed by event time)."""
    if header(event, DlqHeader.REPLAY_OF) is None:
        return getattr(event.message, "offset", None), False
    first = header(event, DlqHeader.REPLAY_POSITION)
    if first is not None and is_digits(first):
        return int(first), False  # back in its place in the log
    return None, True
