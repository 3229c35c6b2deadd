"""What a worker keeps on its disk between runs, and when it starts again from the changelogs instead.

Each table partition's RocksDB store holds a prefix of its changelog and notes the offset it reaches
(tables/store.py), so a worker that stopped, cleanly or not, keeps its stores and its recovery reads only the records
after them. Two things make it rebuild from the changelogs alone:

- **Stores an earlier streamcart wrote, left by a kill.** Its tables reached the disk before their changelogs, so a
  store could be *ahead* of them, which a recovery cannot take back. The marker a run leaves while it runs says
  which kind of run it was.
- **Stores an earlier streamcart's recovery could leave with holes.** faust's recovery lost the changelog records
  waiting in its changelog queue whenever it emptied the queue (at each rebalance, and each time it resumed the
  flow), and did not read their partitions again from before them: a store missed them while noting an offset past
  them. Standby copies missed some after nearly every restart; an active store, when a rebalance cut into its
  recovery. Such a store, promoted or kept, then answered and decided from older states (an order CONFIRMED and
  captured at the gateway came back PENDING and was cancelled by its deadline). The changelogs are now read again
  after each such clear (:class:`agents.transport.ChangelogQueue`), standby copies (off unless
  ``STREAMCART_STANDBY_REPLICAS`` asks for them) included; stores an earlier run left are rebuilt once, told by
  :data:`FORMAT_MARKER`.
- **Stores not caught up for longer than Kafka keeps tombstones.** A store misses the deletions (a forgotten order, a
  released reservation) made while it was not reading, and a recovery finds them only while their tombstones are
  still in the changelog: a week (:data:`streamcart.topics.TOMBSTONE_RETENTION_MS`). When the stores were last
  caught up is noted at a clean stop of a worker whose tables were recovered and, while the worker runs with its
  tables recovered, after its producer flushes (before its offset commits; at most once a minute). Not when it
  starts: a run killed, or crashing, or stopped, before its recovery is done leaves the time of the last one that
  was.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from streamcart.topics import TOMBSTONE_RETENTION_MS

log = logging.getLogger(__name__)

#: Present while a worker runs; still there at start when the last run did not stop cleanly. Its text says the run
#: wrote its tables only with what their changelogs had acknowledged (an earlier streamcart left it empty).
RUNNING_MARKER = "RUNNING"
HELD_WRITES = "held-writes"
#: What kind of stores the directory holds: :data:`STORES_FORMAT`, written by a run whose recovery reads the
#: changelogs again after faust empties its changelog queue. Anything else (no file: standby copies of an earlier
#: streamcart; ``actives-only``: a recovery a rebalance cut into) may miss records; rebuilt. The words stay those of
#: the first runs to read the changelogs again, which kept no standby copies: the copies such a run keeps now read
#: the same way, and other words would rebuild every worker's stores once for nothing.
FORMAT_MARKER = "FORMAT"
STORES_FORMAT = "actives-only, changelogs read again after each clear"
#: When the stores were last caught up with their changelogs (epoch seconds).
CAUGHT_UP_MARKER = "CAUGHT_UP"
#: Where an earlier streamcart noted its clean stops (read when there is no ``CAUGHT_UP`` yet).
STOPPED_MARKER = "STOPPED"
#: Stores last caught up this long ago are rebuilt from the changelogs: a day less than the tombstones stay.
STALE_AFTER_S = TOMBSTONE_RETENTION_MS / 1000 - 24 * 3600
#: How often a running worker notes that its stores are caught up.
NOTE_EVERY_S = 60.0


def claim_local_state(tabledir: Path, *, now: float | None = None) -> bool:
    """Mark ``tabledir`` in use, wiping it first if it cannot be trusted (above). Returns whether it was wiped."""
    marker = tabledir / RUNNING_MARKER
    # The stores and their markers go away together (discard_directory). Deleted in place, the marker could go before
    # some stores, and a kill in between would leave those stores, unmarked, to be kept.
    discarded = tabledir.with_name(f"{tabledir.name}.discarded")
    if discarded.exists():  # a wipe that a kill interrupted
        shutil.rmtree(discarded)
    killed = did_not_stop_cleanly(tabledir)
    caught_up = _caught_up_at(tabledir)
    behind_s = None if caught_up is None else (time.time() if now is None else now) - caught_up
    wiped = True
    if _has_stores(tabledir) and _read(tabledir / FORMAT_MARKER) != STORES_FORMAT:
        log.warning("this worker's tables were written by an earlier streamcart whose recovery could miss changelog "
                    "records (standby copies, a recovery a rebalance interrupted): rebuilding them from the changelogs")
    elif killed and _read(marker) != HELD_WRITES:
        log.warning("the last run of this worker did not stop cleanly and wrote its tables before their changelogs: "
                    "rebuilding them from the changelogs")
    elif behind_s is not None and behind_s > STALE_AFTER_S:
        log.warning("this worker's tables were last caught up %.1f days ago, longer than Kafka keeps the tombstones "
                    "of deleted keys: rebuilding them from the changelogs", behind_s / 86_400)
    elif killed and behind_s is None:
        log.warning("the last run of this worker did not stop cleanly before its tables were ever caught up: "
                    "rebuilding them from the changelogs")
    else:
        wiped = False
        if killed:
            log.warning("the last run of this worker did not stop cleanly: its tables hold what their changelogs had "
                        "acknowledged, and recovery reads the rest")
    if wiped:
        discard_directory(tabledir)
    tabledir.mkdir(parents=True, exist_ok=True)
    _write(tabledir / FORMAT_MARKER, STORES_FORMAT)
    _write(marker, HELD_WRITES)
    return wiped


def _has_stores(tabledir: Path) -> bool:
    """Whether ``tabledir`` holds any table store (a ``*.db`` directory of faust's)."""
    return tabledir.is_dir() and any(path.suffix == ".db" for path in tabledir.iterdir())


def did_not_stop_cleanly(tabledir: Path) -> bool:
    """Whether the last run on ``tabledir`` was killed, or crashed (its running marker is still there)."""
    return (tabledir / RUNNING_MARKER).exists()


def note_caught_up(tabledir: Path, *, now: float | None = None) -> None:
    """Note that the stores in ``tabledir`` are caught up with their changelogs, as of ``now``."""
    _write(tabledir / CAUGHT_UP_MARKER, f"{time.time() if now is None else now:.0f}")


def release_local_state(tabledir: Path, *, caught_up: bool = True, now: float | None = None) -> None:
    """Mark ``tabledir`` as consistent with the changelogs (after a clean stop), and as caught up as of now when the
    stores were: a stop in the middle of a recovery leaves the time they last were."""
    if caught_up:
        note_caught_up(tabledir, now=now)
    (tabledir / RUNNING_MARKER).unlink(missing_ok=True)


def discard_directory(path: Path) -> None:
    """Delete ``path`` all at once as far as a later reader can tell: renamed aside in one step, then deleted.
    A kill in between leaves only the aside copy (``<name>.discarded``), never part of the directory."""
    discarded = path.with_name(f"{path.name}.discarded")
    if discarded.exists():  # an earlier discard that a kill interrupted
        shutil.rmtree(discarded)
    path.rename(discarded)
    shutil.rmtree(discarded)


def _caught_up_at(tabledir: Path) -> float | None:
    for name in (CAUGHT_UP_MARKER, STOPPED_MARKER):
        try:
            return float(_read(tabledir / name))
        except (OSError, ValueError):
            continue
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a kill mid-write leaves the old text)."""
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
