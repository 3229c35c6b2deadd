"""A worker's Kafka consumer fetches with the settings' minimum size and maximum wait (faust passes neither)."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.app import create_faust_app
from streamcart.settings import Settings


async def _worker_consumer(settings: Settings) -> Any:
    app = create_faust_app(settings, store="memory://")
    consumer = app.consumer
    kafka_consumer = consumer._thread._create_worker_consumer(consumer.transport)
    await kafka_consumer.stop()  # never started; closes its client's resources
    return kafka_consumer


def test_the_consumer_fetches_with_the_configured_minimum_bytes_and_wait() -> None:
    settings = Settings(consumer_fetch_min_bytes=32768, consumer_fetch_max_wait_ms=25)

    kafka_consumer = asyncio.run(_worker_consumer(settings))

    assert (kafka_consumer._fetch_min_bytes, kafka_consumer._fetch_max_wait_ms) == (32768, 25)


def test_by_default_a_fetch_returns_as_soon_as_one_record_is_there() -> None:
    kafka_consumer = asyncio.run(_worker_consumer(Settings()))

    assert (kafka_consumer._fetch_min_bytes, kafka_consumer._fetch_max_wait_ms) == (1, 1500)
