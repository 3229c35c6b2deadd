"""What the HTTP API may see of a running worker: readiness, assignment, table lookups, key owners."""

from __future__ import annotations

import time
from typing import Any

from agents.runtime import Runtime
from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import StockState
from streamcart.domain.order_state import OrderState, OrderStatus


class FaustWorkerView:
    """Adapts a faust worker to :class:`api.context.WorkerView`."""

    def __init__(self, runtime: Runtime, index: int) -> None:
        self.runtime = runtime
        self.index = index

    @property
    def _app(self) -> Any:
        return self.runtime.app

    def recovered(self) -> bool:
        return bool(self._app.tables.recovery.completed.is_set())

    def rebalancing(self) -> bool:
        return bool(self._app.rebalancing)

    def assigned(self) -> list[int]:
        """Partitions of the order command topic this worker owns (the saga's unit of ownership)."""
        topic = self.runtime.topics.order_commands
        return sorted(tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == topic)

    def ready(self) -> bool:
        return self.recovered() and not self.rebalancing() and bool(self.assigned())

    def order(self, order_id: str) -> OrderState | None:
        return self.runtime.tables.orders.get(order_id)

    def stock(self, sku: str) -> StockState | None:
        return self.runtime.tables.stock.get(sku)

    def product(self, sku: str) -> ProductState | None:
        return self.runtime.tables.catalog.get(sku)

    async def wait_settled(self, order_id: str, timeout_s: float) -> OrderState | None:
        """Woken by the orders flow each time the order changes (:class:`agents.watch.OrderWatch`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            order = self.order(order_id)
            left = deadline - time.monotonic()
            if (order is not None and order.status in OrderStatus.SETTLED) or left <= 0:
                return order
            await self.runtime.order_watch.next_change(order_id, left)

    def orders_of(self, customer_id: str) -> list[OrderState]:
        # A scan of the orders this worker owns: fine for a demo-sized shop; a per-customer index table keyed
        # by customer would be the next step (see the README's notes).
        model = self.runtime.tables.orders.model
        found = []
        for _, raw in self.runtime.tables.orders.table.items():
            if raw is not None and b'"customer_id":"' + customer_id.encode() + b'"' in raw:
                order = model.model_validate_json(raw)
                if order.customer_id == customer_id:
                    found.append(order)
        return found

    def products(self) -> list[ProductState]:
        model = self.runtime.tables.catalog.model
        return [model.model_validate_json(raw) for _, raw in self.runtime.tables.catalog.table.items() if raw]

    def owner_url(self, table: str, key: str) -> str | None:
        """The base URL of the worker owning ``key`` of ``table``; ``None`` while unknown (rebalancing)."""
        changelog = self._app.tables[table].changelog_topic.get_topic_name()
        try:
            return str(self._app.assignor.key_store(changelog, key.encode()))
        except (KeyError, TypeError):
            return None
