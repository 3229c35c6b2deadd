"""What a worker does about a crash before faust starts: the local table store and the uncommitted partitions."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from agents import worker
from agents.local_state import (
    CAUGHT_UP_MARKER,
    FORMAT_MARKER,
    RUNNING_MARKER,
    STALE_AFTER_S,
    STOPPED_MARKER,
    claim_local_state,
    note_caught_up,
    release_local_state,
)
from agents.transport import ConsumerThread
from streamcart.topics import TOMBSTONE_RETENTION_MS


def test_a_first_start_keeps_the_store_and_marks_it_running(tmp_path):
    tabledir = tmp_path / "tables"
    assert claim_local_state(tabledir) is False
    assert (tabledir / RUNNING_MARKER).exists()


def test_a_clean_stop_keeps_the_local_store_for_the_next_start(tmp_path):
    tabledir = tmp_path / "tables"
    claim_local_state(tabledir)
    (tabledir / "orders-0.db").write_text("state")
    release_local_state(tabledir)
    assert claim_local_state(tabledir) is False
    assert (tabledir / "orders-0.db").read_text() == "state"


def test_a_wipe_a_kill_interrupted_leaves_no_store_to_keep_and_is_finished_at_the_next_start(tmp_path):
    tabledir = tmp_path / "tables"
    claim_local_state(tabledir)
    (tabledir / "orders-0.db").write_text("ahead of the changelog")
    # Killed once the store was set aside, before it was deleted and the marker put back.
    tabledir.rename(tmp_path / "tables.discarded")
    assert claim_local_state(tabledir) is False  # nothing left to wipe: an empty store rebuilds from the changelogs
    assert sorted(tabledir.iterdir()) == [tabledir / FORMAT_MARKER, tabledir / RUNNING_MARKER]
    assert not (tmp_path / "tables.discarded").exists()


@pytest.mark.parametrize("written_by", [None, "actives-only"], ids=["standby-copies", "unfixed-recovery"])
def test_stores_an_earlier_recovery_could_leave_with_holes_are_rebuilt_once(tmp_path, written_by):
    """Workers that kept standby copies (no FORMAT), and workers whose recovery a rebalance could cut into
    (``actives-only``), could leave stores missing changelog records while noting offsets past them: kept, such a
    store would answer older states."""
    tabledir = tmp_path / "tables"
    tabledir.mkdir()
    (tabledir / "orders-0.db").mkdir()  # a store left by a clean stop of the earlier streamcart
    (tabledir / CAUGHT_UP_MARKER).write_text("100")
    if written_by is not None:
        (tabledir / FORMAT_MARKER).write_text(written_by)
    assert claim_local_state(tabledir, now=200) is True
    assert not (tabledir / "orders-0.db").exists()
    release_local_state(tabledir, now=300)
    (tabledir / "orders-0.db").mkdir()  # written by this streamcart
    assert claim_local_state(tabledir, now=400) is False
    assert (tabledir / "orders-0.db").exists()


def test_a_start_after_a_kill_keeps_the_store_which_holds_only_what_the_changelogs_acknowledged(tmp_path):
    tabledir = tmp_path / "tables"
    claim_local_state(tabledir, now=0)
    note_caught_up(tabledir, now=100)  # recovered, running
    (tabledir / "orders-0.db").write_text("a prefix of the changelog")
    assert claim_local_state(tabledir, now=200) is False  # never released: the last run was killed
    assert (tabledir / "orders-0.db").read_text() == "a prefix of the changelog"
    assert (tabledir / RUNNING_MARKER).exists()


def test_a_start_after_a_kill_of_a_store_an_earlier_streamcart_wrote_drops_it(tmp_path):
    tabledir = tmp_path / "tables"
    tabledir.mkdir()
    (tabledir / RUNNING_MARKER).touch()  # left empty by a streamcart that wrote tables before their changelogs
    (tabledir / STOPPED_MARKER).write_text("0")
    (tabledir / "orders-0.db").write_text("ahead of the changelog")
    assert claim_local_state(tabledir, now=100) is True
    assert not (tabledir / "orders-0.db").exists()
    assert (tabledir / RUNNING_MARKER).exists()


def test_a_start_after_a_kill_before_the_tables_were_ever_caught_up_drops_them(tmp_path):
    tabledir = tmp_path / "tables"
    claim_local_state(tabledir, now=0)
    (tabledir / "orders-0.db").write_text("recovered part of the way")
    assert claim_local_state(tabledir, now=10) is True
    assert not (tabledir / "orders-0.db").exists()


def test_a_kill_keeps_the_time_the_tables_were_last_caught_up_however_often_it_starts_again(tmp_path):
    """Starting opens the stores (RocksDB writes its files) without catching them up: only a note of a recovered,
    running worker moves the time on, so runs killed before their recovery finished never make old stores look new."""
    tabledir = tmp_path / "tables"
    day = 86_400.0
    claim_local_state(tabledir, now=0)
    note_caught_up(tabledir, now=day)
    (tabledir / "orders-0.db").write_text("state")
    assert claim_local_state(tabledir, now=5 * day) is False  # killed; caught up four days before: kept
    (tabledir / "orders-0.db").write_text("opened again, not caught up")
    assert claim_local_state(tabledir, now=day + STALE_AFTER_S - 1) is False
    assert claim_local_state(tabledir, now=day + STALE_AFTER_S + 1) is True
    assert not (tabledir / "orders-0.db").exists()


class FakeConsumer:
    def __init__(self, committed):
        self.committed = committed
        self.rewound: list[TopicPartition] = []

    async def seek_to_committed(self):
        return self.committed

    async def beginning_offsets(self, partitions):
        return {tp: 7 for tp in partitions}  # the log starts at 7: earlier records were deleted by retention

    def seek(self, tp, offset):
        self.rewound.append((tp, offset))


def test_partitions_with_nothing_committed_or_a_commit_the_log_lost_are_rewound_but_changelogs_left_to_faust(
    caplog,
):
    committed = {
        TopicPartition("commands", 0): 42,
        TopicPartition("commands", 1): None,
        TopicPartition("commands", 2): 0,
        TopicPartition("commands", 3): 5,  # retention deleted 5 and 6 before they were handled
        TopicPartition("commands", 4): 7,  # the log's first record: still there
        TopicPartition("app-orders-changelog", 1): None,
    }
    thread = ConsumerThread.__new__(ConsumerThread)
    thread._consumer = consumer = FakeConsumer(committed)
    thread.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "commands"))

    # The rewound partitions report where processing starts: the position their first commit must begin at.
    assert asyncio.run(thread._seek_to_committed_or_start()) == {
        **committed, TopicPartition("commands", 1): 7, TopicPartition("commands", 2): 7,
        TopicPartition("commands", 3): 7,
    }
    assert consumer.rewound == [(TopicPartition("commands", p), 7) for p in (1, 2, 3)]
    (lost,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "records 5..6 were deleted by retention" in lost.getMessage()


def test_a_store_stopped_cleanly_longer_ago_than_tombstones_stay_is_rebuilt_and_a_recent_one_kept(tmp_path):
    tabledir = tmp_path / "tables"
    day = 86_400.0
    claim_local_state(tabledir, now=0)
    (tabledir / "orders-0.db").write_text("state")
    release_local_state(tabledir, now=0)
    assert claim_local_state(tabledir, now=5 * day) is False  # five days: every deletion's tombstone is still there
    assert (tabledir / "orders-0.db").exists() and (tabledir / CAUGHT_UP_MARKER).read_text() == "0"
    release_local_state(tabledir, now=5 * day)
    # Eleven days after: tombstones of keys deleted while it was stopped may be compacted away (kept 7 days).
    assert claim_local_state(tabledir, now=5 * day + STALE_AFTER_S + 1) is True
    assert not (tabledir / "orders-0.db").exists()
    assert TOMBSTONE_RETENTION_MS / 1000 - day == STALE_AFTER_S


def test_a_clean_stop_before_the_recovery_was_done_leaves_the_time_the_stores_were_last_caught_up(tmp_path):
    """Started five days after its stores were last caught up and stopped before it had read them back, a worker must
    not make them look new: two days later they are seven days behind, and rebuilt (tombstones of keys deleted since
    may be gone)."""
    tabledir = tmp_path / "tables"
    day = 86_400.0
    claim_local_state(tabledir, now=0)
    (tabledir / "orders-0.db").write_text("state")
    release_local_state(tabledir, now=0)
    assert claim_local_state(tabledir, now=5 * day) is False  # five days: kept, and read on from where it ends
    release_local_state(tabledir, caught_up=False, now=5 * day + 60)  # stopped a minute later, still reading
    assert (tabledir / CAUGHT_UP_MARKER).read_text() == "0"
    assert not (tabledir / RUNNING_MARKER).exists()  # a clean stop all the same
    assert claim_local_state(tabledir, now=7 * day) is True
    assert not (tabledir / "orders-0.db").exists()


def test_the_stores_are_caught_up_once_recovered_and_neither_while_recovering_nor_rebalancing() -> None:
    from agents.app import create_faust_app
    from agents.transport import stores_caught_up
    from streamcart.settings import Settings

    app = create_faust_app(Settings(), store="memory://")
    recovery = app.tables.recovery
    assert not stores_caught_up(app)  # never recovered yet
    recovery.completed.set()
    assert stores_caught_up(app)
    recovery.in_recovery = True  # a later rebalance's recovery
    assert not stores_caught_up(app)
    recovery.in_recovery = False
    app.rebalancing = True
    assert not stores_caught_up(app)


class LeaderlessConsumer(FakeConsumer):
    """The first lookup of the log starts (every partition) does not answer: one partition has no leader now."""

    def __init__(self, committed):
        super().__init__(committed)
        self.lookups = 0

    async def beginning_offsets(self, partitions):
        self.lookups += 1
        if self.lookups == 1:
            await asyncio.sleep(3600)
        return await super().beginning_offsets(partitions)


def test_a_seek_whose_log_starts_do_not_come_rewinds_only_what_has_nothing_committed(monkeypatch):
    import agents.transport as transport

    monkeypatch.setattr(transport, "LOG_STARTS_TIMEOUT_S", 0.05)
    committed = {TopicPartition("commands", 0): 5, TopicPartition("commands", 1): None}
    thread = ConsumerThread.__new__(ConsumerThread)
    thread._consumer = consumer = LeaderlessConsumer(committed)
    thread.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    assert asyncio.run(thread._seek_to_committed_or_start()) == {**committed, TopicPartition("commands", 1): 7}
    assert consumer.rewound == [(TopicPartition("commands", 1), 7)]  # 0's start unknown: left at its commit


def test_a_worker_listening_beyond_loopback_with_the_development_secret_refuses_to_start(monkeypatch):
    """Anyone who reaches its API could mint an admin token with the secret in streamcart's source: it stops before
    it connects to anything (no codec, no Kafka), saying what to set."""
    from streamcart.errors import ConfigurationError
    from streamcart.settings import DEVELOPMENT_JWT_SECRET, Settings

    def connects(*_: object) -> None:
        raise AssertionError("the worker went on to connect")

    monkeypatch.setattr(worker.Codec, "connect", connects)
    monkeypatch.setattr(worker, "configure_logging", lambda settings: None)  # the test run's logging stays
    exposed = Settings(host="0.0.0.0", jwt_secret=DEVELOPMENT_JWT_SECRET)
    with pytest.raises(ConfigurationError, match="Set STREAMCART_JWT_SECRET"):
        worker.run(exposed, 0)
    own_secret = Settings(host="0.0.0.0", jwt_secret="a-secret-of-our-own-at-least-32-bytes")
    with pytest.raises(AssertionError, match="went on to connect"):
        worker.run(own_secret, 0)


def producer_noting(tabledir, *, standby_tps: set, standby_remaining: int) -> SimpleNamespace:
    """What ``Producer._note_caught_up`` reads: a recovered worker whose standby copies have this much to read."""
    recovery = SimpleNamespace(
        in_recovery=False, completed=asyncio.Event(), standby_tps=standby_tps,
        standby_remaining_total=lambda: standby_remaining,
    )
    recovery.completed.set()
    app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery), rebalancing=False,
                          conf=SimpleNamespace(tabledir=str(tabledir)))
    return SimpleNamespace(app=app, _caught_up_noted=float("-inf"))


@pytest.mark.parametrize(("standby_tps", "remaining", "noted"), [
    (set(), 0, True),
    ({TopicPartition("streamcart-orders-changelog", 1)}, 0, True),
    ({TopicPartition("streamcart-orders-changelog", 1)}, 25, False),
], ids=["no copies", "copies caught up", "copies still reading"])
def test_the_stores_are_noted_caught_up_only_once_the_standby_copies_are_too(tmp_path, standby_tps, remaining,
                                                                            noted):
    """Copies start reading only after the worker's own partitions are read back: a note before they are done could
    vouch for a copy more than a week behind after a long stop (its deletions' tombstones compacted away)."""
    from agents.transport import Producer

    tmp_path.mkdir(exist_ok=True)
    Producer._note_caught_up(producer_noting(tmp_path, standby_tps=standby_tps, standby_remaining=remaining))
    assert (tmp_path / CAUGHT_UP_MARKER).exists() is noted
