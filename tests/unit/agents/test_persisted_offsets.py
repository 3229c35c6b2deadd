"""A table notes how far its changelog reached with the writes its store applies, not once per acknowledged record,
and a producer flush brings every store up to what was acknowledged (agents/transport.py, ``Table``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from kafka_fakes import FakeKafkaProducer

from agents.app import create_faust_app
from agents.transport import Table
from streamcart.settings import Settings


class FakeStore:
    def __init__(self) -> None:
        self.persisted: list[tuple[Any, int]] = []

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted.append((tp, offset))


def sent(topic: str, partition: int, offset: int) -> Any:
    metadata = SimpleNamespace(topic_partition=(topic, partition), offset=offset)
    return SimpleNamespace(result=lambda: metadata)


def test_an_acknowledged_changelog_record_writes_no_offset_of_its_own() -> None:
    app = create_faust_app(Settings(), store="memory://")
    table = app.Table("orders", default=None, partitions=8)
    assert isinstance(table, Table)
    table._data = store = FakeStore()
    for partition, offset in [(0, 5), (1, 7), (0, 6)]:
        table._on_changelog_sent(sent("orders-changelog", partition, offset))
    assert store.persisted == []


async def test_a_producer_flush_brings_every_table_store_up_to_what_its_changelog_acknowledged(monkeypatch) -> None:
    app = create_faust_app(Settings(), store="memory://")
    for name in ("orders", "stock"):
        app.Table(name, default=None, partitions=8)
    brought: list[str] = []
    monkeypatch.setattr(Table, "store_acknowledged", lambda table: brought.append(table.name))
    producer = app.producer
    producer._producer = FakeKafkaProducer()
    await producer.flush()  # as before every offset commit
    assert sorted(brought) == ["orders", "stock"]


def test_a_flush_of_a_recovered_worker_notes_that_its_stores_are_caught_up_and_not_before(tmp_path) -> None:
    from pathlib import Path

    from agents.local_state import CAUGHT_UP_MARKER

    app = create_faust_app(Settings(home=tmp_path), store="memory://")
    tabledir = Path(app.conf.tabledir)
    tabledir.mkdir(parents=True)
    producer = app.producer
    producer._producer = FakeKafkaProducer()
    asyncio.run(producer.flush())
    assert not (tabledir / CAUGHT_UP_MARKER).exists()  # still recovering: the stores are behind

    app.tables.recovery.completed.set()
    asyncio.run(producer.flush())
    noted = float((tabledir / CAUGHT_UP_MARKER).read_text())
    (tabledir / CAUGHT_UP_MARKER).write_text("1")
    asyncio.run(producer.flush())  # noted a moment ago: not again for a minute
    assert (tabledir / CAUGHT_UP_MARKER).read_text() == "1" and noted > 1
