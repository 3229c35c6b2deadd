"""The analytics API: its time range (epoch milliseconds or ISO 8601, validated by the query model, to epoch ms),
and its revenue rows."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from api.analytics import NO_END, BadQuery, epoch_ms, time_range
from api.models import WindowRangeQuery

AT_17 = 1_795_626_000_000  # 2026-11-25T17:00:00Z


def _range(**query: str) -> tuple[int, int]:
    return time_range(WindowRangeQuery.model_validate(query))


def test_a_time_is_epoch_milliseconds_or_iso_8601_utc_unless_it_says_otherwise():
    assert _range(**{"from": str(AT_17), "to": str(NO_END)}) == (AT_17, NO_END)  # what the gathering worker sends
    assert _range(**{"from": "2026-11-25T17:00:00Z", "to": "2026-11-25T17:00:00"}) == (AT_17, AT_17)
    assert _range(**{"from": "2026-11-25T18:00:00+01:00"})[0] == AT_17
    assert _range()[1] == NO_END


@pytest.mark.parametrize("value", ["²", "yesterday", "12:00", "2026-02-31T00:00:00Z",
                                   # no whole number of milliseconds: pydantic would read them as epoch seconds
                                   "1.5", "1e3", "1795626000.5"])
def test_anything_else_fails_validation(value):
    with pytest.raises(ValidationError):
        WindowRangeQuery.model_validate({"from": value})


def test_the_ends_of_the_calendar_do_not_overflow():
    assert epoch_ms(datetime.fromisoformat("0001-01-01T00:00:00+14:00"), 0) < epoch_ms(datetime(1, 1, 2), 0)
    assert epoch_ms(datetime.fromisoformat("9999-12-31T23:59:59-14:00"), 0) > 0


@pytest.mark.parametrize("name", ["from", "to"])
def test_epoch_seconds_are_refused_with_what_they_look_like(name):
    """`from=1796206269` was read as milliseconds, a time in January 1970: every window, silently."""
    with pytest.raises(BadQuery, match=rf"{name}=1796206269 looks like epoch seconds \(2026-12-02T"):
        _range(**{name: "1796206269"})
    with pytest.raises(BadQuery, match="looks like epoch seconds"):
        _range(**{name: "1796206269.0"})  # read as the integer it is, and refused as the same
    assert _range(**{"from": "0", "to": "60000"}) == (0, 60_000)  # the epoch's first minute is no such number


def test_a_revenue_window_says_what_its_late_confirmations_would_have_added():
    from api.analytics import revenue_windows
    from streamcart.domain.analytics import PartitionView, totals

    views = [
        PartitionView(partition=0, watermark=600_000, late={"revenue": 0},
                      windows={"revenue/0/60000": {"cents.EUR": 500, "orders.EUR": 1}}),
        PartitionView(partition=1, watermark=590_000, late={"revenue": 2},
                      windows={"revenue/0/60000": {"cents.EUR": 250, "orders.EUR": 1}},
                      late_windows={"revenue/0/60000": {"cents.USD": 70, "orders.USD": 1},
                                    "revenue/60000/120000": {"cents.EUR": 30, "orders.EUR": 1}}),
        PartitionView(partition=2, watermark=600_000, late={}, windows={},
                      late_windows={"revenue/60000/120000": {"cents.EUR": 40, "orders.EUR": 2}}),
    ]
    rows = revenue_windows(totals(views, "revenue", lateness_ms=30_000))
    assert [(w["window_start"], w["currency"], w["revenue_cents"], w["orders"], w["late_revenue_cents"],
             w["late_orders"], w["final"]) for w in rows] == [
        (0, "EUR", 750, 2, 0, 0, True),
        (0, "USD", 0, 0, 70, 1, True),  # only a late confirmation came to it
        (60_000, "EUR", 0, 0, 70, 3, True),
    ]
