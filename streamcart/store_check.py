"""Every worker's local table stores read against their changelogs (``streamcart check-stores``).

A partition's RocksDB store must hold exactly what its changelog holds up to the offset the store notes (faust's
persisted offset, from which a recovery reads on): each key's value in the last record at or below that offset, and
no key that record deleted (tables/store.py). A store that misses records while noting an offset past them answers,
and decides from, older states once it serves its partition, and nothing in the flows can tell. This is how faust's
standby copies were found to lose records (agents/local_state.py).

The workers must be stopped: their stores are locked and changing while they run. Each store is copied aside and
opened there.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from faust.stores.rocksdb import Store as RocksDBStore
from rocksdict import Options, Rdict

from streamcart.ids import new_id
from streamcart.settings import Settings
from streamcart.topics import changelog_topic

#: Where faust's RocksDB store notes the changelog offset it holds up to.
OFFSET_KEY: bytes = RocksDBStore.offset_key
#: How long a changelog partition may send nothing before its end is reached.
READ_TIMEOUT_S = 30.0
_STORE = re.compile(r"(?P<table>.+)-(?P<partition>[0-9]+)\.db")

#: A changelog record: its offset, key and value (``None``: the key deleted).
Record = tuple[int, bytes, bytes | None]


@dataclass(frozen=True)
class StoreReport:
    """One partition store of one worker against its changelog."""

    worker: int
    table: str
    partition: int
    offset: int  # what the store notes (-1: nothing)
    end: int  # the changelog partition's end offset
    keys: int
    missing: int  # keys the changelog has up to the offset, absent from the store
    extra: int  # keys in the store the changelog does not have (or deleted) up to the offset
    differ: int  # keys whose value is not the changelog's last one up to the offset

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.differ)


def compare(store: Mapping[bytes, bytes], records: Iterable[Record], offset: int) -> tuple[int, int, int]:
    """(missing, extra, differ): ``store`` against the state ``records`` reach at ``offset``."""
    truth: dict[bytes, bytes | None] = {}
    for record_offset, key, value in records:
        if record_offset <= offset:
            truth[key] = value
    present = {key: value for key, value in truth.items() if value is not None}
    missing = sum(1 for key in present if key not in store)
    extra = sum(1 for key in store if key not in present)
    differ = sum(1 for key, value in present.items() if key in store and store[key] != value)
    return missing, extra, differ


def stores_of(settings: Settings) -> Iterator[tuple[int, str, int, Path]]:
    """(worker, table, partition, directory) of every partition store on this machine's worker data."""
    for worker in range(settings.workers):
        for path in sorted(settings.worker_data_dir(worker).glob("**/tables/*.db")):
            if (match := _STORE.fullmatch(path.name)) is not None:
                yield worker, match["table"], int(match["partition"]), path


def left_running(settings: Settings) -> list[int]:
    """Workers whose last run did not stop cleanly (killed, or crashed): their stores hold what they had written,
    less what a clean stop writes last (the standby copies' records read but not yet applied)."""
    from agents.local_state import did_not_stop_cleanly

    return [worker for worker in range(settings.workers)
            if any(did_not_stop_cleanly(tabledir) for tabledir in settings.worker_data_dir(worker).glob("**/tables"))]


def read_store(path: Path) -> tuple[int, dict[bytes, bytes]]:
    """The offset a store notes and its keys and values, read from a copy (the original stays untouched)."""
    with tempfile.TemporaryDirectory(prefix="streamcart-store-") as aside:
        copy = Path(aside) / path.name
        shutil.copytree(path, copy)
        (copy / "LOCK").unlink(missing_ok=True)
        db = Rdict(str(copy), options=Options(raw_mode=True))
        try:
            noted = db.get(OFFSET_KEY)
            items = {key: value for key, value in db.items()
                     if isinstance(key, bytes) and isinstance(value, bytes) and key != OFFSET_KEY}
        finally:
            db.close()
    return (-1 if noted is None else int(noted)), items


class Changelogs:
    """Reads a changelog partition whole, once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer = Consumer({
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.app_id}-store-check-{new_id()}",
            "enable.auto.commit": False,
        })
        self._read: dict[tuple[str, int], tuple[list[Record], int]] = {}

    def partition(self, table: str, partition: int) -> tuple[list[Record], int]:
        """Its records and its end offset."""
        topic = changelog_topic(self.settings.app_id, table)
        if (topic, partition) not in self._read:
            self._read[topic, partition] = self._read_whole(topic, partition)
        return self._read[topic, partition]

    def _read_whole(self, topic: str, partition: int) -> tuple[list[Record], int]:
        start, end = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        records: list[Record] = []
        if end <= start:
            return records, end
        self._consumer.assign([TopicPartition(topic, partition, start)])
        quiet_since = time.monotonic()
        while not records or records[-1][0] < end - 1:
            # consume() waits for its whole timeout unless it fills the batch: short waits, then read what came.
            batch = self._consumer.consume(num_messages=5000, timeout=0.2)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > READ_TIMEOUT_S:
                raise TimeoutError(f"{topic}[{partition}]: nothing read for {READ_TIMEOUT_S:.0f} s before offset "
                                   f"{end - 1}")
            records += [(m.offset() or 0, m.key() or b"", m.value()) for m in batch
                        if m.error() is None and m.partition() == partition and m.topic() == topic]
        return records, end

    def close(self) -> None:
        self._consumer.close()


def check_stores(settings: Settings) -> list[StoreReport]:
    """Every partition store of every worker on this machine against its changelog (the workers stopped)."""
    changelogs = Changelogs(settings)
    try:
        reports = []
        for worker, table, partition, path in stores_of(settings):
            offset, items = read_store(path)
            records, end = changelogs.partition(table, partition)
            missing, extra, differ = compare(items, records, offset)
            reports.append(StoreReport(worker, table, partition, offset, end, len(items), missing, extra, differ))
        return reports
    finally:
        changelogs.close()
