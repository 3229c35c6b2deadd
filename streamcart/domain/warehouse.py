"""The warehouse's rows (docs/WAREHOUSE.md), as pure projections of an order's state and of the saga's events.

Every warehouse table has a Kafka topic of its own whose records Kafka Connect turns into typed rows: the key is a
struct naming the table's primary key, the value a struct of the other columns, both as JSON with the schema
embedded (Connect's ``JsonConverter`` with ``schemas.enable``). The Debezium JDBC sink upserts them by key, so a
record sent twice rewrites the same row.

- ``orders`` and ``order_lines`` project :class:`~streamcart.domain.order_state.OrderState`, the very record the
  API answers from (invariant I7 holds by construction); each new state of an order upserts its rows again, and
  the states of one order travel in order on one partition, so the latest wins.
- ``payments``, ``shipments`` and ``stock_movements`` are one row per fact (an event), keyed by what the fact is
  about (order, SKU, kind), which happens at most once: a redelivered event rewrites its row.

Money stays integer cents; times are ``timestamptz`` (Debezium's ``ZonedTimestamp``: ISO-8601 text in UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from pydantic_core import to_json

from schemas.messages import (
    InventoryEvent,
    Message,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentEvent,
    PaymentRefunded,
    PaymentVoided,
    ShipmentCancelled,
    ShipmentCreated,
    ShipmentDelivered,
    ShipmentDispatched,
    ShippingEvent,
    StockCommitted,
    StockRejected,
    StockReleased,
    StockReserved,
    StockRestocked,
)
from streamcart.domain.order_state import OrderState

#: Connect's name for a timestamp with time zone as the Debezium JDBC sink understands it.
ZONED_TIMESTAMP = "io.debezium.time.ZonedTimestamp"

# Column types: Connect schema types, plus ``timestamptz`` (ms epoch in a row, ISO-8601 text on the wire).
STRING, INT64, INT32, TIMESTAMPTZ = "string", "int64", "int32", "timestamptz"


@dataclass(frozen=True)
class Column:
    """One column: its name, type, and whether it may be NULL."""

    name: str
    type: str
    optional: bool = False

    def schema(self) -> dict[str, Any]:
        if self.type == TIMESTAMPTZ:
            return {"field": self.name, "type": "string", "optional": self.optional, "name": ZONED_TIMESTAMP,
                    "version": 1}
        return {"field": self.name, "type": self.type, "optional": self.optional}

    def wire(self, value: object) -> object:
        if value is None:
            if not self.optional:
                raise ValueError(f"column {self.name} may not be NULL")
            return None
        if self.type == TIMESTAMPTZ:
            return iso_utc(int(value))  # type: ignore[call-overload]
        return value


@dataclass(frozen=True)
class Table:
    """A warehouse table: ``name`` (also its topic's suffix), its primary key columns and the others."""

    name: str
    key: tuple[Column, ...]
    value: tuple[Column, ...]

    @property
    def columns(self) -> tuple[Column, ...]:
        return (*self.key, *self.value)

    @cached_property
    def _key_schema(self) -> dict[str, Any]:
        return _struct(f"streamcart.warehouse.{self.name}.Key", self.key)

    @cached_property
    def _value_schema(self) -> dict[str, Any]:
        return _struct(f"streamcart.warehouse.{self.name}.Value", self.value)

    @cached_property
    def _key_prefix(self) -> bytes:
        # The schema part of every record is the same: serialise it once (it is most of each record's bytes).
        return b'{"schema":' + _json(self._key_schema) + b',"payload":'

    @cached_property
    def _value_prefix(self) -> bytes:
        return b'{"schema":' + _json(self._value_schema) + b',"payload":'

    def record(self, row: Mapping[str, object]) -> tuple[bytes, bytes]:
        """The Kafka key and value of ``row`` (every column present): the same row always gives the same bytes."""
        missing = {c.name for c in self.columns} - set(row)
        extra = set(row) - {c.name for c in self.columns}
        if missing or extra:
            raise ValueError(f"{self.name} row: missing {sorted(missing)}, unknown {sorted(extra)}")
        payload = _json({c.name: c.wire(row[c.name]) for c in self.value})
        return self.record_key(row), self._value_prefix + payload + b"}"

    def record_key(self, row: Mapping[str, object]) -> bytes:
        """The Kafka key of the row whose primary key columns ``row`` names (other columns are ignored)."""
        return self._key_prefix + _json({c.name: c.wire(row[c.name]) for c in self.key}) + b"}"


def _struct(name: str, columns: tuple[Column, ...]) -> dict[str, Any]:
    return {"type": "struct", "name": name, "optional": False, "fields": [c.schema() for c in columns]}


def _json(document: object) -> bytes:
    # pydantic-core's serialiser (Rust): the bytes of json.dumps(separators=(",", ":"), ensure_ascii=False), six
    # times faster, and every warehouse row is serialised on a worker's hot path.
    return to_json(document)


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 in UTC with millisecond precision, e.g. ``2026-11-25T14:28:47.123Z``; in
    whole numbers (``ms / 1000`` as a float gets the millisecond wrong from the 23rd century on)."""
    seconds, millis = divmod(ms, 1000)
    return f"{datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]}.{millis:03d}Z"


ORDERS = Table(
    "orders",
    key=(Column("order_id", STRING),),
    value=(
        Column("customer_id", STRING),
        Column("status", STRING),
        Column("currency", STRING),
        Column("total_cents", INT64, optional=True),
        Column("line_count", INT32),
        Column("units", INT32),
        Column("cancel_reason", STRING, optional=True),
        Column("cancel_detail", STRING, optional=True),
        Column("payment_status", STRING, optional=True),
        Column("payment_amount_cents", INT64, optional=True),
        Column("authorization_id", STRING, optional=True),
        Column("decline_reason", STRING, optional=True),
        Column("tracking_id", STRING, optional=True),
        Column("shipment_status", STRING, optional=True),
        Column("carrier", STRING, optional=True),
        Column("placed_at", TIMESTAMPTZ),
        Column("deadline_at", TIMESTAMPTZ),
        Column("confirmed_at", TIMESTAMPTZ, optional=True),
        Column("cancelled_at", TIMESTAMPTZ, optional=True),
        Column("shipped_at", TIMESTAMPTZ, optional=True),
        Column("delivered_at", TIMESTAMPTZ, optional=True),
        Column("updated_at", TIMESTAMPTZ),
    ),
)

ORDER_LINES = Table(
    "order_lines",
    key=(Column("order_id", STRING), Column("sku", STRING)),
    value=(
        Column("quantity", INT32),
        Column("unit_price_cents", INT64, optional=True),
        Column("line_total_cents", INT64, optional=True),
        Column("currency", STRING),
        Column("status", STRING),
        Column("placed_at", TIMESTAMPTZ),
    ),
)

PAYMENTS = Table(
    "payments",
    key=(Column("order_id", STRING), Column("event", STRING)),
    value=(
        Column("amount_cents", INT64),
        Column("currency", STRING),
        Column("authorization_id", STRING, optional=True),
        Column("reason", STRING, optional=True),
        Column("occurred_at", TIMESTAMPTZ),
        Column("recorded_at", TIMESTAMPTZ, optional=True),
        Column("event_id", STRING),
    ),
)

SHIPMENTS = Table(
    "shipments",
    key=(Column("order_id", STRING), Column("event", STRING)),
    value=(
        Column("tracking_id", STRING),
        Column("carrier", STRING, optional=True),
        Column("occurred_at", TIMESTAMPTZ),
        Column("recorded_at", TIMESTAMPTZ, optional=True),
        Column("event_id", STRING),
    ),
)

STOCK_MOVEMENTS = Table(
    "stock_movements",
    key=(Column("order_id", STRING), Column("sku", STRING), Column("movement", STRING)),
    value=(
        Column("quantity", INT32),
        Column("on_hand_delta", INT32),
        Column("reserved_delta", INT32),
        Column("unit_price_cents", INT64, optional=True),
        Column("reason", STRING, optional=True),
        Column("occurred_at", TIMESTAMPTZ),
        Column("recorded_at", TIMESTAMPTZ, optional=True),
        Column("event_id", STRING),
    ),
)

#: Every warehouse table, in the order docs/WAREHOUSE.md describes them.
TABLES: tuple[Table, ...] = (ORDERS, ORDER_LINES, PAYMENTS, SHIPMENTS, STOCK_MOVEMENTS)

Row = tuple[Table, dict[str, object]]


# --- Projections of the order (what the API shows) -------------------------------------------------------------

def order_row(order: OrderState) -> dict[str, object]:
    """The ``orders`` row of ``order``: its latest state as the API shows it."""
    payment, shipment = order.payment, order.shipment
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "status": order.status,
        "currency": order.currency,
        "total_cents": order.total_cents,
        "line_count": len(order.lines),
        "units": sum(line.quantity for line in order.lines),
        "cancel_reason": order.cancel_reason,
        "cancel_detail": order.cancel_detail,
        "payment_status": payment.status if payment else None,
        "payment_amount_cents": payment.amount_cents if payment else None,
        "authorization_id": payment.authorization_id if payment else None,
        "decline_reason": payment.decline_reason if payment else None,
        "tracking_id": shipment.tracking_id if shipment else None,
        "shipment_status": shipment.status if shipment else None,
        "carrier": shipment.carrier if shipment else None,
        "placed_at": order.placed_at,
        "deadline_at": order.deadline,
        "confirmed_at": order.confirmed.at if order.confirmed else None,
        "cancelled_at": order.cancelled.at if order.cancelled else None,
        "shipped_at": order.shipped.at if order.shipped else None,
        "delivered_at": order.delivered.at if order.delivered else None,
        "updated_at": max([order.placed_at, *(entry.at for entry in order.history)]),
    }


def line_rows(order: OrderState) -> list[dict[str, object]]:
    """The ``order_lines`` rows of ``order``, one per SKU, with the price each was reserved at."""
    rows: list[dict[str, object]] = []
    for line in order.line_views():
        price = line.unit_price_cents
        rows.append({
            "order_id": order.order_id,
            "sku": line.sku,
            "quantity": line.quantity,
            "unit_price_cents": price,
            "line_total_cents": None if price is None else price * line.quantity,
            "currency": order.currency,
            "status": line.status,
            "placed_at": order.placed_at,
        })
    return rows


def order_changes(before: OrderState | None, after: OrderState) -> list[Row]:
    """The rows to send for ``after``: those that differ from ``before``'s, or all of them without a ``before``.

    Pass ``before=None`` when the message changed nothing (a redelivery): its rows may never have left before the
    crash that caused it, so they all go again.
    """
    rows: list[Row] = []
    if before is None or order_row(before) != order_row(after):
        rows.append((ORDERS, order_row(after)))
    earlier = [] if before is None else line_rows(before)
    rows.extend((ORDER_LINES, row) for row in line_rows(after) if row not in earlier)
    return rows


# --- Facts: one row per event ----------------------------------------------------------------------------------

_PAYMENT_EVENTS: dict[type[Message], str] = {
    PaymentAuthorized: "authorized",
    PaymentDeclined: "declined",
    PaymentCaptured: "captured",
    PaymentVoided: "voided",
    PaymentRefunded: "refunded",
}
_SHIPMENT_EVENTS: dict[type[Message], str] = {
    ShipmentCreated: "created",
    ShipmentDispatched: "dispatched",
    ShipmentDelivered: "delivered",
    ShipmentCancelled: "cancelled",
}
#: Each stock movement's effect on the SKU's (on_hand, reserved), per unit.
_MOVEMENTS: dict[type[Message], tuple[str, int, int]] = {
    StockReserved: ("reserved", 0, 1),
    StockRejected: ("rejected", 0, 0),
    StockReleased: ("released", 0, -1),
    StockCommitted: ("committed", -1, -1),
    StockRestocked: ("restocked", 1, 0),
}


def event_rows(message: Message, recorded_at: int | None = None) -> list[Row]:
    """The fact rows of one saga event (none for a message the warehouse does not record).

    ``recorded_at`` is when the event was written to Kafka (its record timestamp, ms). A derived event carries
    the event time of its cause, so ``occurred_at`` of a whole saga is the time of its placement; the record
    time is when each step really happened, and a redelivered record has the same one.
    """
    row: dict[str, object]
    if isinstance(message, PaymentEvent) and type(message) in _PAYMENT_EVENTS:
        table, row = PAYMENTS, _payment_row(message)
    elif isinstance(message, ShippingEvent) and type(message) in _SHIPMENT_EVENTS:
        table, row = SHIPMENTS, _shipment_row(message)
    elif isinstance(message, InventoryEvent) and type(message) in _MOVEMENTS:
        table, row = STOCK_MOVEMENTS, _movement_row(message)
    else:
        return []
    return [(table, {**row, "recorded_at": recorded_at})]


def _payment_row(event: PaymentEvent) -> dict[str, object]:
    reason = event.reason if isinstance(event, PaymentDeclined) else None
    return {
        "order_id": event.order_id,
        "event": _PAYMENT_EVENTS[type(event)],
        "amount_cents": event.amount_cents,
        "currency": event.currency,
        "authorization_id": getattr(event, "authorization_id", None),
        "reason": reason,
        "occurred_at": event.occurred_at,
        "event_id": event.event_id,
    }


def _shipment_row(event: ShippingEvent) -> dict[str, object]:
    return {
        "order_id": event.order_id,
        "event": _SHIPMENT_EVENTS[type(event)],
        "tracking_id": event.tracking_id,
        "carrier": event.carrier if isinstance(event, ShipmentCreated | ShipmentDispatched) else None,
        "occurred_at": event.occurred_at,
        "event_id": event.event_id,
    }


def _movement_row(event: InventoryEvent) -> dict[str, object]:
    movement, on_hand, reserved = _MOVEMENTS[type(event)]
    return {
        "order_id": event.order_id,
        "sku": event.sku,
        "movement": movement,
        "quantity": event.quantity,
        "on_hand_delta": on_hand * event.quantity,
        "reserved_delta": reserved * event.quantity,
        "unit_price_cents": event.unit_price_cents if isinstance(event, StockReserved) else None,
        "reason": event.reason if isinstance(event, StockRejected) else None,
        "occurred_at": event.occurred_at,
        "event_id": event.event_id,
    }
