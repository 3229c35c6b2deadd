"""A worker collects garbage less often than CPython's defaults, and never again walks what exists at start."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agents.worker import GC_THRESHOLDS, tune_gc
from streamcart.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_raises_the_thresholds_and_freezes_what_exists() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]

    tune_gc()

    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default young-generation threshold
    assert gc.get_freeze_count() >= len(survivor)


def test_workers_tune_by_default_and_a_setting_turns_it_off() -> None:
    assert Settings().gc_tuning is True
    assert Settings(gc_tuning=False).gc_tuning is False
