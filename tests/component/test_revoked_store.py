"""A changelog partition a worker no longer holds at all is deleted from its disk (agents/transport.py,
``Table.on_rebalance``), on faust's real RocksDB store: coming back, it is rebuilt from the changelog alone and
cannot bring back a key whose tombstone compaction removed meanwhile."""

from types import SimpleNamespace

from aiokafka import TopicPartition as TP

from agents.app import build_runtime
from agents.transport import Table
from streamcart.settings import Settings

PARTITIONS = 4


def rocksdb_orders(codec, sink, tmp_path):
    runtime = build_runtime(Settings(home=tmp_path, partitions=PARTITIONS), codec, store="rocksdb://", sink=sink)
    table = runtime.tables.orders.table
    assert isinstance(table, Table)
    return table, table.data, table.changelog_topic.get_topic_name()


def stored(store, partition: int, key: bytes):
    store._dbs.pop(partition, None)  # read what the disk holds, opening the partition afresh
    return store._db_for_partition(partition).get(key)


async def test_a_revoked_changelog_partition_is_deleted_and_comes_back_empty(codec, sink, tmp_path):
    table, store, changelog = rocksdb_orders(codec, sink, tmp_path)
    for partition in (1, 2):
        store._db_for_partition(partition).put(b"o-1", b"an order")
        store.set_persisted_offset(TP(changelog, partition), 41)
    kept = {TP(changelog, 2), TP("commerce.commands.orders", 2)}

    await table.on_rebalance(kept, {TP(changelog, 1), TP("commerce.commands.orders", 1)}, set())

    assert not store.partition_path(1).exists()
    assert not list(tmp_path.rglob("*.discarded"))
    assert stored(store, 1, b"o-1") is None  # back: nothing of the old files
    assert store.persisted_offset(TP(changelog, 1)) is None  # so recovery reads its changelog from the start
    assert stored(store, 2, b"o-1") == b"an order"  # still held (active or standby): kept as it was
    assert store.persisted_offset(TP(changelog, 2)) == 41


async def test_an_interrupted_discard_is_finished_by_the_next(codec, sink, tmp_path):
    table, store, changelog = rocksdb_orders(codec, sink, tmp_path)
    store._db_for_partition(3).put(b"o-1", b"an order")
    leftover = store.partition_path(3).with_name(f"{store.partition_path(3).name}.discarded")
    leftover.mkdir(parents=True)  # what a kill between the rename and the delete leaves
    await table.on_rebalance(set(), {TP(changelog, 3)}, set())
    assert not leftover.exists() and not store.partition_path(3).exists()


async def test_the_first_assignment_of_a_run_deletes_the_stores_an_earlier_run_kept_of_partitions_not_held(
    codec, sink, tmp_path
):
    table, store, changelog = rocksdb_orders(codec, sink, tmp_path)
    for partition in (0, 1, 2):
        store._db_for_partition(partition).put(b"o-1", b"an order")
    store._dbs.clear()  # that run stopped
    table, store, changelog = rocksdb_orders(codec, sink, tmp_path)  # the next run, on the same disk

    await table.on_rebalance({TP(changelog, 0), TP(changelog, 2)}, set(), {TP(changelog, 0), TP(changelog, 2)})

    assert not store.partition_path(1).exists()  # held before, not now: it could miss tombstones meanwhile
    assert stored(store, 0, b"o-1") == b"an order" and stored(store, 2, b"o-1") == b"an order"
    await table.on_rebalance({TP(changelog, 0)}, {TP(changelog, 2)}, set())
    assert not store.partition_path(2).exists() and store.partition_path(0).exists()


async def test_changelog_records_of_a_revoked_partition_applied_after_the_rebalance_leave_no_store_behind(
    codec, sink, tmp_path
):
    """faust's recovery can take a record of a partition while a rebalance revokes it and apply it later (its
    buffers are applied at the next revocation or at a stop): it must not create the deleted store afresh, holding
    that record alone while noting its offset."""
    table, store, changelog = rocksdb_orders(codec, sink, tmp_path)
    held = TP(changelog, 0)
    recovery = table.app.tables.recovery
    recovery.active_offsets[TP(changelog, 1)] = 116  # how far its recovery had read the partition
    await table.on_rebalance({held}, {TP(changelog, 1)}, set())
    # Forgotten, so that the partition coming back is read from its changelog's start into its empty store.
    assert TP(changelog, 1) not in recovery.active_offsets

    table.apply_changelog_batch([changelog_record(TP(changelog, 1), 116), changelog_record(held, 7)])

    assert not store.partition_path(1).exists()
    assert store.persisted_offset(TP(changelog, 1)) is None
    assert store.persisted_offset(held) == 7


def changelog_record(tp: TP, offset: int):
    message = SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, tp=tp, key=b'"o-1"',
                              value=b'null', headers=None)
    return SimpleNamespace(message=message)
