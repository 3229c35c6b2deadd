"""A faust table seen as ``key -> pydantic model``: values travel as JSON, keys as plain UTF-8 bytes."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from faust.serializers import codecs
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


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
