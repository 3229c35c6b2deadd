"""The ``analytics`` table: each source partition's event-time windows under keys that name the partition.

Keys start with ``p{partition}`` because the rows of one partition are written while that partition's events are
processed (they go to the same changelog partition) and a worker must answer only for the partitions it owns,
while its store also holds standby copies of others:

- ``p3`` -> :class:`PartitionWindows`: the open windows, the watermark, the late counts;
- ``p3/seen/{event_id}`` -> the windows whose results it sent (those it closed, or added late figures to): the
  events already folded (a duplicate changes nothing but sends those results again, as they stand); forgotten with
  their order (:mod:`streamcart.domain.retention`);
- ``p3/closed/{window id}`` -> :class:`ClosedWindow`: a final result, kept for queries for the retention;
- ``p3/index`` -> the ids of the closed windows kept, oldest first (what retention deletes).
"""

from __future__ import annotations

import json
from typing import Any

from streamcart.domain.analytics import ClosedWindow, PartitionWindows, window_id
from tables.typed import delete, stored


class AnalyticsTable:
    """Typed access to the analytics table, one source partition at a time."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def name(self) -> str:
        return str(self.table.name)

    def windows(self, partition: int) -> PartitionWindows:
        raw = stored(self.table, f"p{partition}")
        return PartitionWindows(partition=partition) if raw is None else PartitionWindows.model_validate_json(raw)

    def put_windows(self, state: PartitionWindows) -> None:
        self.table[f"p{state.partition}"] = state.model_dump_json().encode()

    def seen(self, partition: int, event_id: str) -> tuple[str, ...] | None:
        """The windows whose results the event sent when it was folded; ``None`` if it never was."""
        raw = stored(self.table, f"p{partition}/seen/{event_id}")
        return None if raw is None else tuple(json.loads(raw))

    def mark_seen(self, partition: int, event_id: str, closed: tuple[str, ...]) -> None:
        self.table[f"p{partition}/seen/{event_id}"] = json.dumps(list(closed)).encode()

    def forget_seen(self, partition: int, event_id: str) -> None:
        delete(self.table, f"p{partition}/seen/{event_id}")

    def closed_ids(self, partition: int) -> list[str]:
        raw = stored(self.table, f"p{partition}/index")
        return [] if raw is None else list(json.loads(raw))

    def closed(self, partition: int, name: str) -> ClosedWindow | None:
        raw = stored(self.table, f"p{partition}/closed/{name}")
        return None if raw is None else ClosedWindow.model_validate_json(raw)

    def keep_closed(self, windows: tuple[ClosedWindow, ...], partition: int, *, forget_before: int) -> None:
        """Store ``windows`` (all of ``partition``) and drop the closed windows that ended before ``forget_before``."""
        names = self.closed_ids(partition)
        for window in windows:
            name = window_id(window.metric, window.window)
            self.table[f"p{partition}/closed/{name}"] = window.model_dump_json().encode()
            if name not in names:
                names.append(name)
        kept = []
        for name in names:
            if int(name.rsplit("/", 1)[1]) < forget_before:
                key = f"p{partition}/closed/{name}"
                if key in self.table:
                    del self.table[key]
            else:
                kept.append(name)
        self.table[f"p{partition}/index"] = json.dumps(kept).encode()

    def __len__(self) -> int:
        return len(self.table)
