"""The placement gate: refuse while the saga's flows are behind, and pace new orders (api.admission)."""

import pytest

from api.admission import MIN_RATE, START_RATE, PlacementGate, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def offer(gate: PlacementGate, clock: Clock, per_s: int, seconds: float, behind: float | None = 0.1) -> int:
    """Offer ``per_s`` new orders a second, evenly, for ``seconds``; how many were taken."""
    start, taken = clock.now, 0
    for i in range(int(per_s * seconds)):
        clock.now = start + (i + 0.5) / per_s
        taken += gate.refusal(behind) is None
    clock.now = start + seconds
    return taken


def test_orders_asked_for_below_the_pace_are_all_taken_and_leave_the_pace_alone():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    assert offer(gate, clock, int(START_RATE) - 5, 5.0) == (START_RATE - 5) * 5
    assert gate.rate == START_RATE


def test_a_flood_onto_a_quiet_worker_is_taken_at_a_pace_that_doubles_each_second_until_the_first_overload():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    taken = [offer(gate, clock, 1000, 1.0) for _ in range(4)]
    assert taken[0] == pytest.approx(START_RATE * 1.5, abs=2)  # half a second's worth at once, then the pace
    assert taken[1:] == [pytest.approx(START_RATE * 2 ** k, abs=2) for k in (1, 2, 3)]
    assert gate.slow_start


@pytest.mark.parametrize(("behind", "retry_after"), [(2.01, 3), (7.2, 8), (45.0, 10)])
def test_a_queue_over_the_limit_refuses_with_a_retry_after_of_about_its_length(behind, retry_after):
    gate = PlacementGate(2.0, clock=Clock())
    assert gate.refusal(behind) == Refusal(behind, retry_after)


def test_an_overloaded_second_halves_what_was_taken_then_the_pace_grows_by_a_tenth_at_least_min_rate():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    assert offer(gate, clock, 15, 2.0) == 30
    assert offer(gate, clock, 15, 1.0, behind=3.0) == 0  # overloaded: nothing taken
    taken = offer(gate, clock, 15, 1.0)  # the queue is short again: taken at half the 15/s that overloaded it
    assert (gate.rate, gate.slow_start) == (7.5, False)
    assert 7 <= taken <= 8 + 4  # (and what its bucket held)
    offer(gate, clock, 15, 1.0)
    assert gate.rate == 7.5 + MIN_RATE


def test_each_overloaded_second_halves_the_pace_down_to_the_least_one():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    offer(gate, clock, 1000, 3.0)
    offer(gate, clock, 1000, 10.0, behind=5.0)
    taken = offer(gate, clock, 1000, 1.0)
    assert gate.rate == MIN_RATE
    assert MIN_RATE <= taken <= MIN_RATE + 3


def test_a_max_delay_of_0_takes_everything():
    gate = PlacementGate(0.0, clock=Clock())
    assert all(gate.refusal(600.0) is None for _ in range(1000))


def test_one_callers_burst_leaves_half_the_bucket_to_the_others():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    capacity = START_RATE / 2
    bob = [gate.refusal(0.1, "bob") for _ in range(40)]
    taken = sum(r is None for r in bob)
    assert taken == pytest.approx(capacity / 2, abs=1)  # refused with half the bucket left
    assert all(r is not None and r.share and r.behind_s is None for r in bob[taken:])
    alice = [gate.refusal(0.1, "alice") for _ in range(3)]
    assert alice == [None, None, None]


def test_a_caller_alone_still_gets_the_whole_pace_as_the_bucket_refills():
    clock = Clock()
    gate = PlacementGate(2.0, clock=clock)
    offer(gate, clock, 10, 1.0)  # a second below the pace: not limited, the pace stays
    start, taken = clock.now, 0
    for i in range(200):  # 200/s offered for a second by one caller
        clock.now = start + (i + 0.5) / 200
        taken += gate.refusal(0.1, "bob") is None
    # The pace's worth as the bucket refills, and the bucket's first half: no other caller asked for its second.
    assert START_RATE <= taken <= START_RATE + START_RATE / 4 + 1
    assert offer(gate, clock, 1, 1.0) and gate.rate == START_RATE * 2  # refused beyond its share: the pace grows
