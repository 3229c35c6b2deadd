"""What the API needs from the worker it runs in. The API never imports faust; tests pass a fake."""

from __future__ import annotations

from typing import Protocol

from streamcart.domain.catalog import ProductState
from streamcart.domain.inventory import AdjustmentOutcome, StockState
from streamcart.domain.order_state import OrderState


class WorkerView(Protocol):
    index: int

    def recovered(self) -> bool: ...

    def rebalancing(self) -> bool: ...

    def stopping(self) -> bool:
        """Whether the worker has begun to stop: its tables may be closed already while the API still answers."""
        ...

    def assigned(self) -> list[int]: ...

    def ready(self) -> bool: ...

    def order(self, order_id: str) -> OrderState | None: ...

    def write_mark(self) -> int:
        """A mark of the table writes this worker made so far (for :meth:`stored`)."""
        ...

    async def stored(self, mark: int, timeout_s: float) -> bool:
        """Whether the table writes made up to ``mark`` reached their changelogs within ``timeout_s``: what was read
        of the tables when the mark was taken can then no longer be lost to a crash."""
        ...

    def saga_queue_s(self) -> float | None:
        """How long records wait here before the saga's flows handle them: the longest of their sources' least
        waits of the last second (``None`` when they handled none)."""
        ...

    def order_raw(self, order_id: str) -> bytes | None:
        """The order as stored (its JSON bytes), undecoded."""
        ...

    def stock(self, sku: str) -> StockState | None: ...

    def adjustment_outcome(self, sku: str, event_id: str) -> AdjustmentOutcome | None:
        """What became of the adjustment ``event_id``: counted by the SKU's stock (among its last 1,000), refused by
        the inventory (among its last 100 refusals, with the reason), or ``None``: neither yet (or forgotten)."""
        ...

    def product(self, sku: str) -> ProductState | None: ...

    def owner_url(self, table: str, key: str) -> str | None: ...

    async def wait_stored(self, order_id: str, timeout_s: float) -> OrderState | None:
        """The order once it is stored, or ``None`` if it is not within ``timeout_s`` (or a rebalance began)."""
        ...

    async def wait_settled(self, order_id: str, timeout_s: float) -> OrderState | None:
        """The order once it is settled, or as it is when ``timeout_s`` ran out (``None``: still unknown)."""
        ...

    def orders_of(self, customer_id: str, *, after: tuple[int, str] | None, limit: int) -> list[OrderState]:
        """Up to ``limit`` of the customer's orders in the partitions this worker owns, newest first (by
        ``(-placed_at, order_id)``), after ``after`` (that pair of the last order of the page before)."""
        ...

    def products(self, *, after: str | None, limit: int) -> list[ProductState]:
        """Up to ``limit`` catalog entries in the partitions this worker owns, by SKU, after the SKU ``after``."""
        ...
