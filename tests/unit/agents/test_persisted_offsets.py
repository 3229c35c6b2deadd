"""A table notes how far its changelog reached once per partition and producer flush, not once per write
(agents/transport.py, ``Table``)."""

from __future__ import annotations

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


def table_with_store() -> tuple[Any, Table, FakeStore]:
    app = create_faust_app(Settings(), store="memory://")
    table = app.Table("orders", default=None, partitions=8)
    assert isinstance(table, Table)
    store = FakeStore()
    table._data = store
    return app, table, store


def test_only_the_highest_delivered_offset_of_each_partition_is_persisted_once() -> None:
    _, table, store = table_with_store()
    for partition, offset in [(0, 5), (1, 7), (0, 6), (0, 4)]:  # acknowledgements may come in any order
        table._on_changelog_sent(sent("orders-changelog", partition, offset))
    assert store.persisted == []  # nothing per write
    table.persist_offsets()
    assert sorted(store.persisted) == [(("orders-changelog", 0), 6), (("orders-changelog", 1), 7)]
    table.persist_offsets()
    assert len(store.persisted) == 2  # nothing new: nothing written again


async def test_a_producer_flush_persists_the_offsets_its_tables_delivered() -> None:
    app, table, store = table_with_store()
    producer = app.producer
    producer._producer = FakeKafkaProducer()
    table._on_changelog_sent(sent("orders-changelog", 3, 41))
    await producer.flush()  # as before every offset commit
    assert store.persisted == [(("orders-changelog", 3), 41)]
