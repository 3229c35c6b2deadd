"""`streamcart drill`: which process each kill hits (streamcart/drill.py; the drill itself on the real stack:
tests/integration/test_drill.py)."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest

from streamcart.drill import victims
from streamcart.settings import Settings
from streamcart.stack import Stack
from streamcart.stack.stack import StackError


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", workers=2))


def test_every_process_is_killed_once_before_any_is_killed_again_and_none_twice_in_a_row(stack: Stack):
    for seed in range(50):
        hits = victims(stack, (), 16, random.Random(seed))
        assert sorted(hits[:7]) == sorted(stack.names) and sorted(hits[7:14]) == sorted(stack.names)
        assert all(a != b for a, b in pairwise(hits)), hits


def test_the_targets_asked_for_are_the_only_ones_hit_and_a_seed_repeats_a_run(stack: Stack):
    hits = victims(stack, ["workers", "kafka"], 5, random.Random(3))
    assert set(hits) == {"worker-0", "worker-1", "kafka"} and len(hits) == 5
    assert victims(stack, ["workers", "kafka"], 5, random.Random(3)) == hits
    assert victims(stack, ["gateway"], 3, random.Random(1)) == ["gateway"] * 3  # one target: again and again
    with pytest.raises(StackError, match="unknown process nope"):
        victims(stack, ["nope"], 1, random.Random(1))
