"""The tables every worker declares. Each is co-partitioned with the topics that feed it.

A write goes to the changelog partition of the source event being processed, which is the key's own partition
because every key is the same UTF-8 bytes on every topic of the same partition count.

``reservations`` is a view of the ``stock`` table under keys ``"{sku}/{order_id}"`` (in its SKU's partition for
the same reason): one inventory command writes the SKU's counters and the order's reservation, and in one table
both go to one changelog partition, in order. After a crash the changelog holds a prefix of the writes, so the
two can never be rebuilt from different points in time (agents/inventory.py). ``adjustments`` is one more view of
it, under ``"{sku}#adjustments"``, for the same reason.

No table uses ``use_partitioner=True`` (notes/faust.md suggests it for writes inside ``take()`` batches): faust
then asks the producer's metadata for the changelog's partitions, which it does not have until it has sent there,
and the write fails. Batched flows set the current event instead (:func:`agents.runtime.process`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import AdjustmentMemory, Reservation, StockState
from streamcart.domain.notifications import Delivered
from streamcart.domain.order_state import OrderState
from streamcart.domain.payments import PaymentState
from streamcart.domain.shipping import ShipmentState
from tables.analytics import AnalyticsTable
from tables.typed import CustomerIndex, DeadlineTable, ModelTable, RetentionIndex


@dataclass(frozen=True)
class StateTables:
    """The state of the saga, one table per concern."""

    orders: ModelTable[OrderState]
    deadlines: DeadlineTable
    retention: RetentionIndex
    customer_orders: CustomerIndex
    catalog: ModelTable[ProductState]
    stock: ModelTable[StockState]
    reservations: ModelTable[Reservation]
    adjustments: ModelTable[AdjustmentMemory]
    payments: ModelTable[PaymentState]
    shipments: ModelTable[ShipmentState]
    analytics: AnalyticsTable
    notified: ModelTable[Delivered]


#: RocksDB options of every table partition's store (ignored by the in-memory store of unit tests). faust's defaults
#: suit one big store per process: three 64 MiB write buffers and a 2 GiB block cache each. A worker opens one store
#: per table partition it holds, active or standby (10 tables x 8 partitions here): up to 15 GiB of write buffers,
#: and RocksDB takes a write buffer's memory in blocks of an eighth of its size (8 MiB) from the first write on.
STORE_OPTIONS = {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2, "block_cache_size": 8 << 20}


def _table(app: Any, name: str, partitions: int, *, values: str = "raw") -> Any:
    table = app.Table(
        name,
        default=None,
        partitions=partitions,
        help=f"{name} state, keyed like its source topic",
        options=dict(STORE_OPTIONS),  # a copy: faust's store pops keys from the dict it is given
    )
    # faust derives serializers from key_type (JSON for str). Changelog keys must be the id's plain UTF-8 bytes,
    # and the table manager has already built the changelog topic (which recovery decodes with) by now: set the
    # serializers, then build the topic again with them. Missing the second step breaks every recovery that has
    # to read the changelog (a fresh worker, a lost disk): each record fails to decode as JSON.
    table.key_serializer = "utf8"
    table.value_serializer = values  # "raw": ModelTable hands over JSON bytes it made itself
    table.changelog_topic = table._new_changelog_topic()
    return table


def declare_tables(app: Any, partitions: int) -> StateTables:
    """Declare every table on ``app`` (call once, while building the app)."""
    stock = _table(app, "stock", partitions)
    return StateTables(
        orders=ModelTable(_table(app, "orders", partitions), OrderState),
        deadlines=DeadlineTable(_table(app, "deadlines", partitions, values="json")),
        retention=RetentionIndex(_table(app, "retention", partitions)),
        customer_orders=CustomerIndex(_table(app, "customer_orders", partitions)),
        catalog=ModelTable(_table(app, "catalog", partitions), ProductState),
        stock=ModelTable(stock, StockState),
        reservations=ModelTable(stock, Reservation),
        adjustments=ModelTable(stock, AdjustmentMemory),
        payments=ModelTable(_table(app, "payments", partitions), PaymentState),
        shipments=ModelTable(_table(app, "shipments", partitions), ShipmentState),
        analytics=AnalyticsTable(_table(app, "analytics", partitions)),
        notified=ModelTable(_table(app, "notified", partitions), Delivered),
    )
