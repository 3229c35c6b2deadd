"""The tables every worker declares. Each is co-partitioned with the topics that feed it.

A write goes to the changelog partition of the source event being processed, which is the key's own partition
because every key is the same UTF-8 bytes on every topic of the same partition count. Two exceptions:

- ``payments`` is written inside ``stream.take_events()`` batches, which faust only allows for a table declared
  with ``use_partitioner=True`` (notes/faust.md): the write then goes to the partition of its key, the same one.
- ``reservations`` is keyed ``"{sku}/{order_id}"`` but lives in the SKU's partition: it must follow the source
  event (never ``use_partitioner``), or the key would hash somewhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import Reservation, StockState
from streamcart.domain.order_state import OrderState
from streamcart.domain.payments import PaymentState
from streamcart.domain.shipping import ShipmentState
from tables.typed import DeadlineTable, ModelTable


@dataclass(frozen=True)
class StateTables:
    """The state of the saga, one table per concern."""

    orders: ModelTable[OrderState]
    deadlines: DeadlineTable
    catalog: ModelTable[ProductState]
    stock: ModelTable[StockState]
    reservations: ModelTable[Reservation]
    payments: ModelTable[PaymentState]
    shipments: ModelTable[ShipmentState]


def _table(app: Any, name: str, partitions: int, *, batched: bool = False) -> Any:
    table = app.Table(
        name,
        default=None,
        partitions=partitions,
        use_partitioner=batched,
        help=f"{name} state, keyed like its source topic",
    )
    # faust derives serializers from key_type (JSON for str); set them before the store and changelog topic
    # are created (both lazily) so changelog keys are the id's plain UTF-8 bytes.
    table.key_serializer = "utf8"
    table.value_serializer = "json"
    return table


def declare_tables(app: Any, partitions: int) -> StateTables:
    """Declare every table on ``app`` (call once, while building the app)."""
    return StateTables(
        orders=ModelTable(_table(app, "orders", partitions), OrderState),
        deadlines=DeadlineTable(_table(app, "deadlines", partitions)),
        catalog=ModelTable(_table(app, "catalog", partitions), ProductState),
        stock=ModelTable(_table(app, "stock", partitions), StockState),
        reservations=ModelTable(_table(app, "reservations", partitions), Reservation),
        payments=ModelTable(_table(app, "payments", partitions, batched=True), PaymentState),
        shipments=ModelTable(_table(app, "shipments", partitions), ShipmentState),
    )
