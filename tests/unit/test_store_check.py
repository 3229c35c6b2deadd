"""A partition store against its changelog (streamcart/store_check.py): exactly the last record of each key at or
below the offset the store notes, no more, no less."""

from __future__ import annotations

from agents.local_state import claim_local_state, release_local_state
from streamcart.settings import Settings
from streamcart.store_check import StoreReport, compare, left_running

RECORDS = [(0, b"a", b"1"), (1, b"b", b"1"), (2, b"a", b"2"), (3, b"b", None), (4, b"c", b"1")]


def test_a_store_holding_the_changelog_up_to_its_offset_is_exact():
    assert compare({b"a": b"2"}, RECORDS, offset=3) == (0, 0, 0)
    assert compare({b"a": b"2", b"c": b"1"}, RECORDS, offset=4) == (0, 0, 0)
    assert compare({}, RECORDS, offset=-1) == (0, 0, 0)


def test_a_record_the_store_missed_below_its_offset_is_found():
    # What a standby copy that lost records looked like: an older value, a deleted key still there, a key missing.
    assert compare({b"a": b"1", b"b": b"1"}, RECORDS, offset=4) == (1, 1, 1)


def test_records_after_the_offset_are_not_expected_yet():
    assert compare({b"a": b"1", b"b": b"1"}, RECORDS, offset=1) == (0, 0, 0)


def test_a_report_is_exact_only_with_nothing_missing_extra_or_stale():
    exact = StoreReport(0, "orders", 3, offset=4, end=5, keys=2, missing=0, extra=0, differ=0)
    assert exact.exact
    assert not StoreReport(0, "orders", 3, offset=4, end=5, keys=2, missing=0, extra=0, differ=1).exact


def test_a_worker_whose_last_run_did_not_stop_cleanly_is_named(tmp_path):
    settings = Settings(home=tmp_path, workers=3)
    tabledirs = [settings.worker_data_dir(i) / "v1" / "tables" for i in range(3)]  # faust's, under its datadir
    for tabledir in tabledirs[:2]:
        claim_local_state(tabledir)
    release_local_state(tabledirs[0])  # worker-0 stopped cleanly; worker-1 was killed; worker-2 never ran
    assert left_running(settings) == [1]
