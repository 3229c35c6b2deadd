"""The analytics API's time range: epoch milliseconds or ISO 8601, anything else a 400 (never a 500)."""

from __future__ import annotations

import pytest

from api.analytics import NO_END, BadQuery, parse_time, time_range
from api.models import WindowRangeQuery


def test_a_time_is_epoch_milliseconds_or_iso_8601_utc_unless_it_says_otherwise():
    assert parse_time("1795626000000", 0, "from") == 1_795_626_000_000
    assert parse_time("2026-11-25T17:00:00Z", 0, "from") == 1_795_626_000_000
    assert parse_time("2026-11-25T17:00:00", 0, "from") == 1_795_626_000_000
    assert parse_time("2026-11-25T18:00:00+01:00", 0, "from") == 1_795_626_000_000
    assert parse_time(str(NO_END), 0, "to") == NO_END  # what the gathering worker asks every worker for
    assert parse_time(None, 42, "from") == 42 and parse_time("", 42, "from") == 42


@pytest.mark.parametrize("value", ["²", "٣٤", "yesterday", "12:00", "1e9", "--5"])
def test_anything_else_is_a_bad_query(value):
    with pytest.raises(BadQuery) as refused:
        parse_time(value, 0, "from")
    assert refused.value.status == 400 and "from" in str(refused.value)


def test_the_range_must_not_be_empty():
    assert time_range(WindowRangeQuery.model_validate({"from": "1000", "to": "2000"})) == (1000, 2000)
    with pytest.raises(BadQuery):
        time_range(WindowRangeQuery.model_validate({"from": "2000", "to": "2000"}))
