"""A table's RocksDB store holds only what its changelog acknowledged (tables/store.py), on faust's real RocksDB:
reads see a write at once, the disk once Kafka has it, in the order the writes were made, with the offset noted."""

from __future__ import annotations

import asyncio
import weakref
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition as TP
from faust.streams import _current_event

from agents.app import build_runtime
from streamcart.settings import Settings
from tables.store import HeldWritesStore
from tables.typed import keys_from

PARTITIONS = 4


class Handled:
    """The event a flow handles: its partition is where the table writes go."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="commerce.commands.orders", partition=partition)


@contextmanager
def handling(partition: int):
    event = Handled(partition)
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@pytest.fixture
def table(codec, sink, tmp_path):
    runtime = build_runtime(Settings(home=tmp_path, partitions=PARTITIONS), codec, store="rocksdb://", sink=sink)
    return runtime.tables.orders.table


def write(store: HeldWritesStore, partition: int, key: bytes, value: bytes | None) -> asyncio.Future[Any]:
    """A write as a flow makes it: its changelog record first, then the store (``None`` deletes)."""
    delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    with handling(partition):
        store.expect_write(delivery)
        if value is None:
            del store[key]
        else:
            store[key] = value
    return delivery


def acknowledge(delivery: asyncio.Future[Any], offset: int) -> None:
    delivery.set_result(SimpleNamespace(offset=offset))


async def settled() -> None:
    """Let the acknowledgements' callbacks and the pass that applies them run."""
    for _ in range(3):
        await asyncio.sleep(0)


def on_disk(store: HeldWritesStore, partition: int, key: bytes) -> bytes | None:
    value: bytes | None = store._dbs[partition].get(key)
    return value


def noted_offset(table, partition: int) -> int | None:
    offset: int | None = table.data.persisted_offset(TP(table.changelog_topic.get_topic_name(), partition))
    return offset


async def test_a_write_through_the_table_is_read_at_once_and_reaches_the_disk_once_its_record_is_acknowledged(table):
    store = table.data
    assert isinstance(store, HeldWritesStore)
    with handling(2):
        table["o-1"] = b'{"status": "PENDING"}'
        assert table.data.get("o-1") == b'{"status": "PENDING"}'
    assert store.get("o-1") == b'{"status": "PENDING"}'  # the API's read (no event) sees it too
    await settled()
    assert on_disk(store, 2, b"o-1") is None and noted_offset(table, 2) is None

    (held,) = [held for queue in store._queues.values() for held in queue]
    record = table.app.producer.buffer.pending.get_nowait()  # the changelog record the table handed over
    record.set_result(SimpleNamespace(offset=17, topic_partition=TP("orders-changelog", 2)))
    await settled()

    assert held.offset == 17
    assert on_disk(store, 2, b"o-1") == b'{"status": "PENDING"}'
    assert noted_offset(table, 2) == 17
    assert store.held() == 0


async def test_acknowledged_writes_reach_the_disk_in_the_order_made_never_past_one_still_unacknowledged(table):
    store = table.data
    first = write(store, 1, b"o-1", b"PENDING")
    second = write(store, 1, b"o-1", b"CONFIRMED")
    third = write(store, 1, b"o-2", b"PENDING")

    acknowledge(second, 11)  # acknowledged before the write made before it
    acknowledge(third, 12)
    await settled()
    assert on_disk(store, 1, b"o-1") is None and on_disk(store, 1, b"o-2") is None
    assert noted_offset(table, 1) is None
    assert store.get("o-1") == b"CONFIRMED"  # reads answer the newest write all along

    acknowledge(first, 10)
    await settled()
    assert on_disk(store, 1, b"o-1") == b"CONFIRMED" and on_disk(store, 1, b"o-2") == b"PENDING"
    assert noted_offset(table, 1) == 12
    assert store.held() == 0


async def test_a_held_delete_hides_the_stored_value_from_every_read_and_removes_it_once_acknowledged(table):
    store = table.data
    for key, offset in ((b"a", 1), (b"b", 2), (b"c", 3)):
        acknowledge(write(store, 0, key, b"v"), offset)
    await settled()

    delete = write(store, 0, b"b", None)
    added = write(store, 0, b"bb", b"new")
    with handling(0):
        assert store.get("b") is None and "b" not in store and "bb" in store
    assert store.get("b") is None
    table.app.assignor.assigned_actives = lambda: {TP(table.changelog_topic.get_topic_name(), 0)}
    assert sorted(store.keys()) == ["a", "bb", "c"]
    assert len(store) == 3
    assert list(keys_from(table, 0, "b", lambda key: 0)) == ["bb", "c"]
    assert on_disk(store, 0, b"b") == b"v"

    acknowledge(delete, 4)
    acknowledge(added, 5)
    await settled()
    assert on_disk(store, 0, b"b") is None and on_disk(store, 0, b"bb") == b"new"
    assert noted_offset(table, 0) == 5
    # A range read from the start passes over faust's offset key, noted in the same store (the catalog listing read
    # it as a product).
    assert list(keys_from(table, 0, "", lambda key: 0)) == ["a", "bb", "c"]


async def test_a_write_whose_record_failed_never_reaches_the_disk_nor_do_the_writes_after_it(table):
    store = table.data
    failed = write(store, 3, b"o-1", b"PENDING")
    later = write(store, 3, b"o-2", b"PENDING")
    failed.set_exception(RuntimeError("the broker refused the record"))
    acknowledge(later, 8)
    await settled()
    assert on_disk(store, 3, b"o-1") is None and on_disk(store, 3, b"o-2") is None
    assert noted_offset(table, 3) is None
    assert store.get("o-1") == b"PENDING"  # read as written until the worker stops (at its next commit)


async def test_a_write_acknowledged_without_its_offset_stays_held_and_holds_the_later_ones_back(table, caplog):
    """An idempotent producer's answer to a duplicate sequence number resolves at the broker's -1: as an offset it
    read as a record the store holds already, and the write was dropped from the disk while reads went back to the
    older value."""
    store = table.data
    first = write(store, 1, b"o-1", b"PENDING")
    acknowledge(first, 10)
    await settled()
    unknown = write(store, 1, b"o-1", b"CONFIRMED")
    later = write(store, 1, b"o-2", b"PENDING")
    acknowledge(unknown, -1)
    acknowledge(later, 12)
    await settled()
    assert store.get("o-1") == b"CONFIRMED" and store.get("o-2") == b"PENDING"
    assert on_disk(store, 1, b"o-1") == b"PENDING" and on_disk(store, 1, b"o-2") is None
    assert noted_offset(table, 1) == 10
    assert "acknowledged without its offset (-1)" in caplog.text


async def test_held_writes_of_a_partition_no_longer_held_are_dropped_and_never_open_it_again(table):
    store = table.data
    held = write(store, 1, b"o-1", b"PENDING")
    changelog = table.changelog_topic.get_topic_name()
    await table.on_rebalance(set(), {TP(changelog, 1)}, set())
    assert store.held() == 0 and store.get("o-1") is None

    acknowledge(held, 3)  # acknowledged after the revocation
    await settled()
    assert 1 not in store._dbs and not store.partition_path(1).exists()


async def test_a_write_without_its_changelog_record_is_refused(table):
    with handling(0), pytest.raises(RuntimeError, match="without its changelog record"):
        table.data["o-1"] = b"PENDING"
    assert table.data.get("o-1") is None


class FailingDisk:
    """A partition's RocksDB whose writes fail (a full disk), reads still answered."""

    def __init__(self, db) -> None:
        self.db = db

    def write(self, batch) -> None:
        raise OSError(28, "No space left on device")

    def get(self, key):
        return self.db.get(key)


async def test_writes_a_failed_disk_write_did_not_take_stay_held_and_reach_the_disk_at_the_next_pass(table):
    store = table.data
    acknowledge(write(store, 1, b"o-1", b"CONFIRMED"), 5)
    await asyncio.sleep(0)  # acknowledged, not applied yet
    healthy = store._dbs[1]
    store._dbs[1] = FailingDisk(healthy)
    with pytest.raises(OSError, match="No space left"):
        table.store_acknowledged()
    assert store.get("o-1") == b"CONFIRMED" and store.held() == 1

    store._dbs[1] = healthy
    acknowledge(write(store, 1, b"o-2", b"PENDING"), 6)
    await settled()
    assert on_disk(store, 1, b"o-1") == b"CONFIRMED" and on_disk(store, 1, b"o-2") == b"PENDING"
    assert noted_offset(table, 1) == 6


async def test_a_changelog_record_sent_without_its_write_stops_its_partition_from_reaching_the_disk(table, caplog):
    store = table.data
    acknowledge(write(store, 2, b"o-1", b"PENDING"), 3)
    await settled()
    orphan = asyncio.get_running_loop().create_future()
    orphan.message = SimpleNamespace(partition=2, key="o-9")  # sent, but faust never wrote the store after it
    store.expect_write(orphan)
    later = write(store, 2, b"o-2", b"PENDING")
    elsewhere = write(store, 3, b"o-3", b"PENDING")
    acknowledge(orphan, 4)
    acknowledge(later, 5)
    acknowledge(elsewhere, 1)
    await settled()

    assert "without its table write" in caplog.text
    assert noted_offset(table, 2) == 3  # the store stays a prefix: before the record it never had
    assert on_disk(store, 2, b"o-2") is None and store.get("o-2") == b"PENDING"
    assert on_disk(store, 3, b"o-3") == b"PENDING"  # other partitions go on


async def test_a_write_that_is_not_its_changelog_records_is_refused_and_stops_its_partition(table):
    store = table.data
    record = asyncio.get_running_loop().create_future()
    record.message = SimpleNamespace(partition=1, key="o-1")
    store.expect_write(record)
    with handling(1), pytest.raises(RuntimeError, match="not its changelog record"):
        store[b"o-2"] = b"PENDING"
    acknowledge(record, 0)
    acknowledge(write(store, 1, b"o-3", b"PENDING"), 1)
    await settled()
    assert noted_offset(table, 1) is None and on_disk(store, 1, b"o-3") is None


async def test_held_writes_of_a_partition_that_became_a_standby_are_dropped(table, monkeypatch):
    store = table.data
    changelog = table.changelog_topic.get_topic_name()
    held = write(store, 2, b"o-1", b"PENDING")
    kept = write(store, 3, b"o-2", b"PENDING")
    monkeypatch.setattr(table.app.assignor, "assigned_actives", lambda: {TP(changelog, 3)})
    monkeypatch.setattr(table.app.assignor, "assigned_standbys", lambda: {TP(changelog, 2)})

    await store.on_rebalance({TP(changelog, 2), TP(changelog, 3)}, set(), set())

    assert store.get("o-1") is None  # the standby's reader brings it from the changelog
    assert store.get("o-2") == b"PENDING"
    acknowledge(held, 7)
    acknowledge(kept, 8)
    await settled()
    assert on_disk(store, 2, b"o-1") is None and noted_offset(table, 2) is None
    assert on_disk(store, 3, b"o-2") == b"PENDING"


async def test_a_write_after_records_another_worker_wrote_does_not_note_their_offsets(table, caplog):
    """A worker paused past its session (its partitions went to another worker, which wrote their changelogs) and
    writing on as it wakes: its write lands after the other worker's records. Noting that write's offset claimed
    them, so the recovery of the rebalance that followed read on after them, and the store lacked them: seen on the
    real stack, payments refunded nothing for orders the other worker had authorized and captured meanwhile (the
    refund found no payment), and the money stayed taken. The noted offset stays before them until a recovery
    reads them."""
    store = table.data
    topic = table.changelog_topic.get_topic_name()
    acknowledge(write(store, 3, b"o-1", b"AUTHORIZED"), 4)
    acknowledge(write(store, 3, b"o-2", b"AUTHORIZED"), 5)
    await settled()
    assert noted_offset(table, 3) == 5

    # Offsets 6 to 8 are the other worker's (o-3 authorized and captured, o-1 captured); this worker's next
    # writes are acknowledged at 9 and 10.
    acknowledge(write(store, 3, b"o-2", b"CAPTURED"), 9)
    acknowledge(write(store, 3, b"o-4", b"AUTHORIZED"), 10)
    await settled()
    assert noted_offset(table, 3) == 5  # a recovery reads 6 on: the other worker's records, and these two again
    assert on_disk(store, 3, b"o-2") == b"CAPTURED" and on_disk(store, 3, b"o-4") == b"AUTHORIZED"
    assert store.held() == 0
    assert "did not write" in caplog.text

    # The recovery read the changelog to its end (faust notes the last offset it applied); writes follow on again.
    store.set_persisted_offset(TP(topic, 3), 10)
    acknowledge(write(store, 3, b"o-5", b"AUTHORIZED"), 11)
    await settled()
    assert noted_offset(table, 3) == 11


async def test_an_acknowledged_write_a_recovery_has_read_past_does_not_overwrite_the_newer_record(table):
    store = table.data
    topic = table.changelog_topic.get_topic_name()
    acknowledge(write(store, 2, b"o-1", b"AUTHORIZED"), 3)
    await settled()
    late = write(store, 2, b"o-1", b"CAPTURED")
    # A recovery applied the changelog up to 7 before this write's acknowledgement was applied: o-1 REFUNDED at 7.
    store._dbs[2].put(b"o-1", b"REFUNDED")
    store.set_persisted_offset(TP(topic, 2), 7)
    acknowledge(late, 4)
    await settled()
    assert on_disk(store, 2, b"o-1") == b"REFUNDED" and noted_offset(table, 2) == 7
    assert store.held() == 0


async def test_a_store_whose_recovery_found_its_changelog_empty_notes_no_offset_past_another_workers_records(table):
    """A partition new to the stack notes no offset until its first write: that write must follow what its recovery
    found (nothing), or it would claim the records another worker wrote before it (the review of the fix above)."""
    store = table.data
    topic = table.changelog_topic.get_topic_name()
    highwaters = table.app.tables.recovery.active_highwaters
    highwaters[TP(topic, 1)] = highwaters[TP(topic, 0)] = -1  # both recovered empty
    acknowledge(write(store, 1, b"o-1", b"AUTHORIZED"), 9)  # offsets 0 to 8: another worker's
    acknowledge(write(store, 0, b"o-2", b"AUTHORIZED"), 0)  # the first record of its changelog: its own
    await settled()
    assert noted_offset(table, 1) is None and on_disk(store, 1, b"o-1") == b"AUTHORIZED"
    assert noted_offset(table, 0) == 0
    # A partition whose recovery this store does not know of (none in a worker) is taken at its word, as before.
    acknowledge(write(store, 2, b"o-3", b"AUTHORIZED"), 17)
    await settled()
    assert noted_offset(table, 2) == 17
