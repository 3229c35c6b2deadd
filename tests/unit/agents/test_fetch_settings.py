"""A worker's Kafka consumer long-polls while idle and batches its fetches while records flow (faust sets neither),
and checks for stalled partitions every few seconds rather than every half second."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

from agents.app import create_faust_app
from agents.transport import IDLE_FETCH_MAX_WAIT_MS, adapt_fetching
from streamcart.settings import Settings


async def _worker_consumer(settings: Settings) -> Any:
    app = create_faust_app(settings, store="memory://")
    consumer = app.consumer
    kafka_consumer = consumer._thread._create_worker_consumer(consumer.transport)
    await kafka_consumer.stop()  # never started; closes its client's resources
    return kafka_consumer


def test_a_worker_starts_with_a_long_poll_that_returns_on_the_first_record() -> None:
    settings = Settings(consumer_fetch_min_bytes=32768, consumer_fetch_max_wait_ms=25)
    kafka_consumer = asyncio.run(_worker_consumer(settings))

    assert (kafka_consumer._fetch_min_bytes, kafka_consumer._fetch_max_wait_ms) == (1, IDLE_FETCH_MAX_WAIT_MS)


def test_fetches_wait_for_a_batch_while_records_flow_and_long_poll_once_one_brings_nothing() -> None:
    settings = Settings()
    fetcher = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=IDLE_FETCH_MAX_WAIT_MS)
    batching = (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms)
    assert batching[0] > 1 and batching[1] < IDLE_FETCH_MAX_WAIT_MS  # the defaults batch

    adapt_fetching(fetcher, got_records=True, min_bytes=batching[0], max_wait_ms=batching[1])
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == batching

    adapt_fetching(fetcher, got_records=False, min_bytes=batching[0], max_wait_ms=batching[1])
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, IDLE_FETCH_MAX_WAIT_MS)


def test_a_wait_longer_than_the_long_poll_is_kept_when_idle() -> None:
    fetcher = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=0)
    adapt_fetching(fetcher, got_records=False, min_bytes=65536, max_wait_ms=5000)
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 5000)


async def test_the_check_for_stalled_partitions_runs_on_its_own_interval_not_every_half_second(
    monkeypatch: Any,
) -> None:
    from agents import transport

    consumer = create_faust_app(Settings(), store="memory://").consumer
    (detector,) = [task for task in consumer._get_tasks() if task.fun.__name__ == "_commit_livelock_detector"]
    assert detector.fun.__module__ == "agents.transport"  # ours, not faust's 0.5 s loop
    assert 10 * consumer.commit_interval <= transport.LIVELOCK_CHECK_INTERVAL_S
    checks: list[float] = []

    async def verify_all_partitions_active() -> None:
        checks.append(asyncio.get_running_loop().time())

    monkeypatch.setattr(transport, "LIVELOCK_CHECK_INTERVAL_S", 0.05)
    monkeypatch.setattr(consumer, "verify_all_partitions_active", verify_all_partitions_active)
    running = asyncio.ensure_future(detector.fun(consumer))
    try:
        for _ in range(500):  # it still checks: three times, then
            if len(checks) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
    assert len(checks) >= 3
    assert all(later - earlier >= 0.04 for earlier, later in pairwise(checks))  # each interval


class RecordingClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.cluster = "the client's own"

    async def send(self, node_id: int, request: Any, *, group: Any = "default") -> str:
        self.sent.append((type(request).__name__, group))
        return "answer"


def test_offset_lookups_go_over_a_connection_of_their_own_and_everything_else_as_before() -> None:
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.protocol.offset import OffsetRequest

    from agents.transport import OFFSET_LOOKUPS, OffsetLookupsApart

    client = RecordingClient()
    apart = OffsetLookupsApart(client)
    lookup = OffsetRequest(-1, 0, [("orders-changelog", [(0, -1, 1)])])
    fetch = FetchRequest(-1, 1500, 1, 1 << 20, 0, [])

    assert asyncio.run(apart.send(1, lookup)) == "answer"
    asyncio.run(apart.send(1, fetch))
    assert client.sent == [("OffsetRequest", OFFSET_LOOKUPS), ("FetchRequest", "default")]
    assert apart.cluster == "the client's own"  # the rest is the client's
