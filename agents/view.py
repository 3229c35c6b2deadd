"""What the HTTP API may see of a running worker: readiness, assignment, table lookups, key owners."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faust.types import TP

from agents.analytics import owned_sources
from agents.runtime import Runtime
from agents.state_first import HeldForever, StateFirst
from streamcart.domain import analytics, inventory
from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import StockState
from streamcart.domain.order_state import OrderState, OrderStatus
from streamcart.partitioning import partition_for
from streamcart.telemetry import Telemetry
from tables.typed import keys_from


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

    def stopping(self) -> bool:
        # Set as the app's stop begins, before its children stop: its tables close (RocksDB's stores emptied) and
        # its producer stops while the API, stopped last, still answers what is in flight.
        return bool(self._app.should_stop)

    def assigned(self) -> list[int]:
        """Partitions of the order command topic this worker owns (the saga's unit of ownership)."""
        topic = self.runtime.topics.order_commands
        return sorted(tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == topic)

    def ready(self) -> bool:
        return self.recovered() and not self.rebalancing() and not self.stopping() and bool(self.assigned())

    def order(self, order_id: str) -> OrderState | None:
        return self.runtime.tables.orders.get(order_id)

    @property
    def _state_first(self) -> StateFirst | None:
        """Where the worker's producer notes its table writes (none on a producer of another kind)."""
        return getattr(self._app.producer, "state_first", None)

    def write_mark(self) -> int:
        state_first = self._state_first
        return 0 if state_first is None else state_first.written()

    async def stored(self, mark: int, timeout_s: float) -> bool:
        state_first = self._state_first
        if state_first is None or state_first.is_stored(mark):
            return True
        try:
            async with asyncio.timeout(timeout_s):  # no task of its own, as wait_for would make
                await state_first.stored(mark)
        except (TimeoutError, HeldForever):
            return False
        return True

    def saga_queue_s(self) -> float | None:
        return self.runtime.telemetry.saga_queue.seconds()

    def order_raw(self, order_id: str) -> bytes | None:
        """The order as stored (JSON bytes): what :class:`api.orders.RenderedOrders` keys its answers by."""
        return self.runtime.tables.orders.get_raw(order_id)

    def stock(self, sku: str) -> StockState | None:
        return self.runtime.tables.stock.get(sku)

    def adjustment_outcome(self, sku: str, event_id: str) -> inventory.AdjustmentOutcome | None:
        memory = self.runtime.tables.adjustments.get(inventory.adjustments_key(sku))
        return inventory.adjustment_outcome(self.stock(sku), memory, event_id)

    def product(self, sku: str) -> ProductState | None:
        return self.runtime.tables.catalog.get(sku)

    async def wait_stored(self, order_id: str, timeout_s: float) -> OrderState | None:
        """The order once the orders flow has stored it, or ``None`` when ``timeout_s`` ran out first (woken by the
        flow's :class:`agents.watch.OrderWatch`, like :meth:`wait_settled`; a rebalance ends the wait early: the
        caller checks who owns the order now)."""
        watch = self.runtime.order_watch
        deadline = time.monotonic() + timeout_s
        rebalances = watch.rebalances
        while (order := self.order(order_id)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or watch.rebalances != rebalances:
                return None
            await watch.next_change(order_id, left)
        return order

    async def wait_settled(self, order_id: str, timeout_s: float) -> OrderState | None:
        """Woken by the orders flow each time the order changes (:class:`agents.watch.OrderWatch`). A rebalance
        wakes it too: it waits for the rebalance to end and goes on if this worker still owns the order; it returns
        early if the order moved (the caller checks who owns it, and answers 503 while a rebalance lasts)."""
        watch = self.runtime.order_watch
        deadline = time.monotonic() + timeout_s
        rebalances = watch.rebalances

        def settled_in() -> bool:
            return self.recovered() and not self.rebalancing()

        while True:
            order = self.order(order_id)
            left = deadline - time.monotonic()
            if left <= 0:
                return order
            if order is not None and order.status in OrderStatus.SETTLED:
                if settled_in():
                    return order
                # Settled by a message handled as a rebalance began (faust sets the flag first, then waits for
                # them): what the table says is an answer once the rebalance is over, if the order stayed here.
                if not await watch.rebalance_over(settled_in, left):
                    return order
                continue
            if watch.rebalances != rebalances:
                rebalances = watch.rebalances
                if not await watch.rebalance_over(settled_in, left) \
                        or partition_for(order_id, self.runtime.settings.partitions) not in self.assigned():
                    return self.order(order_id)
                continue  # it stayed: what the table says now, then wait on
            await watch.next_change(order_id, left)

    def orders_of(self, customer_id: str, *, after: tuple[int, str] | None, limit: int) -> list[OrderState]:
        # A range of the customer index in each partition this worker owns, and one read per order on the page.
        tables = self.runtime.tables
        partitions = self.runtime.settings.partitions

        def load(order_id: str) -> OrderState | None:
            order = tables.orders.get(order_id)
            return order if order is not None and order.customer_id == customer_id else None

        page = tables.customer_orders.page(customer_id, self.assigned(), after=after, limit=limit,
                                           partition_of=lambda order_id: partition_for(order_id, partitions),
                                           load=load)
        return [order for _, order in page]

    def products(self, *, after: str | None, limit: int) -> list[ProductState]:
        # A range of each owned partition's store from the cursor on, and one read per product on the page: the
        # whole catalog decoded and sorted for each page made one customer's listings stall the worker's flows.
        catalog = self.runtime.tables.catalog
        partitions = self.runtime.settings.partitions
        found: list[ProductState] = []
        for partition in self.assigned():
            taken = 0
            for sku in keys_from(catalog.table, partition, after or "", lambda k: partition_for(k, partitions)):
                if taken >= limit:
                    break
                if sku != after and (product := catalog.get(sku)) is not None:
                    found.append(product)
                    taken += 1
        found.sort(key=lambda product: product.sku)
        return found[:limit]

    def owner_url(self, table: str, key: str) -> str | None:
        """The base URL of the worker owning ``key`` of ``table``; ``None`` while unknown (rebalancing)."""
        changelog = self._app.tables[table].changelog_topic.get_topic_name()
        try:
            return str(self._app.assignor.key_store(changelog, key.encode()))
        except (KeyError, TypeError):
            return None

    # -- analytics and live figures (api/analytics.py, api/stream.py) --------------------------------------------

    @property
    def telemetry(self) -> Telemetry:
        return self.runtime.telemetry

    def analytics_partitions(self) -> list[int]:
        """The partitions of the order events (the analytics source) this worker owns."""
        return owned_sources(self.runtime)

    def analytics(self, metric: str, start: int, end: int) -> list[analytics.PartitionView]:
        """The windows of ``metric`` starting in ``[start, end)`` of every partition this worker owns."""
        table = self.runtime.tables.analytics
        views = []
        for partition in self.analytics_partitions():
            names = [n for n in table.closed_ids(partition) if analytics.in_range(n, metric, start, end)]
            closed = [w for n in names if (w := table.closed(partition, n)) is not None]
            views.append(analytics.partition_view(table.windows(partition), closed, metric, start, end))
        return views

    def owned(self) -> dict[str, list[int]]:
        """Every source topic's partitions this worker owns (what its consumer lag is about)."""
        owned: dict[str, list[int]] = {}
        for tp in self._app.assignor.assigned_actives():
            owned.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(partitions) for topic, partitions in owned.items()}

    def copies(self) -> dict[tuple[str, int], tuple[str, int | None]]:
        """The changelog partitions this worker keeps standby copies of (``STREAMCART_STANDBY_REPLICAS``): each one's
        table, and the last offset its copy took (None: none yet)."""
        recovery = self._app.tables.recovery
        return {(tp.topic, tp.partition): (recovery.tp_to_table[tp].name, recovery.standby_offsets.get(tp))
                for tp in recovery.standby_tps if tp in recovery.tp_to_table}

    def committed(self) -> dict[tuple[str, int], int]:
        """Where the group stands on the partitions this worker owns: the offsets its consumer committed (or found
        committed when it took them over)."""
        committed = self._app.consumer._committed_offset
        return {(tp.topic, tp.partition): offset for tp, offset in committed.items() if offset is not None}

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to be written to each of ``partitions`` (any topic), asked of Kafka by the consumer."""
        found = await self._app.consumer.highwaters(*(TP(topic, partition) for topic, partition in partitions))
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    async def start_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The first offset still held in each of ``partitions`` (any topic), asked of Kafka by the consumer."""
        found = await self._app.consumer.earliest_offsets(*(TP(topic, partition) for topic, partition in partitions))
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    def table_sizes(self) -> dict[str, int]:
        """Keys per table in the partitions this worker owns: RocksDB's estimate (counting would read them all)."""
        sizes: dict[str, int] = {}
        for name, table in self._app.tables.items():
            store = table.data
            if hasattr(store, "_dbs_for_actives"):
                sizes[name] = sum(
                    int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in store._dbs_for_actives()
                )
            else:
                sizes[name] = len(store)
        return sizes
