"""A faust table seen as ``key -> pydantic model``: values travel as JSON, keys as plain UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, Generic, TypeVar

from faust.serializers import codecs
from pydantic import BaseModel

from tables.store import HeldWritesStore

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class Utf8Codec(codecs.Codec):
    """Keys as the UTF-8 bytes of the id, exactly as producers send them (DESIGN.md §2), read back as ``str``.

    faust's ``raw`` codec would hand keys back as ``bytes`` after recovery while live writes use ``str``;
    ``json`` would quote them and hash them to another partition than the topic that feeds the table.
    """

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return s.decode()


codecs.register("utf8", Utf8Codec())


def stored(table: Any, key: str) -> Any:
    """``table``'s value for ``key``, or ``None``, read straight from its store: one lookup.

    faust's ``table.get(key)`` asks the store whether the key is there and then for its value, two RocksDB reads
    (plus a statistics hook), and the flows read state for nearly every message they handle.
    """
    return table.data.get(key)


def delete(table: Any, key: str) -> None:
    """Delete ``key`` from ``table`` if it is there: a tombstone in the changelog only for what was stored."""
    if stored(table, key) is not None:
        del table[key]


def put_absent(table: Any, key: str, value: bytes) -> None:
    """Store ``value`` under ``key`` unless something is stored there: a redelivery writes nothing again."""
    if stored(table, key) is None:
        table[key] = value


class ModelTable(Generic[M]):
    """Typed access to one faust table whose values are ``model`` instances, stored as JSON bytes.

    Values go through pydantic's own JSON (de)serialiser (``model_dump_json``/``model_validate_json``, in Rust),
    not Python's ``json`` plus a dict validation: a state is read and written for every message a flow handles,
    and this halves the cost. The bytes are plain JSON, the same as faust's ``json`` serializer writes.
    """

    #: How many decoded values each table keeps: the orders in flight (at 30 orders/s, each settled within the
    #: 30 s deadline, at most 900) fit; every cached model is one more object for the garbage collector to walk.
    DECODED_CACHE_SIZE = 2048

    def __init__(self, table: Any, model: type[M]) -> None:
        self.table = table
        self.model = model
        # key -> (stored bytes, their model). A hit needs the very bytes the store holds now, so whatever else
        # writes the store (changelog recovery, standby updates, another path) can never be answered from here;
        # the models are frozen, so nobody changes a cached one behind the store's back.
        self._decoded: dict[str, tuple[bytes, M]] = {}

    @property
    def name(self) -> str:
        return str(self.table.name)

    def get(self, key: str) -> M | None:
        raw = stored(self.table, key)
        if raw is None:
            return None
        cached = self._decoded.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        value = self.model.model_validate_json(raw)
        self._remember(key, raw, value)
        return value

    def get_raw(self, key: str) -> bytes | None:
        """The stored JSON of ``key``, undecoded."""
        raw: bytes | None = stored(self.table, key)
        return raw

    def put(self, key: str, value: M) -> None:
        raw = value.model_dump_json().encode()
        self.table[key] = raw
        self._remember(key, raw, value)

    def delete(self, key: str) -> None:
        """Forget ``key`` (a tombstone in the changelog); nothing happens if it is not there."""
        self._decoded.pop(key, None)
        delete(self.table, key)

    def _remember(self, key: str, raw: bytes, value: M) -> None:
        decoded = self._decoded
        decoded.pop(key, None)  # re-inserted last: the oldest entry is the first to go
        if len(decoded) >= self.DECODED_CACHE_SIZE:
            del decoded[next(iter(decoded))]
        decoded[key] = (raw, value)

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)


class DeadlineTable:
    """``order_id -> deadline`` for the orders still PENDING: what a timer tick scans (small, unlike ``orders``)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def track(self, order_id: str, deadline: int | None) -> None:
        """Remember ``order_id``'s deadline, or forget it (``None``) once the order has its outcome."""
        if deadline is not None:
            if stored(self.table, order_id) != deadline:
                self.table[order_id] = deadline
        elif order_id in self.table:
            del self.table[order_id]

    def items(self) -> list[tuple[str, int]]:
        return [(str(k), int(v)) for k, v in self.table.items()]


def keys_from(table: Any, partition: int, start: str, partition_of: Callable[[str], int]) -> Iterator[str]:
    """The keys of ``table`` in ``partition`` from ``start`` on, in order (``partition_of(key)``: where a key lives,
    for the memory store of unit tests, which keeps every partition in one dict).

    A RocksDB store keeps one database per partition with its keys in byte order (the same order as the strings':
    UTF-8 keeps code point order), so a range is read without reading the rest (faust's own API has no range reads:
    :meth:`tables.store.HeldWritesStore.keys_from`).
    """
    store = table.data
    if isinstance(store, HeldWritesStore):
        for raw in store.keys_from(partition, start.encode()):
            yield raw.decode()
    else:
        yield from sorted(k for k in store.data if k >= start and partition_of(k) == partition)


class RetentionIndex:
    """The settled orders by when they may be forgotten (:mod:`streamcart.domain.retention`): what a timer tick
    reads, oldest first, stopping at the first one not due yet.

    Keys are ``{forget_at:013d}/{order_id}``, so they sort by time in each partition's store, and the value is the
    order id. Each key is written while a message of its order is processed, in the order's partition.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        #: Per partition, the key a scan starts from: the first due key the last scan found, nothing before it then.
        #: A key added since is due later than that scan's time (its last step plus the retention, far beyond any
        #: backlog), so none is missed; and RocksDB does not step over every deleted key at the start of the range
        #: again on each tick until it compacts them away. Not while a partition is being restored (the timer does
        #: not scan then: keys come back in changelog order, not time order); cleared when the partitions asked for
        #: change and by :meth:`reset`.
        self._floor: dict[int, str] = {}
        self._partitions: frozenset[int] = frozenset()

    def reset(self) -> None:
        """Scan every partition from its start next time."""
        self._floor.clear()

    @staticmethod
    def key(order_id: str, at: int) -> str:
        return f"{at:013d}/{order_id}"

    def track(self, order_id: str, before: int | None, after: int | None) -> None:
        """Move ``order_id`` from its time ``before`` to ``after`` (``None``: not in the index); writes only what
        differs from the store, so a redelivery heals a crash between the order's write and this one."""
        if before is not None and before != after:
            delete(self.table, self.key(order_id, before))
        if after is not None:
            put_absent(self.table, self.key(order_id, after), order_id.encode())

    def due(
        self, partitions: Collection[int], now_ms: int, *, limit: int, partition_of: Callable[[str], int]
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` ``(order_id, forget_at)`` of ``partitions`` due at ``now_ms``, oldest first in each."""
        if frozenset(partitions) != self._partitions:  # a rebalance: each partition from its start again
            self._partitions = frozenset(partitions)
            self.reset()
        found: list[tuple[str, int]] = []
        for partition in sorted(partitions):
            first = True
            start = self._floor.get(partition, "")
            for key in keys_from(self.table, partition, start, lambda k: partition_of(k.partition("/")[2])):
                at, _, order_id = key.partition("/")
                # Past the last entry (faust keeps its own offset key in each partition's store, after the digits).
                if not at.isdigit() or int(at) > now_ms or len(found) >= limit:
                    break
                if first:  # nothing before it now, and a key added later is not due yet at this tick
                    self._floor[partition] = key
                    first = False
                found.append((order_id, int(at)))
        return found


class CustomerIndex:
    """Each customer's orders, newest first: what ``GET /v1/customers/{id}/orders`` reads a page of, instead of
    scanning every order.

    Keys are ``{customer_id}\0{inverted placed_at:013d}\0{order_id}`` (the value is the order id): in each
    partition's store a customer's entries are together, in the order the API lists them (newest first, then by
    order id). An entry lives in its order's partition, written while a message of the order is processed.
    """

    #: Times are inverted against this (13 digits of milliseconds reach the year 2286).
    NEWEST = 10**13 - 1
    SEP = "\0"

    def __init__(self, table: Any) -> None:
        self.table = table

    def key(self, customer_id: str, placed_at: int, order_id: str) -> str:
        return f"{customer_id}{self.SEP}{self.NEWEST - placed_at:013d}{self.SEP}{order_id}"

    def add(self, customer_id: str, placed_at: int, order_id: str) -> None:
        """File the order (writes only if it is not filed yet: a redelivery heals a crash before this write)."""
        put_absent(self.table, self.key(customer_id, placed_at, order_id), order_id.encode())

    def has(self, customer_id: str, placed_at: int, order_id: str) -> bool:
        return stored(self.table, self.key(customer_id, placed_at, order_id)) is not None

    def remove(self, customer_id: str, placed_at: int, order_id: str) -> None:
        delete(self.table, self.key(customer_id, placed_at, order_id))

    def page(
        self, customer_id: str, partitions: Collection[int], *, after: tuple[int, str] | None, limit: int,
        partition_of: Callable[[str], int], load: Callable[[str], T | None],
    ) -> list[tuple[tuple[int, str], T]]:
        """Up to ``limit`` of the customer's orders in ``partitions`` as ``((-placed_at, order_id), load(order_id))``,
        in that order, after ``after`` (such a pair: the last of the page before). An entry whose ``load`` is
        ``None`` (its order not there: a table still being rebuilt) is passed over without taking a place."""
        prefix = f"{customer_id}{self.SEP}"
        start = prefix if after is None else f"{prefix}{self.NEWEST + after[0]:013d}{self.SEP}{after[1]}"
        found: list[tuple[tuple[int, str], T]] = []
        for partition in partitions:
            taken = 0
            for key in keys_from(self.table, partition, start, lambda k: partition_of(k.rsplit(self.SEP, 1)[-1])):
                if not key.startswith(prefix) or taken >= limit:
                    break
                inverted, sep, order_id = key[len(prefix):].partition(self.SEP)
                if not sep or not inverted.isdigit():
                    continue  # another customer's whose id goes on past ours with a separator (never via the API)
                rank = (int(inverted) - self.NEWEST, order_id)
                if after is not None and rank <= after:
                    continue
                if (value := load(order_id)) is not None:
                    found.append((rank, value))
                    taken += 1
        found.sort(key=lambda ranked: ranked[0])
        return found[:limit]
