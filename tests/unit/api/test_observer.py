"""A worker's lag and DLQ depth come from its own consumer (librdkafka's admin client aborted every worker when
Kafka restarted)."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.stream import Observer
from streamcart.settings import Settings
from streamcart.telemetry import Telemetry

DLQ = "commerce.dlq"
WAREHOUSE_DLQ = ("commerce.warehouse.dlq", 0)


@dataclass
class Worker:
    """What the observer asks of a worker: what it owns, where it committed, and Kafka's offsets."""

    positions: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]
    starts: dict[tuple[str, int], int]
    index: int = 0
    telemetry: Telemetry = field(default_factory=Telemetry)
    asked: list[list[tuple[str, int]]] = field(default_factory=list)
    copied: dict[tuple[str, int], tuple[str, int | None]] = field(default_factory=dict)

    def owned(self) -> dict[str, list[int]]:
        return {"commerce.commands.orders": [0, 1], "streamcart-orders-changelog": [0]}

    def copies(self) -> dict[tuple[str, int], tuple[str, int | None]]:
        return self.copied

    def committed(self) -> dict[tuple[str, int], int]:
        return self.positions

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        self.asked.append(partitions)
        return {tp: self.ends[tp] for tp in partitions}

    async def start_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.starts[tp] for tp in partitions}

    def table_sizes(self) -> dict[str, int]:
        return {"orders": 3}

    def ready(self) -> bool:
        return True


async def test_lag_is_the_end_offset_past_the_committed_position_and_the_dlq_depth_what_it_still_holds():
    dlq = {(DLQ, p): 0 for p in range(2)}
    worker = Worker(
        positions={("commerce.commands.orders", 0): 90},  # partition 1: nothing committed yet
        ends={("commerce.commands.orders", 0): 100, ("commerce.commands.orders", 1): 7, **dlq, (DLQ, 1): 5,
              WAREHOUSE_DLQ: 9},
        starts={**dlq, (DLQ, 1): 2, ("commerce.commands.orders", 1): 3, WAREHOUSE_DLQ: 8},
    )
    observer = Observer(Settings(partitions=2), worker)

    await observer.observe()

    assert observer.lag == {"commerce.commands.orders": {0: 10, 1: 4}}  # 1: from where the group starts it
    assert observer.dlq_records == 3
    assert observer.warehouse_dlq_records == 1
    assert observer.table_sizes == {"orders": 3}
    assert all(not topic.endswith("-changelog") for topic, _ in worker.asked[0])  # changelogs have no lag
    assert observer.standby_behind == {}  # no standby copies


async def test_standby_copies_are_behind_by_the_records_past_the_last_offset_they_took():
    orders, stock = "streamcart-orders-changelog", "streamcart-stock-changelog"
    dlq = {(DLQ, p): 0 for p in range(2)}
    worker = Worker(
        positions={("commerce.commands.orders", 0): 0, ("commerce.commands.orders", 1): 0},
        ends={("commerce.commands.orders", 0): 0, ("commerce.commands.orders", 1): 0, **dlq, WAREHOUSE_DLQ: 0,
              (orders, 1): 50, (orders, 3): 20, (stock, 1): 9},
        starts={**dlq, WAREHOUSE_DLQ: 0, (stock, 1): 4},  # a compacted changelog starts later
        copied={(orders, 1): ("orders", 44), (orders, 3): ("orders", 19), (stock, 1): ("stock", None)},
    )
    observer = Observer(Settings(partitions=2), worker)

    await observer.observe()

    # orders: 45..49 unread on partition 1, partition 3 read to its end; stock: nothing taken yet, 4..8 unread
    assert observer.standby_behind == {"orders": 5, "stock": 5}

