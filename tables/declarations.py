"""The tables every worker declares. Each is co-partitioned with the topics that feed it.

A write goes to the changelog partition of the source event being processed, which is the key's own partition
because every key is the same UTF-8 bytes on every topic of the same partition count. A table written inside
``stream.take()`` batches is declared with ``use_partitioner=True`` instead (notes/faust.md): the write then
goes to the partition of its key, the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamcart.domain.orders import OrderState
from tables.typed import ModelTable


@dataclass(frozen=True)
class StateTables:
    """The state of the saga, one table per concern."""

    orders: ModelTable[OrderState]
    catalog: Any
    stock: Any
    payments: Any
    shipments: Any

    def all(self) -> dict[str, Any]:
        return {
            "orders": self.orders.table,
            "catalog": self.catalog,
            "stock": self.stock,
            "payments": self.payments,
            "shipments": self.shipments,
        }


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
        catalog=_table(app, "catalog", partitions),
        stock=_table(app, "stock", partitions),
        payments=_table(app, "payments", partitions, batched=True),
        shipments=_table(app, "shipments", partitions),
    )
