"""One real local stack per test session, started through the same code as ``streamcart up``.

It runs on its own ports and in its own home folder, so it never clashes with a stack a developer has running.
A stack that cannot start fails the tests; nothing here is ever skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from schemas.codec import Codec
from streamcart.settings import Settings
from streamcart.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
# Lets a second test run share the machine with the first (e.g. a check of a clean clone while another runs).
_OFFSET = int(os.environ.get("STREAMCART_TEST_PORT_OFFSET", "0"))

TEST_SETTINGS = Settings(
    home=ROOT / ".streamcart-test",
    cache_dir=ROOT / ".cache",
    kafka_port=19092 + _OFFSET,
    controller_port=19093 + _OFFSET,
    registry_port=18085 + _OFFSET,
    connect_port=18083 + _OFFSET,
    postgres_port=15433 + _OFFSET,
    gateway_port=18090 + _OFFSET,
    api_port=18080 + _OFFSET,
    workers=2,
    partitions=8,
    app_id=f"streamcart-it{_OFFSET or ''}",
    jwt_secret="integration-test-secret-0123456789abcdef",
    # Short enough for the deadline tests, long enough for a loaded 2-core machine to settle every order.
    saga_timeout_s=15.0,
    # A gateway call gives up after ~4 x 6 s: longer than the saga's deadline, so a slow gateway meets the
    # timeout path (cancel, then void the late authorization) rather than "gateway unavailable".
    gateway_attempt_timeout_s=6.0,
    # The tests poll hundreds of orders at once with one admin token; the limit itself is tested on its own.
    rate_limit_per_s=1_000_000.0,
    rate_limit_burst=1_000_000,
    # The webhook tests' receiver listens on loopback (outside tests, loopback webhooks are refused).
    webhook_allow_private=True,
    # The keeper's test restarts a failed sink several times (with backoff): checked every 3 s instead of 10.
    sink_keeper_interval_s=3.0,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return TEST_SETTINGS


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings, echo=print)
    if os.environ.get("STREAMCART_KEEP_TEST_STACK") != "1":
        stack.down(purge=True)  # whatever an interrupted earlier run left behind
    stack.up()  # with STREAMCART_KEEP_TEST_STACK=1, a stack kept by the last run is used as it is
    yield stack
    if os.environ.get("STREAMCART_KEEP_TEST_STACK") != "1":
        stack.down(purge=True)


@pytest.fixture(autouse=True)
def workers_ready(stack: Stack, settings: Settings) -> None:
    """Each test starts with every worker ready (its partitions assigned, its tables read back, no rebalance under
    way): a restart in the test before sets a rebalance off, during which the owner of a key answers 503."""
    from tests.integration.support import http_json, poll

    def ready(index: int) -> bool:
        try:
            return http_json(f"{settings.worker_url(index)}/readyz")[0] == 200
        except OSError:
            return False

    poll(lambda: all(ready(i) for i in range(settings.workers)), timeout_s=120, every_s=0.2,
         what="every worker to be ready")


@pytest.fixture(scope="session")
def codec(stack: Stack, settings: Settings) -> Codec:
    return Codec.connect(settings)


@pytest.fixture(scope="module")
def warehouse(stack: Stack, settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection to the stack's PostgreSQL warehouse (autocommit: each read sees what the sinks wrote)."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        yield conn
