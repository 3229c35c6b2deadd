"""A table store whose local RocksDB holds only what the changelog holds: a write reaches the disk once Kafka has
acknowledged its changelog record.

faust writes a table's RocksDB store at once and its changelog a little later. A worker killed in between left a
store *ahead* of its changelog for some keys, which a recovery (it replays the changelog after the offset the store
noted) could not take back: records written together by one message would come back from different points in time.
So a killed worker had to drop its whole store and read every changelog from its start, which took longer the longer
the stack had run (17 s on a fresh demo stack, 44 s after 14,000 orders), and its partitions' orders waited meanwhile.

Here a write waits in memory, where reads see it at once, until its changelog record is acknowledged; then the
acknowledged writes go to RocksDB in the order they were made, in one write batch per partition with the changelog
offset they reach (faust's persisted offset, which a recovery replays the changelog after): the store never notes an
offset past what it holds, nor holds a write past the offset it notes plus the records after it. After a kill the
store is a prefix of each changelog partition, exactly what a rebuild from the changelog alone would give, and the
recovery reads only what came after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import Any, cast

from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import current_event
from faust.types import TP
from rocksdict import WriteBatch

log = logging.getLogger(__name__)


def _as_bytes(key: Any) -> bytes:
    """A changelog record's key as the store holds it (streamcart's keys are ids: their UTF-8 bytes)."""
    return key.encode() if isinstance(key, str) else bytes(key)


class _Write:
    """One table write: ``value`` ``None`` deletes ``key``; ``offset`` is its changelog record's, once acknowledged."""

    __slots__ = ("key", "offset", "value")

    def __init__(self, key: bytes, value: bytes | None) -> None:
        self.key = key
        self.value = value
        self.offset: int | None = None


class HeldWritesStore(RocksDBStore):
    """faust's RocksDB store, with each write held in memory until its changelog record is acknowledged.

    The table (agents/transport.py, ``Table.send_changelog``) hands over the changelog record's future just before
    faust writes the value (:meth:`expect_write`). A write without one, or with another key's, is refused; a record
    sent without its write (faust's ``Table.update`` and ``clear`` do that, streamcart uses neither) stops its
    partition's store where it is for the rest of the run, since its offset could otherwise be noted past a record
    the store never had. A write whose record is never acknowledged stays held, read as written, until the worker
    crashes at its next commit (agents/state_first.py): its store on disk never learns of it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # partition -> key -> the newest write of the key not in RocksDB yet (what reads answer)
        self._newest: dict[int, dict[bytes, _Write]] = {}
        # partition -> the writes not in RocksDB yet, in the order they were made
        self._queues: dict[int, deque[_Write]] = {}
        self._sending: Any = None  # the changelog record of the write about to be made
        self._acknowledged_in: set[int] = set()  # partitions with acknowledged writes not applied yet
        self._behind: set[int] = set()  # partitions whose changelog has records this store skipped (told once)

    # -- writes ---------------------------------------------------------------------------------------------------

    def expect_write(self, delivery: asyncio.Future[Any]) -> None:
        """The next write (set or delete) is the one whose changelog record ``delivery`` resolves for."""
        if self._sending is not None:  # a record sent without its write (faust's Table.update or clear, ...)
            self._unpair(self._sending, "a changelog record was sent without its table write")
        self._sending = delivery

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._hold(key, value)

    def _del(self, key: bytes) -> None:
        self._hold(key, None)

    def _hold(self, key: bytes, value: bytes | None) -> None:
        delivery, self._sending = self._sending, None
        event = current_event()
        if delivery is None or event is None:
            raise RuntimeError(f"{self.table_name}: a table write without its changelog record")
        partition = event.message.partition
        record = getattr(delivery, "message", None)  # faust's FutureMessage: the record it resolves for
        if record is not None and (record.partition != partition or _as_bytes(record.key) != key):
            self._unpair(delivery, f"the table write of {key!r} in partition {partition} is not its changelog record's")
            raise RuntimeError(f"{self.table_name}: a table write that is not its changelog record's")
        self._db_for_partition(partition)  # opened as faust's own write would (a partition it was given)
        write = _Write(key, value)
        self._queues.setdefault(partition, deque()).append(write)
        self._newest.setdefault(partition, {})[key] = write
        delivery.add_done_callback(partial(self._acknowledged, partition, write))

    def _unpair(self, delivery: Any, what: str) -> None:
        """A changelog record whose write the store does not know: from it on, nothing of its partition reaches the
        disk in this run (a write that never resolves blocks the queue), so the store stays a prefix of the
        changelog, noting an offset before the record. Reads still answer the writes held since."""
        partition = delivery.message.partition
        self._stays(partition, what)
        self._queues.setdefault(partition, deque()).append(_Write(b"", None))  # never acknowledged

    def _stays(self, partition: int, what: str) -> None:
        log.critical("%s: %s; partition %s of the local store stays where it is until the worker restarts",
                     self.table_name, what, partition)

    def _acknowledged(self, partition: int, write: _Write, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled() or delivery.exception() is not None:
            return  # stays held: the worker stops at its next commit (agents/state_first.py)
        offset = delivery.result().offset
        if offset is None or offset < 0:
            # Written, but at an offset Kafka did not say (aiokafka answers a duplicate sequence number with the
            # broker's -1): taken as an offset, it would read as a record the store holds already and be dropped
            # from the disk. Unacknowledged instead, it holds the partition's later writes back too, until a restart.
            self._stays(partition, f"a write was acknowledged without its offset ({offset})")
            return
        write.offset = offset
        if not self._acknowledged_in:  # one pass for every acknowledgement of this turn of the loop
            asyncio.get_running_loop().call_soon(self.apply_acknowledged)
        self._acknowledged_in.add(partition)

    def apply_acknowledged(self) -> None:
        """Write to RocksDB what was acknowledged so far (also called by every producer flush: before an offset
        commit and at a stop)."""
        partitions, self._acknowledged_in = self._acknowledged_in, set()
        for partition in sorted(partitions):
            self._apply(partition)

    def _apply(self, partition: int) -> None:
        """Write to RocksDB, in one batch with the offset they reach, the partition's held writes from the oldest up
        to the first not yet acknowledged (a later write acknowledged first waits: the disk holds a prefix). They
        leave memory only once RocksDB has them: a failed write to disk leaves them held and read as before."""
        queue = self._queues.get(partition)
        if not queue or queue[0].offset is None:
            return
        db = self._dbs.get(partition)
        if db is None:  # no longer held at all (Table.on_rebalance deleted it): the changelog has the writes
            self._forget(partition)
            return
        batch = WriteBatch(raw_mode=True)
        noted_raw = db.get(self.offset_key)
        # The store holds every record up to it; one that noted none (its changelog was empty) holds what the last
        # recovery found there, so its first write follows that recovery's highwater.
        noted = int(noted_raw) if noted_raw is not None else self._recovered_to(partition)
        count, offset = 0, noted
        gap: tuple[int | None, int] | None = None  # (the last offset that follows on, the first write after a gap)
        for write in queue:
            if write.offset is None:
                break
            count += 1
            if noted is not None and write.offset <= noted:
                continue  # the store holds this record already, or a later one of its partition (a recovery read it)
            if write.value is None:
                batch.delete(write.key)
            else:
                batch.put(write.key, write.value)
            if gap is None and (offset is None or write.offset == offset + 1):
                offset = write.offset
            elif gap is None:
                # The records between are not this store's: another worker wrote the partition meanwhile (this one
                # lost it, a session that expired in a pause, and wrote on before it learned so). Noting this write's
                # offset would claim them, and the recovery that comes with the rebalance would read on after them:
                # the store would answer, and the flows decide, from states older than the changelog's. The offset
                # stays before them, so a recovery reads them (and this store's own writes after them) again.
                gap = (offset, write.offset)
        if gap is not None and partition not in self._behind:
            self._behind.add(partition)  # told once a run: every write after it finds the same gap until a recovery
            log.warning("%s: partition %s's changelog has records after offset %s that this store did not write "
                        "(another worker's, or a send the producer retried; its next write is at %s): its local store "
                        "keeps noting offset %s, so that a recovery reads them", self.table_name, partition, gap[0],
                        gap[1], gap[0])
        if offset is not None and offset != noted:
            batch.put(self.offset_key, str(offset).encode())  # as set_persisted_offset writes it
        db.write(batch)
        newest = self._newest[partition]
        for _ in range(count):
            write = queue.popleft()
            if newest.get(write.key) is write:
                del newest[write.key]

    def held(self) -> int:
        """Writes waiting for their changelog records."""
        return sum(len(queue) for queue in self._queues.values())

    def _forget(self, partition: int) -> None:
        self._queues.pop(partition, None)
        self._newest.pop(partition, None)
        self._behind.discard(partition)

    def _recovered_to(self, partition: int) -> int | None:
        """The last offset of ``partition``'s changelog when this worker last recovered it as its own (-1: empty),
        or ``None`` if it does not know."""
        highwaters = cast(Any, self.app.tables).recovery.active_highwaters  # a Counter: one not in it reads as 0
        tp = TP(self.table.changelog_topic.get_topic_name(), partition)
        return int(highwaters[tp]) if tp in highwaters else None

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        super().revoke_partitions(table, tps)
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._forget(tp.partition)

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0) -> None:
        """Held writes of a partition this worker no longer has as an active one (revoked, or a standby now) are
        dropped: its changelog has them (the rebalance flushed the producer first), and a standby's reader, which
        applies the new owner's records, must not have older ones written over them."""
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic.get_topic_name()
        for partition in [p for p in self._queues if TP(topic=topic, partition=p) not in actives]:
            self._forget(partition)

    def reset_state(self) -> None:
        super().reset_state()
        self._queues.clear()
        self._newest.clear()

    # -- reads: a held write first, then RocksDB ------------------------------------------------------------------

    def _held(self, key: bytes) -> _Write | None:
        event = current_event()
        if event is not None:  # a flow reads the keys of the partition of the message it handles
            newest = self._newest.get(event.message.partition)
            return None if newest is None else newest.get(key)
        for newest in self._newest.values():
            if (write := newest.get(key)) is not None:
                return write
        return None

    def _get(self, key: bytes) -> bytes | None:
        write = self._held(key)
        if write is not None:
            return write.value
        value: bytes | None = super()._get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        write = self._held(key)
        if write is not None:
            return write.value is not None
        return bool(super()._contains(key))

    def _active_partitions(self) -> Iterator[tuple[int, Any]]:
        """Like faust's ``_dbs_for_actives``, with the partition of each."""
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic.get_topic_name()
        for partition, db in list(self._dbs.items()):
            if self.table.is_global or TP(topic=topic, partition=partition) in actives:
                yield partition, db

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition, db in self._active_partitions():
            newest = dict(self._newest.get(partition, {}))
            for key, value in self._visible_items(db):
                if key not in newest:
                    yield key, value
            for key, write in newest.items():
                if write.value is not None:
                    yield key, write.value

    def _iterkeys(self) -> Iterator[bytes]:
        for partition, db in self._active_partitions():
            newest = dict(self._newest.get(partition, {}))
            for key in self._visible_keys(db):
                if key not in newest:
                    yield key
            for key, write in newest.items():
                if write.value is not None:
                    yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iterkeys())

    def keys_from(self, partition: int, start: bytes) -> Iterator[bytes]:
        """The keys of ``partition`` from ``start`` on, in byte order, held writes included (a range read); not
        faust's own offset key, which each partition's store keeps among the table's."""
        held = sorted((key, write.value) for key, write in self._newest.get(partition, {}).items() if key >= start)
        position = 0
        for key in self._db_for_partition(partition).keys(from_key=start):
            if key == self.offset_key:
                continue
            while position < len(held) and held[position][0] < key:
                if held[position][1] is not None:
                    yield held[position][0]
                position += 1
            if position < len(held) and held[position][0] == key:
                if held[position][1] is not None:
                    yield key
                position += 1
            else:
                yield key
        for key, value in held[position:]:
            if value is not None:
                yield key
