"""How far behind a flow is: per source, the least wait of each whole window; the longest of them counts
(streamcart.telemetry.QueueDelay)."""

import pytest

from streamcart.telemetry import QueueDelay

COMMANDS, EVENTS = "commerce.commands.orders", "commerce.events.inventory"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def waited(delay: QueueDelay, clock: Clock, *waits_s: float, source: str = COMMANDS) -> None:
    for wait in waits_s:
        delay.waited(source, round((clock.now - wait) * 1000))


def test_a_standing_queue_shows_as_the_least_wait_of_the_last_whole_window():
    clock = Clock()
    delay = QueueDelay(window_s=1.0, clock=clock, monotonic=clock)
    waited(delay, clock, 4.0, 2.5, 3.0)
    assert delay.seconds() is None  # the window is not over yet
    clock.now += 1.0
    waited(delay, clock, 0.2)  # the next window has begun: the last whole one is what counts
    assert delay.seconds() == 2.5


def test_one_slow_record_among_quick_ones_is_no_queue():
    clock = Clock()
    delay = QueueDelay(window_s=1.0, clock=clock, monotonic=clock)
    waited(delay, clock, 0.01, 9.0, 0.02)
    clock.now += 1.0
    assert delay.seconds() == pytest.approx(0.01)


def test_a_queue_of_one_source_counts_while_another_source_flows_fresh():
    clock = Clock()
    delay = QueueDelay(window_s=1.0, clock=clock, monotonic=clock)
    waited(delay, clock, 6.0, 5.0)
    waited(delay, clock, 0.01, 0.02, source=EVENTS)
    clock.now += 1.0
    assert delay.seconds() == 5.0


def test_a_flow_that_handled_nothing_for_a_window_is_not_behind():
    clock = Clock()
    delay = QueueDelay(window_s=1.0, clock=clock, monotonic=clock)
    waited(delay, clock, 5.0)
    clock.now += 1.5
    assert delay.seconds() == 5.0  # the window that ended half a window ago
    clock.now += 1.0
    assert delay.seconds() is None  # a whole window without a record since


def test_a_record_from_a_clock_ahead_waited_nothing_and_one_without_a_time_is_not_counted():
    clock = Clock()
    delay = QueueDelay(window_s=1.0, clock=clock, monotonic=clock)
    delay.waited(COMMANDS, None)
    waited(delay, clock, -2.0)
    clock.now += 1.0
    assert delay.seconds() == 0.0
